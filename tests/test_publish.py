"""Publishing fails closed: a tunnel publishes nothing that asks for no key, unless `public` says
an open endpoint is meant (slimllm.runner.publish), whichever way the stack is started: the serve
action and `slimllm stack up`, and the compose stacks through `make start-*`
(`slimllm stack publish-check`)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from slimllm.errors import UserError
from slimllm.runner import publish
from tests.conftest import REPO_ROOT, require
from tests.test_stack import compose_env

SCRIPT = Path(sys.executable).parent / "slimllm"
KEY = "k" * 32
REFUSED = "refusing to publish"


# ----------------------------------------------------------------------------------- the rule

# (tunnel, front, key, public) -> refused? The front is the chat when there is one, else the
# first model's inference server; its key is the chat's (the action gives it api-key when
# chat-api-key is empty) or the server's SLIMLLM_API_KEY.
DECISIONS = [
    pytest.param(True, "chat", "", "false", True, id="tunnel+chat, no key: refused"),
    pytest.param(True, "chat", None, "", True, id="tunnel+chat, key unset, public empty: refused"),
    pytest.param(True, "chat", "   ", "false", True, id="tunnel+chat, blank key: refused"),
    pytest.param(True, "chat", KEY, "false", False, id="tunnel+chat with its key: allowed"),
    pytest.param(True, "inference", "", "false", True, id="tunnel, no chat, no inference key: refused"),
    pytest.param(True, "inference", KEY, "false", False, id="tunnel, no chat, inference key: allowed"),
    pytest.param(True, "chat", "", "true", False, id="tunnel+chat, public true: allowed"),
    pytest.param(True, "inference", "", "TRUE", False, id="tunnel, no chat, public TRUE: allowed"),
    pytest.param(True, "inference", "", "false", True, id="tunnel, public false: refused"),
    pytest.param(False, "chat", "", "false", False, id="no tunnel, no key: allowed"),
    pytest.param(False, "inference", "", "", False, id="no tunnel, public empty: allowed"),
]


@pytest.mark.parametrize(("tunnel", "front", "key", "public", "refused"), DECISIONS)
def test_publishing_needs_a_key_or_public(
    tunnel: bool, front: publish.Front, key: str | None, public: str, refused: bool
) -> None:
    reason = publish.refusal(tunnel=tunnel, front=front, key=key, public=public)
    assert (reason is not None) == refused, reason
    if reason:
        # One line that says how to set the key, and the way out.
        assert "\n" not in reason and reason.startswith(REFUSED)
        assert publish.KEY_VARIABLES[front] in reason and 'public: "true"' in reason
        with pytest.raises(UserError, match=REFUSED):
            publish.check(tunnel=tunnel, front=front, key=key, public=public)
    else:
        publish.check(tunnel=tunnel, front=front, key=key, public=public)


@pytest.mark.parametrize(
    ("tunnel", "key"),
    [
        pytest.param(True, "", id="tunnel, no key"),
        pytest.param(True, KEY, id="tunnel with a key"),
        pytest.param(False, "", id="no tunnel"),
    ],
)
@pytest.mark.parametrize("public", ["yes", "1", "on", "maybe", "true; rm -rf /", "$(touch pwned)"])
def test_a_public_that_is_neither_true_nor_false_is_refused(tunnel: bool, key: str, public: str) -> None:
    with pytest.raises(UserError, match=r"public \(SLIMLLM_PUBLIC\) must be true or false"):
        publish.refusal(tunnel=tunnel, front="chat", key=key, public=public)


# ------------------------------------------------------------------------------ slimllm stack up


def cli_env(**extra: str) -> dict[str, str]:
    """No key, no public, no tunnel from this process's environment; a Docker host that cannot
    answer, so that a refusal is seen to come before anything touches the engine."""
    drop = {"SLIMLLM_API_KEY", "SLIMLLM_CHAT_API_KEY", "SLIMLLM_PUBLIC", "SLIMLLM_TUNNEL", "SLIMLLM_CHAT"}
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("GITHUB_")}
    return {**env, "DOCKER_HOST": "unix:///nonexistent/slimllm-test.sock", **extra}


def stack_up(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    require(SCRIPT.exists(), f"no console script at {SCRIPT} (pip install .)")
    argv = [str(SCRIPT), "stack", "up", "--name", "publish-test", "--models", "default"]
    argv += ["--models-dir", str(tmp_path / "models"), *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, env=cli_env(**env))


@pytest.mark.parametrize(
    ("args", "env", "variable"),
    [
        pytest.param(["--tunnel", "--chat"], {}, "SLIMLLM_CHAT_API_KEY", id="chat, no key"),
        # The models' key protects the servers, not the chat (the action passes it to the chat as
        # SLIMLLM_CHAT_API_KEY; the CLI takes each from its own variable).
        pytest.param(
            ["--tunnel", "--chat"], {"SLIMLLM_API_KEY": KEY}, "SLIMLLM_CHAT_API_KEY", id="chat, api key"
        ),
        pytest.param(["--tunnel"], {}, "SLIMLLM_API_KEY", id="no chat, no key"),
        pytest.param(["--tunnel"], {"SLIMLLM_CHAT_API_KEY": KEY}, "SLIMLLM_API_KEY", id="no chat, chat key"),
        pytest.param([], {"SLIMLLM_TUNNEL": "true", "SLIMLLM_PUBLIC": "false"}, "SLIMLLM_API_KEY", id="env"),
    ],
)
def test_stack_up_refuses_a_tunnel_without_a_key_in_one_line(
    tmp_path: Path, args: list[str], env: dict[str, str], variable: str
) -> None:
    result = stack_up(tmp_path, *args, **env)
    assert result.returncode != 0, result.stdout + result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {REFUSED}"), result.stderr
    assert f"set {variable} " in lines[0] and "SLIMLLM_PUBLIC=true" in lines[0], lines[0]
    assert not (tmp_path / "models").exists(), "the models were fetched before the refusal"


@pytest.mark.parametrize(
    ("args", "env"),
    [
        pytest.param(["--tunnel", "--chat"], {"SLIMLLM_CHAT_API_KEY": KEY}, id="chat with its key"),
        pytest.param(["--tunnel"], {"SLIMLLM_API_KEY": KEY}, id="no chat, inference key"),
        pytest.param(["--tunnel", "--chat", "--public", "true"], {}, id="public true"),
        pytest.param(["--chat"], {}, id="no tunnel"),
    ],
)
def test_stack_up_goes_on_with_a_key_or_public(tmp_path: Path, args: list[str], env: dict[str, str]) -> None:
    """Past the rule, on to the engine (which this test's DOCKER_HOST makes unreachable)."""
    result = stack_up(tmp_path, *args, **env)
    assert REFUSED not in result.stderr, result.stderr
    assert result.returncode == 1 and "docker" in result.stderr.lower(), result.stderr


def test_stack_up_refuses_a_public_that_is_not_true_or_false(tmp_path: Path) -> None:
    result = stack_up(tmp_path, "--tunnel", "--chat", "--public", "yes")
    assert result.returncode == 1
    assert result.stderr.splitlines() == ["error: public (SLIMLLM_PUBLIC) must be true or false, not 'yes'"]


# ------------------------------------------------------------------- the compose stacks (make)


def publish_check(file: str, **env: str) -> subprocess.CompletedProcess[str]:
    require(SCRIPT.exists(), f"no console script at {SCRIPT} (pip install .)")
    try:
        has_compose = subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0
    except FileNotFoundError:
        has_compose = False
    require(has_compose, "the docker CLI with the compose plugin is not installed")
    # No developer's .env: compose reads only the environment given here.
    environment = {**compose_env(), "COMPOSE_ENV_FILES": os.devnull, **env}
    return subprocess.run(
        [str(SCRIPT), "stack", "publish-check", "--compose-file", file],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=environment,
    )


@pytest.mark.parametrize(
    ("file", "env", "refused"),
    [
        pytest.param("docker-compose.yml", {}, False, id="chat stack, no tunnel"),
        pytest.param("docker-compose.yml", {"COMPOSE_PROFILES": "tunnel"}, True, id="chat stack, tunnel"),
        pytest.param(
            "docker-compose.yml",
            {"COMPOSE_PROFILES": "tunnel", "SLIMLLM_API_KEY": KEY},
            True,
            id="chat stack, tunnel, only the servers' key",
        ),
        pytest.param(
            "docker-compose.yml",
            {"COMPOSE_PROFILES": "tunnel", "SLIMLLM_CHAT_API_KEY": KEY},
            False,
            id="chat stack, tunnel, chat key",
        ),
        pytest.param(
            "docker-compose.yml",
            {"COMPOSE_PROFILES": "tunnel", "SLIMLLM_PUBLIC": "true"},
            False,
            id="chat stack, tunnel, public",
        ),
        pytest.param(
            "docker-compose.chat-interface.yml",
            {"COMPOSE_PROFILES": "tunnel"},
            True,
            id="chat-ui stack, tunnel",
        ),
        pytest.param(
            "docker-compose.inference.yml", {"COMPOSE_PROFILES": "tunnel"}, True, id="one-model stack, tunnel"
        ),
        pytest.param(
            "docker-compose.qwen.yml",
            {"COMPOSE_PROFILES": "tunnel", "SLIMLLM_CHAT_API_KEY": KEY},
            True,
            id="one-model stack, tunnel, only a chat key",
        ),
        pytest.param(
            "docker-compose.inference.yml",
            {"COMPOSE_PROFILES": "tunnel", "SLIMLLM_API_KEY": KEY},
            False,
            id="one-model stack, tunnel, inference key",
        ),
        pytest.param("docker-compose.all.yml", {"COMPOSE_PROFILES": "tunnel"}, True, id="all, tunnel"),
    ],
)
def test_make_start_refuses_a_compose_tunnel_without_a_key(
    file: str, env: dict[str, str], refused: bool
) -> None:
    result = publish_check(file, **env)
    if refused:
        assert result.returncode == 1, result.stdout + result.stderr
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {REFUSED}"), result.stderr
    else:
        assert result.returncode == 0, result.stderr
        assert result.stdout == f"{file}: publishing allowed\n"


def test_make_start_refuses_before_any_image_or_container(tmp_path: Path) -> None:
    """`make start-inference` with the tunnel on and no key: the engine is checked (it answers
    here), then the refusal, and nothing after it runs (no images ensure, no compose up)."""
    from tests.conftest import docker_engine_error

    error = docker_engine_error()
    require(error is None, f"no Docker engine: {error}")
    venv = Path(sys.executable).parent.parent
    env = {**compose_env(), "COMPOSE_ENV_FILES": os.devnull, "COMPOSE_PROFILES": "tunnel"}
    env["SLIMLLM_INFERENCE_IMAGE"] = "slimllm/never-pulled:publish-test"
    result = subprocess.run(
        ["make", "--no-print-directory", "start-inference", f"VENV={venv}", "PROJECT=publish-test"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert result.returncode != 0, result.stdout + result.stderr
    # The engine step's own line, then the refusal, then make's.
    # make's own line is `make: ***` at the top level, `make[N]: ***` under another make (make test).
    errors = [
        line
        for line in result.stderr.splitlines()
        if not re.match(r"make(\[\d+\])?: \*\*\*", line) and not line.startswith("[slimllm] engine")
    ]
    assert len(errors) == 1 and errors[0].startswith(f"error: {REFUSED} the inference server"), result.stderr
    assert "images:" not in result.stdout + result.stderr, "images ensure ran after the refusal"
