"""The console script as users meet it: installed entry point, help texts, exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click
import pytest

from slimllm.cli import cli, main


def all_commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found: list[tuple[str, ...]] = []
    for name, command in group.commands.items():
        path = (*prefix, name)
        found.append(path)
        if isinstance(command, click.Group):
            found.extend(all_commands(command, path))
    return found


# pip puts console scripts beside the interpreter that installed the package.
SCRIPT = Path(sys.executable).parent / "slimllm"


def test_console_script_is_installed() -> None:
    assert SCRIPT.exists(), f"no console script at {SCRIPT} (pip install .)"
    result = subprocess.run([str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert "model" in result.stdout


@pytest.mark.parametrize("path", all_commands(cli), ids=lambda p: " ".join(p))
def test_every_command_documents_its_env_vars(
    path: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*path, "--help"]) == 0
    out = capsys.readouterr().out
    command = cli
    for name in path:
        assert isinstance(command, click.Group)
        command = command.commands[name]
    assert (command.help or "").strip(), f"{path} has no help text"
    if not isinstance(command, click.Group):
        for param in command.params:
            if isinstance(param, click.Option) and param.envvar:
                assert str(param.envvar) in out, f"{param.name} does not show its env var"


def test_version() -> None:
    result = subprocess.run([str(SCRIPT), "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.startswith("slimllm, version ")


def test_unknown_option_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["model", "fetch", "--bogus"]) == 2
    assert "No such option" in capsys.readouterr().err


def test_secret_key_comes_from_the_environment_or_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from slimllm.clitypes import secret_key
    from slimllm.errors import UserError

    key_file = tmp_path / "key"
    key_file.write_text("from-file\n")
    monkeypatch.delenv("SLIMLLM_TEST_KEY", raising=False)
    assert secret_key("SLIMLLM_TEST_KEY", None) is None
    assert secret_key("SLIMLLM_TEST_KEY", key_file) == "from-file"
    monkeypatch.setenv("SLIMLLM_TEST_KEY", " from-env ")
    assert secret_key("SLIMLLM_TEST_KEY", key_file) == "from-env"
    monkeypatch.setenv("SLIMLLM_TEST_KEY", "")
    with pytest.raises(UserError, match="cannot read the key file"):
        secret_key("SLIMLLM_TEST_KEY", tmp_path / "missing")


def test_the_cli_imports_without_the_servers_web_framework() -> None:
    """The actions install the CLI from scripts/cli-requirements, which has no web framework: every
    module the `slimllm` command imports at start must do without starlette and uvicorn (the
    servers import them when they run)."""
    blocker = (
        "import importlib.abc, sys\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.split('.')[0] in {'starlette', 'uvicorn', 'sse_starlette', 'prometheus_client'}:\n"
        "            raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from slimllm.cli import main\n"
        "raise SystemExit(main(['--help']))\n"
    )
    result = subprocess.run([sys.executable, "-c", blocker], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
