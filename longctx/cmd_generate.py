"""`longctx generate` and `longctx chat`: the model from the command line."""

from __future__ import annotations

import argparse
import json
import sys

from longctx.cli import CliError


def add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="checkpoint folder, .gguf file or offline model name (default: qwen2.5-coder-0.5b-instruct)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--quantize", choices=["gguf", "int8", "int4", "int4x2", "bf16", "none"], default=None,
                        help="weights kept quantized (default: GGUF files as their blocks, folders float32)")
    parser.add_argument("--attention", help="attention backend (eager, sdpa, flash, ...); default by device")
    parser.add_argument("--long-context", choices=["none", "yarn", "dca"], default=None,
                        help="long-context mode (default: what the checkpoint's config.json says)")
    parser.add_argument("--dca-chunk-size", type=int, help="DCA chunk size (default 24576 or config.json)")
    parser.add_argument("--dca-local-size", type=int, help="DCA local window (default 2048 or config.json)")
    parser.add_argument("--yarn-factor", type=float, help="YaRN factor (default: 131072 / the trained length, e.g. 4 for Qwen2)")


def add_sampling_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 means greedy")
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--repetition-penalty", type=float, default=1.0)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")


def register(subparsers) -> None:
    gen = subparsers.add_parser("generate", help="generate text from a prompt")
    prompt = gen.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt", help="prompt text")
    prompt.add_argument("--prompt-ids", help="prompt as comma-separated token ids, e.g. 1,2,3")
    gen.add_argument("--chat", action="store_true", help="wrap the prompt as a user turn in the chat template")
    gen.add_argument("--system", help="system message (with --chat)")
    gen.add_argument("--json", action="store_true", help="print one JSON object")
    add_model_options(gen)
    add_sampling_options(gen)
    gen.set_defaults(handler=run_generate)

    chat = subparsers.add_parser("chat", help="interactive chat with the model")
    chat.add_argument("--system", help="system message")
    add_model_options(chat)
    add_sampling_options(chat)
    chat.set_defaults(handler=run_chat)


def load_engine_from_args(args):
    from model_core import load_engine

    options = {key: value for key, value in {
        "chunk_size": args.dca_chunk_size, "local_size": args.dca_local_size, "factor": args.yarn_factor,
    }.items() if value is not None}
    if options and args.long_context in (None, "none"):
        raise CliError("--dca-*/--yarn-* options need --long-context dca or yarn")
    return load_engine(args.model, dtype=args.dtype, device=args.device, attention=args.attention,
                       long_context=args.long_context, long_context_options=options, quantize=args.quantize)


def sampling_from_args(args):
    from model_core import SamplingParams

    return SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                          top_k=args.top_k, top_p=args.top_p, repetition_penalty=args.repetition_penalty,
                          seed=args.seed, stop=list(args.stop)).validate()


def parse_prompt_ids(text: str) -> list[int]:
    try:
        ids = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise CliError(f"--prompt-ids must be comma-separated integers, got {text!r}") from None
    if not ids:
        raise CliError("--prompt-ids is empty")
    return ids


def run_generate(args) -> int:
    params = sampling_from_args(args)  # bad sampling values fail before the model loads
    prompt_ids = parse_prompt_ids(args.prompt_ids) if args.prompt_ids else None
    if args.chat and prompt_ids is not None:
        raise CliError("--chat needs --prompt text, not --prompt-ids")
    engine = load_engine_from_args(args)
    if prompt_ids is None:
        if args.chat:
            messages = ([{"role": "system", "content": args.system}] if args.system else [])
            messages.append({"role": "user", "content": args.prompt})
            prompt_ids = engine.tokenizer.encode(engine.tokenizer.apply_chat_template(messages))
        else:
            prompt_ids = engine.tokenizer.encode(args.prompt)
            if not prompt_ids:
                raise CliError("--prompt is empty")

    def stream(_row: int, piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    result = engine.generate([prompt_ids], params, on_text=None if args.json else stream)[0]
    if args.json:
        print(json.dumps({"token_ids": result.token_ids, "text": result.text,
                          "finish_reason": result.finish_reason, "prompt_tokens": result.prompt_tokens},
                         ensure_ascii=False))
    else:
        sys.stdout.write("\n")
    return 0


def run_chat(args) -> int:
    params = sampling_from_args(args)
    engine = load_engine_from_args(args)
    messages = [{"role": "system", "content": args.system}] if args.system else []
    print("Chat with the model; an empty line or Ctrl-D ends.", file=sys.stderr)
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            break
        if not line:
            break
        messages.append({"role": "user", "content": line})
        sys.stdout.write("model> ")
        result = engine.chat(messages, params=params,
                             on_text=lambda _row, piece: (sys.stdout.write(piece), sys.stdout.flush()))
        sys.stdout.write("\n")
        messages.append({"role": "assistant", "content": result.text})
    return 0
