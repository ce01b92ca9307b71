"""The locally bootstrapped debian:bookworm-slim (scripts/bootstrap-base-image.sh)."""

from __future__ import annotations

import pytest

# `docker images` size of the official amd64 debian:bookworm-slim (about 74.8 MB); ours is built
# with debootstrap and must stay within 15 % so that image sizes built on it are comparable.
OFFICIAL_SLIM_BYTES = 74_800_000


@pytest.mark.docker
def test_base_image_is_present_and_comparable(docker_client) -> None:  # type: ignore[no-untyped-def]
    image = docker_client.images.get("debian:bookworm-slim")
    size = image.attrs["Size"]
    assert abs(size - OFFICIAL_SLIM_BYTES) / OFFICIAL_SLIM_BYTES <= 0.15, f"{size / 1e6:.1f} MB"


# What the official slim image lacks, checked inside the image (tests/test_multiarch.py runs it on
# the arm64 one too).
TRIMMED_CHECK = (
    'set -e; test -z "$(ls /var/lib/apt/lists)"; test -z "$(ls /usr/share/man)";'
    ' test -z "$(ls /usr/share/locale)"; ! find /usr/share/doc -type f ! -name copyright | grep -q .;'
    " grep -q VERSION_CODENAME=bookworm /etc/os-release; echo ok"
)


@pytest.mark.docker
def test_base_image_is_trimmed_like_the_official_one(docker_client) -> None:  # type: ignore[no-untyped-def]
    out = docker_client.containers.run("debian:bookworm-slim", ["bash", "-c", TRIMMED_CHECK], remove=True)
    assert out.strip() == b"ok"
