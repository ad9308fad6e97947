"""The `longctx` command: one argparse parser, one module per group of subcommands.

Each `longctx/cmd_*.py` exposes `register(subparsers)`; handlers import their heavy layers
(torch, faiss, celery) lazily so `longctx --help` stays fast. A handler raises `CliError` (or
any layer's exception with `user_error = True`, see docs/CONTRACTS.md) for bad input: the message is printed as one line on stderr and
the exit code is 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = ("cmd_generate", "cmd_retrieval", "cmd_agent", "cmd_service")


class CliError(Exception):
    """Bad input from the command line: printed as one line, exit code 2."""

    user_error = True


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="longctx", description="Long-context RAG and agent service on Qwen2")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"longctx.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # one line for anything the user can fix
        if _is_user_error(exc):
            print(f"longctx {args.command}: error: {exc}", file=sys.stderr)
            return 2
        raise


def _is_user_error(exc: BaseException) -> bool:
    return bool(getattr(exc, "user_error", False))


if __name__ == "__main__":
    sys.exit(main())
