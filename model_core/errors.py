"""Exceptions for input the user can fix. Each has `user_error = True`: the CLI prints it as one
line and exits 2; the API answers 4xx with its message."""


class ModelError(Exception):
    user_error = True


class CheckpointError(ModelError):
    """A checkpoint that is missing, partial or malformed."""


class UnsupportedArchitectureError(ModelError):
    """config.json or GGUF names an architecture we do not implement."""


class PromptTooLongError(ModelError):
    """The prompt does not fit the model's window."""


class SamplingError(ModelError):
    """An invalid sampling value (negative temperature, top_p outside (0, 1], ...)."""


class ChatTemplateError(ModelError):
    """The chat template rejected the messages (its `raise_exception`), or there is no template."""


class KVBudgetError(ModelError):
    """A request that could never fit the engine's KV budget, even alone."""
