"""The host set-up that `make start-*` and `make test` do themselves: scripts/provision.sh (the
engine) and `slimllm images ensure` (the stack's images), run for real where this machine allows.

Nothing here stops the machine's engine or removes an image it did not make: the "engine
installed but stopped" case starts a second, throwaway dockerd on a socket and data root of its
own (DOCKER_HOST), and the image cases use tags and a registry namespace of their own.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from slimllm.runner import ensure, released
from slimllm.runner.released import Pinned, Release
from tests.conftest import REPO_ROOT, docker_engine_error, require
from tests.dockerutil import HOST_CA_BUNDLE

PROVISION = REPO_ROOT / "scripts" / "provision.sh"
REGISTRY = os.environ.get("SLIMLLM_TEST_REGISTRY", "127.0.0.1:5000")
DIGEST = "sha256:" + "c" * 64
STACK = ["model-init", "inference", "chat-interface", "health-monitor"]


def provision(
    *args: str, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(PROVISION), *args],
        cwd=REPO_ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def slimllm(
    *args: str, env: dict[str, str] | None = None, timeout: float = 1800
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "slimllm", *args],
        cwd=REPO_ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# --- the choice of images, without an engine -------------------------------------------------


def choose(
    release: Release, *, present: set[str], build: bool = False, explicit: dict[str, str] | None = None
) -> ensure.Plan:
    return ensure.decide(
        STACK,
        release,
        "actions/serve/images.json",
        build=build,
        explicit=explicit or {},
        has_local=lambda ref: ref in present,
        has_pinned=lambda pinned: pinned.ref in present,
        tag="local",
    )


def local(*images: str) -> set[str]:
    return {f"slimllm/{image}:local" for image in images}


def test_without_a_release_present_images_are_used_and_only_missing_ones_built() -> None:
    plan = choose(Release("", {}), present=local(*STACK))
    assert (plan.build, plan.pull) == ([], {})
    assert plan.ready == {image: f"slimllm/{image}:local" for image in STACK}
    assert plan.lines == [
        "images: no release recorded in actions/serve/images.json: "
        + ", ".join(f"slimllm/{i}:local" for i in STACK)
        + " already in the engine, nothing to build"
    ]
    plan = choose(Release("", {}), present=local("inference", "chat-interface"))
    assert plan.build == ["model-init", "health-monitor"]
    assert plan.lines == [
        "images: no release recorded in actions/serve/images.json: building slimllm/model-init:local, "
        "slimllm/health-monitor:local (not in the engine)"
    ]


def test_a_recorded_release_is_pulled_by_digest_unless_present_and_build_asks_for_a_build() -> None:
    pinned = {image: Pinned(image, f"r.example/acme/slimllm/{image}", "v1.2.3", DIGEST) for image in STACK}
    release = Release("v1.2.3", pinned)
    plan = choose(release, present=local(*STACK) | {pinned["inference"].ref})
    assert plan.build == []
    assert plan.ready == {"inference": pinned["inference"].ref}  # the local builds are not used
    assert list(plan.pull) == ["model-init", "chat-interface", "health-monitor"]
    assert plan.lines == [
        "images: release v1.2.3 recorded in actions/serve/images.json: pulling model-init, chat-interface, "
        "health-monitor by digest",
        "images: release v1.2.3 recorded in actions/serve/images.json: inference already in the engine by "
        "digest, nothing to pull",
    ]
    # A release that records some images only: the others as without a release.
    partial = Release("v1.2.3", {"inference": pinned["inference"]})
    plan = choose(partial, present=local("model-init", "inference") | {pinned["inference"].ref})
    assert plan.build == ["chat-interface", "health-monitor"]
    assert plan.ready == {"inference": pinned["inference"].ref, "model-init": "slimllm/model-init:local"}
    assert plan.lines[1:] == [
        "images: release v1.2.3 recorded in actions/serve/images.json, which records no model-init: "
        "slimllm/model-init:local already in the engine",
        "images: release v1.2.3 recorded in actions/serve/images.json, which records no chat-interface, "
        "health-monitor: building slimllm/chat-interface:local, slimllm/health-monitor:local",
    ]
    plan = choose(release, present=set(), build=True, explicit={"chat-interface": "mine/chat:1"})
    assert (plan.build, plan.pull, plan.ready) == (["model-init", "inference", "health-monitor"], {}, {})
    assert plan.given == {"chat-interface": "mine/chat:1"}
    assert plan.lines[-1].startswith("images: a build is asked for (--build, make BUILD=1): building")


def test_every_image_a_stack_runs_has_its_variable_in_services_yml() -> None:
    variables = ensure.compose_variables()
    assert variables["inference"] == ("SLIMLLM_INFERENCE_IMAGE", "slimllm/inference:local")
    assert set(variables) == {"model-init", "inference", "chat-interface", "cloudflared", "health-monitor"}


def test_an_untouched_env_file_gives_no_image() -> None:
    """.env.example names every image by its default: a copy of it must not stop a release's
    images from being pulled, nor a missing local build from being built."""
    variables = ensure.compose_variables()
    example = ensure.dotenv(REPO_ROOT / ".env.example")
    assert ensure.given(variables, {}, example) == {}
    environ = {"SLIMLLM_CHAT_IMAGE": "mine/chat:1"}
    mine = {**example, "SLIMLLM_INFERENCE_IMAGE": "mine/inference:2", "SLIMLLM_CHAT_IMAGE": "mine/chat:2"}
    assert ensure.given(variables, environ, mine) == {
        "chat-interface": "mine/chat:1",
        "inference": "mine/inference:2",
    }


def test_dotenv_reads_simple_assignments(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text("# comment\nSLIMLLM_INFERENCE_IMAGE='mine/inference:1'\nexport A = b\nnot an assignment\n")
    assert ensure.dotenv(env) == {"SLIMLLM_INFERENCE_IMAGE": "mine/inference:1", "A": "b"}
    assert ensure.dotenv(tmp_path / "none") == {}


def test_a_released_image_that_cannot_be_had_is_built(monkeypatch: pytest.MonkeyPatch) -> None:
    """A pull that fails (offline, a registry that no longer has it) falls back to a local build."""
    built: list[list[str]] = []
    monkeypatch.setattr(ensure, "_base_image", lambda root: None)
    monkeypatch.setattr(ensure, "run_build", lambda plan, bake: built.append(plan.images))
    monkeypatch.setattr(ensure, "plan_build", lambda **kw: type("Plan", (), {"images": list(kw["images"])})())

    def refuse(client: object, pinned: Pinned) -> None:
        raise released.UserError(f"{pinned.image}: pulling {pinned.ref}: connection refused")

    monkeypatch.setattr(released, "pull_pinned", refuse)
    pinned = Pinned("inference", "r.example/acme/slimllm/inference", "v1.2.3", DIGEST)
    client = type("Client", (), {"images": type("Images", (), {"get": staticmethod(lambda ref: 1 / 0)})()})()
    bake = type("Bake", (), {"root": REPO_ROOT})()
    refs = ensure.ensure(
        client, bake, ["inference"], Release("v1.2.3", {"inference": pinned}), "images.json",  # type: ignore[arg-type]
        build=False, explicit={}, tag="local",
    )  # fmt: skip
    assert refs == {"inference": "slimllm/inference:local"}
    assert built == [["inference"]]


# --- the workflows: what they build is what they serve -----------------------------------------


def test_workflows_that_build_serve_what_they_built() -> None:
    """Once a release records digests in images.json, a serve step without image inputs would run
    the published images instead of the ones the job just built."""
    needed = {
        "inference-image": None,
        "chat-image": "chat",
        "cloudflared-image": "tunnel",
        "monitor-image": "monitor",
    }
    checked = 0
    for path in sorted((REPO_ROOT / ".github" / "workflows").glob("*.yml")):
        workflow = yaml.safe_load(path.read_text(encoding="utf-8"))
        for job_id, job in workflow.get("jobs", {}).items():
            built = False
            for step in job.get("steps", []):
                uses = str(step.get("uses", ""))
                if uses.endswith("actions/build"):
                    built = True
                # A must-fail step (continue-on-error) fails before it runs an image.
                if not (built and uses.endswith("actions/serve")) or step.get("continue-on-error"):
                    continue
                inputs = step.get("with", {})
                defaults = {"chat": "false", "tunnel": "false", "monitor": "true"}
                for name, switch in needed.items():
                    if switch is None or str(inputs.get(switch, defaults[switch])) != "false":
                        assert inputs.get(name), (
                            f"{path.name}: job {job_id}: serve step {step.get('id')} has no {name}"
                        )
                checked += 1
    assert checked >= 4


# --- the engine --------------------------------------------------------------------------------


@pytest.mark.docker
def test_an_engine_that_answers_is_left_alone() -> None:
    started = time.monotonic()
    result = provision("engine")
    assert result.returncode == 0, result.stderr
    assert (
        result.stderr.startswith("[slimllm] engine: Docker ")
        and "answers, with buildx and compose" in result.stderr
    )
    assert len(result.stderr.splitlines()) == 1
    assert time.monotonic() - started < 10


def fake_bin(tmp_path: Path, **scripts: str) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, body in scripts.items():
        path = bin_dir / name
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(0o755)
    return bin_dir


def test_no_engine_installed_means_installing_one(tmp_path: Path) -> None:
    """No docker CLI with buildx and compose: scripts/install-docker.sh installs them. Here as a user
    without root (a stand-in `id`), so that it stops, in one line, before touching apt."""
    bin_dir = fake_bin(tmp_path, docker="exit 127", id="echo 1000")
    result = provision("engine", env={"PATH": f"{bin_dir}:{os.environ['PATH']}"})
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "[slimllm] error: no Docker engine with buildx and compose is installed, "
        "and installing one needs root"
    ]


def test_a_step_that_cannot_be_done_skips_its_tests_unless_in_ci(tmp_path: Path) -> None:
    """`make test` on a developer's machine without root: the step says so and the run goes on;
    with CI=true it stops the run."""
    bin_dir = fake_bin(tmp_path, id="echo 1000", sudo="exit 1")
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "SLIMLLM_CHROMIUM": str(tmp_path / "no-chromium")}
    result = provision("--keep-going", "browser", env={**env, "CI": ""})
    assert result.returncode == 0, result.stderr
    assert "[slimllm] browser: not provisioned (see above); the tests that need it will skip" in result.stderr
    result = provision("--keep-going", "browser", env={**env, "CI": "true"})
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        "[slimllm] error: browser: failed (exit status 1); CI=true needs every prerequisite"
    )
    # A step asked for alone (as `make start-chat` asks for the engine) fails outright.
    assert provision("browser", env={**env, "CI": ""}).returncode == 1


@pytest.fixture
def stopped_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """An installed engine that nobody started: a socket and data root of its own."""
    require(os.geteuid() == 0, "starting a second dockerd needs root")
    require(shutil.which("dockerd") is not None, "dockerd is not installed")
    # Short: containerd's sockets go under the exec root, and a unix socket path has 108 bytes.
    token = secrets.token_hex(3)
    root = Path(f"/tmp/slp-{token}")
    root.mkdir()
    # A bridge of its own, not `--bridge none`: an engine without a default bridge deletes the
    # host's docker0, the machine engine's bridge, and with it every later test's networking.
    bridge = f"slp-{token}"
    subprocess.run(["ip", "link", "add", "name", bridge, "type", "bridge"], check=True)
    env = {
        "DOCKER_HOST": f"unix://{root}/docker.sock",
        "SLIMLLM_DOCKERD_LOG": f"{root}/dockerd.log",
        "SLIMLLM_DOCKERD_ARGS": f"--data-root {root}/data --exec-root {root}/exec "
        f"--pidfile {root}/docker.pid --bridge {bridge} --iptables=false --ip6tables=false "
        "--ip-masq=false --ip-forward=false",
    }
    try:
        subprocess.run(["ip", "addr", "add", "10.254.254.1/24", "dev", bridge], check=True)
        yield env
    finally:
        pid_file = root / "docker.pid"
        if pid_file.exists():
            pid = int(pid_file.read_text().strip())
            os.kill(pid, signal.SIGTERM)
            for _ in range(100):
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
        for line in reversed(Path("/proc/mounts").read_text().splitlines()):
            if f" {root}/" in line:
                subprocess.run(["umount", "-l", line.split()[1]], check=False)
        shutil.rmtree(root, ignore_errors=True)
        subprocess.run(["ip", "link", "delete", bridge], check=False)


@pytest.mark.slow
def test_an_installed_engine_that_does_not_answer_is_started(stopped_engine: dict[str, str]) -> None:
    result = provision("engine", env=stopped_engine)
    assert result.returncode == 0, (
        result.stderr + Path(stopped_engine["SLIMLLM_DOCKERD_LOG"]).read_text()[-2000:]
    )
    lines = result.stderr.splitlines()
    assert lines[0] == (
        f"[slimllm] no Docker engine answers on {stopped_engine['DOCKER_HOST']}: starting dockerd "
        f"(log {stopped_engine['SLIMLLM_DOCKERD_LOG']})"
    )
    assert lines[1].startswith("[slimllm] Docker ") and len(lines) == 2
    # The second run finds it answering.
    again = provision("engine", env=stopped_engine)
    assert again.returncode == 0 and "answers, with buildx and compose" in again.stderr
    assert docker_engine_error() is None  # the machine's own engine was not touched
    assert Path("/sys/class/net/docker0").exists(), "the second engine deleted the host's docker0"


# --- the images, through the real CLI -----------------------------------------------------------


def tiny_image(ref: str) -> None:
    """A one-file image, made without a build or a registry."""
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as tar:
        body = f"{ref}\n".encode()
        info = tarfile.TarInfo("hello.txt")
        info.size = len(body)
        tar.addfile(info, io.BytesIO(body))
    subprocess.run(["docker", "import", "-", ref], input=data.getvalue(), check=True, capture_output=True)


def remove_images(*refs: str) -> None:
    subprocess.run(["docker", "image", "rm", "--force", *refs], capture_output=True, check=False)


@pytest.fixture
def test_tag() -> Iterator[str]:
    tag = f"provtest-{secrets.token_hex(4)}"
    yield tag
    remove_images(f"slimllm/health-monitor:{tag}")


@pytest.mark.docker
def test_present_local_images_are_used_as_they_are(tmp_path: Path, test_tag: str) -> None:
    tiny_image(f"slimllm/health-monitor:{test_tag}")
    env_file = tmp_path / "images.env"
    started = time.monotonic()
    result = slimllm("images", "ensure", "health-monitor", "--tag", test_tag, "--env-file", str(env_file))
    assert result.returncode == 0, result.stdout + result.stderr
    assert time.monotonic() - started < 20
    assert result.stdout.splitlines() == [
        "[slimllm] images: no release recorded in actions/serve/images.json: "
        f"slimllm/health-monitor:{test_tag} already in the engine, nothing to build"
    ]
    assert env_file.read_text() == f"SLIMLLM_MONITOR_IMAGE=slimllm/health-monitor:{test_tag}\n"
    # One given in the environment is left to compose.
    given = slimllm(
        "images", "ensure", "health-monitor", "--tag", test_tag, "--env-file", str(env_file),
        env={"SLIMLLM_MONITOR_IMAGE": "mine/monitor:1"},
    )  # fmt: skip
    assert given.returncode == 0, given.stdout + given.stderr
    assert "given in the environment or .env, used as they are: health-monitor=mine/monitor:1" in given.stdout
    assert env_file.read_text() == ""


@pytest.mark.docker
@pytest.mark.slow
def test_a_missing_image_without_a_release_is_built(tmp_path: Path, test_tag: str) -> None:
    env_file = tmp_path / "images.env"
    result = slimllm(
        "images", "ensure", "health-monitor", "--tag", test_tag, "--env-file", str(env_file),
        env={"SLIMLLM_BUILD_CA": str(HOST_CA_BUNDLE) if HOST_CA_BUNDLE.is_file() else ""},
    )  # fmt: skip
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert (
        "[slimllm] images: no release recorded in actions/serve/images.json: building "
        f"slimllm/health-monitor:{test_tag} (not in the engine)"
    ) in result.stdout.splitlines()
    assert env_file.read_text() == f"SLIMLLM_MONITOR_IMAGE=slimllm/health-monitor:{test_tag}\n"
    inspect = subprocess.run(
        ["docker", "image", "inspect", f"slimllm/health-monitor:{test_tag}"], capture_output=True
    )
    assert inspect.returncode == 0


@pytest.fixture
def pushed(tmp_path: Path) -> Iterator[Pinned]:
    """A tiny image in the local registry (scripts/install-registry.sh) under a namespace of its own,
    recorded as the released health monitor, and gone from the local engine."""
    from tests.test_release import _registry_answers

    reason = _registry_answers()
    require(reason is None, reason or "")
    name = f"{REGISTRY}/slimllm-provtest-{secrets.token_hex(4)}/health-monitor"
    tiny_image(f"{name}:v0.0.1")
    subprocess.run(["docker", "push", "-q", f"{name}:v0.0.1"], check=True, capture_output=True)
    digests = subprocess.run(
        ["docker", "image", "inspect", "--format", "{{json .RepoDigests}}", f"{name}:v0.0.1"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    ref = next(r for r in json.loads(digests) if r.startswith(name + "@"))
    pinned = Pinned("health-monitor", name, "v0.0.1", ref.partition("@")[2])
    remove_images(f"{name}:v0.0.1", ref)
    try:
        yield pinned
    finally:
        remove_images(f"{name}:v0.0.1", ref)


@pytest.mark.docker
def test_a_recorded_release_is_pulled_by_digest_once(tmp_path: Path, pushed: Pinned) -> None:
    images_json = tmp_path / "images.json"
    images_json.write_text(released.dump(Release("v0.0.1", {"health-monitor": pushed})))
    env_file = tmp_path / "images.env"
    args = [
        "images",
        "ensure",
        "health-monitor",
        "--released-images",
        str(images_json),
        "--env-file",
        str(env_file),
    ]
    result = slimllm(*args)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert (
        lines[0]
        == f"[slimllm] images: release v0.0.1 recorded in {images_json}: pulling health-monitor by digest"
    )
    assert lines[1].startswith(f"health-monitor: {pushed.ref} (v0.0.1, ")
    assert env_file.read_text() == f"SLIMLLM_MONITOR_IMAGE={pushed.ref}\n"
    again = slimllm(*args)
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.splitlines() == [
        f"[slimllm] images: release v0.0.1 recorded in {images_json}: health-monitor already in the engine "
        "by digest, nothing to pull"
    ]
