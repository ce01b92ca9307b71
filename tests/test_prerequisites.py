"""In CI a missing prerequisite fails the run; on a developer's machine it skips.

The Docker engine is made unreachable by pointing DOCKER_HOST at a socket nobody serves, which is
what a stopped engine looks like to the client.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT


@pytest.mark.parametrize(
    ("ci", "expected_rc", "expected_text"),
    [
        pytest.param("true", 1, "missing prerequisite in CI", id="ci-fails"),
        pytest.param("", 0, "skipped", id="local-skips"),
    ],
)
def test_docker_tests_without_engine(tmp_path: Path, ci: str, expected_rc: int, expected_text: str) -> None:
    env = {**os.environ, "CI": ci, "DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_base_image.py"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == expected_rc, result.stdout[-2000:]
    assert expected_text in result.stdout
