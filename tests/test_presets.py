"""Preset resolution (slimllm.presets): a model's own settings win, Gemma's stay with Gemma.

The table runs the one resolver; the `serve` cases run the real command line up to the point
where it would start the server, so they show what a container started with these flags or
environment variables would serve.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from slimllm import presets
from slimllm.cli import main
from slimllm.inference import server

GEMMA = {"SLIMLLM_MODEL_ALIAS": "gemma-3-270m", "SLIMLLM_CHAT_FORMAT": "gemma"}


@pytest.mark.parametrize(
    ("preset", "given", "expected"),
    [
        pytest.param(
            None, {}, {"SLIMLLM_MODEL": "default", **GEMMA, "SLIMLLM_CTX_SIZE": "4096"}, id="embedded"
        ),
        pytest.param(None, {"SLIMLLM_MODEL": "/models/mine.gguf"}, {}, id="own-file-no-preset"),
        pytest.param(
            None, {"SLIMLLM_MODEL": "a/b", "SLIMLLM_MODEL_FILE": "x.gguf"}, {}, id="own-hf-no-preset"
        ),
        pytest.param(
            "default",
            {"SLIMLLM_MODEL": "/models/mine.gguf"},
            {"SLIMLLM_CTX_SIZE": "4096"},
            id="default-replaced",
        ),
        pytest.param(
            "default",
            {"SLIMLLM_MODEL": "default", "SLIMLLM_CTX_SIZE": "2048"},
            {**GEMMA},
            id="default-kept-ctx-given",
        ),
        pytest.param(
            "qwen",
            {"SLIMLLM_MODEL": "/models/other.gguf"},
            {"SLIMLLM_CTX_SIZE": "8192"},
            id="qwen-replaced-keeps-general",
        ),
        pytest.param(
            "qwen",
            {"SLIMLLM_MODEL_ALIAS": "q"},
            {k: v for k, v in presets.read("qwen").items() if k != "SLIMLLM_MODEL_ALIAS"},
            id="qwen-alias-given",
        ),
        pytest.param("phi", {"SLIMLLM_MODEL": ""}, presets.read("phi"), id="empty-values-are-not-given"),
        pytest.param(
            "llama",
            {"SLIMLLM_MODEL_SHA256": "0" * 64},
            {k: v for k, v in presets.read("llama").items() if k != "SLIMLLM_MODEL_SHA256"},
            id="another-digest-keeps-the-model",
        ),
    ],
)
def test_resolve(preset: str | None, given: dict[str, str], expected: dict[str, str]) -> None:
    assert presets.resolve(preset, given) == expected


def test_a_preset_file_of_ones_own(tmp_path: Path) -> None:
    own = tmp_path / "mine.env"
    own.write_text("# mine\nSLIMLLM_MODEL=/models/mine.gguf\nSLIMLLM_MODEL_ALIAS=mine\nSLIMLLM_SLOTS=2\n")
    assert presets.resolve(str(own), {}) == {
        "SLIMLLM_MODEL": "/models/mine.gguf",
        "SLIMLLM_MODEL_ALIAS": "mine",
        "SLIMLLM_SLOTS": "2",
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("SLIMLLM_CTX_SIZE", "expected KEY=value", id="no-equals"),
        pytest.param("CTX_SIZE=1", "not a SLIMLLM_ setting", id="foreign-key"),
    ],
)
def test_bad_preset_files(tmp_path: Path, text: str, message: str) -> None:
    bad = tmp_path / "bad.env"
    bad.write_text(text + "\n")
    with pytest.raises(presets.PresetError, match=message):
        presets.read(str(bad))


def test_unknown_preset_names_the_known_ones() -> None:
    with pytest.raises(presets.PresetError, match="choose one of default, llama, phi, qwen"):
        presets.read("gemma")


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """What `slimllm serve` would start the server with."""
    seen: dict[str, Any] = {}
    for name in ("SLIMLLM_PRESET", "SLIMLLM_MODEL", "SLIMLLM_MODEL_ALIAS", "SLIMLLM_CHAT_FORMAT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(server, "_serve", lambda **options: seen.update(options))
    return seen


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        pytest.param(
            [],
            {},
            {"model_source": "default", "model_alias": "gemma-3-270m", "chat_format": "gemma"},
            id="embedded",
        ),
        pytest.param(
            [],
            {"SLIMLLM_MODEL": "/models/mine.gguf"},
            {"model_source": "/models/mine.gguf", "model_alias": None, "chat_format": None, "ctx_size": 4096},
            id="docker-run-own-gguf",
        ),
        pytest.param(
            ["--model", "/models/mine.gguf"],
            {"SLIMLLM_PRESET": "qwen"},
            {"model_source": "/models/mine.gguf", "model_alias": None, "chat_format": None, "ctx_size": 8192},
            id="preset-with-another-model",
        ),
        pytest.param(
            ["--chat-format", "chatml"],
            {"SLIMLLM_PRESET": "default"},
            {"model_source": "default", "model_alias": "gemma-3-270m", "chat_format": "chatml"},
            id="flag-wins",
        ),
        pytest.param(
            [],
            {"SLIMLLM_PRESET": "llama"},
            {"model_source": "bartowski/Llama-3.2-3B-Instruct-GGUF", "ctx_size": 8192, "chat_format": None},
            id="llama-preset",
        ),
    ],
)
def test_serve_resolves_presets(
    served: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    env: dict[str, str],
    expected: dict[str, Any],
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert main(["serve", *argv]) == 0
    assert {key: served[key] for key in expected} == expected


def test_serve_refuses_an_unknown_preset_setting(
    served: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    own = tmp_path / "mine.env"
    own.write_text("SLIMLLM_NO_SUCH=1\n")
    assert main(["serve", "--preset", str(own)]) == 2
    assert "unknown setting SLIMLLM_NO_SUCH" in capsys.readouterr().err
    assert not served
