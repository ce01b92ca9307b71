"""Size-regression issue: one open issue while any image is over budget, closed when all are back within.

The issue is found by its label *and* a marker comment in its body, so that a person's issue that happens
to carry the label is never edited. Each run with breaches rewrites the body with the latest table (no new
issue, however often it runs) and comments only when the set of images over budget changes, so a daily
schedule does not notify watchers every day for the same news.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import github
from github import Auth, Github, GithubException
from github.Issue import Issue
from github.Repository import Repository

from slimllm.reports import ReportError
from slimllm.reports.render import cell, read_json
from slimllm.reports.sizes import REPORT_KIND, SizesReportJSON, render_sizes_markdown

MARKER = "<!-- slimllm:size-regression -->"
_BREACHING = re.compile(r"<!-- slimllm:breaching=(.*?) -->")
TITLE = "Image sizes over budget"
LABEL_COLOR = "d93f0b"
LABEL_DESCRIPTION = "An image is over its size budget (opened and closed by slimllm report regression)"

Action = Literal["opened", "updated", "closed", "none"]


@dataclass(frozen=True)
class Outcome:
    action: Action
    number: int | None = None
    url: str | None = None


def load_sizes_report(path: Path) -> SizesReportJSON:
    data = read_json(path, "sizes report")
    if not isinstance(data, dict) or data.get("kind") != REPORT_KIND:
        raise ReportError(f"bad sizes report {path}: not written by `slimllm report sizes --json-out`")
    for key in ("images", "breaches", "ok"):
        if key not in data:
            raise ReportError(f"bad sizes report {path}: missing '{key}'")
    return data  # type: ignore[return-value]


def breaching_images(report: SizesReportJSON) -> list[str]:
    return sorted(image["ref"] for image in report["images"] if not image["ok"])


def issue_body(report: SizesReportJSON) -> str:
    when = report["generated_at"]
    run = f" ([run]({report['run_url']}))" if report.get("run_url") else ""
    lines = [
        MARKER,
        f"Images over their size budget as of {when}{run}. slimllm updates this issue on every report "
        "and closes it once every image is back within budget.",
        "",
        render_sizes_markdown(report, top_layers=3, heading="## Sizes"),
        f"<!-- slimllm:breaching={','.join(breaching_images(report))} -->",
    ]
    return "\n".join(lines) + "\n"


def close_comment(report: SizesReportJSON) -> str:
    run = f" ([run]({report['run_url']}))" if report.get("run_url") else ""
    table = render_sizes_markdown(report, top_layers=0, heading="## Sizes")
    return f"All images are within budget again as of {report['generated_at']}{run}. Closing.\n\n{table}"


def change_comment(before: list[str], after: list[str]) -> str:
    added = sorted(set(after) - set(before))
    fixed = sorted(set(before) - set(after))
    parts = []
    if added:
        parts.append("Now over budget: " + ", ".join(f"`{cell(ref)}`" for ref in added) + ".")
    if fixed:
        parts.append("Back within budget: " + ", ".join(f"`{cell(ref)}`" for ref in fixed) + ".")
    return " ".join(parts) + " The table above is up to date."


def connect(token: str, api_url: str, *, spacing: bool = True, retry: bool = True) -> Github:
    """A PyGithub client.

    `spacing` keeps the pauses between requests that GitHub asks integrations for. `retry=False`
    turns PyGithub's own retries off, for callers that must look before they try again (a retried
    workflow dispatch whose first answer was lost would start a second run).
    """
    options: dict[str, Any] = {}
    if not spacing:
        options.update(seconds_between_requests=None, seconds_between_writes=None)
    if not retry:
        options["retry"] = None
    return Github(base_url=api_url, auth=Auth.Token(token), **options)


def find_issue(repo: Repository, label: str) -> Issue | None:
    for issue in repo.get_issues(state="open", labels=[label], sort="created", direction="asc"):
        if issue.pull_request is None and MARKER in (issue.body or ""):
            return issue
    return None


def ensure_label(repo: Repository, label: str) -> None:
    try:
        repo.get_label(label)
    except github.UnknownObjectException:
        repo.create_label(label, LABEL_COLOR, LABEL_DESCRIPTION)


def sync_issue(gh: Github, repo_name: str, report: SizesReportJSON, *, label: str) -> Outcome:
    """Open, update or close the size-regression issue of `repo_name` to match `report`."""
    try:
        repo = gh.get_repo(repo_name)
        issue = find_issue(repo, label)
        if report["ok"]:
            if issue is None:
                return Outcome("none")
            issue.create_comment(close_comment(report))
            issue.edit(state="closed", state_reason="completed")
            return Outcome("closed", issue.number, issue.html_url)
        body = issue_body(report)
        if issue is None:
            ensure_label(repo, label)
            issue = repo.create_issue(TITLE, body=body, labels=[label])
            return Outcome("opened", issue.number, issue.html_url)
        match = _BREACHING.search(issue.body or "")
        before = [ref for ref in match.group(1).split(",") if ref] if match else []
        issue.edit(body=body)
        after = breaching_images(report)
        if before != after:
            issue.create_comment(change_comment(before, after))
        return Outcome("updated", issue.number, issue.html_url)
    except github.BadCredentialsException:
        raise ReportError("GitHub rejected the token (401); check GITHUB_TOKEN") from None
    except github.UnknownObjectException:
        raise ReportError(f"repository {repo_name} not found, or the token cannot see it") from None
    except GithubException as exc:
        message = exc.data.get("message") if isinstance(exc.data, dict) else None
        hint = " (the job needs `permissions: issues: write`)" if exc.status == 403 else ""
        raise ReportError(f"GitHub API error {exc.status}: {message or exc}{hint}") from None
    except OSError as exc:  # requests' connection errors derive from OSError
        raise ReportError(f"cannot reach the GitHub API: {exc}") from None
