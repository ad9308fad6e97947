"""A checkpoint that is missing, partial or of another architecture: a clear error, nothing half-loaded."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from safetensors.torch import load_file, save_file

from model_core import CheckpointError, UnsupportedArchitectureError, load_engine


@pytest.fixture
def checkpoint_copy(dense_checkpoint, tmp_path):
    path = tmp_path / "ckpt"
    shutil.copytree(dense_checkpoint[0], path)
    return path


def test_missing_shard_is_named(checkpoint_copy):
    shard = sorted(checkpoint_copy.glob("model-*.safetensors"))[1]
    shard.unlink()
    with pytest.raises(CheckpointError, match=f"shard files missing: {shard.name}"):
        load_engine(checkpoint_copy)


def test_missing_tensor_is_named(checkpoint_copy):
    shard = sorted(checkpoint_copy.glob("model-*.safetensors"))[0]
    tensors = load_file(shard)
    dropped = sorted(tensors)[0]
    del tensors[dropped]
    save_file(tensors, shard)
    with pytest.raises(CheckpointError, match="missing 1 tensors"):
        load_engine(checkpoint_copy)


def test_truncated_shard_is_reported(checkpoint_copy):
    shard = sorted(checkpoint_copy.glob("model-*.safetensors"))[0]
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="cannot read safetensors"):
        load_engine(checkpoint_copy)


def test_unknown_architecture(checkpoint_copy):
    config = json.loads((checkpoint_copy / "config.json").read_text())
    config["architectures"], config["model_type"] = ["MistralForCausalLM"], "mistral"
    (checkpoint_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedArchitectureError, match="MistralForCausalLM"):
        load_engine(checkpoint_copy)


def test_no_config(checkpoint_copy):
    (checkpoint_copy / "config.json").unlink()
    with pytest.raises(CheckpointError, match="no config.json"):
        load_engine(checkpoint_copy)


def test_shape_mismatch_with_config(checkpoint_copy):
    config = json.loads((checkpoint_copy / "config.json").read_text())
    config["intermediate_size"] = 96
    (checkpoint_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="does not match config"):
        load_engine(checkpoint_copy)


def test_cli_reports_a_partial_checkpoint_in_one_line(checkpoint_copy):
    sorted(checkpoint_copy.glob("model-*.safetensors"))[0].unlink()
    done = subprocess.run([sys.executable, "-m", "longctx.cli", "generate", "--model", str(checkpoint_copy),
                           "--prompt-ids", "1,2"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "shard files missing" in done.stderr
