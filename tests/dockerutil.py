"""Building and running the project's images in tests: real `docker buildx`, real containers."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx

from tests.conftest import REPO_ROOT

# This machine reaches PyPI only through a TLS-intercepting proxy; its CA bundle is handed to
# builds as a BuildKit secret (never a layer). Elsewhere the secret is simply the system bundle.
HOST_CA_BUNDLE = Path(os.environ.get("SLIMLLM_BUILD_CA", "/etc/ssl/certs/ca-certificates.crt"))


def buildx(*args: str, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", "buildx", "build", "--progress=plain", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "DOCKER_BUILDKIT": "1"},
    )


def platform_args(platform: str) -> list[str]:
    """`--platform` and what a build for it needs here to start from the right Debian.

    scripts/base-image-args.sh decides, for make and for the tests alike: nothing where the
    registry's multi-platform debian:bookworm-slim serves every platform, the locally bootstrapped
    debian:bookworm-slim-<arch> as BASE_IMAGE where it cannot be pulled.
    """
    result = subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / "base-image-args.sh"), platform],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return ["--platform", platform, *result.stdout.split()]


def build_image(
    dockerfile: str,
    tag: str,
    *,
    context: Path = REPO_ROOT,
    build_args: Mapping[str, str] | None = None,
    platform: str | None = None,
    extra: Sequence[str] = (),
) -> subprocess.CompletedProcess[str]:
    """`docker buildx build --load`; raises with the build's tail on failure."""
    args = ["--load", "-f", str(REPO_ROOT / dockerfile), "-t", tag]
    if HOST_CA_BUNDLE.exists():
        args += ["--secret", f"id=ca,src={HOST_CA_BUNDLE}"]
    for key, value in (build_args or {}).items():
        args += ["--build-arg", f"{key}={value}"]
    if platform:
        args += platform_args(platform)
    result = buildx(*args, *extra, str(context))
    if result.returncode != 0:
        raise AssertionError(f"building {tag} failed:\n{(result.stdout + result.stderr)[-6000:]}")
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
