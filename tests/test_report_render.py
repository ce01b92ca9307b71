"""Formatting shared by the reports: decimal sizes, signed deltas, table cells."""

from __future__ import annotations

import pytest

from slimllm.reports.render import code, format_bytes, format_delta, format_pct, table


@pytest.mark.parametrize(
    ("count", "text"),
    [
        pytest.param(0, "0 B", id="zero"),
        pytest.param(999, "999 B", id="bytes"),
        pytest.param(1000, "1.0 kB", id="one-kB"),
        pytest.param(10_000_000, "10.0 MB", id="ten-MB-decimal"),
        pytest.param(10 * 1024 * 1024, "10.5 MB", id="ten-MiB-is-not-ten-MB"),
        pytest.param(999_960, "1.0 MB", id="rounding-carries-to-next-unit"),
        pytest.param(1_523_000_000, "1.5 GB", id="GB"),
    ],
)
def test_format_bytes(count: int, text: str) -> None:
    assert format_bytes(count) == text


@pytest.mark.parametrize(
    ("current", "baseline", "text"),
    [
        pytest.param(105_000_000, 100_000_000, "+5.0 MB (+5.0 %)", id="growth"),
        pytest.param(99_000_000, 100_000_000, "-1.0 MB (-1.0 %)", id="shrink"),
        pytest.param(100_000_000, 100_000_000, "±0 B (±0.0 %)", id="same"),
        pytest.param(5, 0, "+5 B", id="from-zero-has-no-percentage"),
        pytest.param(5, None, "—", id="no-baseline"),
    ],
)
def test_format_delta(current: int, baseline: int | None, text: str) -> None:
    assert format_delta(current, baseline) == text


def test_format_pct_never_shows_minus_zero() -> None:
    assert format_pct(-0.01) == "±0.0 %"


def test_code_cells_cannot_break_the_table() -> None:
    rendered = code("RUN a | b && echo `x` <y>")
    assert "|" not in rendered
    assert rendered == "<code>RUN a &#124; b &amp;&amp; echo `x` &lt;y&gt;</code>"
    assert code("x" * 50, limit=10) == "<code>" + "x" * 9 + "…</code>"


def test_table_shape() -> None:
    assert table(["a", "b"], "lr", [["1", "2"]]) == "| a | b |\n|:--|--:|\n| 1 | 2 |\n"
    with pytest.raises(ValueError):
        table(["a"], "lr", [])
