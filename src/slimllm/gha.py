"""The GitHub Actions runtime: step outputs, job summary, masks, log groups, annotations.

Every helper works outside GitHub too: files that the runner would provide fall back to plain
stdout, and workflow commands become readable lines. Masking is the exception: outside GitHub it
does nothing, because echoing a secret to make it "visible" would be the opposite of masking it.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO


def in_github(environ: Mapping[str, str] | None = None) -> bool:
    """True when running as a step of a GitHub Actions job."""
    env = os.environ if environ is None else environ
    return env.get("GITHUB_ACTIONS") == "true"


def _stdout() -> TextIO:
    # Looked up on each call so that pytest's capsys and redirected streams are honoured.
    return sys.stdout


def _runner_file(variable: str) -> Path | None:
    value = os.environ.get(variable, "")
    return Path(value) if value else None


def _heredoc(name: str, value: str) -> str:
    """`name<<DELIM\\nvalue\\nDELIM\\n` with a delimiter that cannot occur in the value."""
    if not name or "\n" in name or "\r" in name or "=" in name or "<<" in name:
        raise ValueError(f"invalid name for a runner file entry: {name!r}")
    while True:
        delimiter = f"ghadelimiter_{uuid.uuid4()}"
        if delimiter not in value and delimiter not in name:
            return f"{name}<<{delimiter}\n{value}\n{delimiter}\n"


def _append(path: Path, text: str) -> None:
    with path.open("a", encoding="utf-8") as handle:
        handle.write(text)


def set_output(name: str, value: object) -> None:
    """Set a step output. Multi-line values are safe: they are written as a heredoc."""
    text = _stringify(value)
    path = _runner_file("GITHUB_OUTPUT")
    if path is None:
        print(f"{name}={text}", file=_stdout())
        return
    _append(path, _heredoc(name, text))


def set_outputs(values: Mapping[str, object]) -> None:
    for name, value in values.items():
        set_output(name, value)


def export_env(name: str, value: object) -> None:
    """Export a variable to this step (os.environ) and to the job's later steps (GITHUB_ENV)."""
    text = _stringify(value)
    os.environ[name] = text
    path = _runner_file("GITHUB_ENV")
    if path is None:
        print(f"export {name}={text}", file=_stdout())
        return
    _append(path, _heredoc(name, text))


def append_summary(markdown: str) -> None:
    """Append markdown to the job summary (or print it when there is no summary file)."""
    if not markdown.endswith("\n"):
        markdown += "\n"
    path = _runner_file("GITHUB_STEP_SUMMARY")
    if path is None:
        _stdout().write(markdown)
        return
    _append(path, markdown)


def mask(value: str) -> None:
    """Ask the runner to redact `value` from all later log output. A no-op outside GitHub."""
    if not value or not in_github():
        return
    # The runner masks per line: a multi-line secret needs every line registered.
    for line in value.splitlines():
        if line.strip():
            print(f"::add-mask::{_escape_data(line)}", file=_stdout(), flush=True)


def github_token() -> str:
    """The API token from SLIMLLM_GITHUB_TOKEN or GITHUB_TOKEN, masked at once; "" when neither is set."""
    token = os.environ.get("SLIMLLM_GITHUB_TOKEN") or os.environ.get("GITHUB_TOKEN") or ""
    mask(token)
    return token


@contextmanager
def group(title: str) -> Iterator[None]:
    """A collapsible log group; a plain heading outside GitHub."""
    out = _stdout()
    if in_github():
        print(f"::group::{_escape_data(title)}", file=out, flush=True)
    else:
        print(f"== {title}", file=out, flush=True)
    try:
        yield
    finally:
        if in_github():
            print("::endgroup::", file=out, flush=True)


def error(
    message: str,
    *,
    file: str | None = None,
    line: int | None = None,
    col: int | None = None,
    title: str | None = None,
) -> None:
    _annotate("error", message, file=file, line=line, col=col, title=title)


def warning(
    message: str,
    *,
    file: str | None = None,
    line: int | None = None,
    col: int | None = None,
    title: str | None = None,
) -> None:
    _annotate("warning", message, file=file, line=line, col=col, title=title)


def notice(
    message: str,
    *,
    file: str | None = None,
    line: int | None = None,
    col: int | None = None,
    title: str | None = None,
) -> None:
    _annotate("notice", message, file=file, line=line, col=col, title=title)


def _annotate(
    level: str, message: str, *, file: str | None, line: int | None, col: int | None, title: str | None
) -> None:
    if in_github():
        props = {"file": file, "line": line, "col": col, "title": title}
        rendered = ",".join(
            f"{key}={_escape_property(str(val))}" for key, val in props.items() if val is not None
        )
        head = f"::{level} {rendered}" if rendered else f"::{level}"
        # Annotations go to stdout: the runner only parses workflow commands there.
        print(f"{head}::{_escape_data(message)}", file=_stdout(), flush=True)
        return
    where = ""
    if file:
        where = (
            file + (f":{line}" if line is not None else "") + (f":{col}" if col is not None else "") + ": "
        )
    prefix = f"{title}: " if title else ""
    print(f"{level}: {where}{prefix}{message}", file=sys.stderr, flush=True)


def _stringify(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")
