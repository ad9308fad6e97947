"""Tokenizer: `tokenizer.json` through the `tokenizers` library, chat templates through jinja2.

What it reads from a Hugging Face checkpoint folder:
- `tokenizer.json`: the whole pipeline (normalizer, pre-tokenizer, BPE model, added tokens,
  post-processor, decoder), used as is.
- `tokenizer_config.json`: the chat template (or a `chat_template.jinja` file beside it, which
  wins, as in transformers 5), the special tokens (`bos_token`, `eos_token`, `pad_token`,
  `unk_token`) and `clean_up_tokenization_spaces`.
- `generation_config.json` and `config.json`: more end-of-sequence ids (Qwen2.5-Instruct stops on
  both `<|im_end|>` and `<|endoftext|>`).

The chat template is rendered the way transformers' `apply_chat_template(..., tokenize=False)`
renders it: a sandboxed immutable jinja2 environment with `trim_blocks` and `lstrip_blocks`,
the `loopcontrols` extension, a `tojson` filter that is plain `json.dumps` (no HTML escaping,
`ensure_ascii=False`, `indent` and friends), `raise_exception`, `strftime_now`, and the special
tokens passed by name. Messages lose their `None`-valued keys first (OpenAI-style
`content=None` would otherwise render as "None"). Departures from transformers: tools must be
JSON Schema dicts (no Python functions converted from their docstrings), the `{% generation %}`
tag renders its body and tracks nothing, and `add_generation_prompt` defaults to True.

`StreamDecoder` turns token ids into text as they arrive, for streaming and stop strings: it holds
back text while the last tokens end in an incomplete UTF-8 sequence, the way vLLM's and
transformers' streamers do (decode a short window of recent tokens, emit what grew).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
import tokenizers
from jinja2.sandbox import ImmutableSandboxedEnvironment

from model_core.errors import ChatTemplateError, CheckpointError

SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "pad_token")


class Tokenizer:
    """Text <-> token ids, plus the model's chat template.

    Build it with `Tokenizer.from_pretrained_dir(path)` for a checkpoint folder, or get one from
    `model_core.gguf.load_gguf`. `special_tokens` maps `bos_token`, `eos_token`, ... to their text.
    """

    def __init__(
        self,
        backend: tokenizers.Tokenizer,
        *,
        special_tokens: dict[str, str | None] | None = None,
        chat_template: str | None = None,
        eos_token_ids: Sequence[int] = (),
        clean_up_tokenization_spaces: bool = False,
    ):
        self.backend = backend
        self.special_tokens = {k: v for k, v in (special_tokens or {}).items() if v is not None}
        self.chat_template = chat_template
        self.clean_up_tokenization_spaces = clean_up_tokenization_spaces
        # generation stops at any of these; without a list, at the eos token
        eos = eos_token_ids or [self._token_id("eos_token")]
        self.eos_token_ids: list[int] = list(dict.fromkeys(int(i) for i in eos if i is not None))
        self.bos_token_id: int | None = self._token_id("bos_token")
        self.pad_token_id: int | None = self._token_id("pad_token")
        self.unk_token_id: int | None = self._token_id("unk_token")

    @classmethod
    def from_pretrained_dir(cls, path: str | Path) -> Tokenizer:
        """The tokenizer of a Hugging Face checkpoint folder (`tokenizer.json` and its config)."""
        folder = Path(path)
        tokenizer_file = folder / "tokenizer.json"
        if not tokenizer_file.is_file():
            raise CheckpointError(f"{folder}: no tokenizer.json")
        try:
            backend = tokenizers.Tokenizer.from_file(str(tokenizer_file))
        except Exception as exc:  # tokenizers raises a bare Exception on malformed files
            raise CheckpointError(f"{tokenizer_file}: cannot be read ({exc})") from exc
        config = _read_json(folder / "tokenizer_config.json")
        special = {name: _token_text(config.get(name)) for name in SPECIAL_TOKEN_NAMES}
        eos_ids = []
        if special["eos_token"] is not None:
            eos_ids.append(backend.token_to_id(special["eos_token"]))
        for extra in ("generation_config.json", "config.json"):
            eos_ids.extend(_id_list(_read_json(folder / extra).get("eos_token_id")))
        return cls(
            backend,
            special_tokens=special,
            chat_template=_chat_template(folder, config),
            eos_token_ids=[i for i in eos_ids if i is not None],
            clean_up_tokenization_spaces=bool(config.get("clean_up_tokenization_spaces", False)),
        )

    @property
    def vocab_size(self) -> int:
        """Number of token ids, added tokens included (the model's embedding may be larger)."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        text = self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)
        return _clean_up_spaces(text) if self.clean_up_tokenization_spaces else text

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self.backend.id_to_token(token_id)

    def apply_chat_template(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        add_generation_prompt: bool = True,
        **extra: Any,
    ) -> str:
        """The conversation rendered as text, as transformers renders it (tokenize=False), but for
        the departures in the module docstring.

        `tools` are JSON Schema dicts, usually `{"type": "function", "function": {...}}`. `extra`
        reaches the template as variables (e.g. `documents=...`, `enable_thinking=False`).
        """
        if self.chat_template is None:
            raise ChatTemplateError("this model has no chat template; pass a plain prompt instead")
        for message in messages:
            if not isinstance(message, dict):
                raise ChatTemplateError(f"chat messages must be dicts, got {message!r}")
        if tools is not None and not all(isinstance(tool, dict) for tool in tools):
            raise ChatTemplateError("tools must be JSON Schema dicts")
        variables = {**self.special_tokens, **extra}
        documents = variables.pop("documents", None)  # always defined, as in transformers
        try:
            return _compile(self.chat_template).render(
                messages=[{k: v for k, v in m.items() if v is not None} for m in messages],
                tools=tools,
                documents=documents,
                add_generation_prompt=add_generation_prompt,
                **variables,
            )
        except jinja2.TemplateError as exc:
            raise ChatTemplateError(f"chat template: {exc}") from exc

    def stream_decoder(self, skip_special_tokens: bool = True) -> StreamDecoder:
        return StreamDecoder(self, skip_special_tokens=skip_special_tokens)

    def _token_id(self, name: str) -> int | None:
        text = self.special_tokens.get(name)
        return None if text is None else self.backend.token_to_id(text)


class StreamDecoder:
    """Turns token ids into text as they arrive, holding back incomplete characters.

    `push(ids)` returns the new printable text; `flush()` returns whatever is still held back
    (at the end of generation). The pieces joined equal `tokenizer.decode(all_ids)` for byte-level
    and sentencepiece tokenizers alike, because each window decoded starts with an already emitted
    token, so decoders that strip a leading space strip it from the window's first token only.
    """

    def __init__(self, tokenizer: Tokenizer, *, skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids: list[int] = []
        self.text = ""  # everything emitted so far
        self._prefix = 0  # window start: the first token of the last emitted piece
        self._read = 0  # tokens before this are emitted

    def push(self, ids: int | Iterable[int]) -> str:
        self.ids.extend([ids] if isinstance(ids, int) else ids)
        return self._emit(final=False)

    def flush(self) -> str:
        return self._emit(final=True)

    def _emit(self, final: bool) -> str:
        if self._read == len(self.ids):
            return ""
        prefix_text = self._decode(self.ids[self._prefix : self._read])
        window_text = self._decode(self.ids[self._prefix :])
        if len(window_text) <= len(prefix_text) and not final:
            return ""  # e.g. a skipped special token: keep it in the window, nothing to say yet
        if window_text.endswith("\ufffd") and not final:
            return ""  # the last token ends mid-character: wait for the rest of its bytes
        piece = window_text[len(prefix_text) :]
        self._prefix, self._read = self._read, len(self.ids)
        self.text += piece
        return piece

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)


class _GenerationTag(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` (assistant-mask templates): renders the body."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller: Any) -> str:
        return caller()


def _raise_exception(message: str) -> None:
    raise jinja2.TemplateError(message)


def _tojson(value: Any, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


@functools.lru_cache(maxsize=16)
def _compile(template: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    try:
        return env.from_string(template)
    except jinja2.TemplateSyntaxError as exc:
        raise ChatTemplateError(f"chat template does not parse: {exc}") from exc


def _chat_template(folder: Path, config: dict[str, Any]) -> str | None:
    jinja_file = folder / "chat_template.jinja"
    if jinja_file.is_file():
        return jinja_file.read_text(encoding="utf-8")
    template = config.get("chat_template")
    if isinstance(
        template, list
    ):  # [{"name": "default", "template": ...}, {"name": "tool_use", ...}]
        named = {entry["name"]: entry["template"] for entry in template}
        template = named.get("default")
    return template


def _token_text(value: Any) -> str | None:
    """A special token as tokenizer_config.json spells it: a string or an AddedToken dict."""
    if isinstance(value, dict):
        return value.get("content")
    return value


def _id_list(value: Any) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, list) else [int(value)]


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from exc


def _clean_up_spaces(text: str) -> str:
    """transformers' `clean_up_tokenization`: drop the space before punctuation and contractions."""
    for before, after in (
        (" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"),
        (" n't", "n't"), (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"),
    ):  # fmt: skip
        text = text.replace(before, after)
    return text
