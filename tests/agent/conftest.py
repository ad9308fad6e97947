from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def engine():
    """The offline default model (Qwen2.5-Coder-0.5B-Instruct GGUF, quantized), loaded once for the agent tests."""
    from model_core import load_engine

    return load_engine()
