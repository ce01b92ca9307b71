"""Building and running the project's images in tests: real `docker buildx bake`, real containers."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

from slimllm.runner.images import allow_args
from tests.conftest import REPO_ROOT

BAKE_FILE = REPO_ROOT / "docker-bake.hcl"
# This machine reaches PyPI only through a TLS-intercepting proxy; its CA bundle is handed to
# builds as the BuildKit secret `ca` (never a layer). Elsewhere the secret is simply the system bundle.
HOST_CA_BUNDLE = Path(os.environ.get("SLIMLLM_BUILD_CA", "/etc/ssl/certs/ca-certificates.crt"))
# docker-bake.hcl's variables for a test build: the bake file's defaults, whatever the caller's
# environment says, and the host's CA bundle.
BAKE_VARIABLES = {
    "REGISTRY": "slimllm",
    "TAG": "local",
    "PLATFORMS": "",
    "PUSH": "false",
    "CACHE": "none",
    "CACHE_DIR": "",
    "BASE_IMAGES": "",
    "SLIMLLM_BUILD_CA": str(HOST_CA_BUNDLE) if HOST_CA_BUNDLE.is_file() else "",
}


def bake(
    *args: str, variables: Mapping[str, str] | None = None, timeout: float = 1800
) -> subprocess.CompletedProcess[str]:
    """`docker buildx bake -f docker-bake.hcl ARGS` from the repository root."""
    ca = {**BAKE_VARIABLES, **(variables or {})}["SLIMLLM_BUILD_CA"]
    reads = [ca] if ca else []
    return subprocess.run(
        ["docker", "buildx", "bake", "-f", str(BAKE_FILE), "--progress=plain", *allow_args(reads), *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **BAKE_VARIABLES, **(variables or {})},
    )


def bake_print(*targets: str, **variables: str) -> dict[str, Any]:
    """The bake file's resolved definition of `targets` (`--print`), with `variables` set."""
    result = bake("--print", "--", *targets, variables=variables, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    printed: dict[str, Any] = json.loads(result.stdout)
    return printed


def base_images(platforms: str) -> str:
    """docker-bake.hcl's BASE_IMAGES for `platforms` on this machine (scripts/base-image-args.sh).

    The script decides, for make and for the tests alike: nothing where the registry's
    multi-platform debian:bookworm-slim serves every platform, the locally bootstrapped
    debian:bookworm-slim-<arch> for each foreign platform where it cannot be pulled.
    """
    result = subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / "base-image-args.sh"), platforms],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout.strip()


def buildx(*args: str, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    """`docker buildx build`, for the test doubles' images (tests/fakes), which bake does not define."""
    return subprocess.run(
        ["docker", "buildx", "build", "--progress=plain", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "DOCKER_BUILDKIT": "1"},
    )


def _exists(tag: str) -> bool:
    inspect = ["docker", "image", "inspect", "--format", "{{.Id}}", tag]
    return subprocess.run(inspect, capture_output=True, timeout=60).returncode == 0


# (target, tag, platform, build args) of the images this test run has built.
_BUILT: set[tuple[str, str, str, tuple[tuple[str, str], ...]]] = set()


def build_image(
    target: str,
    tag: str,
    *,
    build_args: Mapping[str, str] | None = None,
    platform: str | None = None,
    expect_failure: bool = False,
) -> subprocess.CompletedProcess[str] | None:
    """Build docker-bake.hcl's `target`, loaded as `tag`; raises with the build's tail on failure.

    Once per test run: building the same target as the same tag again returns None at once. With
    `expect_failure`, a failed build is returned and a successful one raises.
    """
    key = (target, tag, platform or "", tuple(sorted((build_args or {}).items())))
    if key in _BUILT and not expect_failure and _exists(tag):
        return None
    sets = [f"{target}.tags={tag}"]
    sets += [f"{target}.args.{name}={value}" for name, value in (build_args or {}).items()]
    variables = {"PLATFORMS": platform, "BASE_IMAGES": base_images(platform)} if platform else {}
    result = bake(*(arg for item in sets for arg in ("--set", item)), "--", target, variables=variables)
    output = (result.stdout + result.stderr)[-6000:]
    if expect_failure:
        if result.returncode == 0:
            raise AssertionError(f"building {tag} succeeded, but should have failed:\n{output}")
        return result
    if result.returncode != 0:
        raise AssertionError(f"building {tag} ({target}) failed:\n{output}")
    _BUILT.add(key)
    return result


def wait_for_http(url: str, *, timeout: float = 60, expect: int = 200) -> float:
    """Poll until `url` answers `expect`; return the seconds it took."""
    start = time.monotonic()
    last: object = None
    while time.monotonic() - start < timeout:
        try:
            response = httpx.get(url, timeout=2)
            if response.status_code == expect:
                return time.monotonic() - start
            last = f"{response.status_code} {response.text[:200]}"
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.05)
    raise AssertionError(f"{url} did not answer {expect} within {timeout} s (last: {last})")


def published_port(container: object, port: str) -> int:
    container.reload()  # type: ignore[attr-defined]
    bindings = container.attrs["NetworkSettings"]["Ports"][port]  # type: ignore[attr-defined]
    return int(bindings[0]["HostPort"])
