"""Rendering shared by the reports: byte sizes, deltas, markdown tables, JSON files.

Sizes use decimal units (1 MB = 1,000,000 bytes), as `docker images` and registries do, so that
numbers in a summary can be compared with what Docker itself prints.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from pathlib import Path

from slimllm.reports import ReportError

UNITS_NOTE = "Sizes in decimal units (1 MB = 1,000,000 bytes), like `docker images`."

MARK_OK = "✅"
MARK_FAIL = "❌"
MARK_WARN = "⚠️"
MARK_NONE = "⚪"

_UNITS = ("kB", "MB", "GB", "TB")


def format_bytes(count: int | float) -> str:
    """`512 B`, `12.3 kB`, `143.2 MB`, `1.5 GB`: one decimal, the largest unit that keeps the value >= 1."""
    value = float(count)
    if abs(value) < 1000:
        return f"{int(value)} B"
    for unit in _UNITS:
        value /= 1000
        # Rounding can carry 999.96 up to "1000.0"; move to the next unit instead.
        if abs(round(value, 1)) < 1000 or unit == _UNITS[-1]:
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")


def format_signed_bytes(count: int) -> str:
    if count == 0:
        return "±0 B"
    sign = "+" if count > 0 else "-"
    return sign + format_bytes(abs(count))


def format_pct(value: float) -> str:
    """A signed percentage with one decimal: `+4.2 %`, `-0.3 %`, `±0.0 %`."""
    rounded = round(value, 1)
    if rounded == 0:
        return "±0.0 %"
    return f"{rounded:+.1f} %"


def growth_pct(current: int, baseline: int) -> float | None:
    """Growth of `current` over `baseline` in percent; None when the baseline is zero."""
    if baseline <= 0:
        return None
    return (current - baseline) / baseline * 100


def format_delta(current: int, baseline: int | None) -> str:
    """`+1.2 MB (+0.8 %)` against a baseline, or `—` without one."""
    if baseline is None:
        return "—"
    delta = format_signed_bytes(current - baseline)
    pct = growth_pct(current, baseline)
    return delta if pct is None else f"{delta} ({format_pct(pct)})"


def format_number(value: float, digits: int = 1) -> str:
    if math.isclose(value, round(value)):
        return str(round(value))
    return f"{value:.{digits}f}"


def cell(text: str) -> str:
    """Plain text made safe for a markdown table cell."""
    return " ".join(text.split()).replace("|", "\\|")


def code(text: str, limit: int = 0) -> str:
    """Inline code for a table cell: `<code>`, as the text itself may contain backticks."""
    flat = " ".join(text.split())
    if limit and len(flat) > limit:
        flat = flat[: limit - 1] + "…"
    return "<code>" + html.escape(flat).replace("|", "&#124;") + "</code>"


def table(headers: Sequence[str], aligns: str, rows: Sequence[Sequence[str]]) -> str:
    """A GitHub markdown table; `aligns` has one of l, r, c per column."""
    if len(aligns) != len(headers):
        raise ValueError("one alignment per column")
    rule = {"l": ":--", "r": "--:", "c": ":-:"}
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(rule[a] for a in aligns) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def details(summary_html: str, body: str) -> str:
    """A collapsed `<details>` block; the blank lines let GitHub render the markdown inside it."""
    return f"<details><summary>{summary_html}</summary>\n\n{body.rstrip()}\n\n</details>\n"


def write_json(path: Path, data: object) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    except OSError as exc:
        raise ReportError(f"cannot write {path}: {exc.strerror or exc}") from None


def read_json(path: Path, what: str) -> object:
    """Parse a JSON file, turning every failure into a one-line ReportError naming `what` it was."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ReportError(f"{what} not found: {path}") from None
    except OSError as exc:
        raise ReportError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ReportError(f"bad {what} {path}: invalid JSON at line {exc.lineno}: {exc.msg}") from None
