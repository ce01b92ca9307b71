"""Serve step start -> first token: published images against a build on a BuildKit cache miss.

Two paths to a served model, in one run, with the model already in the models cache:

- build: the images built as actions/build builds them (`slimllm images build`, docker-bake.hcl)
  with no build cache and cold cache mounts, then the serve step, then the first token;
- published: the images of a release in a real OCI registry (127.0.0.1:5000, Debian's
  docker-registry, scripts/install-registry.sh), pinned by digest in an images.json as
  `slimllm images record` writes it, pulled by the serve step into an empty image store, then the
  first token.

The serve step is `slimllm stack up` with the environment actions/serve's Start step sets (the
`default` model, the health monitor on, no chat, no tunnel), so it serves the inference and
health-monitor images; the first token is that of a streamed chat completion to the served model.

Each path runs on a throwaway Docker engine of its own (dockerd with its own data root, exec
root, socket, bridge and address pool), so each really starts from an empty image store and an
empty build cache, and the machine's engine is never stopped, pruned or changed: it only lends
debian:bookworm-slim to the build (`docker save | docker load`, timed, not counted: a runner pulls
it in seconds). The release is published from the build path's engine after its measurement, with
the release workflow's CLI steps (`slimllm images build --push`, `slimllm images record`); what
it pushes is removed from the registry at the end. Prints one JSON document (and writes it with
--out): the seconds of each path, their breakdown, the ratio published / build, image bytes, the
machine and the date.

    python bench/serve.py --out bench/results/serve.json

Run as root (it starts dockerd, makes a bridge and adds NAT rules for the throwaway engines'
addresses, all removed at the end, also on failure or Ctrl-C). The build path compiles llama.cpp:
minutes. `--only published` skips it and publishes from the machine's engine instead (its warm
cache makes that quick), to try the published path alone.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

import docker

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import CA_BUNDLE, REPO, chat_ttft, cpu_model, emit, models_dir, utc_now

from slimllm.model import ModelSource, fetch
from slimllm.runner import released

REGISTRY = "127.0.0.1:5000"
# The images the serve step runs with the action's defaults (monitor on, no chat, no tunnel).
IMAGES = ("inference", "health-monitor")
BASE_IMAGE = "debian:bookworm-slim"
QUESTION = "What is the capital of France? Answer in one sentence."
# stack up's line for each pinned image it made present (slimllm.runner.released.pull_pinned).
READY = re.compile(
    r"^(?P<image>[\w-]+): (?P<ref>\S+) \((?P<tag>[^,]+), [\d.]+ MB\) ready in (?P<s>[\d.]+) s$"
)
MANIFESTS = ", ".join(
    [
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
)


def note(message: str) -> None:
    """Progress on stderr: stdout carries the JSON document only."""
    print(f"[bench/serve] {message}", file=sys.stderr, flush=True)


class StepFailed(RuntimeError):
    pass


# -- throwaway engines ---------------------------------------------------------------------------


@dataclass
class Engine:
    label: str
    host: str  # DOCKER_HOST of its socket
    network: ipaddress.IPv4Network  # every address it hands out
    client: Any
    config_dir: Path  # the docker CLI's own config (buildx state), so ~/.docker stays as it is

    @property
    def env(self) -> dict[str, str]:
        return {"DOCKER_HOST": self.host, "DOCKER_CONFIG": str(self.config_dir)}


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=120)


def _free_network(taken: set[ipaddress.IPv4Network]) -> ipaddress.IPv4Network:
    """A 10.N.0.0/16 that no route, interface or other engine of this run uses: the engines'
    networks must not shadow the machine's (its engine takes 172.17-31 and 192.168 by default)."""
    routes = _run("ip", "-4", "-j", "route", "show", "table", "all").stdout
    addresses = _run("ip", "-4", "-j", "addr").stdout
    used: set[ipaddress.IPv4Network | ipaddress.IPv6Network] = set(taken)
    for route in json.loads(routes or "[]"):
        with contextlib.suppress(ValueError):
            if route.get("dst") not in (None, "default"):
                used.add(ipaddress.ip_network(route["dst"], strict=False))
    for link in json.loads(addresses or "[]"):
        for info in link.get("addr_info", []):
            used.add(ipaddress.ip_network(f"{info['local']}/{info['prefixlen']}", strict=False))
    with contextlib.suppress(OSError):
        for line in Path("/etc/resolv.conf").read_text().splitlines():
            if line.startswith("nameserver"):
                with contextlib.suppress(ValueError):
                    used.add(ipaddress.ip_network(line.split()[1]))
    for second in range(213, 250):
        candidate = ipaddress.IPv4Network(f"10.{second}.0.0/16")
        if not any(candidate.overlaps(other) for other in used if other.version == 4):
            return candidate
    raise StepFailed("no free 10.N.0.0/16 for a throwaway engine")


def _nat_rules(network: ipaddress.IPv4Network, comment: str) -> list[tuple[str, str, list[str]]]:
    """What the engine's own iptables management would add for its containers (outbound NAT and
    forwarding, which builds and the stack network need), scoped to its addresses, as (table,
    chain, rule); the engine itself runs with --iptables=false so that it never rewrites the
    chains the machine's engine owns."""
    tag = ["-m", "comment", "--comment", comment]
    net = str(network)
    established = ["-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED"]
    return [
        ("nat", "POSTROUTING", ["-s", net, "!", "-d", net, "-j", "MASQUERADE", *tag]),
        ("filter", "FORWARD", ["-s", net, "-j", "ACCEPT", *tag]),
        ("filter", "FORWARD", ["-d", net, *established, "-j", "ACCEPT", *tag]),
    ]


def _iptables(action: str, rule: tuple[str, str, list[str]]) -> subprocess.CompletedProcess[str]:
    table, chain, spec = rule
    return _run("iptables", "-t", table, action, chain, *spec, check=False)


def _mounts_under(*roots: Path) -> list[str]:
    found = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            point = line.split()[4].replace("\\040", " ")
            if any(point == str(r) or point.startswith(f"{r}/") for r in roots):
                found.append(point)
    return sorted(found, key=len, reverse=True)


@contextlib.contextmanager
def scratch_engine(label: str, token: str, work: Path, taken: set[ipaddress.IPv4Network]) -> Iterator[Engine]:
    """A dockerd of its own: empty image store, empty build cache, its own containerd namespace,
    bridge and addresses. Everything it made is removed afterwards, whatever happened."""
    dockerd = shutil.which("dockerd")
    if dockerd is None or os.geteuid() != 0:
        raise StepFailed("a throwaway engine needs dockerd and root")
    root = work / label
    data_root, config_dir = root / "data", root / "docker-config"
    # Short: containerd's sockets live under it, and a socket path has at most 107 characters.
    exec_root = Path(f"/run/slb-{token}-{label[0]}")
    bridge = f"slb-{token}-{label[0]}"
    network = _free_network(taken)
    taken.add(network)
    subnets = list(network.subnets(new_prefix=17))
    gateway = f"{list(subnets[1].subnets(new_prefix=24))[-1][1]}/24"
    comment = f"slimllm-bench-serve-{token}"
    rules = _nat_rules(network, comment)
    for path in (data_root, config_dir):
        path.mkdir(parents=True, exist_ok=True)
    daemon_json = root / "daemon.json"
    daemon_json.write_text("{}\n")  # not /etc/docker/daemon.json: nothing of the machine's settings
    log = root / "dockerd.log"
    process: subprocess.Popen[bytes] | None = None
    client: Any = None
    added: list[tuple[str, str, list[str]]] = []
    try:
        _run("ip", "link", "add", "name", bridge, "type", "bridge")
        _run("ip", "addr", "add", gateway, "dev", bridge)
        _run("ip", "link", "set", bridge, "up")
        for rule in rules:
            result = _iptables("-A", rule)
            if result.returncode != 0:
                raise StepFailed(f"iptables -A {rule[1]} {' '.join(rule[2])}: {result.stderr.strip()}")
            added.append(rule)
        sock = root / "docker.sock"
        argv = [
            dockerd,
            f"--config-file={daemon_json}",
            f"--data-root={data_root}",
            f"--exec-root={exec_root}",
            f"--pidfile={root / 'docker.pid'}",
            f"--host=unix://{sock}",
            # A bridge of its own, not --bridge=none: with the default bridge disabled (or a stale
            # one in its store and an address pool set), dockerd deletes the host's docker0, the
            # machine engine's bridge (moby's removeDefaultBridgeInterface). Builds need a bridge
            # network anyway: BuildKit's RUN steps run on the engine's default one.
            f"--bridge={bridge}",
            f"--default-address-pool=base={subnets[0]},size=24",
            "--iptables=false",
            "--ip6tables=false",
            "--ip-masq=false",
            "--ip-forward=false",
            f"--containerd-namespace=slimllm-bench-{token}-{label}",
            f"--containerd-plugins-namespace=slimllm-bench-{token}-{label}-plugins",
            "--log-level=warn",
        ]
        with log.open("wb") as out:
            # A session of its own: a Ctrl-C in the terminal reaches this script, which then stops
            # the engine in order, not the engine directly.
            process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while client is None:
            try:
                # The SDK asks the engine its API version at once: no client before it answers.
                client = docker.DockerClient(base_url=f"unix://{sock}", timeout=600)
            except docker.errors.DockerException:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise StepFailed(f"dockerd ({label}) did not start:\n{log.read_text()[-2000:]}") from None
                time.sleep(0.2)
        note(f"engine {label}: unix://{sock}, addresses {network}, data root {data_root}")
        yield Engine(label, f"unix://{sock}", network, client, config_dir)
    finally:
        # No second Ctrl-C in the middle of the clean-up: it would leave half an engine behind.
        handlers = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            _stop_engine(label, process, client)
            for point in _mounts_under(data_root, exec_root):
                _run("umount", "-l", point, check=False)
            shutil.rmtree(root, ignore_errors=True)
            shutil.rmtree(exec_root, ignore_errors=True)
            _remove_links(network, bridge)
            for rule in added:
                _iptables("-D", rule)
            note(f"engine {label}: removed")
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)


def _stop_engine(label: str, process: subprocess.Popen[bytes] | None, client: Any) -> None:
    if client is not None:
        # Containers and networks first: an engine that just stops leaves the bridges of its
        # networks behind (they outlive it, for its next start).
        with contextlib.suppress(Exception):
            for container in client.containers.list(all=True):
                container.remove(force=True, v=True)
            client.networks.prune()
        client.close()
    if process is not None and process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=90)
        except subprocess.TimeoutExpired:
            note(f"engine {label}: dockerd did not stop in 90 s; killing it")
            process.kill()
            process.wait(timeout=30)


def _remove_links(network: ipaddress.IPv4Network, bridge: str) -> None:
    """The engine's bridge and any interface left with one of its addresses."""
    names = {bridge}
    listed = _run("ip", "-4", "-j", "addr", check=False).stdout
    for link in json.loads(listed or "[]"):
        for info in link.get("addr_info", []):
            if ipaddress.ip_address(info["local"]) in network:
                names.add(link["ifname"])
    for name in sorted(names):
        _run("ip", "link", "del", name, check=False)


# -- the steps ------------------------------------------------------------------------------------


@dataclass
class Step:
    began: float
    ended: float
    lines: list[tuple[float, str]]  # each line of output and when it came, since `began`

    @property
    def seconds(self) -> float:
        return self.ended - self.began

    @property
    def output(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def at(self, prefix: str) -> float | None:
        """When the first line starting with `prefix` came, in seconds since the step began."""
        return next((t for t, line in self.lines if line.startswith(prefix)), None)


def step_env(engine: Engine | None, config_dir: Path, variables: Mapping[str, str]) -> dict[str, str]:
    """The environment of a step: this checkout's slimllm, the engine, and the step's own
    variables; the caller's SLIMLLM_* and Docker settings are left out so that they change nothing."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("SLIMLLM_", "DOCKER_", "BUILDX_", "GITHUB_", "RUNNER_"))
    }
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))
    # Each line as it is written, so that its arrival time says when that part of the step ended.
    env["PYTHONUNBUFFERED"] = "1"
    env["DOCKER_CONFIG"] = str(config_dir)
    if engine is not None:
        env.update(engine.env)
    env.update(variables)
    return env


def run_step(what: str, args: list[str], env: Mapping[str, str], logs: Path, timeout: float) -> Step:
    """`slimllm ARGS` as an action step runs it; each output line timed and logged, the log's
    tail shown on failure."""
    log = logs / (re.sub(r"[^a-z0-9]+", "-", what.lower()).strip("-") + ".log")
    note(f"{what}: slimllm {' '.join(args)} (log {log})")
    lines: list[tuple[float, str]] = []
    with log.open("w") as out:
        began = time.monotonic()
        with subprocess.Popen(
            [sys.executable, "-m", "slimllm", *args],
            cwd=REPO,
            env=dict(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        ) as process:
            timer = threading.Timer(timeout, process.kill)
            timer.start()
            try:
                assert process.stdout is not None
                for line in process.stdout:
                    now = time.monotonic() - began
                    lines.append((now, line.rstrip("\n")))
                    out.write(f"{now:8.2f} {line}")
                returncode = process.wait()
            finally:
                timer.cancel()
        ended = time.monotonic()
    step = Step(began, ended, lines)
    if returncode != 0:
        tail = step.output[-4000:]
        raise StepFailed(f"{what} failed (exit status {returncode}); the end of {log}:\n{tail}")
    note(f"{what}: {step.seconds:.1f} s")
    return step


def serve_variables(stack: str, port: int, models: Path, release_file: Path) -> dict[str, str]:
    """actions/serve's Start step, with the action's defaults (models: default, monitor: true,
    chat and tunnel off, wait-timeout 900) and no image given: the released ones, or
    slimllm/IMAGE:local when the images file records no release."""
    return {
        "SLIMLLM_STACK_NAME": stack,
        "SLIMLLM_PRESETS": "default",
        "SLIMLLM_MODEL_REPO": "",
        "SLIMLLM_MODEL_FILE": "",
        "SLIMLLM_MODEL_REVISION": "",
        "SLIMLLM_MODEL_SHA256": "",
        "SLIMLLM_MODEL_ALIAS": "",
        "SLIMLLM_CHAT_FORMAT": "",
        "SLIMLLM_MODELS_DIR": str(models.resolve()),
        "SLIMLLM_CHAT": "false",
        "SLIMLLM_TUNNEL": "false",
        "SLIMLLM_MONITOR": "true",
        "SLIMLLM_INFERENCE_IMAGE": "",
        "SLIMLLM_CHAT_IMAGE": "",
        "SLIMLLM_CLOUDFLARED_IMAGE": "",
        "SLIMLLM_MONITOR_IMAGE": "",
        "SLIMLLM_RELEASED_IMAGES": str(release_file),
        "SLIMLLM_PORT": str(port),
        "SLIMLLM_CHAT_PORT": str(_free_port()),
        "SLIMLLM_THREADS": "",
        "SLIMLLM_WAIT_TIMEOUT": "900",
        "TUNNEL_TOKEN": "",
        "SLIMLLM_API_KEY": "",
        "SLIMLLM_CHAT_API_KEY": "",
        "HF_TOKEN": "",
    }


def build_variables(
    images: str, *, push: bool = False, registry: str = "slimllm", tags: str = "local", version: str = ""
) -> dict[str, str]:
    """actions/build's Build step (cache none: the cache miss), the host CA as the BuildKit secret
    `ca` through docker-bake.hcl's SLIMLLM_BUILD_CA, as make and the tests hand it."""
    return {
        "SLIMLLM_IMAGES": images,
        "SLIMLLM_PLATFORMS": _native_platform() if push else "",
        "SLIMLLM_PUSH": "true" if push else "false",
        "SLIMLLM_REGISTRY": registry,
        "SLIMLLM_TAGS": tags,
        "SLIMLLM_CACHE": "none",
        "SLIMLLM_CACHE_DIR": "",
        "SLIMLLM_BUILD_ARGS": "",
        "SLIMLLM_SECRETS": "",
        "SLIMLLM_SECRET_FILES": "",
        "SLIMLLM_SOURCE_DIR": str(REPO),
        "SLIMLLM_VERSION": version,
        "SLIMLLM_BUILD_CA": str(CA_BUNDLE) if CA_BUNDLE.is_file() else "",
    }


def _native_platform() -> str:
    machine = platform.machine()
    return "linux/arm64" if machine in ("aarch64", "arm64") else "linux/amd64"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Served:
    up: Step
    first_token_s: float
    total_s: float  # serve step start -> first token


def serve_and_ask(
    engine: Engine, stack: str, models: Path, release_file: Path, config_dir: Path, logs: Path
) -> Served:
    """The serve step, then at once the first token from the served model; the stack is removed
    afterwards (not timed)."""
    port = _free_port()
    env = step_env(engine, config_dir, serve_variables(stack, port, models, release_file))
    try:
        up = run_step(f"serve ({engine.label})", ["stack", "up"], env, logs, timeout=1800)
        asked = time.monotonic()
        first = chat_ttft(f"http://127.0.0.1:{port}", [{"role": "user", "content": QUESTION}], 8)
        total = asked + first - up.began
        note(f"first token ({engine.label}): {first:.2f} s after the request, {total:.1f} s after the step")
        return Served(up, first, total)
    finally:
        with contextlib.suppress(StepFailed, subprocess.TimeoutExpired):
            run_step(f"serve down ({engine.label})", ["stack", "down"], env, logs, timeout=300)


def serve_phases(up: Step) -> dict[str, float]:
    """The serve step in parts, from when `stack up` printed what (slimllm.runner.stack.up):
    images (the CLI's start, and for a release the registry checks and pulls), model (the
    models cache checked), start (compose up --wait: the containers created, started and
    healthy), report (the health probe and the summary)."""
    model, compose, serving = (
        up.at(p) for p in ("== model ", "== compose project ", "### slimllm is serving")
    )
    if model is None or compose is None or serving is None:
        return {}
    return {
        "images_s": model,
        "model_s": compose - model,
        "start_to_healthy_s": serving - compose,
        "report_s": up.seconds - serving,
    }


def build_seconds(built: Step) -> dict[str, float]:
    """Each image's part of the build step: from its `== build IMAGE` heading
    (slimllm.runner.images.run_build) to the next one, or to the step's end."""
    starts = [(t, line.split()[2]) for t, line in built.lines if line.startswith("== build ")]
    ends = [t for t, _ in starts[1:]] + [built.seconds]
    return {image: end - start for (start, image), end in zip(starts, ends, strict=True)}


def pull_seconds(output: str) -> dict[str, float]:
    return {m["image"]: float(m["s"]) for m in map(READY.match, output.splitlines()) if m}


def retries(output: str) -> list[str]:
    """stack up's notes of failed attempts it retried (slimllm.runner.released._retry)."""
    return [line for line in output.splitlines() if "; retrying" in line]


def copy_base_image(engine: Engine, config_dir: Path) -> float:
    """debian:bookworm-slim from the machine's engine (read only) into `engine`, as a pull would
    make it present on a runner: no registry here serves it."""
    began = time.monotonic()
    main_env = step_env(None, config_dir, {})
    load_env = step_env(engine, config_dir, {})
    with subprocess.Popen(
        ["docker", "image", "save", BASE_IMAGE], stdout=subprocess.PIPE, env=main_env
    ) as save:
        loaded = subprocess.run(
            ["docker", "image", "load", "-q"], stdin=save.stdout, capture_output=True, text=True, env=load_env
        )
        if save.stdout:
            save.stdout.close()
    if save.returncode != 0 or loaded.returncode != 0:
        raise StepFailed(
            f"copying {BASE_IMAGE} into the build engine failed: {loaded.stderr.strip()} "
            f"(is it in the machine's engine? make base-image)"
        )
    return time.monotonic() - began


def image_bytes(client: Any, refs: Mapping[str, str]) -> dict[str, int]:
    return {image: int(client.images.get(ref).attrs["Size"]) for image, ref in refs.items()}


def pulled_bytes(pinned: released.Pinned) -> int:
    """The compressed bytes a pull of `pinned` downloads: its manifest's config and layers."""
    repository = pinned.name.removeprefix(REGISTRY + "/")
    url = f"http://{REGISTRY}/v2/{repository}/manifests/"
    manifest = httpx.get(url + pinned.digest, headers={"Accept": MANIFESTS}, timeout=30).json()
    if "manifests" in manifest:  # an index: the entry of this machine's platform
        os_, arch = _native_platform().split("/")
        entry = next(
            m
            for m in manifest["manifests"]
            if m.get("platform", {}).get("architecture") == arch and m["platform"].get("os") == os_
        )
        manifest = httpx.get(url + entry["digest"], headers={"Accept": MANIFESTS}, timeout=30).json()
    return int(manifest["config"]["size"]) + sum(int(layer["size"]) for layer in manifest["layers"])


def unpublish(release: released.Release) -> None:
    """The release's manifests out of the registry (its blobs go with the registry's own garbage
    collection); best effort."""
    for pinned in release.images.values():
        repository = pinned.name.removeprefix(REGISTRY + "/")
        with contextlib.suppress(httpx.HTTPError):
            httpx.delete(f"http://{REGISTRY}/v2/{repository}/manifests/{pinned.digest}", timeout=30)


def remove_local(namespace: str) -> None:
    """Every reference under `namespace` in the machine's engine (no other image is touched)."""
    client = docker.from_env()
    for image in client.images.list():
        for ref in [*image.attrs.get("RepoTags", []), *image.attrs.get("RepoDigests", [])]:
            if ref.startswith(namespace + "/"):
                with contextlib.suppress(Exception):
                    client.images.remove(ref)


def publish(
    engine: Engine | None, namespace: str, tag: str, work: Path, config_dir: Path, logs: Path
) -> tuple[Path, float]:
    """The release workflow's CLI steps: build and push to the registry, then record the digests
    in an images.json. `engine` None: the machine's engine builds and pushes."""
    digests = work / "digests.json"
    variables = build_variables(",".join(IMAGES), push=True, registry=namespace, tags=tag, version=tag)
    env = step_env(engine, config_dir, variables)
    pushed = run_step("publish", ["images", "build", "--digests-file", str(digests)], env, logs, timeout=3600)
    release_file = work / "images.json"
    record = ["images", "record", "--digests-file", str(digests), "--tag", tag, "--file", str(release_file)]
    run_step("record", record, env, logs, timeout=300)
    return release_file, pushed.seconds


def _registry_version() -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        return _run("docker-registry", "--version").stdout.split()[-1]
    return ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--only",
        choices=["published", "build"],
        help="one path; published alone publishes from the machine's engine (for trying it out)",
    )
    parser.add_argument("--release", type=Path, help="an images.json already published: skip publishing")
    parser.add_argument("--keep-release", action="store_true", help="leave what was pushed in the registry")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)

    # SIGTERM (a CI timeout, kill) cleans up as Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    try:
        httpx.get(f"http://{REGISTRY}/v2/", timeout=5).raise_for_status()
    except httpx.HTTPError as exc:
        note(f"no registry answers on {REGISTRY} ({exc}): run scripts/install-registry.sh as root")
        return 2
    models = models_dir()
    model = fetch(ModelSource("default"), models)  # in the models cache before anything is timed
    token = secrets.token_hex(4)
    namespace = f"{REGISTRY}/slimllm-bench-{token}/slimllm"
    tag = f"bench-{token}"
    work = Path(tempfile.mkdtemp(prefix=f"slimllm-bench-serve-{token}-", dir="/var/tmp"))
    logs = Path(tempfile.mkdtemp(prefix=f"slimllm-bench-serve-{token}-logs-"))
    config_dir = work / "docker-config"
    config_dir.mkdir()
    note(f"run {token}: logs in {logs}")
    taken: set[ipaddress.IPv4Network] = set()
    loads = [os.getloadavg()[0]]
    result: dict[str, Any] = {
        "date": utc_now(),
        "machine": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9, 1),
            "kernel": platform.release(),
            "docker": docker.from_env().version()["Version"],
        },
        "model": model.name,
        "images": list(IMAGES),
        "serve_step": (
            "slimllm stack up with the environment of actions/serve's Start step (models: default, "
            "monitor: true, chat and tunnel off), started on an engine of its own with an empty "
            "image store; the model already in the models cache"
        ),
        "first_token": f"a streamed /v1/chat/completions ({QUESTION!r}, 8 tokens at most) right after it",
        "registry": {"address": REGISTRY, "distribution": _registry_version()},
    }
    release_file = args.release
    release = released.load(release_file) if release_file else released.Release("", {})
    published_from = f"{release_file}, published before" if release_file else ""
    try:
        if args.only != "published":
            with scratch_engine("build", token, work, taken) as engine:
                base_s = copy_base_image(engine, config_dir)
                build_env = step_env(engine, config_dir, build_variables(",".join(IMAGES)))
                built = run_step("build (cache miss)", ["images", "build"], build_env, logs, timeout=3600)
                served = serve_and_ask(
                    engine, f"slb-{token}", models, REPO / released.IMAGES_FILE, config_dir, logs
                )
                result["build"] = {
                    "seconds": built.seconds + served.total_s,
                    "breakdown": {
                        "build_s": built.seconds,
                        "pull_s": 0.0,
                        "up_s": served.up.seconds,
                        "first_token_s": served.first_token_s,
                    },
                    "up_phases": serve_phases(served.up),
                    "build_s_per_image": build_seconds(built),
                    "image_bytes": image_bytes(
                        engine.client, {image: f"slimllm/{image}:local" for image in IMAGES}
                    ),
                    "cache": "none: a new engine's empty BuildKit cache, cache mounts empty",
                    "base_image": {
                        "image": BASE_IMAGE,
                        "copied_in_s": base_s,
                        "counted": False,
                        "how": "docker save from the machine's engine | docker load, before the build step",
                    },
                    "serve_retries": retries(served.up.output),
                }
                loads.append(os.getloadavg()[0])
                if release_file is None:
                    release_file, _ = publish(engine, namespace, tag, work, config_dir, logs)
                    release = released.load(release_file)
                    published_from = "the build path's engine, after its measurement (its cache warm)"
        if args.only != "build":
            if release_file is None:
                try:
                    release_file, _ = publish(None, namespace, tag, work, config_dir, logs)
                    release = released.load(release_file)
                    published_from = "the machine's engine (its cache warm)"
                finally:
                    remove_local(namespace)
            with scratch_engine("published", token, work, taken) as engine:
                served = serve_and_ask(engine, f"slp-{token}", models, release_file, config_dir, logs)
                pulls = pull_seconds(served.up.output)
                result["published"] = {
                    "seconds": served.total_s,
                    "breakdown": {
                        "build_s": 0.0,
                        "pull_s": sum(pulls.values()),
                        "up_s": served.up.seconds,
                        "first_token_s": served.first_token_s,
                    },
                    "up_phases": serve_phases(served.up),
                    "pull_s_per_image": pulls,
                    "image_bytes": image_bytes(
                        engine.client, {name: p.ref for name, p in release.images.items()}
                    ),
                    "pulled_bytes": {name: pulled_bytes(p) for name, p in release.images.items()},
                    "refs": {name: p.ref for name, p in release.images.items()},
                    "published": (
                        "slimllm images build --push, then slimllm images record (the release "
                        f"workflow's CLI steps), untimed, from {published_from}"
                    ),
                    "serve_retries": retries(served.up.output),
                }
                loads.append(os.getloadavg()[0])
    except StepFailed as exc:
        note(str(exc))
        return 1
    finally:
        if release.images and not args.keep_release and not args.release:
            unpublish(release)
        shutil.rmtree(work, ignore_errors=True)

    result["machine"]["load_1m"] = [round(load, 2) for load in loads]
    result["notes"] = (
        "up_s is the whole serve step (pulls included); seconds = build_s + up_s + first_token_s "
        "from the step's start to the first token; the engines' own start is in neither"
    )
    if "published" in result and "build" in result:
        ratio = result["published"]["seconds"] / result["build"]["seconds"]
        result["ratio_published_to_build"] = ratio
        result["acceptance"] = {
            "published_at_most_a_tenth_of_build": ratio <= 0.1,
            "published_under_30_s": result["published"]["seconds"] < 30,
        }
    emit(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
