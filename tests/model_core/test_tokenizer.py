"""Our tokenizer gives the same ids, text and chat prompts as transformers on the same files."""

from __future__ import annotations

import datetime
import json
import shutil
from pathlib import Path

import pytest
from tokenizers import Tokenizer as Backend
from tokenizers import decoders, models, pre_tokenizers, trainers

from model_core.errors import ChatTemplateError, CheckpointError
from model_core.tokenizer import Tokenizer
from tests.model_core.fixtures.tokenizer_checks import assert_same_ids_and_text, stream_pieces

transformers = pytest.importorskip("transformers")

FIXTURES = Path(__file__).parent / "fixtures"
QWEN25 = FIXTURES / "qwen25"

TEXTS = [
    "The Eiffel Tower was completed in 1889.",
    "héllo wörld — 日本語のテキスト 🙂🚀 Größe, and unseen ones: Ωμέγα ✓ 🦀",
    "e\u0301 (decomposed é) and ﬁ ligature",  # NFC normalisation applies
    "  leading spaces, tabs\tand\n\nnew lines  ",
    "<|im_start|>user\nhi<|im_end|>\n<tool_call>\n{}\n</tool_call><|endoftext|>",
]

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather für a city — in °C",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name, e.g. Zürich"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
        },
    },
}
SEARCH_TOOL = {
    "type": "function",
    "function": {
        "name": "search_documents",
        "description": "Search the uploaded documents.",
        "parameters": {
            "type": "object",
            "properties": {"query": {"type": "string"}, "k": {"type": "integer", "default": 5}},
            "required": ["query"],
        },
    },
}
CONVERSATIONS = {
    "one user turn": [{"role": "user", "content": "When was the tower completed?"}],
    "system and history": [
        {
            "role": "system",
            "content": "Answer from the text: The Eiffel Tower was completed in 1889.",
        },
        {"role": "user", "content": "When was the tower completed?"},
        {"role": "assistant", "content": "In 1889."},
        {"role": "user", "content": "Und wo steht er? 🙂"},
    ],
    "tool calls and results": [
        {"role": "user", "content": "Weather in Paris and Zürich?"},
        {
            "role": "assistant",
            "content": None,  # OpenAI style: dropped before rendering, as transformers does
            "tool_calls": [
                {
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
                },
                {
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": {"city": "Zürich"}},
                },
            ],
        },
        {"role": "tool", "content": '{"temperature": 22}'},
        {"role": "tool", "content": '{"temperature": 17}'},
        {"role": "assistant", "content": "Paris 22 °C, Zürich 17 °C."},
        {"role": "user", "content": "Thanks!"},
    ],
}


@pytest.fixture(scope="module")
def qwen25():
    return Tokenizer.from_pretrained_dir(QWEN25)


@pytest.fixture(scope="module")
def qwen25_reference():
    return transformers.AutoTokenizer.from_pretrained(QWEN25)


def folder_with_template(tmp_path: Path, template: str) -> Path:
    """The fixture tokenizer with another chat template in its tokenizer_config.json."""
    folder = tmp_path / "checkpoint"
    shutil.copytree(QWEN25, folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["chat_template"] = template
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("text", TEXTS)
def test_ids_and_text_equal_transformers(qwen25, qwen25_reference, text):
    assert_same_ids_and_text(qwen25, qwen25_reference, text)


def test_special_tokens_and_stop_ids(qwen25, qwen25_reference):
    im_end, endoftext = qwen25.token_to_id("<|im_end|>"), qwen25.token_to_id("<|endoftext|>")
    assert qwen25.eos_token_ids == [
        im_end,
        endoftext,
    ]  # tokenizer_config's eos, then generation_config's
    assert qwen25.pad_token_id == qwen25_reference.pad_token_id == endoftext
    assert qwen25.bos_token_id is None  # Qwen2.5 has no bos token
    assert qwen25.vocab_size == len(qwen25_reference)
    assert len(qwen25.encode("<|im_start|>")) == 1
    assert qwen25.decode(qwen25.encode("a<|im_end|>b")) == "ab"


@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("with_tools", [False, True])
@pytest.mark.parametrize("conversation", list(CONVERSATIONS))
def test_qwen25_chat_template_equals_transformers(
    qwen25, qwen25_reference, conversation, with_tools, add_generation_prompt
):
    messages = CONVERSATIONS[conversation]
    tools = [WEATHER_TOOL, SEARCH_TOOL] if with_tools else None
    expected = qwen25_reference.apply_chat_template(
        messages, tools=tools, add_generation_prompt=add_generation_prompt, tokenize=False
    )
    rendered = qwen25.apply_chat_template(
        messages, tools=tools, add_generation_prompt=add_generation_prompt
    )
    assert rendered == expected
    assert ("# Tools" in rendered) == with_tools
    assert qwen25.encode(rendered) == qwen25_reference.encode(rendered, add_special_tokens=False)


def test_tool_schemas_render_as_plain_json(qwen25):
    rendered = qwen25.apply_chat_template(CONVERSATIONS["one user turn"], tools=[WEATHER_TOOL])
    assert (
        json.dumps(WEATHER_TOOL, ensure_ascii=False) in rendered
    )  # no \u escapes, no HTML escapes
    assert '{"name": "get_weather", "arguments": {"city": "Zürich"}}' in qwen25.apply_chat_template(
        CONVERSATIONS["tool calls and results"]
    )


@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("with_tools", [False, True])
@pytest.mark.parametrize("conversation", ["one user turn", "system and history"])
def test_smollm2_chat_template_equals_transformers(
    tmp_path, conversation, with_tools, add_generation_prompt
):
    folder = folder_with_template(tmp_path, (FIXTURES / "smollm2_chat_template.jinja").read_text())
    ours = Tokenizer.from_pretrained_dir(folder)
    reference = transformers.AutoTokenizer.from_pretrained(folder)
    messages = CONVERSATIONS[conversation]
    tools = [WEATHER_TOOL] if with_tools else None
    rendered = ours.apply_chat_template(
        messages, tools=tools, add_generation_prompt=add_generation_prompt
    )
    assert rendered == reference.apply_chat_template(
        messages, tools=tools, add_generation_prompt=add_generation_prompt, tokenize=False
    )
    assert rendered.startswith("<|im_start|>system\n")


def test_template_helpers_behave_like_transformers(tmp_path):
    template = (
        "{{ bos_token }}|{{ eos_token }}|{{ pad_token }}|{{ strftime_now('%Y') }}\n"
        "{{ tools | tojson(indent=2) }}\n{{ messages | tojson }}\n{{ {'<a>': '&'} | tojson }}\n"
        "{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}{{ m.content }}{% endfor %}\n"
        "{% generation %}kept{% endgeneration %}{{ custom_flag }}|{{ documents is defined }}"
    )
    folder = folder_with_template(tmp_path, template)
    ours = Tokenizer.from_pretrained_dir(folder)
    reference = transformers.AutoTokenizer.from_pretrained(folder)
    messages = CONVERSATIONS["system and history"]
    rendered = ours.apply_chat_template(messages, tools=[WEATHER_TOOL], custom_flag="yes")
    expected = reference.apply_chat_template(
        messages,
        tools=[WEATHER_TOOL],
        add_generation_prompt=True,
        tokenize=False,
        custom_flag="yes",
    )
    assert rendered == expected
    assert str(datetime.datetime.now().year) in rendered
    assert '"Current weather für a city — in °C"' in rendered  # ensure_ascii=False
    assert '{"<a>": "&"}' in rendered  # not HTML-escaped


def test_raise_exception_becomes_a_user_error(tmp_path):
    template = "{% if messages[0].role != 'user' %}{{ raise_exception('Conversations must start with the user') }}{% endif %}"
    tokenizer = Tokenizer.from_pretrained_dir(folder_with_template(tmp_path, template))
    with pytest.raises(ChatTemplateError, match="must start with the user") as excinfo:
        tokenizer.apply_chat_template([{"role": "assistant", "content": "hi"}])
    assert excinfo.value.user_error is True


def test_chat_template_jinja_file_wins(tmp_path):
    folder = folder_with_template(tmp_path, "from tokenizer_config")
    (folder / "chat_template.jinja").write_text("from the jinja file")
    assert Tokenizer.from_pretrained_dir(folder).apply_chat_template([]) == "from the jinja file"


def test_the_sandbox_blocks_python_internals(qwen25, tmp_path):
    template = "{{ messages.__class__.__mro__ }}"
    tokenizer = Tokenizer.from_pretrained_dir(folder_with_template(tmp_path, template))
    with pytest.raises(ChatTemplateError):
        tokenizer.apply_chat_template([{"role": "user", "content": "x"}])


def test_missing_files_and_templates_are_clear(tmp_path):
    with pytest.raises(CheckpointError, match="no tokenizer.json"):
        Tokenizer.from_pretrained_dir(tmp_path)
    no_template = Tokenizer(Backend.from_file(str(QWEN25 / "tokenizer.json")))
    with pytest.raises(ChatTemplateError, match="no chat template"):
        no_template.apply_chat_template([{"role": "user", "content": "hi"}])


@pytest.mark.parametrize("text", TEXTS)
def test_streamed_pieces_join_to_the_decoded_text(qwen25, text):
    ids = qwen25.encode(text)
    pieces = stream_pieces(qwen25, ids)
    assert "".join(pieces) == qwen25.decode(ids)
    assert not any("\ufffd" in piece for piece in pieces)  # never half a character
    special = stream_pieces(qwen25, ids, skip_special_tokens=False)
    assert "".join(special) == qwen25.decode(ids, skip_special_tokens=False)


def test_stream_holds_back_a_character_split_across_tokens(qwen25):
    ids = qwen25.encode("🦀")  # unseen in training: its 4 UTF-8 bytes span several tokens
    assert len(ids) >= 2
    decoder = qwen25.stream_decoder()
    assert [decoder.push(token) for token in ids] == [""] * (len(ids) - 1) + ["🦀"]
    assert decoder.text == "🦀"


def test_stream_flush_gives_what_an_unfinished_character_decodes_to(qwen25):
    ids = qwen25.encode("ok 🦀")[:-1]  # generation stopped mid-character
    pieces = stream_pieces(qwen25, ids)
    assert "".join(pieces) == qwen25.decode(ids)
    assert pieces[-1].endswith("\ufffd")


def test_stream_keeps_sentencepiece_spaces():
    """Decoders that strip the first token's leading space (Metaspace) still stream word gaps."""
    corpus = ["the tower was completed in eighteen eighty nine", "where is the tower"] * 20
    backend = Backend(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    backend.train_from_iterator(
        corpus, trainers.BpeTrainer(vocab_size=60, special_tokens=["<unk>"], show_progress=False)
    )
    tokenizer = Tokenizer(backend)
    ids = tokenizer.encode("where was the tower")
    assert "".join(stream_pieces(tokenizer, ids)) == tokenizer.decode(ids) == "where was the tower"
