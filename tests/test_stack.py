"""The compose stacks (docker-compose*.yml), .env.example and the Makefile's stack targets.

The static tests read the files and what `docker compose config` makes of them, so that each
stack stays valid, hardened and consistent with .env.example. The stack tests bring the default
stack up for real -- built from this checkout, under a project name, ports and models volume of
their own, isolated from any .env -- and talk to it through its published ports; the tunnel
profile runs on the stand-in cloudflared of tests/fakes (the real one cannot be downloaded here).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from slimllm.model import EMBEDDED_MODEL_NAME, EMBEDDED_MODEL_SHA256
from tests.conftest import REPO_ROOT, require
from tests.fakes.hf_hub import serve_hub
from tests.support import free_port

# The test doubles for the tunnel: the stand-in cloudflared, served as a release file and built
# into the real docker/cloudflared image (fixtures of the sidecar tests, reused as they are).
from tests.test_sidecars import cloudflared_image, fake_release, target_arch  # noqa: F401

RUN_ID = uuid.uuid4().hex[:6]
ENV_EXAMPLE = REPO_ROOT / ".env.example"
STACK_FILES = {
    "docker-compose.yml": "the default stack",
    "docker-compose.chat-interface.yml": "chat",
    "docker-compose.inference.yml": "inference",
    "docker-compose.phi.yml": "phi",
    "docker-compose.qwen.yml": "qwen",
    "docker-compose.llama.yml": "llama",
    "docker-compose.all.yml": "every model",
}
SHARED_FILE = "docker-compose.common.yml"
# The main services of each stack, which the sidecars serve.
MAIN_SERVICES = {
    "docker-compose.yml": {"chat", "inference"},
    "docker-compose.chat-interface.yml": {"chat"},
    "docker-compose.inference.yml": {"inference"},
    "docker-compose.phi.yml": {"phi"},
    "docker-compose.qwen.yml": {"qwen"},
    "docker-compose.llama.yml": {"llama"},
    "docker-compose.all.yml": {"chat", "inference", "phi", "qwen", "llama"},
}
SIDECARS = {"tunnel", "monitor"}
ONE_SHOT = {"model-init"}
SECRETS = {"TUNNEL_TOKEN", "SLIMLLM_API_KEY", "SLIMLLM_CHAT_API_KEY", "HF_TOKEN", "MONITOR_WEBHOOK_URL"}
# Read by docker compose itself rather than by a compose file.
COMPOSE_OWN = {"COMPOSE_PROFILES"}
MAKE_TARGETS = {
    "help", "install", "docker", "base-image", "provision", "model", "image-inference", "serve",
    "bench", "lint", "test", "setup", "build-all", "start-chat", "start-chat-ui", "start-inference",
    "start-phi",
    "start-qwen", "start-llama", "start-all", "logs-all", "ps", "stats", "health", "tunnel-url",
    "stop-all", "clean",
}  # fmt: skip
EMBEDDED_MODEL_SIZE = 253_113_024
VARIABLE = re.compile(r"\$\{([A-Z0-9_]+)(?::?-([^}]*))?\}")
# The one definition of the services, which every stack extends.
SERVICES_FILE = REPO_ROOT / "src/slimllm/runner/services.yml"
SERVICE_DOCKERFILES = {
    "inference": REPO_ROOT / "app/inference/Dockerfile",
    "chat-interface": REPO_ROOT / "app/chat-interface/Dockerfile",
    "cloudflared": REPO_ROOT / "docker/cloudflared/Dockerfile",
    "health-monitor": REPO_ROOT / "docker/health-monitor/Dockerfile",
    "model-init": REPO_ROOT / "docker/model-init/Dockerfile",
}


# ------------------------------------------------------------------------------------- helpers


def env_example() -> dict[str, str]:
    values: dict[str, str] = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f".env.example: not KEY=value: {line!r}"
            assert key not in values, f".env.example sets {key} twice"
            values[key] = value
    return values


def compose_env(**extra: str) -> dict[str, str]:
    """This process's environment without anything that could change what the stacks do."""
    settings = set(env_example()) | {"COMPOSE_FILE", "COMPOSE_PROJECT_NAME", "COMPOSE_ENV_FILES"}
    env = {k: v for k, v in os.environ.items() if k not in settings}
    return {**env, **extra}


def compose(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """`docker compose` in the repository, reading no .env (a developer's must not leak in)."""
    result = subprocess.run(
        ["docker", "compose", "--env-file", os.devnull, *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env if env is not None else compose_env(),
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"docker compose {' '.join(args)} failed:\n{(result.stdout + result.stderr)[-6000:]}"
        )
    return result


@pytest.fixture(scope="module")
def compose_cli() -> None:
    try:
        ok = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30).returncode == 0
    except FileNotFoundError:
        ok = False
    require(ok, "the docker CLI with the compose plugin is not installed")


def resolved(file: str) -> dict[str, Any]:
    """The stack as compose sees it, every profile on."""
    config: dict[str, Any] = json.loads(
        compose("-f", file, "--profile", "*", "config", "--format", "json").stdout
    )
    return config


def make(
    *args: str, cwd: Path = REPO_ROOT, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    # The test's own interpreter stands in for .venv, and is never rebuilt by the $(PY) rule.
    venv = Path(sys.executable).parent.parent
    return subprocess.run(
        ["make", "--no-print-directory", f"VENV={venv}", "-o", f"{venv}/bin/python", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env if env is not None else compose_env(),
    )


def host_of(url: str) -> tuple[str, int]:
    parsed = httpx.URL(url)
    return parsed.host, parsed.port or 80


# --------------------------------------------------------------------------------- static tests


def test_every_stack_file_is_there() -> None:
    present = {p.name for p in REPO_ROOT.glob("docker-compose*.yml")}
    assert present == {*STACK_FILES, SHARED_FILE}


@pytest.mark.parametrize("file", sorted(STACK_FILES), ids=sorted(STACK_FILES))
@pytest.mark.parametrize(
    "options",
    [[], ["--profile", "tunnel"], ["--env-file", str(ENV_EXAMPLE)]],
    ids=["plain", "tunnel", "env-example"],
)
def test_compose_config_accepts_the_file(compose_cli: None, file: str, options: list[str]) -> None:
    compose("-f", file, *options, "config", "--quiet")


def test_the_shared_file_is_valid_and_starts_nothing(compose_cli: None) -> None:
    assert resolved(SHARED_FILE).get("services", {}) == {}


@pytest.mark.parametrize("file", sorted(STACK_FILES), ids=sorted(STACK_FILES))
def test_services_are_hardened_and_health_checked(compose_cli: None, file: str) -> None:
    config = resolved(file)
    services: dict[str, Any] = config["services"]
    assert set(services) == MAIN_SERVICES[file] | SIDECARS | (ONE_SHOT & set(services))
    assert set(config["networks"]) == {"slimllm"}
    # One models volume for every stack that stores models (the chat alone stores none).
    assert config.get("volumes", {}) in ({}, {"models": {"name": "slimllm-models"}})

    for name, service in services.items():
        where = f"{file}: {name}"
        assert service["read_only"] is True, where
        assert service["cap_drop"] == ["ALL"], where
        assert "no-new-privileges:true" in service["security_opt"], where
        limits = service["deploy"]["resources"]["limits"]
        assert int(limits["memory"]) > 0 and limits["pids"] > 0, where
        assert service["image"].startswith("slimllm/") and service["image"].endswith(":local"), where
        # Images come from the one build definition (docker-bake.hcl), not from compose.
        assert "build" not in service, where

        # The health check is the image's own (one definition, in its Dockerfile), and runs a
        # program that the image has: never curl or wget, which the slim images leave out.
        assert "healthcheck" not in service, where
        dockerfile = SERVICE_DOCKERFILES[service["image"].split("/")[1].split(":")[0]]
        checks = re.findall(r"(?ms)^HEALTHCHECK .*?CMD \[\"([^\"]+)\"", dockerfile.read_text())
        if name in ONE_SHOT:
            assert service["restart"] == "no" and not checks, where
            continue
        assert service["restart"] == "unless-stopped", where
        assert "slimllm" in service["networks"], where
        assert len(checks) == 1 and checks[0] not in ("curl", "wget"), f"{where}: {checks}"

        for dependency, condition in service.get("depends_on", {}).items():
            expected = "service_completed_successfully" if dependency in ONE_SHOT else "service_healthy"
            assert condition["condition"] == expected, f"{where} -> {dependency}"

    # The tunnel is the only optional part; everything else starts without a profile.
    assert {n for n, s in services.items() if s.get("profiles")} == {"tunnel"}
    assert services["tunnel"]["profiles"] == ["tunnel"]


def assert_logs_rotated(services: dict[str, Any], where: str) -> None:
    """Each service logs to Docker's json-file driver with a size cap and a file count, so that
    what clients make a service log cannot fill the host's disk (issue 28)."""
    assert services, where
    for name, service in services.items():
        logging = service.get("logging", {})
        assert logging.get("driver") == "json-file", f"{where}: {name} has no rotated log: {logging}"
        options = logging.get("options", {})
        size = re.fullmatch(r"(\d+)([kmg])", str(options.get("max-size", "")))
        assert size and int(size[1]) > 0, f"{where}: {name}: max-size {options.get('max-size')!r}"
        assert int(options.get("max-file", 0)) >= 1, f"{where}: {name}: max-file {options.get('max-file')!r}"


@pytest.mark.parametrize("file", sorted(STACK_FILES), ids=sorted(STACK_FILES))
def test_every_service_of_every_stack_rotates_its_log(compose_cli: None, file: str) -> None:
    assert_logs_rotated(resolved(file)["services"], file)


@pytest.mark.parametrize("chat", [True, False], ids=["chat", "no-chat"])
def test_every_service_of_a_rendered_stack_rotates_its_log(
    compose_cli: None, tmp_path: Path, chat: bool
) -> None:
    """The projects `slimllm stack up` (the serve action) renders: every model, the chat, the
    tunnel and the monitor."""
    from slimllm.runner import compose as stack_compose

    project = stack_compose.Project(
        name="logs",
        models=[
            stack_compose.Model("qwen", {"SLIMLLM_PRESET": "qwen"}, 8080),
            stack_compose.Model("t2.5", {}, 8081),
        ],
        models_dir=tmp_path,
        images={"inference": "i:1", "chat": "c:1", "tunnel": "t:1", "monitor": "m:1"},
        chat_port=8000 if chat else None,
        tunnel_metrics_port=20241,
        monitor=True,
    )
    file = stack_compose.write(project, tmp_path)
    services = json.loads(compose("-f", str(file), "config", "--format", "json").stdout)["services"]
    assert set(services) == {"qwen", "t2.5", "tunnel", "monitor"} | ({"chat"} if chat else set())
    assert_logs_rotated(services, "rendered stack")
    # A model whose service name has a dot answers to it (the gateway and the monitor use it).
    assert services["t2.5"]["environment"]["SLIMLLM_ALLOWED_HOSTS"] == "t2.5,"
    assert services["qwen"]["environment"]["SLIMLLM_ALLOWED_HOSTS"] == ""


def test_log_rotation_is_written_once() -> None:
    """One definition: services.yml; no stack file sets a logging driver of its own."""
    assert SERVICES_FILE.read_text().count("max-size:") == 1
    for path in REPO_ROOT.glob("docker-compose*.yml"):
        assert "logging:" not in path.read_text(), path.name


@pytest.mark.parametrize("file", sorted(STACK_FILES), ids=sorted(STACK_FILES))
def test_sidecars_point_at_the_stack_own_services(compose_cli: None, file: str) -> None:
    services = resolved(file)["services"]
    main = MAIN_SERVICES[file]
    ports = {name: int(s["ports"][0]["target"]) for name, s in services.items() if s.get("ports")}

    def check(url: str, what: str) -> str:
        host, port = host_of(url)
        assert host in services and ports.get(host) == port, f"{file}: {what} {url} is not a service here"
        return host

    tunnel = services["tunnel"]
    assert tunnel["environment"]["TUNNEL_TOKEN"] == ""
    origin = check(tunnel["environment"]["TUNNEL_URL"], "the tunnel's origin")
    assert origin in main and tunnel["depends_on"] == {
        origin: {"condition": "service_healthy", "required": True}
    }

    targets = services["monitor"]["environment"]["MONITOR_TARGETS"].split()
    watched = {check(t.partition("=")[2], "monitor target") for t in targets}
    assert watched == main
    assert set(services["monitor"]["depends_on"]) == main

    if "chat" in services and file != "docker-compose.chat-interface.yml":
        spec = services["chat"]["environment"]["SLIMLLM_CHAT_MODELS"]
        backends = {check(entry.partition("=")[2], "chat backend") for entry in spec.split(";")}
        assert backends == main - {"chat"}

    # `make health` finds each published service by its label.
    for name in main:
        port = services[name]["ports"][0]
        assert services[name]["labels"]["io.slimllm.health-url"] == f"http://127.0.0.1:{port['published']}"


def test_env_example_and_the_compose_files_name_the_same_variables() -> None:
    example = env_example()
    used: dict[str, set[str]] = {}
    for path in [*REPO_ROOT.glob("docker-compose*.yml"), SERVICES_FILE]:
        for name, default in VARIABLE.findall(path.read_text()):
            used.setdefault(name, set()).add(default)
    assert set(example) >= COMPOSE_OWN
    assert set(example) - COMPOSE_OWN == set(used), "variables in .env.example but not used, or the reverse"
    for name in SECRETS:
        assert example[name] == "", f"{name} is a secret: .env.example must leave it empty"
        assert used[name] == {""}, f"{name} is a secret: the compose files must not default it"
    # An untouched .env behaves like no .env: each value is the one default of the compose files.
    for name, defaults in used.items():
        assert len(defaults) == 1, f"{name} has several defaults: {defaults}"
        assert example[name] == defaults.pop(), f".env.example sets {name} to another value than its default"


def test_env_example_comments_every_group_and_variable() -> None:
    lines = ENV_EXAMPLE.read_text().splitlines()
    for index, line in enumerate(lines):
        if line and not line.startswith("#"):
            previous = [prev for prev in lines[:index] if prev]
            assert previous and (previous[-1].startswith("#") or "=" in previous[-1]), line


def test_model_init_writes_the_model_the_server_expects() -> None:
    dockerfile = (REPO_ROOT / "docker/model-init/Dockerfile").read_text()
    assert set(re.findall(r"ARG MODEL_SHA256=([0-9a-f]+)", dockerfile)) == {EMBEDDED_MODEL_SHA256}
    assert set(re.findall(r"ARG MODEL_NAME=(\S+)", dockerfile)) == {EMBEDDED_MODEL_NAME}


def test_make_help_lists_every_target() -> None:
    defined = set(re.findall(r"^([a-z][a-z0-9-]*):", (REPO_ROOT / "Makefile").read_text(), re.MULTILINE))
    assert defined >= MAKE_TARGETS
    result = make("help")
    assert result.returncode == 0, result.stderr
    listed = {re.sub(r"\x1b\[[0-9;]*m", "", line).split()[0] for line in result.stdout.splitlines() if line}
    assert listed == defined


def test_make_setup_creates_env_once(tmp_path: Path) -> None:
    shutil.copy(REPO_ROOT / "Makefile", tmp_path)
    shutil.copy(ENV_EXAMPLE, tmp_path)
    result = make("setup", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    env = tmp_path / ".env"
    assert env.read_text() == ENV_EXAMPLE.read_text()
    assert stat.S_IMODE(env.stat().st_mode) == 0o600, "the file holds secrets"

    env.write_text("TUNNEL_TOKEN=mine\n")
    result = make("setup", cwd=tmp_path)
    assert result.returncode == 0 and "exists" in result.stdout
    assert env.read_text() == "TUNNEL_TOKEN=mine\n"


# ---------------------------------------------------------------------------------- the stack


@dataclass
class Stack:
    project: str
    env: dict[str, str]
    chat: str
    inference: str

    def compose(
        self, *args: str, timeout: float = 300, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return compose("-p", self.project, *args, env=self.env, timeout=timeout, check=check)

    def states(self) -> dict[str, dict[str, Any]]:
        out = self.compose("ps", "--all", "--format", "json").stdout
        # One JSON object per line (compose >= 2.21) or one list.
        rows = (
            json.loads(out)
            if out.lstrip().startswith("[")
            else [json.loads(x) for x in out.splitlines() if x]
        )
        return {row["Service"]: row for row in rows}


@pytest.fixture(scope="module")
def stack(docker_client: Any, compose_cli: None, stack_images: dict[str, str]) -> Iterator[Stack]:
    """The default stack, as `docker compose up` starts it, on images built from this checkout."""
    project = f"slimllm-test-{RUN_ID}"
    chat_port, inference_port = free_port(), free_port()
    env = compose_env(
        SLIMLLM_MODELS_VOLUME=f"{project}-models",
        SLIMLLM_PUBLISH_CHAT=str(chat_port),
        SLIMLLM_PUBLISH_INFERENCE=str(inference_port),
        **stack_images,
    )
    s = Stack(project, env, f"http://127.0.0.1:{chat_port}", f"http://127.0.0.1:{inference_port}")
    try:
        yield s
    finally:
        result = s.compose("--profile", "tunnel", "down", "--volumes", "--remove-orphans", check=False)
        print(result.stdout + result.stderr, file=sys.stderr)


@pytest.mark.docker
@pytest.mark.slow
def test_default_stack_comes_up_healthy_and_answers(stack: Stack) -> None:
    started = time.monotonic()
    up = stack.compose("up", "--detach", "--wait", "--wait-timeout", "240", check=False)
    took = time.monotonic() - started
    states = stack.states()
    assert up.returncode == 0, f"{up.stdout}{up.stderr}\n{stack.compose('logs', '--no-color').stdout[-6000:]}"
    print(f"default stack healthy {took:.1f} s after `up`", file=sys.stderr)

    assert set(states) == {"model-init", "inference", "chat", "monitor"}, (
        "the tunnel is off without its profile"
    )
    assert states["model-init"]["State"] == "exited" and states["model-init"]["ExitCode"] == 0
    for name in ("inference", "chat", "monitor"):
        assert states[name]["Health"] == "healthy", (name, states[name])

    # The chat answers through its gateway, from the embedded model, via the inference server.
    assert httpx.get(stack.chat + "/health", timeout=10).json() == {"status": "ok", "models": {"gemma": "up"}}
    body = {"model": "gemma", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8}
    answer = httpx.post(stack.chat + "/v1/chat/completions", json=body, timeout=120)
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["message"]["content"]
    models = httpx.get(stack.inference + "/v1/models", timeout=10).json()
    assert [m["id"] for m in models["data"]] == ["gemma-3-270m"]

    # The health monitor sees both through the stack's network.
    logs = stack.compose("logs", "--no-color", "monitor").stdout
    assert re.search(r" UP chat=UP\(HTTP 200.* inference=UP\(HTTP 200", logs), logs

    # Every long-running container runs with a read-only root filesystem and as non-root.
    for name in ("inference", "chat", "monitor"):
        inspect = subprocess.run(["docker", "inspect", states[name]["ID"]], capture_output=True, text=True)
        attrs = json.loads(inspect.stdout)[0]
        assert attrs["HostConfig"]["ReadonlyRootfs"] is True, name
        assert attrs["Config"]["User"] not in ("", "root", "0"), name


@pytest.mark.docker
@pytest.mark.slow
def test_make_targets_act_on_the_running_stack(stack: Stack) -> None:
    stack.compose("up", "--detach", "--wait", "--wait-timeout", "240")
    project = f"PROJECT={stack.project}"

    ps = make("ps", project, env=stack.env)
    assert ps.returncode == 0, ps.stderr
    assert re.search(r"\binference\b.*\(healthy\)", ps.stdout) and re.search(
        r"\bchat\b.*\(healthy\)", ps.stdout
    )

    health = make("health", project, env=stack.env)
    assert health.returncode == 0, health.stdout + health.stderr
    for name, url in (("chat", stack.chat), ("inference", stack.inference)):
        assert re.search(rf"{stack.project}/{name}.*{re.escape(url)}.*up \(200\)", health.stdout), (
            health.stdout
        )
    assert "gemma-3-270m" in health.stdout and "2 of 2 up." in health.stdout

    stats = make("stats", project, env=stack.env)
    assert stats.returncode == 0 and f"{stack.project}-inference-1" in stats.stdout, stats.stderr

    logs = make("logs-all", project, "LOGS_ARGS=--no-color --tail 20", env=stack.env)
    assert logs.returncode == 0 and "model-init: " in logs.stdout, logs.stderr


@pytest.mark.docker
@pytest.mark.slow
def test_tunnel_profile_publishes_the_chat(
    stack: Stack, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    # The stand-in cloudflared takes the place of the real one: same Dockerfile, entrypoint and
    # health check, built before the test under its own tag.
    image = request.getfixturevalue("cloudflared_image")
    override = tmp_path / "tunnel-stand-in.yml"
    override.write_text(f"services:\n  tunnel:\n    image: {image}\n    pull_policy: never\n")
    files = ["-f", "docker-compose.yml", "-f", str(override)]
    stack.compose(*files, "--profile", "tunnel", "up", "--detach", "--wait", "--wait-timeout", "120")
    assert stack.states()["tunnel"]["Health"] == "healthy"

    url = make("tunnel-url", f"PROJECT={stack.project}", env=stack.env)
    assert url.returncode == 0, url.stderr
    assert re.fullmatch(r"https://test-double-[0-9a-f]{8}\.trycloudflare\.com\n", url.stdout), url.stdout

    # What the edge receives reaches the chat (the stand-in proxies its port 8080 to TUNNEL_URL).
    probe = (
        "import urllib.request as r; print(r.urlopen('http://tunnel:8080/health', timeout=5).read().decode())"
    )
    through = stack.compose("exec", "-T", "chat", "python3", "-c", probe).stdout
    assert json.loads(through)["status"] == "ok"

    stop = make("stop-all", f"PROJECT={stack.project}", env=stack.env, timeout=300)
    assert stop.returncode == 0, stop.stderr
    assert not stack.states(), "stop-all leaves no container behind"


@pytest.fixture
def hub_for_containers(docker_client: Any, default_model: Path) -> Iterator[tuple[str, str]]:
    """The stand-in Hub (tests/fakes/hf_hub.py) serving the qwen preset's file, on an address that
    containers reach: the default bridge's gateway, which is this host. The file is Gemma's: any
    GGUF does, and it is already here."""
    repo, filename = "Qwen/Qwen2.5-3B-Instruct-GGUF", "qwen2.5-3b-instruct-q4_k_m.gguf"
    body = default_model.read_bytes()
    assert len(body) == EMBEDDED_MODEL_SIZE
    gateway = docker_client.networks.get("bridge").attrs["IPAM"]["Config"][0]["Gateway"]
    with serve_hub({f"{repo}/{filename}": body}, host=gateway) as (url, _):
        yield url, filename


@pytest.mark.docker
@pytest.mark.slow
def test_a_hugging_face_model_stack_downloads_into_its_volume(
    stack: Stack, hub_for_containers: tuple[str, str], tmp_path: Path
) -> None:
    """docker-compose.qwen.yml on a fresh volume, without model-init: the server itself writes
    the download into the volume, and the Hub's cache beside it holds no second copy."""
    hub, filename = hub_for_containers
    project = f"{stack.project}-qwen"
    port = free_port()
    env = {**stack.env, "SLIMLLM_MODELS_VOLUME": f"{project}-models", "SLIMLLM_PUBLISH_QWEN": str(port)}
    override = tmp_path / "hub-stand-in.yml"
    # The stand-in serves Gemma's file under qwen's name: the digest the preset may pin is not its.
    override.write_text(
        f"services:\n  qwen:\n    environment:\n      HF_ENDPOINT: {hub}\n"
        f"      SLIMLLM_MODEL_SHA256: {EMBEDDED_MODEL_SHA256}\n"
    )
    files = ["-p", project, "-f", "docker-compose.qwen.yml", "-f", str(override)]
    try:
        up = compose(
            *files, "up", "--detach", "--wait", "--wait-timeout", "180", env=env, timeout=300, check=False
        )
        logs = compose(*files, "logs", "--no-color", env=env, check=False).stdout
        assert up.returncode == 0, f"{up.stdout}{up.stderr}\n{logs[-6000:]}"

        models = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=10).json()
        assert [m["id"] for m in models["data"]] == ["qwen2.5-3b-instruct"]
        # One file, two names: /models/<file> and the blob in the Hub's cache, hard-linked.
        probe = f"import os; s = os.stat('/models/{filename}'); print(s.st_size, s.st_nlink)"
        listing = compose(*files, "exec", "-T", "qwen", "python3", "-c", probe, env=env).stdout.split()
        assert listing == [str(EMBEDDED_MODEL_SIZE), "2"], listing
        assert re.search(r" UP qwen=UP\(HTTP 200", compose(*files, "logs", "monitor", env=env).stdout)
    finally:
        compose(*files, "down", "--volumes", "--remove-orphans", env=env, check=False)


def _project_files() -> list[Path]:
    """The repository's code and configuration (docs and tests aside), tracked or new."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    paths = [
        REPO_ROOT / name for name in listed if not name.startswith("tests/") and not name.endswith(".md")
    ]
    return [p for p in paths if p.is_file()]


@pytest.mark.parametrize(
    ("what", "pattern", "allowed"),
    [
        pytest.param(
            "a memory limit",
            r"^\s*memory:\s|mem_limit|--memory\b",
            {"src/slimllm/runner/services.yml"},
            id="memory",
        ),
        pytest.param(
            "a health check",
            r"(?i)^\s*healthcheck\b|healthcheck[=:]|^HEALTHCHECK ",
            set(SERVICE_DOCKERFILES[image].relative_to(REPO_ROOT).as_posix() for image in SERVICE_DOCKERFILES)
            - {"docker/model-init/Dockerfile"},
            id="health-check",
        ),
        pytest.param(
            "preset parsing",
            r"(?s)\A(?=.*preset).*(partition\(\"=\"\)|split\(\"=\"|cut -d=|IFS==)",
            {"src/slimllm/presets/__init__.py"},
            id="presets",
        ),
    ],
)
def test_one_definition(what: str, pattern: str, allowed: set[str]) -> None:
    """grep finds each of these in one place: the one the rest derives from."""
    regex = re.compile(pattern, re.MULTILINE)
    found = set()
    for path in _project_files():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        if regex.search(text):
            found.add(path.relative_to(REPO_ROOT).as_posix())
    assert found == allowed, f"{what} is defined in {sorted(found)}"
