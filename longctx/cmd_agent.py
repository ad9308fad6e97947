"""`longctx agent "TASK"`: run the tool-calling agent loop once from the command line.

Prints the answer (and each step on stderr), or with ``--json`` the answer and the whole trace.
Search and read use the document store in the data folder (see ``longctx ingest``); the Python
tool runs only when named in ``--tools``.
"""

from __future__ import annotations

import json
import sys

from longctx.cli import CliError


def register(subparsers) -> None:
    from longctx.cmd_generate import add_model_options, add_sampling_options
    from longctx.cmd_retrieval import add_store_options

    agent = subparsers.add_parser("agent", help="run a tool-using agent on a task")
    agent.add_argument("task", help="what the agent should do")
    agent.add_argument(
        "--tools",
        default="search,read,calculator",
        help="comma-separated built-in tools: search, read, calculator, python (default: search,read,calculator)",
    )
    agent.add_argument("--max-steps", type=int, default=8, help="most model calls (default 8)")
    agent.add_argument(
        "--format",
        choices=["hermes", "qwen"],
        help="tool prompt format (default: from the checkpoint)",
    )
    agent.add_argument("--system", help="system message")
    agent.add_argument("--collection", help="search only this collection of the store")
    agent.add_argument(
        "--python-timeout", type=float, default=10.0, help="seconds per Python run (default 10)"
    )
    agent.add_argument(
        "--python-memory-mb", type=int, default=512, help="memory per Python run (default 512)"
    )
    agent.add_argument(
        "--json", action="store_true", help="print the answer and the trace as one JSON object"
    )
    add_model_options(agent)
    add_sampling_options(agent)
    add_store_options(agent)
    agent.set_defaults(handler=run_agent_command, max_new_tokens=512)


def run_agent_command(args) -> int:
    from agent import EngineChat, builtin_tools, run_agent
    from agent.sandbox import PythonSandbox
    from longctx.cmd_generate import load_engine_from_args, sampling_from_args
    from longctx.cmd_retrieval import open_store

    names = [n.strip() for n in args.tools.split(",") if n.strip()]
    if args.max_steps < 1:
        raise CliError("--max-steps must be at least 1")
    params = sampling_from_args(args)
    store = open_store(args) if {"search", "read"} & set(names) else None
    sandbox = (
        PythonSandbox(timeout_s=args.python_timeout, memory_mb=args.python_memory_mb)
        if "python" in names
        else None
    )
    tools = builtin_tools(store, names, python="python" in names, sandbox=sandbox,
                          collection=args.collection)
    engine = load_engine_from_args(args)
    model = EngineChat(engine, args.format, params=params)

    def show_step(step) -> None:
        if args.json:
            return
        for call, result in zip(step.calls, step.results, strict=False):
            print(f"[step {step.index}] {call.name or '?'}({json.dumps(call.arguments)}) -> {result.status}: "
                  f"{result.content[:200]}", file=sys.stderr)  # fmt: skip

    result = run_agent(
        model, args.task, tools, max_steps=args.max_steps, on_step=show_step, system=args.system
    )
    if args.json:
        print(
            json.dumps(
                {**result.to_dict(), "format": model.tool_format.name},
                ensure_ascii=False,
                default=str,
            )
        )
    else:
        print(result.answer)
        if result.stopped_reason != "answer":
            print(f"(stopped: {result.stopped_reason} after {result.steps} steps)", file=sys.stderr)
    return 0
