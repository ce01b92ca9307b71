"""The GitHub runtime module, with the runner's files pointed at tmp_path."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from slimllm import gha


@pytest.fixture
def runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    files = {name: tmp_path / name.lower() for name in ("GITHUB_OUTPUT", "GITHUB_ENV", "GITHUB_STEP_SUMMARY")}
    for name, path in files.items():
        path.write_text("")
        monkeypatch.setenv(name, str(path))
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    return files


def parse_heredocs(text: str) -> dict[str, str]:
    """Parse the runner file format the way the runner does: name<<DELIM ... DELIM."""
    values: dict[str, str] = {}
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line:
            i += 1
            continue
        name, delim = line.split("<<", 1)
        end = lines.index(delim, i + 1)
        values[name] = "\n".join(lines[i + 1 : end])
        i = end + 1
    return values


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("plain", id="single-line"),
        pytest.param("line one\nline two\n\nline four", id="multi-line"),
        pytest.param("EOF\nghadelimiter_x\n<<EOF", id="delimiter-lookalikes"),
        pytest.param("", id="empty"),
        pytest.param("100% = a:b,c", id="special-characters"),
    ],
)
def test_output_round_trips(runner: dict[str, Path], value: str) -> None:
    gha.set_output("result", value)
    gha.set_output("other", "x")
    assert parse_heredocs(runner["GITHUB_OUTPUT"].read_text()) == {"result": value, "other": "x"}


def test_delimiters_are_random(runner: dict[str, Path]) -> None:
    gha.set_output("a", "1")
    gha.set_output("b", "2")
    delims = re.findall(r"<<(\S+)", runner["GITHUB_OUTPUT"].read_text())
    assert len(set(delims)) == 2


def test_booleans_use_yaml_spelling(runner: dict[str, Path]) -> None:
    gha.set_outputs({"ok": True, "failed": False, "count": 3})
    assert parse_heredocs(runner["GITHUB_OUTPUT"].read_text()) == {
        "ok": "true",
        "failed": "false",
        "count": "3",
    }


def test_invalid_output_name_is_rejected(runner: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="invalid name"):
        gha.set_output("bad\nname", "v")


def test_export_env_reaches_this_step_and_later_ones(
    runner: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Set first, so that monkeypatch takes back what export_env puts into os.environ.
    monkeypatch.setenv("SLIMLLM_TEST_VAR", "")
    monkeypatch.setenv("SLIMLLM_TEST_OTHER", "")
    gha.export_env("SLIMLLM_TEST_VAR", "first\nsecond")
    gha.export_env("SLIMLLM_TEST_OTHER", True)
    assert parse_heredocs(runner["GITHUB_ENV"].read_text()) == {
        "SLIMLLM_TEST_VAR": "first\nsecond",
        "SLIMLLM_TEST_OTHER": "true",
    }
    assert os.environ["SLIMLLM_TEST_VAR"] == "first\nsecond"


def test_export_env_outside_github_prints_a_shell_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("GITHUB_ENV", raising=False)
    monkeypatch.setenv("SLIMLLM_TEST_VAR", "old")
    gha.export_env("SLIMLLM_TEST_VAR", "https://new.example")
    assert capsys.readouterr().out == "export SLIMLLM_TEST_VAR=https://new.example\n"
    assert os.environ["SLIMLLM_TEST_VAR"] == "https://new.example"


def test_summary_appends(runner: dict[str, Path]) -> None:
    gha.append_summary("| a |\n|---|")
    gha.append_summary("done")
    assert runner["GITHUB_STEP_SUMMARY"].read_text() == "| a |\n|---|\ndone\n"


def test_mask_registers_every_line(runner: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    gha.mask("s3cret\nsecond-line\n\n")
    assert capsys.readouterr().out.splitlines() == ["::add-mask::s3cret", "::add-mask::second-line"]


def test_mask_never_prints_outside_github(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("GITHUB_ACTIONS", raising=False)
    gha.mask("s3cret")
    captured = capsys.readouterr()
    assert "s3cret" not in captured.out + captured.err


def test_annotations_escape_data_and_properties(
    runner: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    gha.error("100% broken\nsecond", file="app/a,b.py", line=3, col=7, title="size: budget")
    gha.warning("careful")
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "::error file=app/a%2Cb.py,line=3,col=7,title=size%3A budget::100%25 broken%0Asecond",
        "::warning::careful",
    ]


def test_group_markers(runner: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    with gha.group("Build"):
        print("inside")
    assert capsys.readouterr().out.splitlines() == ["::group::Build", "inside", "::endgroup::"]


def test_outside_github_everything_is_plain_text(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("GITHUB_ACTIONS", "GITHUB_OUTPUT", "GITHUB_ENV", "GITHUB_STEP_SUMMARY"):
        monkeypatch.delenv(name, raising=False)
    gha.set_output("url", "http://x")
    gha.append_summary("# Report")
    with gha.group("Step"):
        pass
    gha.error("bad", file="f.py", line=2)
    captured = capsys.readouterr()
    assert captured.out.splitlines() == ["url=http://x", "# Report", "== Step"]
    assert captured.err == "error: f.py:2: bad\n"
    assert "::" not in captured.out
