"""`slimllm images build` and `slimllm stack ...`, the logic behind the build and serve actions.

The bake file (docker-bake.hcl) is read back with `docker buildx bake --print` for a table of
inputs, argument checking and the bake command lines are tested as tables, the small monitor image
is built for real through `slimllm images build`; the stack runs for real on the real engine with
the inference image and the embedded model.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from slimllm.cli import main
from slimllm.errors import UserError
from slimllm.model import sha256_file
from slimllm.runner import compose
from slimllm.runner.images import BakeFile, BuildPlan, _spec_text, build_steps, plan_build
from slimllm.runner.plan import parse_duration, plan_models
from slimllm.runner.stack import SECRET_VARIABLES, StackSettings, fetch_models
from tests.conftest import REPO_ROOT, require
from tests.dockerutil import bake_print
from tests.fakes.hf_hub import serve_hub
from tests.test_inference import inference_image  # noqa: F401  (the image the stack runs)

RUN_ID = uuid.uuid4().hex[:8]
IMAGES = ["inference", "chat-interface", "cloudflared", "health-monitor", "model-init"]
# The bake variables of a --print, whatever this machine is: amd64 is the native platform, and
# neither a CA bundle nor a GitHub Actions run adds anything.
NATIVE = {
    "NATIVE_PLATFORM": "linux/amd64",
    "SLIMLLM_BUILD_CA": "",
    "GITHUB_SERVER_URL": "",
    "GITHUB_REPOSITORY": "",
    "GITHUB_SHA": "",
}

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


@pytest.fixture(scope="module")
def bake_file() -> BakeFile:
    try:
        ok = subprocess.run(["docker", "buildx", "version"], capture_output=True, timeout=60).returncode == 0
    except FileNotFoundError:
        ok = False
    require(ok, "the docker CLI with the buildx plugin is not installed")
    return BakeFile(REPO_ROOT)


def plan(bake_file: BakeFile, **changes: Any) -> BuildPlan:
    return plan_build(bake=bake_file, **{**PLAN_DEFAULTS, **changes})


def texts(items: list[Any]) -> list[str]:
    """Secrets, caches and outputs as text: newer buildx prints them as objects."""
    return [_spec_text(item) for item in items]


# --- the bake file -----------------------------------------------------------------------------


def test_the_bake_file_defines_what_images_build_offers(bake_file: BakeFile) -> None:
    assert bake_file.images == IMAGES
    assert plan(bake_file).images == IMAGES
    assert plan(bake_file, images=["stack,inference"]).images == [
        "model-init",
        "inference",
        "chat-interface",
        "health-monitor",
    ]
    assert plan(bake_file, images=["default"]).images == plan(bake_file, images=["stack"]).images
    printed = bake_print("all", **NATIVE)
    assert sorted(printed["target"]) == sorted(IMAGES)
    for name, target in printed["target"].items():
        assert (REPO_ROOT / target["context"] / target["dockerfile"]).is_file(), name
    help_text = subprocess.run(
        [sys.executable, "-m", "slimllm", "images", "build", "--help"], capture_output=True, text=True
    ).stdout
    assert all(name in help_text for name in IMAGES)


def test_the_stack_group_is_what_the_default_compose_stack_runs(bake_file: BakeFile) -> None:
    """Compose only runs the images (the files have no build sections): `make images` builds them."""
    result = subprocess.run(
        # No .env (a developer's must not leak in), no profile: the default stack.
        ["docker", "compose", "--env-file", os.devnull, "-f", "docker-compose.yml", "config", "--images"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "COMPOSE_PROFILES": ""},
    )
    require(result.returncode == 0, f"docker compose config failed: {result.stderr[-500:]}")
    ran = sorted({ref.rsplit("/", 1)[-1].split(":")[0] for ref in result.stdout.split()})
    assert ran == sorted(plan(bake_file, images=["stack"]).images)


@pytest.mark.parametrize(
    ("target", "variables", "expected"),
    [
        pytest.param(
            "inference",
            {},
            {"inference": {"tags": ["slimllm/inference:local"], "output": ["type=docker"]}},
            id="defaults-load-the-engines-platform",
        ),
        pytest.param(
            "inference",
            {
                "PLATFORMS": "linux/amd64,linux/arm64",
                "TAG": "local,v1",
                "BASE_IMAGES": "linux/arm64=debian:bookworm-slim-arm64",
            },
            {
                "inference-amd64": {
                    "platforms": ["linux/amd64"],
                    "tags": [
                        "slimllm/inference:local",
                        "slimllm/inference:v1",
                        "slimllm/inference:local-amd64",
                        "slimllm/inference:v1-amd64",
                    ],
                },
                "inference-arm64": {
                    "platforms": ["linux/arm64"],
                    "tags": ["slimllm/inference:local-arm64", "slimllm/inference:v1-arm64"],
                    "args": {"BASE_IMAGE": "debian:bookworm-slim-arm64"},
                },
            },
            id="multi-platform-load-one-target-per-arch-tag-for-the-native-one-only",
        ),
        pytest.param(
            "chat-interface",
            {"PLATFORMS": "linux/arm64"},
            {
                "chat-interface": {
                    "platforms": ["linux/arm64"],
                    "tags": ["slimllm/chat-interface:local-arm64"],
                }
            },
            id="a-foreign-platform-never-gets-the-plain-tag",
        ),
        pytest.param(
            "health-monitor",
            {
                "PUSH": "true",
                "REGISTRY": "registry.example.com/acme",
                "PLATFORMS": "linux/amd64,linux/arm64",
                "CACHE": "registry",
                "BASE_IMAGES": "linux/arm64=debian:bookworm-slim-arm64",
            },
            {
                "health-monitor": {
                    "platforms": ["linux/amd64", "linux/arm64"],
                    "tags": ["registry.example.com/acme/health-monitor:local"],
                    "output": ["type=registry"],
                    "cache-from": [
                        "type=registry,ref=registry.example.com/acme/health-monitor:"
                        "buildcache-health-monitor-linuxamd64-linuxarm64"
                    ],
                    "cache-to": [
                        "type=registry,ref=registry.example.com/acme/health-monitor:"
                        "buildcache-health-monitor-linuxamd64-linuxarm64,mode=max"
                    ],
                },
            },
            id="push-all-platforms-in-one-manifest-with-a-registry-cache",
        ),
        pytest.param(
            "model-init",
            {"CACHE": "gha"},
            {
                "model-init": {
                    "cache-from": ["type=gha,scope=model-init-default"],
                    "cache-to": ["type=gha,mode=max,scope=model-init-default"],
                }
            },
            id="gha-cache-scoped-per-image",
        ),
        pytest.param(
            "cloudflared",
            {"CACHE": "local", "CACHE_DIR": "/tmp/buildx-cache", "PLATFORMS": "linux/arm64"},
            {
                "cloudflared": {
                    "platforms": ["linux/arm64"],
                    "tags": ["slimllm/cloudflared:local-arm64"],
                    "cache-from": ["type=local,src=/tmp/buildx-cache/cloudflared-linuxarm64"],
                    "cache-to": ["type=local,dest=/tmp/buildx-cache/cloudflared-linuxarm64,mode=max"],
                }
            },
            id="local-cache-scoped-per-image-and-platform",
        ),
        pytest.param(
            "chat-interface",
            {
                "SLIMLLM_BUILD_CA": str(REPO_ROOT / "README.md"),
                "GITHUB_SERVER_URL": "https://example.com",
                "GITHUB_REPOSITORY": "acme/slimllm",
                "GITHUB_SHA": "abc",
            },
            {
                "chat-interface": {
                    "secret": [f"id=ca,src={REPO_ROOT / 'README.md'}"],
                    "labels": {
                        "org.opencontainers.image.source": "https://example.com/acme/slimllm",
                        "org.opencontainers.image.revision": "abc",
                    },
                }
            },
            id="ca-bundle-as-the-ca-secret-and-source-labels",
        ),
    ],
)
def test_bake_print(target: str, variables: dict[str, str], expected: dict[str, dict[str, Any]]) -> None:
    printed = bake_print(target, **{**NATIVE, **variables})["target"]
    assert sorted(printed) == sorted(expected)
    for name, attributes in expected.items():
        for key, value in attributes.items():
            got = printed[name].get(key)
            assert (texts(got) if isinstance(got, list) else got) == value, f"{name}.{key}"
    # What the cases leave at their defaults stays out.
    for name, target_ in printed.items():
        for key in ("secret", "cache-from", "cache-to", "labels", "args", "platforms"):
            if key not in expected[name]:
                assert not target_.get(key), f"{name}.{key}"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        pytest.param({"images": ["inference,nope"]}, "unknown image 'nope'", id="unknown-image"),
        pytest.param({"images": ["$(touch pwned)"]}, "unknown image '$(touch'", id="hostile-image"),
        pytest.param({"images": ["--print"]}, "unknown image '--print'", id="option-as-image"),
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
        pytest.param(
            {"secrets": ["ca=x"], "secret_files": [f"ca={REPO_ROOT / 'README.md'}"]},
            "given both as a value and as a file",
            id="secret-as-value-and-file",
        ),
    ],
)
def test_build_input_errors(bake_file: BakeFile, changes: dict[str, Any], message: str) -> None:
    with pytest.raises(UserError, match=re.escape(message)):
        plan(bake_file, **changes)


def test_a_bad_secret_line_does_not_show_the_value(bake_file: BakeFile) -> None:
    with pytest.raises(UserError) as info:
        plan(bake_file, secrets=["hunter2-is-secret"])
    assert "hunter2" in str(info.value.message)  # the part before '=' is all there is
    with pytest.raises(UserError) as info:
        plan(bake_file, secrets=["bad id=hunter2"])
    assert "hunter2" not in info.value.message


def test_build_steps_load_one_platform_per_run(bake_file: BakeFile, tmp_path: Path) -> None:
    p = plan(
        bake_file,
        images=["inference"],
        platforms=["linux/amd64,linux/arm64"],
        tags=["local,v1"],
        build_args=["A=1 2"],
        secret_files=[f"ca={REPO_ROOT / 'README.md'}"],
        secrets=["token=s3cret"],
    )
    variables = {**p.variables("linux/arm64=debian:bookworm-slim-arm64"), **NATIVE}
    steps = build_steps(p, bake_file, bake_file.print(p.images, variables), variables, tmp_path)
    assert [(s.target, s.platforms, s.refs) for s in steps] == [
        (
            "inference-amd64",
            ("linux/amd64",),
            (
                "slimllm/inference:local",
                "slimllm/inference:v1",
                "slimllm/inference:local-amd64",
                "slimllm/inference:v1-amd64",
            ),
        ),
        (
            "inference-arm64",
            ("linux/arm64",),
            ("slimllm/inference:local-arm64", "slimllm/inference:v1-arm64"),
        ),
    ]
    argv = list(steps[1].argv)
    assert argv[:5] == ["docker", "buildx", "bake", "-f", str(REPO_ROOT / "docker-bake.hcl")]
    assert argv[-2:] == ["--", "inference-arm64"]
    sets = [argv[i + 1] for i, arg in enumerate(argv) if arg == "--set"]
    assert sets == [
        "inference-arm64.args.A=1 2",
        f"inference-arm64.secrets=id=ca,src={REPO_ROOT / 'README.md'}",
        "inference-arm64.secrets=id=token,env=SLIMLLM_BUILD_SECRET_0",
    ]
    # The secret's value travels in the environment of the build, never on its command line.
    assert not any("s3cret" in arg for arg in argv)
    assert steps[1].env == {**variables, "SLIMLLM_BUILD_SECRET_0": "s3cret"}
    assert steps[1].env["PLATFORMS"] == "linux/amd64,linux/arm64" and steps[1].env["PUSH"] == "false"
    assert argv[argv.index("--metadata-file") + 1] == str(tmp_path / "inference-arm64.json")


def test_secrets_given_join_the_bake_files_ca_secret(bake_file: BakeFile, tmp_path: Path) -> None:
    p = plan(bake_file, images=["model-init"], secrets=["token=s3cret"])
    variables = {**p.variables(), **NATIVE, "SLIMLLM_BUILD_CA": str(REPO_ROOT / "README.md")}
    (step,) = build_steps(p, bake_file, bake_file.print(p.images, variables), variables, tmp_path)
    argv = list(step.argv)
    assert [argv[i + 1] for i, arg in enumerate(argv) if arg == "--set"] == [
        f"model-init.secrets=id=ca,src={REPO_ROOT / 'README.md'}",
        "model-init.secrets=id=token,env=SLIMLLM_BUILD_SECRET_0",
    ]


def test_push_builds_every_platform_in_one_run_with_a_registry_cache(
    bake_file: BakeFile, tmp_path: Path
) -> None:
    p = plan(
        bake_file,
        images=["health-monitor"],
        platforms=["linux/amd64,linux/arm64"],
        push=True,
        registry="registry.example.com/acme",
        cache="registry",
    )
    variables = {**p.variables(), **NATIVE}
    printed = bake_file.print(p.images, variables)
    (step,) = build_steps(p, bake_file, printed, variables, tmp_path, builder="slimllm-cache-builder")
    assert step.refs == ("registry.example.com/acme/health-monitor:local",)
    assert step.platforms == ("linux/amd64", "linux/arm64")
    assert step.env["PUSH"] == "true" and step.env["CACHE"] == "registry"
    assert step.argv[step.argv.index("--builder") + 1] == "slimllm-cache-builder"
    assert texts(printed["target"]["health-monitor"]["output"]) == ["type=registry"]


@pytest.mark.docker
def test_images_build_loads_each_platform_and_reports(
    docker_client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A real `slimllm images build` of the small monitor image for two platforms (cross-compiled)."""
    native = {"x86_64": "amd64", "aarch64": "arm64"}.get(docker_client.info()["Architecture"])
    require(native is not None, "the images are built for amd64 and arm64")
    foreign = "arm64" if native == "amd64" else "amd64"
    tag = f"t{RUN_ID}"
    summary, outputs = tmp_path / "summary.md", tmp_path / "outputs"
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    monkeypatch.setenv("GITHUB_OUTPUT", str(outputs))
    for variable in ("TAG", "REGISTRY", "PLATFORMS", "PUSH", "CACHE", "BASE_IMAGES"):
        monkeypatch.delenv(variable, raising=False)
    refs = [f"slimllm/health-monitor:{tag}", f"slimllm/health-monitor:{tag}-{native}"]
    refs.append(f"slimllm/health-monitor:{tag}-{foreign}")
    try:
        args = ["images", "build", "health-monitor", "--tags", tag, "--root", str(REPO_ROOT)]
        assert main([*args, "--platforms", f"linux/{native},linux/{foreign}"]) == 0
        assert capsys.readouterr().out.splitlines()[-1] == " ".join(refs[::2])
        for ref, arch in zip(refs, [native, native, foreign], strict=True):
            assert docker_client.images.get(ref).attrs["Architecture"] == arch, ref
        written = outputs.read_text()
        assert f'"health-monitor": {json.dumps(refs[:2] + refs[2:])}' in written
        assert '"health-monitor": "sha256:' in written
        assert "| health-monitor | <code>" in summary.read_text()
    finally:
        for ref in refs:
            with contextlib.suppress(Exception):
                docker_client.images.remove(ref, force=True)


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
    # A preset goes to the server by name: it resolves it, as in the compose stacks.
    assert plans[1].environment == {"SLIMLLM_PRESET": "qwen"}
    assert plans[1].source.repo == "Qwen/Qwen2.5-3B-Instruct-GGUF"  # what the host fetches first
    # A model of one's own gets no alias or template unless given: the GGUF's own apply.
    assert plans[2].environment == {
        "SLIMLLM_MODEL": "acme/Tiny-GGUF",
        "SLIMLLM_MODEL_FILE": "tiny-q4.gguf",
        "SLIMLLM_CHAT_FORMAT": "chatml",
    }
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
        pytest.param(
            [], {"repo": "a/b", "file": "x.gguf", "alias": "chat"}, "cannot be named 'chat'", id="chat"
        ),
        pytest.param(
            [], {"repo": "a/b", "file": "x.gguf", "alias": "tunnel"}, "cannot be named 'tunnel'", id="tunnel"
        ),
        # The first model's alias on the stack network, taken by a second model.
        pytest.param(
            ["default"],
            {"repo": "a/b", "file": "x.gguf", "alias": "inference"},
            "cannot be named 'inference'",
            id="inference-second",
        ),
    ],
)
def test_plan_models_errors(presets: list[str], kwargs: dict[str, str], message: str) -> None:
    with pytest.raises(UserError, match=message):
        plan_models(presets, **kwargs)


def test_a_model_may_be_called_inference_when_it_is_the_first() -> None:
    assert [p.name for p in plan_models([], repo="a/b", file="x.gguf", alias="inference")] == ["inference"]


def test_stack_up_masks_the_secrets_before_anything_else(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("GITHUB_OUTPUT", str(tmp_path / "out"))
    monkeypatch.setenv("TUNNEL_TOKEN", "tunnel-secret-1")
    monkeypatch.setenv("SLIMLLM_API_KEY", "api-secret-2")
    monkeypatch.setenv("SLIMLLM_CHAT_API_KEY", "chat-secret-3")
    monkeypatch.setenv("HF_TOKEN", "hf-secret-4")
    assert main(["stack", "up", "--models", "no-such-preset"]) == 1
    out = capsys.readouterr()
    for secret in ("tunnel-secret-1", "api-secret-2", "chat-secret-3", "hf-secret-4"):
        assert f"::add-mask::{secret}" in out.out
    assert "unknown model preset" in out.err
    # The secrets reach the containers from the environment, by name, never from the project file.
    rendered = json.dumps(compose.render(_project(tmp_path, chat=True, tunnel=True)))
    for variable in SECRET_VARIABLES:
        assert os.environ[variable] not in rendered


def _project(tmp_path: Path, *, chat: bool, tunnel: bool) -> compose.Project:
    return compose.Project(
        name="aliases",
        models=[compose.Model("qwen", {"SLIMLLM_PRESET": "qwen"}, 8080), compose.Model("tiny", {}, 8081)],
        models_dir=tmp_path,
        images={"inference": "i:1", "chat": "c:1", "tunnel": "t:1", "monitor": "m:1"},
        chat_port=8000 if chat else None,
        tunnel_metrics_port=20241 if tunnel else None,
        monitor=True,
    )


@pytest.mark.parametrize("chat", [True, False], ids=["chat", "no-chat"])
def test_the_front_has_the_same_name_on_every_stack(tmp_path: Path, chat: bool) -> None:
    """Whatever the models are called, the tunnel's origin is `chat` or `inference` on the stack
    network: the one target a named tunnel's public hostname needs, for every replica."""
    require(
        subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0, "no compose"
    )
    file = compose.write(_project(tmp_path, chat=chat, tunnel=True), tmp_path)
    config = json.loads(
        subprocess.run(
            ["docker", "compose", "-f", str(file), "config", "--format", "json"],
            capture_output=True,
            text=True,
            check=True,
            env={k: v for k, v in os.environ.items() if not k.startswith(("SLIMLLM_", "TUNNEL_"))},
        ).stdout
    )
    services = config["services"]
    assert services["qwen"]["networks"] == {"slimllm": {"aliases": ["inference"]}}
    assert services["tiny"]["networks"] == {"slimllm": None}
    tunnel = services["tunnel"]
    if chat:
        assert services["chat"]["networks"] == {"slimllm": {"aliases": ["chat"]}}
        assert tunnel["environment"]["TUNNEL_URL"] == "http://chat:8000"
        assert set(tunnel["depends_on"]) == {"chat"}
        # The chat's own key comes from the one definition, empty unless set.
        assert services["chat"]["environment"]["SLIMLLM_CHAT_API_KEY"] == ""
    else:
        assert "chat" not in services
        assert tunnel["environment"]["TUNNEL_URL"] == "http://inference:8080"
        assert set(tunnel["depends_on"]) == {"qwen"}


def fetch_job(models_dir: str, pinned_sha: str) -> None:
    """What actions/serve's Start step fetches: a model without a pinned digest and one with."""
    models = plan_models([], repo="acme/Tiny-GGUF", file="tiny.gguf")
    models += plan_models([], repo="acme/Pinned-GGUF", file="pinned.gguf", sha256=pinned_sha)
    fetch_models(
        StackSettings(
            name="cache",
            models=models,
            models_dir=Path(models_dir),
            chat=False,
            tunnel=False,
            monitor=False,
            inference_image="",
            chat_image="",
            cloudflared_image="",
            monitor_image="",
            port=8080,
            chat_port=8000,
            threads=None,
            wait_timeout=1,
        )
    )


def run_fetch_job(
    models_dir: Path, pinned_sha: str, hf_home: Path, endpoint: str
) -> subprocess.CompletedProcess[str]:
    """`fetch_job` in a process of its own: the Hub's client reads HF_HOME and HF_ENDPOINT once."""
    code = (
        f"from tests.test_images_and_stack import fetch_job; fetch_job({str(models_dir)!r}, {pinned_sha!r})"
    )
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_ENDPOINT": endpoint}
    env.update({"HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_XET": "1"})
    return subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, env=env
    )


def test_a_model_restored_from_the_actions_cache_is_used_without_the_hub(tmp_path: Path) -> None:
    """actions/serve caches the models directory and nothing else: a later job gets the files back
    with an empty Hugging Face cache. A file fetched without a pinned sha256 brings the digest noted
    at its download (.<file>.sha256) along; both it and a pinned one are verified and reused without
    a request, and a restored file that no longer matches is not."""
    gguf = b"GGUF" + bytes(range(256)) * 64
    pinned = b"GGUF" + bytes(reversed(range(256))) * 64
    pinned_sha = hashlib.sha256(pinned).hexdigest()
    files = {"acme/Tiny-GGUF/tiny.gguf": gguf, "acme/Pinned-GGUF/pinned.gguf": pinned}
    first_job = tmp_path / "job-1" / "slimllm-models"
    with serve_hub(files) as (hub, fake):
        first = run_fetch_job(first_job, pinned_sha, tmp_path / "job-1" / "hf-home", hub)
        assert first.returncode == 0, first.stderr
        assert sum(1 for method, _ in fake.requests if method == "GET") == 2
    assert (first_job / ".tiny.gguf.sha256").read_text().startswith(sha256_file(first_job / "tiny.gguf"))

    # The next job: the cache action restores the directory; the Hub is gone, so is its cache.
    second_job = tmp_path / "job-2" / "slimllm-models"
    shutil.copytree(first_job, second_job)
    with socket_closed() as unreachable:
        second = run_fetch_job(second_job, pinned_sha, tmp_path / "job-2" / "hf-home", unreachable)
        assert second.returncode == 0, second.stderr
        assert (second_job / "tiny.gguf").read_bytes() == gguf
        assert (second_job / "pinned.gguf").read_bytes() == pinned
        # A restored file that does not match its digest is fetched again, which fails here.
        (second_job / "tiny.gguf").write_bytes(gguf[:-1] + b"!")
        third = run_fetch_job(second_job, pinned_sha, tmp_path / "job-2" / "hf-home", unreachable)
        assert third.returncode != 0
        assert re.search(r"model tiny: cannot download .* unreachable", third.stderr), third.stderr[-2000:]


@contextlib.contextmanager
def socket_closed() -> Iterator[str]:
    """A URL nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    yield f"http://127.0.0.1:{port}"


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
    # The chat on a model's port: said before anything starts.
    clash = ["stack", "up", "--name", f"{stack_name}-3", "--models-dir", str(default_model.parent),
             "--inference-image", image.id, "--no-monitor", "--chat", "--port", "18431",
             "--chat-port", "18431"]  # fmt: skip
    assert main(clash) == 1
    assert "chat-port 18431 is also the port of model 'default'" in capsys.readouterr().err

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
