"""Parameter types and parsing shared by the commands the actions run."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import click

from slimllm.errors import UserError


class _Line(click.types.StringParamType):
    """A repeatable option's values, one per line in its environment variable (values may hold spaces)."""

    name = "line"
    envvar_list_splitter = "\n"


LINE = _Line()


def split_items(values: Sequence[str]) -> list[str]:
    """Items of list inputs: comma, space or newline separated, blanks dropped, order kept."""
    return [item for value in values for item in re.split(r"[\s,]+", value) if item]


def parse_pairs(lines: Sequence[str], what: str, key: re.Pattern[str]) -> dict[str, str]:
    """NAME=VALUE lines (each value may hold several, one per line) into a dict; blank lines skipped."""
    pairs: dict[str, str] = {}
    for line in (line.strip() for value in lines for line in value.splitlines()):
        if not line:
            continue
        name, sep, value = line.partition("=")
        if not sep or not key.fullmatch(name):
            # The value may be a secret: only the part before '=' is shown.
            raise UserError(f"{what}: expected NAME=VALUE lines, got one starting {name[:40]!r}")
        pairs[name] = value
    return pairs


def secret_key(variable: str, file: Path | None) -> str | None:
    """A key from the environment variable, else from the file (a Docker secret): never from argv."""
    value = os.environ.get(variable, "").strip()
    if value or file is None:
        return value or None
    try:
        return file.read_text(encoding="utf-8").strip() or None
    except OSError as exc:
        raise UserError(f"cannot read the key file {file}: {exc.strerror or exc}") from None


# The largest request body either app reads: a chat request with a long history fits many times.
MAX_BODY_BYTES = 1 << 20

# The most tokens a chat request without max_tokens generates (--default-max-tokens): the inference
# server's (direct, usually local) and the chat gateway's (the public face). Without a default a
# request generates to the end of the context and holds a slot for it.
DEFAULT_MAX_TOKENS = 1024
GATEWAY_DEFAULT_MAX_TOKENS = 512

# Seconds a chat template (Jinja from the GGUF) may take to render one request (--template-timeout).
TEMPLATE_TIMEOUT = 2.0


def max_body_option(envvar: str) -> Callable[[Callable[..., object]], Callable[..., object]]:
    """The `--max-body-bytes` option of an HTTP app (one default for both apps)."""
    return click.option(
        "--max-body-bytes",
        type=click.IntRange(min=1024),
        default=MAX_BODY_BYTES,
        envvar=envvar,
        show_envvar=True,
        help="Largest request body in bytes; a larger one gets 413 without being read.",
    )
