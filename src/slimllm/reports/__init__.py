"""Reports for CI: image sizes against budgets, service health, and size-regression issues.

Each report is a JSON-shaped dict (what `--json-out` writes) rendered to markdown for the job summary.
Rendering reads only that dict, so a report loaded from yesterday's JSON renders exactly like a fresh one.
"""

from __future__ import annotations


class ReportError(Exception):
    """Bad input or an unreachable dependency; the CLI shows it as one `error:` line."""
