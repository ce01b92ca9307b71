"""`slimllm report regression`: the issue lifecycle against the GitHub REST API, mocked with `responses`.

The fake keeps state (issues, comments, labels) so that running the command twice shows what GitHub would:
one issue, updated, never duplicated.
"""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
import requests
import responses

from slimllm.cli import main
from slimllm.reports import regression
from slimllm.reports.regression import MARKER

FIXTURES = Path(__file__).parent / "fixtures" / "reports"
API = "https://api.github.test"
REPO = "example/slimllm"
TOKEN = "ghs_not-a-real-token-1234567890"
LABEL = "size-regression"


@dataclass
class FakeGitHub:
    issues: dict[int, dict[str, Any]] = field(default_factory=dict)
    comments: dict[int, list[str]] = field(default_factory=dict)
    labels: set[str] = field(default_factory=set)
    calls: list[str] = field(default_factory=list)
    auth: set[str] = field(default_factory=set)
    status: int | None = None  # when set, every request fails with it

    def issue_json(self, number: int) -> dict[str, Any]:
        issue = self.issues[number]
        return {
            "id": 1000 + number,
            "number": number,
            "title": issue["title"],
            "body": issue["body"],
            "state": issue["state"],
            "labels": [{"name": name} for name in issue["labels"]],
            "url": f"{API}/repos/{REPO}/issues/{number}",
            "html_url": f"https://github.test/{REPO}/issues/{number}",
        }

    def handle(self, request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        url = urlparse(request.url or "")
        path = url.path.removeprefix(f"/repos/{REPO}")
        self.calls.append(f"{request.method} {path}")
        self.auth.add(str(request.headers.get("Authorization", "")))
        if self.status is not None:
            return (
                self.status,
                {},
                json.dumps({"message": "Bad credentials" if self.status == 401 else "Forbidden"}),
            )
        body = json.loads(request.body or b"{}") if request.body else {}
        method = request.method
        if method == "GET" and path == "":
            return self.ok({"id": 1, "name": "slimllm", "full_name": REPO, "url": f"{API}/repos/{REPO}"})
        if method == "GET" and path == "/issues":
            query = parse_qs(url.query)
            assert query["state"] == ["open"] and query["labels"] == [LABEL]
            found = [
                self.issue_json(n)
                for n, i in sorted(self.issues.items())
                if i["state"] == "open" and LABEL in i["labels"]
            ]
            return self.ok(found)
        if match := re.fullmatch(r"/labels/(.+)", path):
            return (
                self.ok({"name": match[1]})
                if match[1] in self.labels
                else (404, {}, '{"message": "Not Found"}')
            )
        if method == "POST" and path == "/labels":
            self.labels.add(body["name"])
            return 201, {}, json.dumps({"name": body["name"], "color": body["color"]})
        if method == "POST" and path == "/issues":
            number = len(self.issues) + 1
            self.issues[number] = {
                "title": body["title"],
                "body": body["body"],
                "state": "open",
                "labels": body["labels"],
            }
            return 201, {}, json.dumps(self.issue_json(number))
        if match := re.fullmatch(r"/issues/(\d+)", path):
            number = int(match[1])
            self.issues[number].update({k: v for k, v in body.items() if k in ("body", "state")})
            return self.ok(self.issue_json(number))
        if match := re.fullmatch(r"/issues/(\d+)/comments", path):
            self.comments.setdefault(int(match[1]), []).append(body["body"])
            return 201, {}, json.dumps({"id": 7, "body": body["body"]})
        return 404, {}, '{"message": "Not Found"}'

    @staticmethod
    def ok(data: object) -> tuple[int, dict[str, str], str]:
        return 200, {"Content-Type": "application/json"}, json.dumps(data)


@pytest.fixture
def github(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeGitHub]:
    fake = FakeGitHub()
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        # PyGithub spells out the default port.
        for method in ("GET", "POST", "PATCH"):
            mock.add_callback(method, re.compile(re.escape(API) + r"(:443)?/.*"), callback=fake.handle)
        # PyGithub's pauses between writes would only slow the tests down.
        connect = regression.connect
        monkeypatch.setattr(regression, "connect", lambda token, url: connect(token, url, spacing=False))
        monkeypatch.setenv("GITHUB_TOKEN", TOKEN)
        monkeypatch.setenv("GITHUB_REPOSITORY", REPO)
        monkeypatch.setenv("GITHUB_API_URL", API)
        monkeypatch.setenv("GITHUB_ACTIONS", "true")
        monkeypatch.setenv("GITHUB_OUTPUT", str(tmp_path / "outputs.txt"))
        yield fake


def over_budget() -> dict[str, Any]:
    """The fixture report: example/inference is over budget."""
    report: dict[str, Any] = json.loads((FIXTURES / "sizes_report.json").read_text())
    return report


def with_breaching(report: dict[str, Any], refs: set[str]) -> dict[str, Any]:
    changed = copy.deepcopy(report)
    for image in changed["images"]:
        image["ok"] = image["ref"] not in refs
        for check in image["checks"]:
            check["ok"] = image["ok"]
    changed["breaches"] = [f"{ref}: over" for ref in sorted(refs)]
    changed["ok"] = not refs
    return changed


def run(tmp_path: Path, report: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    path = tmp_path / "sizes.json"
    path.write_text(json.dumps(report))
    status = main(["report", "regression", "--report", str(path)])
    captured = capsys.readouterr()
    # The mask command is the one place the token may appear: it is how the runner learns to hide it.
    text = "".join(
        line for line in (captured.out + captured.err).splitlines(True) if not line.startswith("::add-mask::")
    )
    assert TOKEN not in text
    return status, text


def test_issue_lifecycle(github: FakeGitHub, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = over_budget()

    status, out = run(tmp_path, report, capsys)
    assert status == 0 and "opened issue #1: https://github.test/example/slimllm/issues/1" in out
    assert github.labels == {LABEL} and list(github.issues) == [1]
    issue = github.issues[1]
    assert issue["labels"] == [LABEL] and issue["state"] == "open" and MARKER in issue["body"]
    assert (
        "example/inference:latest" in issue["body"]
        and "https://github.com/example/slimllm/actions/runs/42" in issue["body"]
    )
    assert github.auth == {f"token {TOKEN}"}

    # The same breach again: the body is refreshed, nobody is notified, no second issue.
    github.calls.clear()
    status, out = run(tmp_path, report, capsys)
    assert status == 0 and "updated issue #1" in out
    assert list(github.issues) == [1] and 1 not in github.comments
    assert "POST /issues" not in github.calls and "PATCH /issues/1" in github.calls

    # Another image goes over budget: one comment says what changed.
    worse = with_breaching(report, {"example/inference:latest", "example/gateway:1.2"})
    assert run(tmp_path, worse, capsys)[0] == 0
    assert github.comments[1] == ["Now over budget: `example/gateway:1.2`. The table above is up to date."]

    # Back within budget: closed with a comment that has the table.
    status, out = run(tmp_path, with_breaching(report, set()), capsys)
    assert status == 0 and "closed issue #1" in out
    assert github.issues[1]["state"] == "closed"
    assert github.comments[1][-1].startswith("All images are within budget again as of 2025-01-02T03:04:05Z")
    assert "| ✅ |" in github.comments[1][-1]
    outputs = (tmp_path / "outputs.txt").read_text()
    assert "\nclosed\n" in outputs and "\nhttps://github.test/example/slimllm/issues/1\n" in outputs

    # Within budget with nothing open: nothing to do.
    github.calls.clear()
    status, out = run(tmp_path, with_breaching(report, set()), capsys)
    assert status == 0 and "no open size-regression issue" in out
    assert all(call.startswith("GET") for call in github.calls)


def test_a_persons_issue_with_the_label_is_left_alone(
    github: FakeGitHub, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    github.labels.add(LABEL)
    github.issues[1] = {"title": "Why so big?", "body": "Discuss.", "state": "open", "labels": [LABEL]}
    assert run(tmp_path, over_budget(), capsys)[0] == 0
    assert github.issues[1]["body"] == "Discuss." and github.issues[2]["state"] == "open"
    assert "POST /labels" not in github.calls


@pytest.mark.parametrize(
    ("status", "message"),
    [
        pytest.param(401, "error: GitHub rejected the token (401)", id="bad-token"),
        pytest.param(
            403,
            "error: GitHub API error 403: Forbidden (the job needs `permissions: issues: write`)",
            id="no-permission",
        ),
    ],
)
def test_api_errors_are_one_line(
    github: FakeGitHub, tmp_path: Path, capsys: pytest.CaptureFixture[str], status: int, message: str
) -> None:
    github.status = status
    code, out = run(tmp_path, over_budget(), capsys)
    assert code == 1 and out.strip().splitlines()[-1].startswith(message)


@pytest.mark.parametrize(
    ("env", "content", "message"),
    [
        pytest.param({"GITHUB_TOKEN": ""}, None, "error: no GitHub token", id="no-token"),
        pytest.param({"GITHUB_REPOSITORY": "nope"}, None, "error: --repo must be owner/name", id="bad-repo"),
        pytest.param({}, '{"kind": "other"}', "error: bad sizes report", id="not-a-sizes-report"),
    ],
)
def test_bad_input_is_one_line(
    github: FakeGitHub,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    env: dict[str, str],
    content: str | None,
    message: str,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    path = tmp_path / "sizes.json"
    path.write_text(content or json.dumps(over_budget()))
    assert main(["report", "regression", "--report", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1 and TOKEN not in err
    assert github.calls == []


def test_token_is_masked_on_github(
    github: FakeGitHub, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "sizes.json"
    path.write_text(json.dumps(over_budget()))
    main(["report", "regression", "--report", str(path)])
    # The runner hides the value from the log; the mask command is the only place it may appear.
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"::add-mask::{TOKEN}"
    assert out.count(TOKEN) == 1


def test_issue_body_matches_fixture() -> None:
    body = regression.issue_body(over_budget())
    path = FIXTURES / "regression_issue.md"
    if os.environ.get("SLIMLLM_UPDATE_FIXTURES") == "1":
        path.write_text(body)
    assert body == path.read_text()
