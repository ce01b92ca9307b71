"""Handoff across the 6-hour limit: the GitHub side against `responses`, and a simulation.

The simulation runs two real stacks (the inference image on the real model, each with the real
docker/cloudflared image around the stand-in cloudflared) behind tests/fakes/edge.py, a stand-in
for Cloudflare's edge serving one named tunnel with two replicas. A steady load of streaming
chats goes through the edge while `slimllm stack handoff` -- the command the keep-alive action
runs -- dispatches the successor (GitHub's API answered by `responses`; the "successor job" is a
thread that starts the second stack), waits for its readiness step and drains the old stack.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import responses

from slimllm.cli import main
from slimllm.reports.regression import connect
from slimllm.runner.handoff import READY_STEP, Handoff, HandoffError, HandoffPlan
from slimllm.runner.plan import plan_models
from slimllm.runner.stack import StackSettings, published, up
from slimllm.runner.tunnel import METRICS_PORT
from tests.fakes.edge import Edge

# Fixtures reused as they are: the inference image, and the real cloudflared image around the
# stand-in cloudflared.
from tests.test_inference import inference_image  # noqa: F401
from tests.test_sidecars import cloudflared_image, fake_release, target_arch  # noqa: F401

API = "https://api.github.com"
REPO = f"{API}/repos/acme/slimllm"


def url(path: str, query: bool = False) -> re.Pattern[str]:
    """A URL of the repository's API; PyGithub may spell the port out."""
    return re.compile(
        re.escape(API) + r"(:443)?/repos/acme/slimllm" + re.escape(path) + (r"(\?.*)?$" if query else "$")
    )


RUN_ID, WORKFLOW_ID, SUCCESSOR_ID = 1000, 77, 1001
TITLE = "chat interface"
SUCCESSOR_TITLE = f"{TITLE} 1 (after run {RUN_ID})"


class FakeActions:
    """GitHub's Actions API for one repository, as far as a handoff uses it."""

    def __init__(self, rsps: responses.RequestsMock, on_dispatch: Callable[[], None] = lambda: None) -> None:
        self.dispatches: list[dict[str, Any]] = []
        self.runs: list[dict[str, Any]] = []
        self.ready = threading.Event()
        self.fail_ready = False
        self.dispatch_status = 204
        self._on_dispatch = on_dispatch
        rsps.add(responses.GET, url(""), json={"full_name": "acme/slimllm", "name": "slimllm", "url": REPO})
        rsps.add(
            responses.GET,
            url(f"/actions/runs/{RUN_ID}"),
            json={**self.run_json(RUN_ID, TITLE), "created_at": "2026-11-27T08:00:00Z"},
        )
        rsps.add(
            responses.GET,
            url(f"/actions/workflows/{WORKFLOW_ID}"),
            json={"id": WORKFLOW_ID, "name": TITLE, "url": f"{REPO}/actions/workflows/{WORKFLOW_ID}"},
        )
        rsps.add_callback(responses.POST, url(f"/actions/workflows/{WORKFLOW_ID}/dispatches"), self._dispatch)
        rsps.add_callback(
            responses.GET,
            url(f"/actions/workflows/{WORKFLOW_ID}/runs", query=True),
            self._list,
        )
        rsps.add_callback(responses.GET, url(f"/actions/runs/{SUCCESSOR_ID}/jobs", query=True), self._jobs)
        rsps.add_callback(
            responses.GET,
            url(f"/actions/runs/{SUCCESSOR_ID}"),
            lambda req: (200, {}, json.dumps(self.runs[0])),
        )

    @staticmethod
    def run_json(run_id: int, title: str) -> dict[str, Any]:
        return {
            "id": run_id,
            "workflow_id": WORKFLOW_ID,
            "display_title": title,
            "status": "in_progress",
            "conclusion": None,
            "created_at": "2026-11-27T13:40:00Z",
            "url": f"{REPO}/actions/runs/{run_id}",
            "jobs_url": f"{REPO}/actions/runs/{run_id}/jobs",
        }

    def _dispatch(self, request: Any) -> tuple[int, dict[str, str], str]:
        self.dispatches.append(json.loads(request.body))
        if self.dispatch_status == 204:
            self.runs = [self.run_json(SUCCESSOR_ID, SUCCESSOR_TITLE)]
            self._on_dispatch()
        return self.dispatch_status, {}, ""

    def _list(self, request: Any) -> tuple[int, dict[str, str], str]:
        return 200, {}, json.dumps({"total_count": len(self.runs), "workflow_runs": self.runs})

    def _jobs(self, request: Any) -> tuple[int, dict[str, str], str]:
        done = self.ready.is_set() or self.fail_ready
        step = {
            "name": READY_STEP,
            "number": 4,
            "status": "completed" if done else "queued",
            "conclusion": ("failure" if self.fail_ready else "success") if done else None,
        }
        job = {"id": 5, "name": "chat instance 1", "run_id": SUCCESSOR_ID, "steps": [step]}
        return 200, {}, json.dumps({"total_count": 1, "jobs": [job]})


def handoff(**changes: Any) -> Handoff:
    plan = HandoffPlan(
        repo="acme/slimllm", run_id=RUN_ID, ref="main", instance="1", title_prefix=TITLE, poll=0.01, **changes
    )
    return Handoff(connect("token", API, spacing=False, retry=False), plan, log=lambda line: None)


@pytest.fixture
def actions() -> Iterator[FakeActions]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        yield FakeActions(rsps)


def test_dispatches_once_and_waits_for_the_readiness_step(actions: FakeActions) -> None:
    actions.ready.set()
    run = handoff(inputs={"duration": "5h40m"}).run()
    assert run.id == SUCCESSOR_ID
    assert actions.dispatches == [
        {"ref": "main", "inputs": {"duration": "5h40m", "instance": "1", "predecessor": str(RUN_ID)}}
    ]


def test_a_running_successor_is_not_dispatched_again(actions: FakeActions) -> None:
    actions.runs = [FakeActions.run_json(SUCCESSOR_ID, SUCCESSOR_TITLE)]
    actions.ready.set()
    assert handoff().run().id == SUCCESSOR_ID
    assert actions.dispatches == []


def test_runs_of_other_instances_do_not_count(actions: FakeActions) -> None:
    # A prefix match would take instance 10's successor for instance 1's.
    actions.runs = [FakeActions.run_json(999, f"{TITLE} 10 (after run {RUN_ID})")]
    actions.ready.set()
    assert handoff().run().id == SUCCESSOR_ID
    assert len(actions.dispatches) == 1


def test_a_failed_dispatch_is_retried_and_fails_without_a_run(actions: FakeActions) -> None:
    actions.dispatch_status = 500
    with pytest.raises(HandoffError, match="cannot dispatch the successor"):
        handoff(dispatch_attempts=2).run()
    assert len(actions.dispatches) == 2


def test_a_successor_that_fails_its_readiness_step_stops_the_handoff(actions: FakeActions) -> None:
    actions.fail_ready = True
    with pytest.raises(HandoffError, match="readiness step ended failure"):
        handoff().run()


def test_a_successor_that_never_gets_ready_times_out(actions: FakeActions) -> None:
    with pytest.raises(HandoffError, match="not ready within"):
        handoff(ready_timeout=0.05).run()


# --- the simulation ----------------------------------------------------------------------------


class Load:
    """Streaming chats through the edge, back to back from `workers` clients, until stopped."""

    def __init__(self, url: str, workers: int = 2) -> None:
        self.url = url
        self.ok = 0
        self.failures: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(workers)]
        for thread in self._threads:
            thread.start()

    @property
    def total(self) -> int:
        return self.ok + len(self.failures)

    def _one(self, client: httpx.Client) -> str | None:
        body = {
            "messages": [{"role": "user", "content": "Count from one to five."}],
            "max_tokens": 12,
            "stream": True,
        }
        try:
            with client.stream("POST", self.url + "/v1/chat/completions", json=body) as response:
                if response.status_code != 200:
                    return f"status {response.status_code}: {response.read()[:200]!r}"
                lines = [line for line in response.iter_lines() if line.startswith("data: ")]
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}"
        if not lines or lines[-1] != "data: [DONE]":
            return f"stream ended without [DONE]: {lines[-2:]}"
        finish = json.loads(lines[-2][6:])["choices"][0]["finish_reason"]
        return None if finish in ("stop", "length") else f"finish_reason {finish!r}"

    def _loop(self) -> None:
        with httpx.Client(timeout=60, trust_env=False) as client:
            while not self._stop.is_set():
                error = self._one(client)
                with self._lock:
                    if error:
                        self.failures.append(f"{time.strftime('%H:%M:%S')} {error[:300]}")
                    else:
                        self.ok += 1

    def wait_for(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.total < count:
            assert time.monotonic() < deadline, f"only {self.total} requests in {timeout} s"
            time.sleep(0.2)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=90)


def connector(docker_client: Any, stack: str) -> tuple[str, str]:
    """The stand-in cloudflared's tunnel side and its /ready, as the edge reaches them."""
    tunnel = docker_client.containers.get(f"{stack}-tunnel")
    ip = tunnel.attrs["NetworkSettings"]["Networks"][f"{stack}-net"]["IPAddress"]
    return f"http://{ip}:8080", published(tunnel, METRICS_PORT) + "/ready"


def wait_registered(edge: Edge, name: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while name not in edge.ready():
        assert time.monotonic() < deadline, f"{name}'s connector never registered with the edge"
        time.sleep(0.1)


def test_handoff_under_load_loses_no_request(
    docker_client: Any,
    request: pytest.FixtureRequest,
    default_model: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    inference = request.getfixturevalue("inference_image")
    tunnel_image = request.getfixturevalue("cloudflared_image")
    suffix = uuid.uuid4().hex[:6]
    old, new = f"ho-old-{suffix}", f"ho-new-{suffix}"
    base_port = 20000 + uuid.uuid4().int % 5000

    def settings(name: str, port: int) -> StackSettings:
        return StackSettings(
            name=name,
            models=plan_models(["default"]),
            models_dir=default_model.parent,
            chat=False,
            tunnel=True,
            monitor=False,
            inference_image=inference.id,
            chat_image="",
            cloudflared_image=tunnel_image,
            monitor_image="",
            port=port,
            chat_port=port + 1,
            threads=1,
            wait_timeout=120,
        )

    edge = Edge()
    load: Load | None = None
    successor_errors: list[BaseException] = []

    def successor_job() -> None:  # what the dispatched run does, up to its readiness step
        try:
            up(settings(new, base_port + 10))
            edge.register(new, *connector(docker_client, new))
            wait_registered(edge, new)
            actions.ready.set()
        except BaseException as exc:
            successor_errors.append(exc)

    try:
        up(settings(old, base_port))
        edge.register(old, *connector(docker_client, old))
        wait_registered(edge, old)
        load = Load(edge.url)
        load.wait_for(60, timeout=120)
        before = load.total

        outputs = tmp_path / "outputs"
        for name, value in {
            "GITHUB_ACTIONS": "true",
            "GITHUB_OUTPUT": str(outputs),
            "GITHUB_STEP_SUMMARY": str(tmp_path / "summary"),
            "GITHUB_TOKEN": "token",
            "GITHUB_REPOSITORY": "acme/slimllm",
            "GITHUB_RUN_ID": str(RUN_ID),
            "GITHUB_REF_NAME": "main",
            "GITHUB_API_URL": API,
        }.items():
            monkeypatch.setenv(name, value)
        with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
            # The docker SDK also speaks through requests; only GitHub's API is answered here.
            rsps.add_passthru(re.compile(r"http\+docker://.*"))
            actions = FakeActions(rsps, on_dispatch=lambda: threading.Thread(target=successor_job).start())
            status = main(
                [
                    "stack", "handoff", "--name", old, "--instance", "1", "--title", TITLE,
                    "--input", "duration=5h40m", "--poll", "0.5", "--grace", "40",
                ]
            )  # fmt: skip
        assert not successor_errors, successor_errors
        assert status == 0
        during = load.total - before
        load.wait_for(max(200, load.total + 60), timeout=240)
    finally:
        if load is not None:
            load.stop()
        edge.close()
        for name in (old, new):
            main(["stack", "down", "--name", name])

    assert load.failures == [], load.failures[:5]
    assert load.total >= 200
    assert edge.served.get(new, 0) >= 60, edge.served
    assert len(actions.dispatches) == 1
    codes = json.loads(re.search(r"exit-codes<<(\S+)\n(.*)\n\1", outputs.read_text())[2])
    assert codes == {f"{old}-tunnel": 0, f"{old}-default": 0}, codes
    print(f"handoff: {load.total} requests, 0 failed, {during} during the handoff; served {edge.served}")
