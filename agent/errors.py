"""Errors of the agent layer. Classes with ``user_error = True`` are bad input the user can fix."""

from __future__ import annotations


class AgentError(Exception):
    """Base class of the agent layer's errors."""


class ToolDefinitionError(AgentError):
    """A tool could not be described (no schema for a parameter type, duplicate name, ...)."""

    user_error = True


class UnknownToolError(AgentError):
    """A tool name that no built-in tool has (e.g. ``--tools serch``)."""

    user_error = True


class CalculatorError(AgentError):
    """An expression the calculator refuses or cannot evaluate."""

    user_error = True


class SandboxUnavailableError(AgentError):
    """The Python tool was asked for but is not enabled."""

    user_error = True
