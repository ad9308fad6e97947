"""Prefix caching at the model level: follow-up questions on one long document, and an agent.

    python -m bench.prefix_cache                     # offline default model (Qwen2.5-Coder-0.5B)
    python -m bench.prefix_cache --model smollm2-135m-instruct --new-tokens 16
    python -m bench.prefix_cache --parts agent

1. Follow-ups. A QA-shaped chat prompt (system message, then a document of at least 8,000
   tokens: license texts from /usr/share/common-licenses, GPL-3 then LGPL-2.1 and more until
   the minimum is reached: 13,246 prompt tokens with Qwen2.5's tokenizer), then three other
   questions on the same document. Each question is asked of two engines over the same weights:
   one with the prefix cache, one without. Time to first token (the first streamed text) of each,
   the answers (greedy, float32) compared token by token.
2. An agent-shaped conversation of 4 steps: each step's prompt is the previous one plus the
   model's answer and a tool result. Prefill tokens computed (prompt tokens minus those reused
   from the cache) with the cache vs without.

Both engines share one model in this process (one model in memory), run one after the other;
the ratios are what counts: the cores are shared with other work. Nothing is tuned on this.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from model_core import Engine, SamplingParams, load_engine
from model_core.engine import ServingOptions

LICENSES = Path("/usr/share/common-licenses")
SYSTEM = "You are a careful assistant. Answer questions about the document briefly and exactly."
QUESTIONS = [
    "What is the title of this license?",
    "Who is the copyright holder named in the license text?",
    "Which section of the license is about the disclaimer of warranty?",
    "Can I charge money for distributing copies of the program?",
]


def document(engine: Engine, min_tokens: int) -> str:
    """GPL-3, then more licenses until the text has at least min_tokens tokens."""
    texts = []
    for name in ["GPL-3", "LGPL-2.1", "GPL-2", "Apache-2.0"]:
        texts.append((LICENSES / name).read_text())
        if engine.count_tokens("\n\n".join(texts)) >= min_tokens:
            break
    return "\n\n".join(texts)


def qa_prompt(engine: Engine, doc: str, question: str) -> list[int]:
    messages = [{"role": "system", "content": SYSTEM},
                {"role": "user", "content": f"Document:\n{doc}\n\nQuestion: {question}"}]
    return engine.tokenizer.encode(engine.tokenizer.apply_chat_template(messages))


def ask(engine: Engine, prompt: list[int], new_tokens: int) -> dict:
    start, first = time.perf_counter(), []
    out = engine.generate([prompt], SamplingParams(max_new_tokens=new_tokens),
                          on_text=lambda _row, _piece: first or first.append(time.perf_counter()))[0]
    end = time.perf_counter()
    return {"ttft_s": (first[0] if first else end) - start, "total_s": end - start,
            "tokens": out.token_ids, "prompt_tokens": out.prompt_tokens, "cached_tokens": out.cached_tokens}


def follow_ups(engines: dict[str, Engine], doc: str, new_tokens: int) -> list[dict]:
    rows = []
    for i, question in enumerate(QUESTIONS):
        prompt = qa_prompt(engines["cache"], doc, question)
        hot, cold = ask(engines["cache"], prompt, new_tokens), ask(engines["no cache"], prompt, new_tokens)
        row = {"question": i + 1, "prompt_tokens": len(prompt), "cached_tokens": hot["cached_tokens"],
               "ttft_cache_s": hot["ttft_s"], "ttft_no_cache_s": cold["ttft_s"],
               "speedup": cold["ttft_s"] / hot["ttft_s"], "same_answer": hot["tokens"] == cold["tokens"]}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def agent(engines: dict[str, Engine], new_tokens: int, steps: int = 4) -> dict[str, int]:
    """Prefill tokens each engine computed over a growing 4-step conversation."""
    tool_result = (LICENSES / "Apache-2.0").read_text()[:1500]
    computed = {}
    for name, engine in engines.items():
        messages = [{"role": "system", "content": SYSTEM},
                    {"role": "user", "content": "Find out what the Apache license says about patents."}]
        total = 0
        for step in range(steps):
            prompt = engine.tokenizer.encode(engine.tokenizer.apply_chat_template(messages))
            out = engine.generate([prompt], SamplingParams(max_new_tokens=new_tokens))[0]
            total += out.prompt_tokens - out.cached_tokens
            messages += [{"role": "assistant", "content": out.text},
                         {"role": "user", "content": f"Tool result {step + 1}:\n{tool_result}"}]
        computed[name] = total
    return computed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model name or path (default: the offline default)")
    parser.add_argument("--min-doc-tokens", type=int, default=8000)
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--parts", default="followups,agent", help="comma-separated: followups, agent")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    hot = load_engine(args.model)
    cold = Engine(hot.model, hot.config, hot.tokenizer, str(hot.device), hot.runtime, hot.window,
                  ServingOptions(kv_budget_tokens=hot.serving.kv_budget_tokens, prefix_cache=0))
    engines = {"cache": hot, "no cache": cold}
    rows = follow_ups(engines, document(hot, args.min_doc_tokens), args.new_tokens) if "followups" in parts else []
    if rows:
        print("\n| question | prompt tokens | cached | TTFT, cache (s) | TTFT, no cache (s) | ratio | same answer |")
        print("|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r['question']} | {r['prompt_tokens']} | {r['cached_tokens']} | {r['ttft_cache_s']:.2f} | "
              f"{r['ttft_no_cache_s']:.2f} | {r['speedup']:.1f}x | {'yes' if r['same_answer'] else 'NO'} |")
    if "agent" not in parts:
        return
    computed = agent(engines, args.new_tokens)
    print(json.dumps({"agent_prefill_tokens": computed, "stats": vars(hot.stats())}), flush=True)
    ratio = computed["no cache"] / max(1, computed["cache"])
    print(f"\nAgent, 4 steps: prefill tokens computed {computed['cache']} with the cache, "
          f"{computed['no cache']} without ({ratio:.1f}x fewer).")


if __name__ == "__main__":
    main()
