"""The generated test models (tests/ggufs.py) read back as written, and their templates render as
expected_prompt says. No Docker: tests/test_inference.py runs them in llama.cpp."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gguf
import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from tests.ggufs import CHAT_TEMPLATES, KINDS, expected_prompt, vocabulary, write_model

CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Hi there!"},
    {"role": "assistant", "content": " Hello. "},
    {"role": "user", "content": "Name three colours, in Français ✓."},
]


def field(reader: gguf.GGUFReader, key: str) -> Any:
    value = reader.get_field(key)
    return None if value is None else value.contents()


def render(template: str, kind: str, messages: list[dict[str, str]]) -> str:
    """As Hugging Face (and slimllm's server) render chat templates."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    spec = KINDS[kind]
    return env.from_string(template).render(
        messages=messages, bos_token=spec.bos, eos_token=spec.eos, add_generation_prompt=True
    )


def test_the_required_kinds_exist_with_distinct_names() -> None:
    assert {"chatml", "llama3", "none"} <= set(KINDS)
    assert len({k.general_name for k in KINDS.values()}) == len(KINDS)
    assert len({k.file_name for k in KINDS.values()}) == len(KINDS)
    assert KINDS["chatml"].file_name == "tiny-chatml-llama.gguf"
    assert set(CHAT_TEMPLATES) == {name for name, k in KINDS.items() if k.chat_template is not None}
    assert "none" not in CHAT_TEMPLATES


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_model_reads_back_with_its_metadata(kind: str, generated_models: dict[str, Path]) -> None:
    spec = KINDS[kind]
    path = generated_models[kind]
    assert path.name == spec.file_name
    assert path.stat().st_size < 2_000_000
    reader = gguf.GGUFReader(path)
    assert field(reader, "general.architecture") == spec.architecture
    assert field(reader, "general.name") == spec.general_name
    assert field(reader, "tokenizer.chat_template") == spec.chat_template
    assert field(reader, "tokenizer.ggml.model") == "gpt2"
    assert field(reader, "tokenizer.ggml.pre") == spec.pre_tokenizer
    assert field(reader, f"{spec.architecture}.context_length") == 2048

    tokens = field(reader, "tokenizer.ggml.tokens")
    types = field(reader, "tokenizer.ggml.token_type")
    assert isinstance(tokens, list) and isinstance(types, list)
    assert tokens == vocabulary(kind)
    assert len(set(tokens)) == len(tokens)
    control = {t for t, ty in zip(tokens, types, strict=True) if ty == gguf.TokenType.CONTROL}
    assert control == set(spec.special_tokens)
    assert tokens[field(reader, "tokenizer.ggml.bos_token_id")] == spec.bos
    assert tokens[field(reader, "tokenizer.ggml.eos_token_id")] == spec.eos
    assert field(reader, "tokenizer.ggml.add_bos_token") is spec.add_bos

    embd = next(t for t in reader.tensors if t.name == "token_embd.weight")
    assert [int(n) for n in embd.shape] == [64, len(tokens)]


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_writing_is_deterministic(kind: str, tmp_path: Path, generated_models: dict[str, Path]) -> None:
    again = write_model(tmp_path / "again.gguf", kind)
    assert again.read_bytes() == generated_models[kind].read_bytes()
    mtime = again.stat().st_mtime_ns
    write_model(again, kind)  # the same bytes: the file is left alone
    assert again.stat().st_mtime_ns == mtime
    assert list(tmp_path.iterdir()) == [again]  # no temporary file left behind


@pytest.mark.parametrize("kind", sorted(CHAT_TEMPLATES))
@pytest.mark.parametrize("turns", [1, 2, 4], ids=lambda n: f"{n}-messages")
def test_template_renders_the_expected_prompt(kind: str, turns: int) -> None:
    messages = CONVERSATION[-turns:] if turns > 1 else CONVERSATION[1:2]
    assert render(CHAT_TEMPLATES[kind], kind, messages) == expected_prompt(kind, messages)


def test_expected_prompts_spelled_out() -> None:
    chat = CONVERSATION[:2]
    chatml = "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi there!<|im_end|>\n"
    assert expected_prompt("chatml", chat) == chatml + "<|im_start|>assistant\n"
    assert expected_prompt("none", chat) == chatml + "<|im_start|>assistant\n"
    assert expected_prompt("llama3", chat) == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi there!<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert expected_prompt("qwen2", chat[1:]) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nHi there!<|im_end|>\n<|im_start|>assistant\n"
    )
    with pytest.raises(ValueError, match="unknown kind"):
        expected_prompt("gemma", chat)
