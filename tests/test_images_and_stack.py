"""`slimllm images build` and `slimllm stack ...`, the logic behind the build and serve actions.

Argument checking and the buildx command lines are tested as tables; the stack runs for real on
the real engine with the inference image and the embedded model.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from slimllm.cli import main
from slimllm.errors import UserError
from slimllm.runner.images import CATALOG, build_steps, plan_build
from slimllm.runner.stack import parse_duration, plan_models
from tests.conftest import REPO_ROOT
from tests.test_inference import inference_image  # noqa: F401  (the image the stack runs)

PLAN_DEFAULTS: dict[str, Any] = {
    "images": ["all"],
    "platforms": [""],
    "push": False,
    "registry": "",
    "tags": ["local"],
    "cache": "none",
    "cache_dir": None,
    "build_args": [],
    "secret_files": [],
    "secrets": [""],
    "environ": {},
}


def plan(**changes: Any) -> Any:
    return plan_build(**{**PLAN_DEFAULTS, **changes})


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        pytest.param({"images": ["inference,nope"]}, "unknown image 'nope'", id="unknown-image"),
        pytest.param({"platforms": ["windows/amd64"]}, "platform 'windows/amd64'", id="bad-platform"),
        pytest.param({"registry": "Bad Registry"}, "registry 'Bad Registry'", id="bad-registry"),
        pytest.param({"push": True}, "push needs a registry", id="push-without-registry"),
        pytest.param({"tags": ["v1;rm"]}, "tag 'v1;rm'", id="bad-tag"),
        pytest.param({"cache": "s3"}, "cache 's3'", id="unknown-cache"),
        pytest.param({"cache": "local"}, "needs a cache directory", id="local-cache-without-dir"),
        pytest.param({"cache": "registry"}, "needs a registry", id="registry-cache-without-registry"),
        pytest.param({"cache": "gha"}, "ACTIONS_RUNTIME_TOKEN", id="gha-cache-outside-actions"),
        pytest.param({"build_args": ["NOT A PAIR"]}, "expected NAME=VALUE", id="bad-build-arg"),
        pytest.param(
            {"secret_files": ["ca=/no/such/file"]}, "no file at /no/such/file", id="missing-secret-file"
        ),
        pytest.param({"secrets": ["token"]}, "expected NAME=VALUE", id="secret-without-value"),
    ],
)
def test_build_input_errors(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        plan(**changes)


def test_a_bad_secret_line_does_not_show_the_value() -> None:
    with pytest.raises(UserError) as info:
        plan(secrets=["hunter2-is-secret"])
    assert "hunter2" in str(info.value.message)  # the part before '=' is all there is
    with pytest.raises(UserError) as info:
        plan(secrets=["bad id=hunter2"])
    assert "hunter2" not in info.value.message


def test_build_steps_load_one_platform_per_run(tmp_path: Path) -> None:
    p = plan(
        images=["inference"],
        platforms=["linux/amd64,linux/arm64"],
        tags=["local,v1"],
        build_args=["A=1 2"],
        secret_files=[f"ca={REPO_ROOT / 'README.md'}"],
        secrets=["token=s3cret"],
        environ={
            "GITHUB_SERVER_URL": "https://example.com",
            "GITHUB_REPOSITORY": "acme/slimllm",
            "GITHUB_SHA": "abc",
        },
    )
    steps = build_steps(p, REPO_ROOT, tmp_path)
    assert [s.refs for s in steps] == [
        ("slimllm/inference:local-amd64", "slimllm/inference:v1-amd64"),
        ("slimllm/inference:local-arm64", "slimllm/inference:v1-arm64"),
    ]
    argv = steps[1].argv
    assert argv[argv.index("--platform") + 1] == "linux/arm64"
    assert "--load" in argv and "--push" not in argv
    assert argv[argv.index("--build-arg") + 1] == "A=1 2"
    assert "org.opencontainers.image.source=https://example.com/acme/slimllm" in argv
    assert f"id=ca,src={REPO_ROOT / 'README.md'}" in argv
    # The secret's value travels in the environment of the build, never on its command line.
    assert "id=token,env=SLIMLLM_BUILD_SECRET_0" in argv
    assert not any("s3cret" in arg for arg in argv)
    assert steps[1].env == {"SLIMLLM_BUILD_SECRET_0": "s3cret"}
    assert argv[-1] == str(REPO_ROOT)


def test_push_builds_every_platform_in_one_run_with_a_registry_cache(tmp_path: Path) -> None:
    p = plan(
        images=["health-monitor"],
        platforms=["linux/amd64,linux/arm64"],
        push=True,
        registry="registry.example.com/acme",
        cache="registry",
    )
    (step,) = build_steps(p, REPO_ROOT, tmp_path)
    assert step.refs == ("registry.example.com/acme/health-monitor:local",)
    argv = step.argv
    assert argv[argv.index("--platform") + 1] == "linux/amd64,linux/arm64"
    assert "--push" in argv
    cache_to = argv[argv.index("--cache-to") + 1]
    assert cache_to.startswith("type=registry,ref=registry.example.com/acme/health-monitor:buildcache-")
    assert argv[-1] == str(REPO_ROOT / CATALOG["health-monitor"].context)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        pytest.param("", 0, id="empty"),
        pytest.param("90", 90, id="seconds"),
        pytest.param("45s", 45, id="s"),
        pytest.param("30m", 1800, id="m"),
        pytest.param("5h50m", 21000, id="h-m"),
        pytest.param("1h0m5s", 3605, id="h-m-s"),
    ],
)
def test_parse_duration(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["soon", "5x", "-1", "1.5h", "h"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(UserError, match="duration"):
        parse_duration(text)


def test_plan_models_from_presets_and_a_repo() -> None:
    plans = plan_models(["default", "qwen"], repo="acme/Tiny-GGUF", file="tiny-q4.gguf", chat_format="chatml")
    assert [p.name for p in plans] == ["default", "qwen", "tiny-q4"]
    assert "SLIMLLM_MODEL" not in plans[1].settings  # the server gets the mounted file instead
    assert plans[1].settings["SLIMLLM_MODEL_ALIAS"]
    assert plans[2].settings == {"SLIMLLM_MODEL_ALIAS": "tiny-q4", "SLIMLLM_CHAT_FORMAT": "chatml"}
    assert plans[1].cache_key != plans[2].cache_key


@pytest.mark.parametrize(
    ("presets", "kwargs", "message"),
    [
        pytest.param(["nope"], {}, "unknown model preset 'nope'", id="unknown-preset"),
        pytest.param([], {"repo": "acme/x"}, "needs both model-repo and model-file", id="repo-without-file"),
        pytest.param([], {}, "no model to serve", id="nothing"),
        pytest.param(
            ["default"], {"repo": "a/b", "file": "x.gguf", "alias": "default"}, "two models", id="clash"
        ),
    ],
)
def test_plan_models_errors(presets: list[str], kwargs: dict[str, str], message: str) -> None:
    with pytest.raises(UserError, match=message):
        plan_models(presets, **kwargs)


def test_stack_up_masks_the_secrets_before_anything_else(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("GITHUB_OUTPUT", str(tmp_path / "out"))
    monkeypatch.setenv("TUNNEL_TOKEN", "tunnel-secret-1")
    monkeypatch.setenv("SLIMLLM_API_KEY", "api-secret-2")
    assert main(["stack", "up", "--models", "no-such-preset"]) == 1
    out = capsys.readouterr()
    assert "::add-mask::tunnel-secret-1" in out.out
    assert "::add-mask::api-secret-2" in out.out
    assert "unknown model preset" in out.err


# --- a real stack ------------------------------------------------------------------------------


@pytest.fixture
def stack_name(docker_client: Any) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    yield name
    main(["stack", "down", "--name", name])


def test_stack_serves_restarts_a_stopped_server_and_goes_away(
    docker_client: Any,
    request: pytest.FixtureRequest,
    default_model: Path,
    stack_name: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    image = request.getfixturevalue("inference_image")
    summary = tmp_path / "summary.md"
    outputs = tmp_path / "outputs"
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    monkeypatch.setenv("GITHUB_OUTPUT", str(outputs))
    port = 18000 + uuid.uuid4().int % 2000
    up = [
        "stack",
        "up",
        "--name",
        stack_name,
        "--models",
        "default",
        "--models-dir",
        str(default_model.parent),
        "--inference-image",
        image.id,
        "--no-monitor",
        "--port",
        str(port),
        "--threads",
        "2",
    ]
    assert main(up) == 0
    url = f"http://127.0.0.1:{port}"
    assert "url<<" in outputs.read_text() and url in outputs.read_text()
    answer = httpx.post(url + "/v1/completions", json={"prompt": "Hello", "max_tokens": 4}, timeout=60)
    assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] == 4
    server = docker_client.containers.get(f"{stack_name}-default")
    assert server.attrs["HostConfig"]["ReadonlyRootfs"] is True
    assert server.attrs["HostConfig"]["CapDrop"] == ["ALL"]
    assert (
        main(
            [
                "stack",
                "up",
                "--name",
                stack_name,
                "--models-dir",
                str(default_model.parent),
                "--inference-image",
                image.id,
                "--no-monitor",
            ]
        )
        == 1
    )  # the name is taken

    # A second stack on the same port: one error line, and nothing of it left behind.
    blocked = ["stack", "up", "--name", f"{stack_name}-2", "--models-dir", str(default_model.parent),
               "--inference-image", image.id, "--no-monitor", "--port", str(port)]  # fmt: skip
    assert main(blocked) == 1
    assert "the Docker engine refused to start the stack" in capsys.readouterr().err
    assert not docker_client.containers.list(
        all=True, filters={"label": f"io.slimllm.action-stack={stack_name}-2"}
    )

    server.kill()
    assert main(["stack", "watch", "--name", stack_name, "--duration", "4s", "--interval", "1"]) == 0
    server.reload()
    assert server.status == "running"
    assert "restarts<<" in outputs.read_text()
    assert f"| {stack_name}-default | 1 |" in summary.read_text()

    assert main(["stack", "down", "--name", stack_name, "--logs"]) == 0
    left = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label=io.slimllm.action-stack={stack_name}"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert left.stdout.strip() == ""
