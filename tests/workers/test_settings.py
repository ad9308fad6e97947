"""Worker settings reach the engine: long-context mode and sizes from LONGCTX_* variables."""

from __future__ import annotations

from model_core import load_engine
from tests.model_core.conftest import build_checkpoint
from workers.contracts import Settings


def test_long_context_settings_configure_the_engine(tmp_path, monkeypatch):
    monkeypatch.setenv("LONGCTX_LONG_CONTEXT", "dca")
    monkeypatch.setenv("LONGCTX_DCA_CHUNK_SIZE", "256")
    monkeypatch.setenv("LONGCTX_DCA_LOCAL_SIZE", "32")
    settings = Settings()
    assert settings.engine_options() == {"long_context": "dca",
                                         "long_context_options": {"chunk_size": 256, "local_size": 32}}
    path, _ = build_checkpoint(tmp_path, "dense")
    engine = load_engine(path, dtype=settings.dtype, device=settings.device, **settings.engine_options())
    assert engine.runtime.mode == "dca"
    assert engine.runtime.mode_options["chunk_size"] == 256
    assert engine.window > 512  # DCA lifts the trained window (512 for the tiny model)


def test_no_long_context_settings_pass_nothing():
    assert Settings().engine_options() == {}
