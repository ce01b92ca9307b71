"""`slimllm report ...`: the size, health and regression reports as CLI commands.

Each command writes a markdown section to the job summary, a JSON file when asked, and step outputs when it
runs on GitHub Actions. The docker SDK and PyGithub are imported inside the commands that need them, so
that the rest of the CLI works without the `docker` and `github` extras.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NoReturn

import click

from slimllm import gha
from slimllm.errors import UserError
from slimllm.reports import ReportError

FILE = click.Path(dir_okay=False, path_type=Path)


def _fail(message: str) -> NoReturn:
    raise UserError(message)


def _run_url() -> str | None:
    parts = [os.environ.get(name, "") for name in ("GITHUB_SERVER_URL", "GITHUB_REPOSITORY", "GITHUB_RUN_ID")]
    return "{}/{}/actions/runs/{}".format(*parts) if all(parts) else None


def _line_of(path: Path, key: str) -> int | None:
    """The line of `key` in a budgets file, so an annotation can point at the budget that was broken."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    for number, line in enumerate(lines, start=1):
        stripped = line.strip()
        if stripped.startswith((f'"{key}"', f"'{key}'", f"{key}:")):
            return number
    return None


@click.group()
def report() -> None:
    """Image size and service health reports for the job summary, and size-regression issues."""


@report.command("sizes")
@click.argument("images", nargs=-1, envvar="SLIMLLM_IMAGES")
@click.option(
    "--compose",
    "compose_file",
    type=FILE,
    envvar="SLIMLLM_COMPOSE_FILE",
    show_envvar=True,
    help="Also measure the images of this compose file, as `docker compose config --images` names them.",
)
@click.option(
    "--budgets",
    "budgets_file",
    type=FILE,
    envvar="SLIMLLM_BUDGETS",
    show_envvar=True,
    help="Budgets file (JSON, or YAML with PyYAML): max_mb, max_compressed_mb, max_growth_pct per image.",
)
@click.option(
    "--baseline",
    "baseline_file",
    type=FILE,
    envvar="SLIMLLM_BASELINE",
    show_envvar=True,
    help='Previous report (from --json-out) or {"image": bytes} to compare with; if missing, a warning.',
)
@click.option(
    "--json-out",
    type=FILE,
    envvar="SLIMLLM_SIZES_JSON",
    show_envvar=True,
    help="Write the report as JSON here (the format --baseline reads).",
)
@click.option(
    "--top-layers",
    type=click.IntRange(0, 100),
    default=5,
    envvar="SLIMLLM_TOP_LAYERS",
    show_envvar=True,
    help="Largest layers listed per image in the summary (0: none).",
)
@click.option(
    "--fail/--no-fail",
    default=True,
    envvar="SLIMLLM_FAIL_ON_BREACH",
    show_envvar=True,
    help="Exit with status 1 when an image is over budget.",
)
def sizes(
    images: tuple[str, ...],
    compose_file: Path | None,
    budgets_file: Path | None,
    baseline_file: Path | None,
    json_out: Path | None,
    top_layers: int,
    fail: bool,
) -> None:
    """Measure images and check them against size budgets.

    IMAGES (env var: SLIMLLM_IMAGES, space separated) are local image references. For each: size, compressed
    size (the engine's stored compressed layers, or else each layer gzipped at level 6 as `docker push`
    does; the layer sizes of an already pushed manifest are not available through the Engine API), layers,
    the largest layers and the instruction that made them, bytes shared with the other images, and bytes
    wasted on files that later layers overwrite or remove. MB = 1,000,000 bytes.

    Budgets file, e.g.: {"default": {"max_growth_pct": 10}, "images": {"slimllm/inference": {"max_mb": 150}}}.
    Keys of an image are its reference, its repository without the tag, or a glob; they override "default".
    Budgets apply per architecture: an entry may hold overrides for one under "arch", e.g.
    {"max_mb": 110, "arch": {"arm64": {"max_mb": 135}}}. max_growth_pct compares with --baseline, with an
    image of the same architecture. Step outputs: report-json, breaches, total-bytes,
    total-compressed-bytes, ok.
    """
    try:
        from slimllm.reports import sizes as sizes_report

        refs = list(images)
        if compose_file is not None:
            refs += sizes_report.images_from_compose(compose_file)
        refs = list(dict.fromkeys(refs))
        if not refs:
            raise ReportError("no images to measure: give image names or --compose FILE")
        budgets = sizes_report.load_budgets(budgets_file) if budgets_file is not None else None
        baseline = None
        if baseline_file is not None:
            if baseline_file.exists():
                baseline = sizes_report.load_baseline(baseline_file)
            else:
                gha.warning(f"no baseline at {baseline_file}; growth budgets are not checked this time")
        client = _docker_client()
        try:
            measurer = sizes_report.ImageMeasurer(client, progress=lambda line: click.echo(line, err=True))
            measured = [measurer.measure(ref) for ref in refs]
        finally:
            client.close()
        result = sizes_report.build_report(measured, budgets=budgets, baseline=baseline, run_url=_run_url())
        if json_out is not None:
            from slimllm.reports.render import write_json

            write_json(json_out, result)
    except ReportError as exc:
        _fail(str(exc))

    gha.append_summary(sizes_report.render_sizes_markdown(result, top_layers=top_layers))
    if gha.in_github():
        gha.set_outputs(
            {
                "report-json": json_out or "",
                "breaches": len(result["breaches"]),
                "total-bytes": result["total_bytes"],
                "total-compressed-bytes": result["total_compressed_bytes"],
                "ok": result["ok"],
            }
        )
    for image in result["images"]:
        budget = image["budget"]
        for check in image["checks"]:
            if check["ok"]:
                continue
            where = str(budgets_file) if budgets_file is not None else None
            line = _line_of(budgets_file, budget["source"]) if budgets_file is not None and budget else None
            gha.error(f"{image['ref']}: {check['message']}", file=where, line=line, title="Image size budget")
    if result["breaches"] and fail:
        count = len(result["breaches"])
        _fail(f"{count} size budget breach{'es' if count > 1 else ''}: " + "; ".join(result["breaches"]))


def _docker_client() -> Any:
    from slimllm.docker_client import EngineError, docker_client

    try:
        return docker_client()
    except EngineError as exc:
        raise ReportError(str(exc)) from None


@report.command("health")
@click.option(
    "--target",
    "targets",
    multiple=True,
    metavar="NAME=URL",
    envvar="SLIMLLM_HEALTH_TARGETS",
    show_envvar=True,
    help="A service's base URL, e.g. api=http://127.0.0.1:8080 (repeatable; env var: space separated).",
)
@click.option(
    "--required",
    multiple=True,
    metavar="NAME",
    envvar="SLIMLLM_HEALTH_REQUIRED",
    show_envvar=True,
    help="Targets whose being down fails the step (repeatable). Default: all of them.",
)
@click.option(
    "--health-path",
    default="/health",
    envvar="SLIMLLM_HEALTH_PATH",
    show_envvar=True,
    help="Path under each base URL that answers 2xx when the service is up.",
)
@click.option(
    "--tokens-per-second",
    is_flag=True,
    envvar="SLIMLLM_HEALTH_TOKENS_PER_SECOND",
    show_envvar=True,
    help="Also time a tiny completion (max_tokens 16) and report tokens/s.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.1),
    default=10.0,
    envvar="SLIMLLM_HEALTH_TIMEOUT",
    show_envvar=True,
    help="Seconds each request may take, the completion included.",
)
@click.option(
    "--attempts",
    type=click.IntRange(1, 100),
    default=5,
    envvar="SLIMLLM_HEALTH_ATTEMPTS",
    show_envvar=True,
    help="Health requests per target before it counts as down.",
)
@click.option(
    "--backoff",
    type=click.FloatRange(min=0),
    default=0.5,
    envvar="SLIMLLM_HEALTH_BACKOFF",
    show_envvar=True,
    help="Seconds before the first retry; doubled for each next one.",
)
@click.option(
    "--max-wait",
    type=click.FloatRange(min=0),
    default=60.0,
    envvar="SLIMLLM_HEALTH_MAX_WAIT",
    show_envvar=True,
    help="Seconds of retrying per target at most; no retry starts after it.",
)
@click.option(
    "--json-out",
    type=FILE,
    envvar="SLIMLLM_HEALTH_JSON",
    show_envvar=True,
    help="Write the report as JSON here.",
)
@click.option(
    "--fail/--no-fail",
    default=True,
    envvar="SLIMLLM_FAIL_ON_DOWN",
    show_envvar=True,
    help="Exit with status 1 when a required target is down.",
)
def health(
    targets: tuple[str, ...],
    required: tuple[str, ...],
    health_path: str,
    tokens_per_second: bool,
    timeout: float,
    attempts: int,
    backoff: float,
    max_wait: float,
    json_out: Path | None,
    fail: bool,
) -> None:
    """Probe services: status, latency, model id (from /v1/models) and, when asked, tokens/s.

    Connection errors, timeouts and 5xx answers are retried with exponential backoff. Step outputs:
    report-json, down, required-down, ok.
    """
    from slimllm.reports import health as health_report

    try:
        if not health_path.startswith("/"):
            raise ReportError(f"--health-path must start with '/', got {health_path!r}")
        chosen = health_report.build_targets(targets, required)
        settings = health_report.ProbeSettings(
            health_path=health_path,
            timeout=timeout,
            attempts=attempts,
            backoff=backoff,
            max_wait=max_wait,
            tokens_per_second=tokens_per_second,
        )
        result = health_report.run_health(chosen, health_report.Prober(settings))
        if json_out is not None:
            from slimllm.reports.render import write_json

            write_json(json_out, result)
    except ReportError as exc:
        _fail(str(exc))

    gha.append_summary(health_report.render_health_markdown(result))
    if gha.in_github():
        gha.set_outputs(
            {
                "report-json": json_out or "",
                "down": ",".join(result["down"]),
                "required-down": ",".join(result["required_down"]),
                "ok": result["ok"],
            }
        )
    for target in result["targets"]:
        if not target["up"]:
            annotate = gha.error if target["required"] else gha.warning
            annotate(f"{target['name']} ({target['url']}) is down: {target['error']}", title="Service health")
        elif target["error"]:
            gha.warning(f"{target['name']}: {target['error']}", title="Service health")
    if result["required_down"] and fail:
        _fail("required service down: " + ", ".join(result["required_down"]))


@report.command("regression")
@click.option(
    "--report",
    "report_file",
    type=FILE,
    required=True,
    envvar="SLIMLLM_SIZES_JSON",
    show_envvar=True,
    help="The JSON written by `slimllm report sizes --json-out`.",
)
@click.option(
    "--repo",
    envvar="GITHUB_REPOSITORY",
    show_envvar=True,
    help="owner/name of the repository that gets the issue.",
)
@click.option(
    "--api-url",
    default="https://api.github.com",
    envvar="GITHUB_API_URL",
    show_envvar=True,
    help="GitHub API base URL (GitHub Enterprise Server: https://HOST/api/v3).",
)
@click.option(
    "--label",
    default="size-regression",
    envvar="SLIMLLM_REGRESSION_LABEL",
    show_envvar=True,
    help="Label of the issue; created when missing.",
)
def regression(report_file: Path, repo: str | None, api_url: str, label: str) -> None:
    """Open, update or close the size-regression issue to match a sizes report.

    Over budget: opens an issue labelled --label, or updates the open one (never a second one). Within
    budget: closes it with a comment. The token is read from SLIMLLM_GITHUB_TOKEN or GITHUB_TOKEN (the job
    needs `permissions: issues: write`) and is never printed. Step outputs: issue-action, issue-number,
    issue-url.
    """
    token = gha.github_token()
    if not token:
        _fail("no GitHub token: set GITHUB_TOKEN (e.g. `env: GITHUB_TOKEN: ${{ github.token }}`)")
    if not repo or repo.count("/") != 1:
        _fail(f"--repo must be owner/name, got {repo!r}" if repo else "no repository: give --repo")
    try:
        from slimllm.reports import regression as regression_issue
    except ImportError:
        _fail("PyGithub is needed: pip install 'slimllm[github]'")
    try:
        sizes_result = regression_issue.load_sizes_report(report_file)
        outcome = regression_issue.sync_issue(
            regression_issue.connect(token, api_url), repo, sizes_result, label=label
        )
    except ReportError as exc:
        _fail(str(exc))
    if outcome.action == "none":
        click.echo("all images within budget; no open size-regression issue")
    else:
        click.echo(f"{outcome.action} issue #{outcome.number}: {outcome.url}")
    if gha.in_github():
        gha.set_outputs(
            {
                "issue-action": outcome.action,
                "issue-number": outcome.number or "",
                "issue-url": outcome.url or "",
            }
        )
