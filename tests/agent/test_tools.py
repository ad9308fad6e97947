"""Tools from functions and pydantic models; the calculator; the built-in document tools."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pydantic
import pytest

from agent import ToolCall, builtin_tools, tool_from_function, tool_from_model
from agent.calculator import calculate
from agent.errors import (
    CalculatorError,
    SandboxUnavailableError,
    ToolDefinitionError,
    UnknownToolError,
)
from agent.tools import as_tools, render_result, run_calls


def convert(amount: float, unit: Literal["km", "mi"] = "km", precise: bool = False) -> str:
    """Convert a distance.

    Args:
        amount: the distance to convert
        unit: the unit it is given in
        precise: keep all decimals
    """
    return f"{amount}{unit}"


def test_schema_from_a_typed_function():
    tool = tool_from_function(convert)
    assert tool.name == "convert" and tool.description == "Convert a distance."
    params = tool.parameters
    assert params["required"] == ["amount"]
    assert params["properties"]["amount"] == {
        "type": "number",
        "description": "the distance to convert",
    }
    assert params["properties"]["unit"]["enum"] == ["km", "mi"]
    assert params["properties"]["precise"]["default"] is False
    assert "title" not in params
    assert tool.schema()["function"]["name"] == "convert"


def test_arguments_are_checked_against_the_schema():
    tool = tool_from_function(convert)
    assert tool.check_arguments({"amount": 3}) is None
    assert "is not one of" in tool.check_arguments({"amount": 3, "unit": "ly"})
    assert "'amount' is a required property" in tool.check_arguments({})


class Search(pydantic.BaseModel):
    """Search the catalogue."""

    query: str = pydantic.Field(description="words to look for")
    limit: int = pydantic.Field(5, ge=1, le=20)


def test_tool_from_a_pydantic_model():
    seen = []
    tool = tool_from_model(Search, lambda args: seen.append(args) or "done")
    assert tool.name == "search" and tool.description == "Search the catalogue."
    assert tool.parameters["properties"]["limit"]["maximum"] == 20
    assert tool.check_arguments({"query": "x", "limit": 50}) is not None
    (result,) = run_calls([ToolCall("search", {"query": "lamps"}, id="c1")], [tool])
    assert result.content == "done" and seen == [Search(query="lamps", limit=5)]


def test_duplicate_names_and_untyped_objects_are_refused():
    with pytest.raises(ToolDefinitionError, match="same name: convert"):
        as_tools([convert, convert])
    with pytest.raises(ToolDefinitionError):
        as_tools([42])


def test_results_are_rendered_as_json_and_capped():
    assert render_result({"a": [1, 2]}) == '{"a": [1, 2]}'
    assert render_result("x" * 20, limit=5).startswith("xxxxx\n[... 15 more characters cut]")


# --- calculator ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "expression, value",
    [
        ("2 + 3 * 4", 14),
        ("(2 + 3) * 4", 20),
        ("2 ** 10", 1024),
        ("2^10", 1024),
        ("7 // 2 + 7 % 2", 4),
        ("-3 + +5", 2),
        ("sqrt(16) + abs(-2)", 6.0),
        ("round(pi, 3)", 3.142),
        ("max(1, 7, 3)", 7),
        ("factorial(10)", 3628800),
        ("1.5e3 / 3", 500.0),
    ],
)
def test_calculator_arithmetic(expression, value):
    assert calculate(expression) == value


@pytest.mark.parametrize(
    "expression, reason",
    [
        ("__import__('os').system('id')", "not allowed"),
        ("open('/etc/passwd').read()", "not allowed"),
        ("(1).__class__", "not allowed"),
        ("x + 1", "unknown name 'x'"),
        ("'a' * 3", "not allowed"),
        ("9 ** 9 ** 9", "exponent larger"),
        ("10 ** 5000", "bits"),
        ("factorial(100000)", "0 to 500"),
        ("1 / 0", "ZeroDivisionError"),
        ("10.0 ** 400", "OverflowError"),
        ("-" * 200 + "1", "nested deeper"),
        ("1 +", "not an arithmetic expression"),
        ("", "empty"),
        ("[1, 2]", "not allowed"),
        ("lambda: 1", "not allowed"),
        ("(1).real", "not allowed"),  # simpleeval allows attributes without an underscore
        ("[x for x in range(10**9)]", "not allowed"),  # a loop
        ("sum(range(10**12))", "not allowed|unknown"),  # a loop through a builtin
        ("'a' * 10**9", "not allowed"),
    ],
)
def test_calculator_refuses_what_is_not_bounded_arithmetic(expression, reason):
    with pytest.raises(CalculatorError, match=reason):
        calculate(expression)


def test_calculator_errors_reach_the_model_as_results():
    (tool,) = builtin_tools(names=["calculator"])
    (result,) = run_calls([ToolCall("calculator", {"expression": "1/0"}, id="c")], [tool])
    assert result.status == "error" and "ZeroDivisionError" in result.content


# --- document tools over a store (the retrieval contract) -----------------------------------------


@dataclass
class FakeHit:
    document: str
    source: str
    chunk: int
    text: str
    score: float
    start: int
    end: int
    page: int | None = None


class FakeStore:
    text = "Qwen2 uses RoPE with base 1,000,000. " * 300

    def search(self, query, k=5, mode="hybrid", collection=None, document_ids=None):
        self.last = (query, k)
        self.last_collection = collection
        return [
            FakeHit("doc1", "notes.md", i, self.text[:2000], 1.0 / (i + 1), i * 10, i * 10 + 2000)
            for i in range(k)
        ]

    def read(self, document_id, start=None, end=None):
        return self.text[start:end]


def test_search_and_read_tools_over_a_store():
    store = FakeStore()
    search, read = builtin_tools(store, names=["search", "read"])
    (found,) = run_calls(
        [ToolCall("search_documents", {"query": "rope base", "k": 50}, id="a")], [search]
    )
    assert store.last == ("rope base", 10)
    assert '"document_id": "doc1"' in found.content and '"start": 0' in found.content
    (read_back,) = run_calls(
        [ToolCall("read_document", {"document_id": "doc1", "start": 6}, id="b")], [read]
    )
    assert read_back.content.startswith("uses RoPE") and len(read_back.content) == 4000


def test_search_tool_keeps_to_its_collection():
    store = FakeStore()
    (search,) = builtin_tools(store, names=["search"], collection="finance")
    run_calls([ToolCall("search_documents", {"query": "costs"}, id="a")], [search])
    assert store.last_collection == "finance"


def test_builtin_tool_names_and_the_python_switch():
    with pytest.raises(UnknownToolError, match="serch"):
        builtin_tools(names=["serch"])
    with pytest.raises(UnknownToolError, match="document store"):
        builtin_tools(names=["search"])
    with pytest.raises(SandboxUnavailableError, match="off"):
        builtin_tools(names=["python"])
    assert [t.name for t in builtin_tools(names=["python"], python=True)] == ["python"]
