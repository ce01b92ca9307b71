"""linux/arm64 images, built from the same Dockerfiles and run here under QEMU user mode.

On an amd64 machine the arm64 containers run through the kernel's binfmt_misc handler for aarch64
(scripts/install-qemu.sh); where debian:bookworm-slim cannot be pulled, the Debian stages start
from the bootstrapped debian:bookworm-slim-arm64 (scripts/bootstrap-base-image.sh --arch arm64,
scripts/base-image-args.sh). Each image is checked to be arm64 in its config and in its binaries
(a Go binary built for the wrong GOARCH would run natively and pass every smoke test), then
started, seen healthy by its own HEALTHCHECK, and made to answer: the health monitor and the
cloudflared sidecar (on the stand-in cloudflared of tests/fakes) in front of the stand-in origin,
and the chat interface in front of the stand-in OpenAI backend of tests/fakes. The inference image
for arm64 is too slow to run under emulation in CI: bench/arm64-inference.py builds and asks it.
"""

from __future__ import annotations

import io
import json
import re
import struct
import subprocess
import tarfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from slimllm.cli import main
from tests.conftest import REPO_ROOT, TEST_TAG, require
from tests.dockerutil import base_images, build_image, published_port, wait_for_http
from tests.fakes.openai_backend import REPLY
from tests.test_base_image import TRIMMED_CHECK
from tests.test_chat import CHAT_IMAGE
from tests.test_sidecars import (
    FAKES_DIR,
    NON_ROOT_UID,
    PUBLISH,
    Rounds,
    Stack,
    build_ok,
    cloudflared_build_args,
    health,
    host_port,
    process_users_and_commands,
    served_release,
    stack,  # noqa: F401  (a fixture, reused as it is)
    wait_for,
)

ARCH = "arm64"
PLATFORM = f"linux/{ARCH}"
RUN_ID = uuid.uuid4().hex[:8]
EM_AARCH64 = 183  # ELF e_machine of AArch64
# Emulated processes start and answer several times slower than native ones.
HEALTHY_WITHIN_S = 90

# The chat image's budgets, per architecture, as .github/size-budgets.json defines them.
CHAT_BUDGETS = {
    name: budget
    for name, budget in json.loads((REPO_ROOT / ".github/size-budgets.json").read_text())["images"].items()
    if name == "slimllm/chat-interface"
}


@dataclass
class Images:
    monitor: str
    origin: str
    cloudflared: str
    chat: str


def elf_machine(client: Any, image: str, path: str) -> int:
    """e_machine of the ELF file at `path` in `image`, read from a created (never started) container."""
    container = client.containers.create(image, name=f"slimllm-ma-{RUN_ID}-{uuid.uuid4().hex[:4]}")
    try:
        stream, _ = container.get_archive(path)
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as archive:
            member = archive.next()
            assert member is not None and member.isfile(), f"{path} in {image} is not a regular file"
            handle = archive.extractfile(member)
            assert handle is not None
            header = handle.read(20)
    finally:
        container.remove(force=True)
    assert header[:4] == b"\x7fELF", f"{path} in {image} is not an ELF file"
    return int(struct.unpack_from("<H", header, 18)[0])


@pytest.fixture(scope="module")
def arm64_ready(docker_client: Any) -> None:
    """Emulation and an arm64 Debian: both provided by .ci/run; on arm64 itself, nothing is needed."""
    if docker_client.info()["Architecture"] == "aarch64":
        return
    handler = Path("/proc/sys/fs/binfmt_misc/qemu-aarch64")
    require(
        handler.exists() and "enabled" in handler.read_text(),
        "no binfmt_misc handler for aarch64: run `bash scripts/install-qemu.sh` as root",
    )
    require(
        base_images(PLATFORM) != "",
        "no debian:bookworm-slim-arm64 here: run `bash scripts/bootstrap-base-image.sh --arch arm64`",
    )


@pytest.fixture(scope="module")
def images(
    docker_client: Any, arm64_ready: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Images]:
    built = Images(
        monitor=f"slimllm-test-health-monitor:{RUN_ID}-{ARCH}",
        origin=f"slimllm-test-origin:{RUN_ID}-{ARCH}",
        cloudflared=f"slimllm-test-cloudflared:{RUN_ID}-{ARCH}",
        chat=f"slimllm/chat-interface:{TEST_TAG}-{ARCH}",
    )
    seconds: dict[str, float] = {}

    def timed(name: str, build: Any) -> None:
        start = time.monotonic()
        build()
        seconds[name] = round(time.monotonic() - start, 1)

    try:
        timed("health-monitor", lambda: build_image("health-monitor", built.monitor, platform=PLATFORM))
        timed(
            "origin",
            lambda: build_ok(
                "--load", "--platform", PLATFORM, "--target", "origin", "-t", built.origin, str(FAKES_DIR)
            ),
        )
        with served_release(docker_client, ARCH, tmp_path_factory.mktemp("release")) as release:
            timed(
                "cloudflared",
                lambda: build_image(
                    "cloudflared",
                    built.cloudflared,
                    platform=PLATFORM,
                    build_args=cloudflared_build_args(release, ARCH, release.sha256),
                ),
            )
        timed(
            "chat-interface",
            lambda: build_image("chat-interface", built.chat, platform=PLATFORM),
        )
        print(f"\narm64 build seconds: {json.dumps(seconds)}")
        yield built
    finally:
        for tag in (built.monitor, built.origin, built.cloudflared):
            try:
                docker_client.images.remove(tag, force=True)
            except Exception as exc:  # never built
                print(f"cleanup: {exc}")


# -------------------------------------------------------------------------- images are arm64


@pytest.mark.docker
def test_arm64_base_image_is_trimmed_like_the_official_one(docker_client: Any, arm64_ready: None) -> None:
    # On arm64 itself there is no BASE_IMAGE argument: the engine's own debian:bookworm-slim is arm64.
    pairs = dict(pair.split("=", 1) for pair in base_images(PLATFORM).split(",") if pair)
    tag = pairs.get(PLATFORM, "debian:bookworm-slim")
    assert docker_client.images.get(tag).attrs["Architecture"] == ARCH
    script = f"test $(uname -m) = aarch64; {TRIMMED_CHECK}"
    out = docker_client.containers.run(tag, ["bash", "-c", script], platform=PLATFORM, remove=True)
    assert out.strip() == b"ok"


@pytest.mark.docker
def test_every_image_is_arm64_in_config_and_binaries(docker_client: Any, images: Images) -> None:
    binaries = {
        images.monitor: ["/health-monitor"],
        images.origin: ["/origin"],
        images.cloudflared: ["/usr/local/bin/sidecar", "/usr/local/bin/cloudflared"],
        images.chat: ["/usr/bin/python3.11"],
    }
    for image, paths in binaries.items():
        inspected = subprocess.run(
            ["docker", "image", "inspect", "--format", "{{.Os}}/{{.Architecture}}", image],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        assert inspected == PLATFORM, f"{image}: {inspected}"
        for path in paths:
            assert elf_machine(docker_client, image, path) == EM_AARCH64, f"{path} in {image}"


@pytest.mark.docker
def test_sizes_per_architecture(docker_client: Any, images: Images, tmp_path: Path, capsys: Any) -> None:
    """The size report measures both chat images and holds each to its architecture's budget."""
    build_image("chat-interface", CHAT_IMAGE)  # built once: test_chat's image, if it ran
    budgets = tmp_path / "budgets.json"
    budgets.write_text(json.dumps({"images": CHAT_BUDGETS}))
    out = tmp_path / "sizes.json"
    args = ["report", "sizes", CHAT_IMAGE, images.chat, images.monitor, "--top-layers", "0"]
    status = main([*args, "--budgets", str(budgets), "--json-out", str(out)])
    report = json.loads(out.read_text())
    print(capsys.readouterr().out)
    native, arm64, monitor = report["images"]
    assert (arm64["arch"], monitor["arch"]) == (ARCH, ARCH) and native["arch"] != ARCH
    chat = CHAT_BUDGETS["slimllm/chat-interface"]
    assert native["budget"]["max_mb"] == chat["max_mb"] and native["budget"]["arch"] is None
    assert arm64["budget"]["max_mb"] == chat["arch"][ARCH]["max_mb"] and arm64["budget"]["arch"] == ARCH
    assert monitor["budget"] is None
    assert status == 0 and report["ok"], report["breaches"]


# ------------------------------------------------------------------- running under emulation


@pytest.mark.docker
def test_tunnel_and_monitor_run_healthy_and_answer(stack: Stack, images: Images) -> None:  # noqa: F811  (test_sidecars' fixture)
    stack.run(images.origin, "origin")
    tunnel = stack.run(
        images.cloudflared,
        "tunnel",
        environment={"TUNNEL_URL": f"http://{stack.name('origin')}:8080"},
        ports=PUBLISH,
    )
    monitor = stack.run(
        images.monitor,
        "monitor",
        environment={
            "MONITOR_TARGETS": (
                f"origin=http://{stack.name('origin')}:8080/health "
                f"tunnel=http://{stack.name('tunnel')}:20241/ready"
            ),
            "MONITOR_INTERVAL": "2s",
            "MONITOR_TIMEOUT": "1s",
            "MONITOR_FORMAT": "json",
        },
    )
    rounds = Rounds(monitor)
    rounds.until(lambda s: s == {"origin": "UP", "tunnel": "UP"}, HEALTHY_WITHIN_S, "origin and tunnel UP")
    wait_for(lambda: health(tunnel) == "healthy", HEALTHY_WITHIN_S, "the tunnel's HEALTHCHECK to pass")
    wait_for(lambda: health(monitor) == "healthy", HEALTHY_WITHIN_S, "the monitor's HEALTHCHECK to pass")
    assert [uid for uid, _ in process_users_and_commands(tunnel)] == [NON_ROOT_UID]

    # The quick tunnel's URL, then a request through its edge side to the origin.
    metrics = f"http://127.0.0.1:{host_port(tunnel, '20241/tcp')}"
    url = httpx.get(metrics + "/quicktunnel", timeout=10).json()["hostname"]
    assert re.fullmatch(r"test-double-[0-9a-f]{8}\.trycloudflare\.com", url), url
    answer = httpx.get(f"http://127.0.0.1:{host_port(tunnel, '8080/tcp')}/v1/models", timeout=10)
    assert answer.json() == {"origin": "test-double", "path": "/v1/models"}


@pytest.mark.docker
def test_chat_runs_healthy_and_answers(docker_client: Any, images: Images) -> None:
    network = docker_client.networks.create(f"slimllm-ma-{RUN_ID}")
    containers: list[Any] = []

    def run(role: str, port: str, **kwargs: Any) -> Any:
        container = docker_client.containers.run(
            images.chat,
            detach=True,
            name=f"slimllm-ma-{RUN_ID}-{role}",
            network=network.name,
            ports={port: ("127.0.0.1", None)},
            read_only=True,
            tmpfs={"/tmp": ""},
            **kwargs,
        )
        containers.append(container)
        return container

    try:
        fake = run(
            "fake",
            "8081/tcp",
            entrypoint=["python3", "/fakes/openai_backend.py", "--port", "8081"],
            volumes={str(REPO_ROOT / "tests" / "fakes"): {"bind": "/fakes", "mode": "ro"}},
        )
        chat = run(
            "chat",
            "8000/tcp",
            environment={
                "SLIMLLM_CHAT_MODELS": f"echo=http://slimllm-ma-{RUN_ID}-fake:8081/xss",
                "SLIMLLM_CHAT_POLL_INTERVAL": "1",
            },
        )
        base = f"http://127.0.0.1:{published_port(chat, '8000/tcp')}"
        wait_for_http(
            f"http://127.0.0.1:{published_port(fake, '8081/tcp')}/xss/health", timeout=HEALTHY_WITHIN_S
        )
        wait_for_http(base + "/health", timeout=HEALTHY_WITHIN_S)
        wait_for(lambda: health(chat) == "healthy", HEALTHY_WITHIN_S, "the chat's HEALTHCHECK to pass")
        wait_for(
            lambda: httpx.get(base + "/api/models", timeout=10).json()["models"][0]["status"] == "up",
            HEALTHY_WITHIN_S,
            "the chat to see its backend up",
        )
        response = httpx.post(
            base + "/v1/chat/completions",
            json={"model": "echo", "messages": [{"role": "user", "content": "Hi"}]},
            timeout=60,
        )
        assert response.status_code == 200, response.text
        assert response.json()["choices"][0]["message"]["content"] == REPLY
    finally:
        for container in containers:
            container.remove(force=True)
        network.remove()


# ------------------------------------------------------------- the arm64 inference Dockerfile

DOCKERFILE = REPO_ROOT / "app" / "inference" / "Dockerfile"


def stage(text: str, name: str) -> str:
    match = re.search(rf"^FROM .* AS {re.escape(name)}\n(.*?)(?=^FROM |\Z)", text, re.M | re.S)
    assert match, f"no stage {name} in {DOCKERFILE}"
    return match.group(1)


def test_cross_stage_computes_the_builders_wheel_key() -> None:
    """The cross-built arm64 wheel is found only under the key the builder computes for arm64."""
    text = DOCKERFILE.read_text()
    cross, builder = stage(text, "llama-cross"), stage(text, "builder")

    def line(body: str, start: str) -> str:
        [found] = [ln.strip() for ln in body.splitlines() if ln.strip().startswith(start)]
        return found

    for start in ('CMAKE_ARGS="-DGGML_NATIVE=OFF ${cpu}', "awk '/^llama-cpp-python==/{p=1}", "key=$("):
        assert line(cross, start) == line(builder, start), start
    assert 'arm64) cpu="" ;;' in builder and 'cpu="";' in cross
