from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def engine():
    """The offline default model (SmolLM2-135M-Instruct GGUF), loaded once for the agent tests."""
    from model_core import load_engine

    return load_engine()
