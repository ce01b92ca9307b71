"""Shared fixtures. Tests use the real parts: a Docker engine, real images, the real model.

A test that needs a part this machine lacks is skipped on a developer's machine, but fails when
CI=true, so that a CI run can never pass by silently testing less.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from slimllm.model import ModelSource, fetch

IN_CI = os.environ.get("CI", "").lower() == "true"
REPO_ROOT = Path(__file__).resolve().parent.parent
# The tag every image a test run builds gets (SLIMLLM_TEST_TAG): two checkouts testing on one engine
# at once keep their images apart.
TEST_TAG = os.environ.get("SLIMLLM_TEST_TAG", "test")


def require(condition: bool, reason: str) -> None:
    """Skip the test when `condition` is false; in CI, fail it instead."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"missing prerequisite in CI: {reason}", pytrace=False)
    pytest.skip(reason)


def docker_engine_error() -> str | None:
    """None when a Docker engine answers, else why not."""
    try:
        import docker
    except ImportError:
        return "the docker SDK is not installed (pip install 'slimllm[test]')"
    try:
        client = docker.from_env(timeout=10)
        client.ping()
        client.close()
    except Exception as exc:
        return f"no Docker engine answers ({type(exc).__name__}: {exc})"
    return None


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("docker") is not None:
        reason = docker_engine_error()
        require(reason is None, reason or "")


@pytest.fixture(scope="session")
def docker_client() -> Iterator[object]:
    reason = docker_engine_error()
    require(reason is None, reason or "")
    import docker

    client = docker.from_env(timeout=120)
    yield client
    client.close()


@pytest.fixture(scope="session")
def models_cache_dir() -> Path:
    """Models shared across test runs (SLIMLLM_TEST_MODELS_DIR, default ~/.cache/slimllm/test-models)."""
    path = Path(os.environ.get("SLIMLLM_TEST_MODELS_DIR", Path.home() / ".cache/slimllm/test-models"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def default_model(models_cache_dir: Path) -> Path:
    """The embedded Gemma 3 270M GGUF, assembled once and reused across runs."""
    return fetch(ModelSource("default"), models_cache_dir)


@pytest.fixture(scope="session")
def generated_models(models_cache_dir: Path) -> dict[str, Path]:
    """Tiny GGUFs of other architectures than Gemma (tests/ggufs.py), by kind, in
    models_cache_dir/generated: written once per session, a file left alone when its bytes match."""
    from tests.ggufs import write_models

    return write_models(models_cache_dir / "generated")


# The images the compose stacks run, by the variable that names each in services.yml, and the
# docker-bake.hcl target and the tag a test run builds them as (the same tags the image tests use,
# so each image is built once per run).
STACK_IMAGES = {
    "SLIMLLM_INFERENCE_IMAGE": ("inference", f"slimllm/inference:{TEST_TAG}"),
    "SLIMLLM_CHAT_IMAGE": ("chat-interface", f"slimllm/chat-interface:{TEST_TAG}"),
    "SLIMLLM_MONITOR_IMAGE": ("health-monitor", f"slimllm/health-monitor:{TEST_TAG}"),
    "SLIMLLM_MODEL_INIT_IMAGE": ("model-init", f"slimllm/model-init:{TEST_TAG}"),
}


@pytest.fixture(scope="session")
def stack_images(docker_client: object) -> dict[str, str]:
    """The stacks' images built from this checkout; the environment that points compose at them."""
    from tests.dockerutil import build_image

    for target, tag in STACK_IMAGES.values():
        build_image(target, tag)
    return {variable: tag for variable, (_, tag) in STACK_IMAGES.items()}
