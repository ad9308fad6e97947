"""Three corpora this repository did not write, built at run time from what the machine has.

- `pydoc`: the plain-text `pydoc` rendering of 34 standard-library modules of the running Python
  (`pydoc.render_doc(module, renderer=pydoc.plaintext)`), one document per module.
- `licenses`: the license texts in `/usr/share/common-licenses` (Debian's base-files), one per
  file, symlinks (GPL -> GPL-3 ...) left out so no text is there twice.
- `man`: manual pages of common commands rendered by `man -P cat` at 80 columns (man-db and
  groff); a page that is not installed is left out, and so are its questions.

Questions live in `bench/data/questions/<corpus>.tsv`: split, document, question, quote, answer
words (`|`-separated). The quote is an exact passage of the document (whitespace-insensitive);
its character span is the answer passage. The split (`tune` / `heldout`) was drawn once from a
seeded hash of the question text before any setting was tuned and is stored in the file.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data" / "questions"
PYDOC_MODULES = (  # configparser, ipaddress, weakref, calendar (207 kB) left out: CPU time
    "base64 bisect contextlib copy csv difflib fnmatch fractions functools "
    "getopt glob gzip hashlib heapq hmac itertools json operator pathlib pprint queue "
    "random sched secrets shlex shutil statistics string tempfile textwrap timeit uuid "
    "zipfile zlib"
).split()
MAN_PAGES = "tar grep find ssh sed chmod ls cp ps kill sort uniq xargs gzip ln du df tee".split()
LICENSES = Path("/usr/share/common-licenses")
SPLIT_SEED = "longctx-retrieval-eval-2026"


@dataclass(frozen=True)
class Question:
    id: str
    corpus: str
    split: str  # "tune" or "heldout"
    document: str
    question: str
    quote: str
    answer: tuple[str, ...]
    span: tuple[int, int] | None = None  # of the quote in the document; None: not found


def pydoc_corpus() -> dict[str, str]:
    import pydoc

    return {name: pydoc.render_doc(importlib.import_module(name), renderer=pydoc.plaintext)
            for name in PYDOC_MODULES}  # fmt: skip


def license_corpus() -> dict[str, str]:
    if not LICENSES.is_dir():
        return {}
    return {p.name: p.read_text(encoding="utf-8", errors="replace")
            for p in sorted(LICENSES.iterdir()) if p.is_file() and not p.is_symlink()}  # fmt: skip


def man_corpus() -> dict[str, str]:
    env = {**os.environ, "MANWIDTH": "80", "MAN_KEEP_FORMATTING": "0", "LC_ALL": "C.UTF-8"}
    pages = {}
    for name in MAN_PAGES:
        try:
            run = subprocess.run(["man", "-P", "cat", name], capture_output=True, text=True,
                                 env=env, timeout=60, check=False)  # fmt: skip
        except (OSError, subprocess.TimeoutExpired):
            return {}
        text = re.sub(r".\x08", "", run.stdout)  # overstrike bold/underline, if any is left
        if run.returncode == 0 and len(text) > 500:
            pages[name] = text
    return pages


CORPORA = {"pydoc": pydoc_corpus, "licenses": license_corpus, "man": man_corpus}


def split_of(question: str) -> str:
    """The fixed split: a seeded hash of the question text, half and half."""
    digest = hashlib.sha256(f"{SPLIT_SEED}:{question}".encode()).digest()
    return "tune" if digest[0] % 2 == 0 else "heldout"


def find_span(text: str, quote: str) -> tuple[int, int] | None:
    spans = find_spans(text, quote)
    return spans[0] if spans else None


def find_spans(text: str, quote: str) -> list[tuple[int, int]]:
    """Every place the quote occurs (pydoc repeats a docstring under each class that inherits it)."""
    pattern = r"[\s|]+".join(re.escape(word) for word in quote.split())  # pydoc prefixes " |  "
    return [match.span() for match in re.finditer(pattern, text)]


def load_questions(corpus: str, texts: dict[str, str]) -> list[Question]:
    """The corpus's questions with their spans; span None when the document or quote is absent."""
    questions = []
    lines = (DATA / f"{corpus}.tsv").read_text(encoding="utf-8").splitlines()
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        split, document, question, quote, answer = line.split("\t")
        span = find_span(texts[document], quote) if document in texts else None
        questions.append(Question(f"{corpus}-{n:03d}", corpus, split, document, question, quote,
                                  tuple(answer.split("|")), span))  # fmt: skip
    return questions


def module_text(name: str) -> str:
    """A module's docstrings only (module, then public classes and functions): bench/retrieval.py's
    speed corpus."""
    import inspect

    module = importlib.import_module(name)
    parts = [inspect.getdoc(module) or ""]
    for attr, obj in vars(module).items():
        if attr.startswith("_") or getattr(obj, "__module__", None) != name:
            continue
        if (inspect.isfunction(obj) or inspect.isclass(obj)) and len(inspect.getdoc(obj) or "") > 80:
            parts.append(f"{attr}\n{inspect.getdoc(obj)}")
    return "\n\n".join(p for p in parts if p)
