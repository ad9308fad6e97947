"""The agent layer: tool-calling loop over Qwen's two tool formats, tools, and adapters.

See docs/CONTRACTS.md (agent) for the names other layers use.
"""

from agent.backend import ChatBackend, EngineChat, ScriptedChat
from agent.builtin import builtin_tools
from agent.formats import ToolFormat, pick_format
from agent.loop import AgentResult, Step, run_agent
from agent.parser import ParsedOutput, StreamParser, ToolCall, parse
from agent.tools import Tool, ToolResult, as_tool, tool_from_function, tool_from_model

__all__ = [
    "AgentResult",
    "ChatBackend",
    "EngineChat",
    "ParsedOutput",
    "ScriptedChat",
    "Step",
    "StreamParser",
    "Tool",
    "ToolCall",
    "ToolFormat",
    "ToolResult",
    "as_tool",
    "builtin_tools",
    "parse",
    "pick_format",
    "run_agent",
    "tool_from_function",
    "tool_from_model",
]
