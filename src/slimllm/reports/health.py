"""Service health report: probe OpenAI-compatible endpoints and say which are up, how fast, serving what.

For each target (a base URL such as `http://127.0.0.1:8080`, path prefix allowed):

- GET `<base><health-path>` (default `/health`, as llama.cpp and vLLM serve it): up when it answers 2xx.
  Connection failures, timeouts and 5xx answers (llama.cpp says 503 while it loads a model) are retried
  with exponential backoff, within a number of attempts and a total time per target; 4xx is not retried.
- GET `<base>/v1/models`: the model id, when the server has that endpoint.
- With tokens/s asked for, one tiny completion (`/v1/completions`, or `/v1/chat/completions` where that is
  missing): usage.completion_tokens divided by the request's wall time, prompt processing included.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypedDict

import httpx

from slimllm.reports import ReportError
from slimllm.reports.render import MARK_FAIL, MARK_OK, MARK_WARN, cell, code, format_number, table

REPORT_KIND = "slimllm/health"
REPORT_VERSION = 1
COMPLETION_PROMPT = "Say hello."
COMPLETION_MAX_TOKENS = 16


class TargetJSON(TypedDict):
    name: str
    url: str
    required: bool
    up: bool
    status: int | None
    latency_ms: float | None
    attempts: int
    model: str | None
    tokens_per_second: float | None
    completion_tokens: int | None
    error: str | None


class HealthReportJSON(TypedDict):
    kind: str
    version: int
    generated_at: str
    targets: list[TargetJSON]
    down: list[str]
    required_down: list[str]
    ok: bool


@dataclass(frozen=True)
class Target:
    name: str
    url: str
    required: bool = True


@dataclass(frozen=True)
class ProbeSettings:
    health_path: str = "/health"
    timeout: float = 10.0
    attempts: int = 5
    backoff: float = 0.5
    max_wait: float = 60.0
    tokens_per_second: bool = False


def parse_target(spec: str) -> tuple[str, str]:
    """`name=url` (or a bare URL, named after its host and port) -> (name, url), the URL checked."""
    name, sep, url = spec.partition("=")
    if not sep or "://" in name:
        name, url = "", spec
    name, url = name.strip(), url.strip()
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise ReportError(f"bad URL for target {spec!r}: {exc}") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ReportError(f"bad URL for target {spec!r}: expected http(s)://host[:port][/prefix]")
    if not name:
        name = parsed.host + (f":{parsed.port}" if parsed.port else "")
    return name, url.rstrip("/")


def build_targets(specs: Sequence[str], required: Sequence[str]) -> list[Target]:
    """Targets from `name=url` specs; with no `required` names given, every target is required."""
    pairs = [parse_target(spec) for spec in specs]
    if not pairs:
        raise ReportError("no targets to probe: give --target NAME=URL")
    names = [name for name, _ in pairs]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ReportError(f"target name given twice: {duplicates[0]}")
    unknown = sorted(set(required) - set(names))
    if unknown:
        raise ReportError(f"--required names an unknown target: {unknown[0]} (targets: {', '.join(names)})")
    return [Target(name, url, not required or name in required) for name, url in pairs]


def _describe(exc: httpx.HTTPError) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    if isinstance(exc, httpx.ConnectError):
        return "connection refused" if "refused" in str(exc).lower() else f"cannot connect: {exc}"
    return f"{type(exc).__name__}: {exc}"


class Prober:
    """Probes targets; `sleep` and `clock` are injectable so that backoff can be tested without waiting."""

    def __init__(
        self,
        settings: ProbeSettings,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self._sleep = sleep
        self._clock = clock

    def probe(self, target: Target) -> TargetJSON:
        result: TargetJSON = {
            "name": target.name,
            "url": target.url,
            "required": target.required,
            "up": False,
            "status": None,
            "latency_ms": None,
            "attempts": 0,
            "model": None,
            "tokens_per_second": None,
            "completion_tokens": None,
            "error": None,
        }
        with httpx.Client(timeout=self.settings.timeout, follow_redirects=True) as client:
            self._check_health(client, target, result)
            if result["up"]:
                result["model"] = self._model_id(client, target)
                if self.settings.tokens_per_second:
                    self._measure_tokens(client, target, result)
        return result

    def _check_health(self, client: httpx.Client, target: Target, result: TargetJSON) -> None:
        settings = self.settings
        deadline = self._clock() + settings.max_wait
        url = target.url + settings.health_path
        for attempt in range(1, settings.attempts + 1):
            result["attempts"] = attempt
            started = time.perf_counter()
            try:
                response = client.get(url)
            except httpx.HTTPError as exc:
                result["status"], result["latency_ms"] = None, None
                result["error"] = _describe(exc)
            else:
                result["status"] = response.status_code
                result["latency_ms"] = round((time.perf_counter() - started) * 1000, 1)
                if response.is_success:
                    result["up"], result["error"] = True, None
                    return
                result["error"] = f"HTTP {response.status_code}"
                if response.status_code < 500:
                    break  # a 4xx will not change by asking again
            wait = settings.backoff * 2 ** (attempt - 1)
            if attempt == settings.attempts or self._clock() + wait > deadline:
                break
            self._sleep(wait)
        result["error"] = (
            f"{result['error']} after {result['attempts']} attempt{'s' if result['attempts'] > 1 else ''}"
        )

    def _model_id(self, client: httpx.Client, target: Target) -> str | None:
        try:
            response = client.get(target.url + "/v1/models")
            if not response.is_success:
                return None
            ids = [str(item["id"]) for item in response.json().get("data", []) if isinstance(item, dict)]
        except (httpx.HTTPError, ValueError, AttributeError, KeyError):
            return None
        return ", ".join(ids) or None

    def _measure_tokens(self, client: httpx.Client, target: Target, result: TargetJSON) -> None:
        body: dict[str, Any] = {
            "prompt": COMPLETION_PROMPT,
            "max_tokens": COMPLETION_MAX_TOKENS,
            "temperature": 0,
        }
        if result["model"]:
            body["model"] = result["model"].split(", ")[0]
        try:
            started = time.perf_counter()
            response = client.post(target.url + "/v1/completions", json=body)
            if response.status_code == 404:
                chat = {k: v for k, v in body.items() if k != "prompt"}
                chat["messages"] = [{"role": "user", "content": COMPLETION_PROMPT}]
                started = time.perf_counter()
                response = client.post(target.url + "/v1/chat/completions", json=chat)
            elapsed = time.perf_counter() - started
            response.raise_for_status()
            tokens = int(response.json()["usage"]["completion_tokens"])
        except httpx.HTTPError as exc:
            result["error"] = f"completion failed: {_describe(exc)}"
            return
        except (ValueError, KeyError, TypeError):
            result["error"] = "completion answered without usage.completion_tokens"
            return
        result["completion_tokens"] = tokens
        result["tokens_per_second"] = round(tokens / elapsed, 1) if elapsed > 0 else None


def run_health(targets: Sequence[Target], prober: Prober, *, now: datetime | None = None) -> HealthReportJSON:
    # Targets are probed in parallel so that one slow service does not delay the others' verdicts.
    with ThreadPoolExecutor(max_workers=min(8, max(1, len(targets)))) as pool:
        results = list(pool.map(prober.probe, targets))
    down = [r["name"] for r in results if not r["up"]]
    required_down = [r["name"] for r in results if not r["up"] and r["required"]]
    return {
        "kind": REPORT_KIND,
        "version": REPORT_VERSION,
        "generated_at": (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "targets": results,
        "down": down,
        "required_down": required_down,
        "ok": not required_down,
    }


def _status_cell(target: TargetJSON) -> str:
    if target["up"]:
        note = f"; {target['error']}" if target["error"] else ""
        return cell(f"up ({target['status']}){note}")
    return cell(f"down: {target['error']}" if target["error"] else "down")


def render_health_markdown(report: HealthReportJSON, *, heading: str = "### Service health") -> str:
    rows = []
    for target in report["targets"]:
        mark = MARK_OK if target["up"] else (MARK_FAIL if target["required"] else MARK_WARN)
        rows.append(
            [
                mark,
                cell(target["name"]),
                code(target["url"]),
                _status_cell(target),
                f"{format_number(target['latency_ms'])} ms" if target["latency_ms"] is not None else "—",
                code(target["model"]) if target["model"] else "—",
                format_number(target["tokens_per_second"])
                if target["tokens_per_second"] is not None
                else "—",
                str(target["attempts"]),
                "yes" if target["required"] else "no",
            ]
        )
    headers = ["", "Service", "URL", "Status", "Latency", "Model", "Tokens/s", "Attempts", "Required"]
    targets = report["targets"]
    up = sum(1 for target in targets if target["up"])
    summary = f"{up} of {len(targets)} up."
    if report["required_down"]:
        summary += " Required and down: " + ", ".join(cell(name) for name in report["required_down"]) + "."
    return "\n".join([heading, "", table(headers, "clllrlrrc", rows), summary + "\n"])
