"""The built-in tools: search documents, read a document, calculator, and (opt-in) Python.

Search and read work over a retrieval ``DocumentStore`` passed in (``store.search`` and
``store.read``, docs/CONTRACTS.md); the agent never builds indexes itself. Results are capped
so one call cannot flood the context: hits carry at most ``HIT_CHARS`` of text each, reads at
most ``READ_CHARS`` (the model pages through a long document with ``start``/``end``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from agent.calculator import calculate
from agent.errors import SandboxUnavailableError, UnknownToolError
from agent.sandbox import PythonSandbox
from agent.tools import Tool, tool_from_function

HIT_CHARS = 800
READ_CHARS = 4000
BUILTIN_NAMES = ("search", "read", "calculator", "python")
DEFAULT_NAMES = ("search", "read", "calculator")


def search_tool(store: Any, *, k_max: int = 10, collection: str | None = None) -> Tool:
    def search_documents(query: str, k: int = 5) -> list[dict[str, Any]]:
        """Search the indexed documents; returns the best matching passages with their document id and character span.

        Args:
            query: what to look for, in words
            k: how many passages to return (1-10)
        """
        hits = store.search(query, k=max(1, min(k, k_max)), collection=collection)
        return [_hit(h) for h in hits]

    return tool_from_function(search_documents, timeout_s=60)


def read_tool(store: Any) -> Tool:
    def read_document(document_id: str, start: int = 0, end: int | None = None) -> str:
        """Read the text of a document between two character offsets (at most 4000 characters per call).

        Args:
            document_id: the document id from a search result
            start: first character to read
            end: character to stop before (default: start + 4000)
        """
        start = max(0, start)
        stop = start + READ_CHARS if end is None else min(end, start + READ_CHARS)
        text = store.read(document_id, start, stop)
        return text if text else f"(no text between {start} and {stop}; the document is shorter)"

    return tool_from_function(read_document, timeout_s=30)


def calculator_tool() -> Tool:
    def calculator(expression: str) -> int | float:
        """Evaluate an arithmetic expression exactly, e.g. "(3 + 4) * 2 ** 10" or "sqrt(2) / 3".

        Args:
            expression: numbers, + - * / // % ** and parentheses, pi, e, and sqrt, log, exp, sin, cos, tan, floor, ceil, abs, round, min, max, factorial
        """
        return calculate(expression)

    return tool_from_function(calculator, timeout_s=5)


def builtin_tools(
    store: Any = None,
    names: Iterable[str] = DEFAULT_NAMES,
    *,
    python: bool = False,
    sandbox: PythonSandbox | None = None,
    collection: str | None = None,
) -> list[Tool]:
    """The named built-in tools. ``python`` must be enabled explicitly to include the sandbox;
    ``collection`` limits the search tool to one collection of the store."""
    tools: list[Tool] = []
    for name in names:
        if name not in BUILTIN_NAMES:
            raise UnknownToolError(
                f"unknown tool {name!r}; built-in tools: {', '.join(BUILTIN_NAMES)}"
            )
        if name in ("search", "read") and store is None:
            raise UnknownToolError(f"the {name} tool needs a document store")
        if name == "python" and not python:
            raise SandboxUnavailableError(
                "the python tool is off; enable it explicitly (python=True)"
            )
        if name == "search":
            tools.append(search_tool(store, collection=collection))
        elif name == "read":
            tools.append(read_tool(store))
        elif name == "calculator":
            tools.append(calculator_tool())
        else:
            tools.append((sandbox or PythonSandbox()).as_tool())
    return tools


def _hit(hit: Any) -> dict[str, Any]:
    text = hit.text if len(hit.text) <= HIT_CHARS else hit.text[:HIT_CHARS] + " ..."
    return {
        "document_id": hit.document,
        "source": hit.source,
        "start": hit.start,
        "end": hit.end,
        "page": getattr(hit, "page", None),
        "score": round(float(hit.score), 4),
        "text": text,
    }
