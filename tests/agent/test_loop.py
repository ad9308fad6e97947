"""The agent loop driven by a scripted model: what the trace and the model's next prompt show."""

from __future__ import annotations

import json
import threading

from agent import ScriptedChat, run_agent, tool_from_function
from agent.builtin import calculator_tool
from agent.formats import QWEN
from agent.loop import FINAL_ANSWER


def call(name, **arguments):
    import json

    return f"<tool_call>\n{json.dumps({'name': name, 'arguments': arguments})}\n</tool_call>"


def lookup_price(item: str) -> float:
    """Price of an item in euros.

    Args:
        item: the item's name
    """
    return {"apple": 0.5, "pear": 0.75}[item]


def test_call_result_call_answer():
    model = ScriptedChat(
        [
            "I need the price first.\n" + call("lookup_price", item="pear"),
            call("calculator", expression="0.75 * 12"),
            "A dozen pears cost 9 euros.",
        ]
    )
    steps = []
    result = run_agent(
        model, "What do 12 pears cost?", [lookup_price, calculator_tool()], on_step=steps.append
    )

    assert result.answer == "A dozen pears cost 9 euros."
    assert result.stopped_reason == "answer" and result.steps == 3 and len(steps) == 3
    first, second, third = result.trace
    assert first.content == "I need the price first."
    assert [(c.name, c.arguments) for c in first.calls] == [("lookup_price", {"item": "pear"})]
    assert [(r.status, r.content) for r in first.results] == [("ok", "0.75")]
    assert [(r.status, r.content) for r in second.results] == [("ok", "9.0")]
    assert third.calls == [] and third.results == []
    # the scripted model counts one token per word: the trace reports what the model reported
    replies = [s.text for s in result.trace]
    assert [s.completion_tokens for s in result.trace] == [len(r.split()) for r in replies]
    prompts = [sum(len(str(m.get("content") or "").split()) for m in seen) for seen in model.seen]
    assert [s.prompt_tokens for s in result.trace] == prompts
    totals = result.to_dict()
    assert (totals["prompt_tokens"], totals["completion_tokens"]) == (
        sum(prompts),
        sum(len(r.split()) for r in replies),
    )
    # the model saw its call and the result on the next step
    second_prompt = model.seen[1]
    assert second_prompt[-2]["tool_calls"][0]["function"] == {
        "name": "lookup_price",
        "arguments": {"item": "pear"},
    }
    assert second_prompt[-1] == {
        "role": "tool",
        "tool_call_id": "step0_call_0",
        "name": "lookup_price",
        "content": "0.75",
    }
    assert result.to_dict()["trace"][0]["calls"][0]["name"] == "lookup_price"


def test_broken_call_is_shown_to_the_model_which_repairs_it():
    model = ScriptedChat(
        [
            "<tool_call>calculator with 2+2</tool_call>",
            call("calculator", expression="2+2"),
            "It is 4.",
        ]
    )
    result = run_agent(model, "2+2?", [calculator_tool()])
    assert result.answer == "It is 4." and result.steps == 3
    broken = result.trace[0]
    assert not broken.calls[0].valid
    assert broken.results[0].status == "invalid"
    assert "could not be read" in broken.results[0].content
    # what the model wrote stays in its turn, and the reason is its tool result
    assistant, tool = model.seen[1][-2:]
    assert "<tool_call>calculator with 2+2</tool_call>" in assistant["content"]
    assert assistant["tool_calls"] == []
    assert tool["role"] == "tool" and "invalid JSON" in tool["content"]
    assert result.trace[1].results[0].content == "4"


def test_wrong_arguments_and_unknown_tools_are_results_not_crashes():
    model = ScriptedChat(
        [
            call("lookup_price", item=3) + call("lookup_price") + call("weather", city="Oslo"),
            "Sorry.",
        ]
    )
    result = run_agent(model, "?", [lookup_price])
    contents = [r.content for r in result.trace[0].results]
    assert [r.status for r in result.trace[0].results] == ["invalid", "invalid", "invalid"]
    assert "item: 3 is not of type 'string'" in contents[0]
    assert "'item' is a required property" in contents[1]
    assert "no tool named 'weather'" in contents[2] and "lookup_price" in contents[2]


def test_a_tool_that_raises_gives_an_error_result():
    model = ScriptedChat([call("lookup_price", item="durian"), "I do not know that price."])
    result = run_agent(model, "durian?", [lookup_price])
    (res,) = result.trace[0].results
    assert res.status == "error" and "KeyError" in res.content and "durian" in res.content
    assert result.stopped_reason == "answer"


def test_a_tool_that_times_out_does_not_hold_the_others():
    release = threading.Event()

    returned = threading.Event()

    def slow(seconds: float) -> str:
        """Waits."""
        release.wait(seconds)
        returned.set()
        return "finally"

    def fast(x: int) -> int:
        """Doubles."""
        return 2 * x

    slow_tool = tool_from_function(slow, timeout_s=0.3)
    model = ScriptedChat([call("slow", seconds=30) + call("fast", x=21), "Half done."])
    result = run_agent(model, "go", [slow_tool, fast])
    still_waiting = not returned.is_set()  # the loop answered without waiting for the slow tool
    release.set()
    slow_result, fast_result = result.trace[0].results
    assert still_waiting, "the loop waited for the slow tool to return"
    assert slow_result.status == "timeout" and "0.3 s" in slow_result.content
    assert slow_result.seconds >= 0.3
    assert (fast_result.status, fast_result.content) == ("ok", "42")
    assert result.answer == "Half done."


def test_calls_in_one_turn_run_concurrently():
    barrier = threading.Barrier(3, timeout=5)

    def meet(who: str) -> str:
        """Waits for the two others."""
        barrier.wait()
        return who

    model = ScriptedChat(
        [call("meet", who="a") + call("meet", who="b") + call("meet", who="c"), "ok"]
    )
    result = run_agent(model, "go", [meet])
    assert [r.content for r in result.trace[0].results] == ["a", "b", "c"]


def test_step_limit():
    model = ScriptedChat([f"Try {i}." + call("calculator", expression=f"{i}+1") for i in range(5)])
    result = run_agent(model, "loop forever", [calculator_tool()], max_steps=3)
    assert result.stopped_reason == "max_steps"
    assert result.steps == 3 and len(model.seen) == 3
    assert result.answer == "Try 2."


def test_cancellation_between_steps():
    model = ScriptedChat([call("calculator", expression="1+1"), "never reached"])
    result = run_agent(model, "x", [calculator_tool()], should_stop=lambda: len(model.seen) >= 1)
    assert result.stopped_reason == "cancelled" and result.steps == 1


def test_streamed_text_reaches_on_text():
    pieces = []
    model = ScriptedChat(["The answer is 42."], chunk=3)
    result = run_agent(model, "?", [], on_text=pieces.append)
    assert "".join(pieces) == "The answer is 42." and len(pieces) > 1
    assert result.answer == "The answer is 42."


def test_streamed_text_leaves_out_the_call_markup():
    pieces = []
    model = ScriptedChat(
        ["Let me compute. " + call("calculator", expression="1+2") + " Wait.", "3"], chunk=4
    )
    run_agent(model, "?", [calculator_tool()], on_text=pieces.append)
    assert "".join(pieces) == "Let me compute.  Wait.3"


def test_qwen_format_loop():
    model = ScriptedChat(
        ['Computing.\n✿FUNCTION✿: calculator\n✿ARGS✿: {"expression": "6*7"}', "✿RETURN✿: 42"],
        tool_format=QWEN,
    )
    result = run_agent(model, "6*7?", [calculator_tool()])
    assert result.trace[0].results[0].content == "42"
    assert result.answer == "42"


def test_task_as_messages_keeps_the_callers_system_prompt():
    model = ScriptedChat(["hi"])
    run_agent(
        model,
        [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "hello"}],
        [],
    )
    assert model.seen[0][0] == {"role": "system", "content": "Be terse."}


def test_a_model_repeating_an_answered_call_is_asked_for_the_answer():
    """What the 0.5B Qwen2 did: call, then the same call again instead of answering."""
    model = ScriptedChat([call("calculator", expression="37 * 91"), call("calculator", expression="37 * 91"),
                          "37 * 91 is 3367."])
    result = run_agent(model, "What is 37*91?", [calculator_tool()])
    assert result.answer == "37 * 91 is 3367." and result.stopped_reason == "answer"
    assert [len(s.calls) for s in result.trace] == [1, 0, 0]
    asked = model.seen[-1]  # the last turn saw the result and the request for the answer
    assert asked[-1] == {"role": "user", "content": FINAL_ANSWER}
    assert any(m.get("role") == "tool" and m["content"] == "3367" for m in asked)


def test_call_shaped_text_after_results_is_not_the_answer():
    lines = "\n".join(json.dumps({"name": "calculator", "arguments": {"expression": f"{n} / 4"}}) for n in (256, 64, 16))
    model = ScriptedChat([call("calculator", expression="2**10 / 4"), lines, lines])
    result = run_agent(model, "Compute 2**10 / 4", [calculator_tool()])
    assert result.answer == "256.0"  # the model never wrote one: the last tool result stands in


def test_a_looping_reply_is_cut_after_its_first_round():
    loop = "The file is read. " + "It is read again and again and again. " * 6
    result = run_agent(ScriptedChat([loop]), "What happens to the file?", [calculator_tool()])
    assert result.trace[0].finish_reason == "repetition"
    assert result.answer.count("again and again") == 1, result.answer
