"""Replicas and handoff across the 6-hour limit: the GitHub side against `responses`, the stand-in
edge's routing, and a simulation with real stacks.

The simulation runs real stacks (`slimllm.runner.stack.up`: the inference image on the real model,
each with the real docker/cloudflared image around the stand-in cloudflared) as replicas of one
named tunnel behind tests/fakes/edge.py, a stand-in for Cloudflare's edge. The tunnel's public
hostname points at http://inference:8080, the alias every stack gives its first model. A steady
load of streaming chats goes through the edge while two replicas share it, one of them is killed,
and the other hands off to a successor with `slimllm stack handoff` -- the command the keep-alive
action runs -- which dispatches the successor (GitHub's API answered by `responses`; the
"successor job" is a thread that starts the next stack), waits until it is ready, then drains.
"""

from __future__ import annotations

import base64
import json
import re
import socket
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import responses
from httpx_sse import EventSource

from slimllm.cli import main
from slimllm.reports.regression import connect
from slimllm.runner.handoff import READY_STEP, Handoff, HandoffError, HandoffPlan, successor_title
from slimllm.runner.plan import plan_models
from slimllm.runner.stack import StackSettings, up
from tests.dockerutil import buildx
from tests.fakes.edge import Edge

# Fixtures reused as they are: the inference image, and the real cloudflared image around the
# stand-in cloudflared.
from tests.test_inference import inference_image  # noqa: F401
from tests.test_sidecars import cloudflared_image, fake_release, target_arch  # noqa: F401

API = "https://api.github.com"
REPO = f"{API}/repos/acme/slimllm"
RUN_ID, WORKFLOW_ID = 1000, 77
TITLE = "chat interface"


def url(path: str, query: bool = False) -> re.Pattern[str]:
    """A URL of the repository's API; PyGithub may spell the port out."""
    return re.compile(re.escape(API) + r"(:443)?/repos/acme/slimllm" + path + (r"(\?.*)?$" if query else "$"))


@dataclass
class Run:
    """A workflow run as the fake API holds it: the run, its one job and its readiness step."""

    id: int
    title: str
    status: str = "in_progress"
    conclusion: str | None = None
    job_status: str = "in_progress"
    ready_step: str | None = None  # None: not reached; else the step's conclusion

    def json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "workflow_id": WORKFLOW_ID,
            "display_title": self.title,
            "status": self.status,
            "conclusion": self.conclusion,
            "created_at": "2026-11-27T13:40:00Z",
            "url": f"{REPO}/actions/runs/{self.id}",
            "jobs_url": f"{REPO}/actions/runs/{self.id}/jobs",
        }

    def jobs_json(self) -> dict[str, Any]:
        step = {
            "name": READY_STEP,
            "number": 4,
            "status": "queued" if self.ready_step is None else "completed",
            "conclusion": self.ready_step,
        }
        job = {"id": self.id * 10, "name": "chat instance 1", "run_id": self.id, "status": self.job_status}
        job["conclusion"] = None if self.job_status != "completed" else "success"
        return {"total_count": 1, "jobs": [{**job, "steps": [step]}]}


class FakeActions:
    """GitHub's Actions API for one repository, as far as a handoff uses it. A dispatch creates a
    run titled the way the workflow's `run-name` renders it; `ready` marks dispatched runs ready."""

    def __init__(self, rsps: responses.RequestsMock, on_dispatch: Callable[[], None] = lambda: None) -> None:
        self.dispatches: list[dict[str, Any]] = []
        self.runs: list[Run] = []  # newest first, as GitHub lists them
        self.dispatched: list[Run] = []
        self.ready = threading.Event()
        self.fail_ready = False
        self.dispatch_status = 204
        self._on_dispatch = on_dispatch
        self._next_id = RUN_ID + 1
        current = Run(RUN_ID, TITLE)
        rsps.add(responses.GET, url(""), json={"full_name": "acme/slimllm", "name": "slimllm", "url": REPO})
        rsps.add(
            responses.GET,
            url(f"/actions/runs/{RUN_ID}"),
            json={**current.json(), "created_at": "2026-11-27T08:00:00Z"},
        )
        rsps.add(
            responses.GET,
            url(f"/actions/workflows/{WORKFLOW_ID}"),
            json={"id": WORKFLOW_ID, "name": TITLE, "url": f"{REPO}/actions/workflows/{WORKFLOW_ID}"},
        )
        rsps.add_callback(responses.POST, url(f"/actions/workflows/{WORKFLOW_ID}/dispatches"), self._dispatch)
        rsps.add_callback(
            responses.GET, url(f"/actions/workflows/{WORKFLOW_ID}/runs", query=True), self._list
        )
        rsps.add_callback(responses.GET, url(r"/actions/runs/(\d+)/jobs", query=True), self._jobs)
        rsps.add_callback(responses.GET, url(r"/actions/runs/(\d+)"), self._run)

    def add_run(self, title: str, **state: Any) -> Run:
        run = Run(self._next_id, title, **state)
        self._next_id += 1
        self.runs.insert(0, run)
        return run

    def _find(self, request: Any) -> Run:
        run_id = int(re.search(r"/actions/runs/(\d+)", request.url)[1])  # type: ignore[index]
        return next(r for r in self.runs if r.id == run_id)

    def _refresh(self, run: Run) -> None:
        if run in self.dispatched and run.ready_step is None and (self.ready.is_set() or self.fail_ready):
            run.ready_step = "failure" if self.fail_ready else "success"

    def _dispatch(self, request: Any) -> tuple[int, dict[str, str], str]:
        body = json.loads(request.body)
        self.dispatches.append(body)
        if self.dispatch_status == 204:
            inputs = body["inputs"]
            # The workflow's run-name: "<workflow> <instance> (after run <predecessor>)".
            run = self.add_run(f"{TITLE} {inputs['instance']} (after run {inputs['predecessor']})")
            self.dispatched.append(run)
            self._on_dispatch()
        return self.dispatch_status, {}, ""

    def _list(self, request: Any) -> tuple[int, dict[str, str], str]:
        runs = [r.json() for r in self.runs]
        return 200, {}, json.dumps({"total_count": len(runs), "workflow_runs": runs})

    def _run(self, request: Any) -> tuple[int, dict[str, str], str]:
        run = self._find(request)
        self._refresh(run)
        return 200, {}, json.dumps(run.json())

    def _jobs(self, request: Any) -> tuple[int, dict[str, str], str]:
        run = self._find(request)
        self._refresh(run)
        return 200, {}, json.dumps(run.jobs_json())


def handoff(attempt: int = 1, **changes: Any) -> Handoff:
    plan = HandoffPlan(
        repo="acme/slimllm",
        run_id=RUN_ID,
        run_attempt=attempt,
        ref="main",
        instance="1",
        title_prefix=TITLE,
        poll=0.01,
        **changes,
    )
    return Handoff(connect("token", API, spacing=False, retry=False), plan, log=lambda line: None)


@pytest.fixture
def actions() -> Iterator[FakeActions]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        yield FakeActions(rsps)


def test_dispatches_once_and_waits_for_the_readiness_step(actions: FakeActions) -> None:
    actions.ready.set()
    run = handoff(inputs={"duration": "5h40m"}).run()
    assert run.id == actions.dispatched[0].id
    assert actions.dispatches == [
        {"ref": "main", "inputs": {"duration": "5h40m", "instance": "1", "predecessor": f"{RUN_ID}-1"}}
    ]
    assert run.display_title == f"{TITLE} 1 (after run {RUN_ID}-1)"


def test_a_running_successor_is_not_dispatched_again(actions: FakeActions) -> None:
    running = actions.add_run(successor_title(TITLE, "1", f"{RUN_ID}-1"), ready_step="success")
    assert handoff().run().id == running.id
    assert actions.dispatches == []


def test_runs_of_other_instances_do_not_count(actions: FakeActions) -> None:
    # A prefix match would take instance 10's successor for instance 1's.
    actions.add_run(f"{TITLE} 10 (after run {RUN_ID}-1)", ready_step="success")
    actions.ready.set()
    assert handoff().run().id == actions.dispatched[0].id
    assert len(actions.dispatches) == 1


def test_a_rerun_hands_off_to_a_successor_of_its_own(actions: FakeActions) -> None:
    """A re-run keeps its run id: attempt 1's successor, finished long ago, and one titled the way
    a marker without the attempt would be, must not count as attempt 2's."""
    actions.add_run(
        successor_title(TITLE, "1", f"{RUN_ID}-1"),
        status="completed",
        conclusion="success",
        job_status="completed",
        ready_step="success",
    )
    actions.add_run(f"{TITLE} 1 (after run {RUN_ID})", ready_step="success")
    actions.ready.set()
    run = handoff(attempt=2).run()
    assert [d["inputs"]["predecessor"] for d in actions.dispatches] == [f"{RUN_ID}-2"]
    assert run.id == actions.dispatched[0].id
    assert run.display_title == f"{TITLE} 1 (after run {RUN_ID}-2)"


def test_an_ended_run_with_the_title_is_stale(actions: FakeActions) -> None:
    """A successor of this very attempt that has ended (a handoff retried after it failed, say)
    is not waited for, however its readiness step went: a new one is dispatched."""
    stale = actions.add_run(
        successor_title(TITLE, "1", f"{RUN_ID}-1"),
        status="completed",
        conclusion="cancelled",
        job_status="completed",
        ready_step="success",
    )
    actions.ready.set()
    run = handoff().run()
    assert len(actions.dispatches) == 1
    assert run.id != stale.id and run.id == actions.dispatched[0].id


def test_a_successor_is_ready_only_while_its_job_runs(actions: FakeActions) -> None:
    actions.add_run(successor_title(TITLE, "1", f"{RUN_ID}-1"), job_status="completed", ready_step="success")
    with pytest.raises(HandoffError, match="not serving"):
        handoff().run()


def test_a_successor_that_ends_before_it_is_ready_stops_the_handoff(actions: FakeActions) -> None:
    run = actions.add_run(successor_title(TITLE, "1", f"{RUN_ID}-1"))
    plan = handoff(ready_timeout=30)
    successor = plan.start_successor()
    run.status, run.conclusion = "completed", "failure"
    with pytest.raises(HandoffError, match="ended failure before it was ready"):
        plan.wait_until_ready(successor)


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


def test_the_workflow_titles_successors_as_the_handoff_looks_for_them() -> None:
    workflow = (Path(__file__).parent.parent / ".github/workflows/chat-interface.yml").read_text()
    expression = re.search(
        r"format\('([^']*)', github\.workflow, inputs\.instance, inputs\.predecessor\)", workflow
    )
    assert expression, "run-name renders the successor's title from the workflow, instance and predecessor"
    rendered = expression[1].replace("{0}", TITLE).replace("{1}", "3").replace("{2}", "1000-2")
    assert rendered == successor_title(TITLE, "3", "1000-2")


# --- the stand-in edge's routing ----------------------------------------------------------------


class FakeConnector:
    """A connector for the edge's own tests: registers, answers /ready, serves with `behaviour`."""

    def __init__(self, edge: Edge, token: str, behaviour: str) -> None:
        self.behaviour = behaviour
        self.received = 0
        self.id = uuid.uuid4().hex
        connector = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                if self.path == "/ready":
                    body = json.dumps({"readyConnections": 4, "connectorId": connector.id}).encode()
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                connector.received += 1
                self.send_response(200)
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                self.wfile.write(b"5\r\nhello\r\n")
                self.wfile.flush()
                if connector.behaviour == "dies mid-answer":
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                self.wfile.write(b"0\r\n\r\n")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        port = self.server.server_address[1]
        claims = json.loads(base64.b64decode(token))
        edge._register(
            {
                "tunnel": claims["t"],
                "secret": claims["s"],
                "connector": self.id,
                "port": port,
                "metricsPort": port,
            },
            "127.0.0.1",
        )

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("first", ["refuses connections", "dies mid-answer"])
def test_the_stand_in_edge_retries_a_failed_connection_and_nothing_else(first: str) -> None:
    edge = Edge("127.0.0.1", poll=None)  # no /ready polling: the routing alone decides
    try:
        token = edge.add_tunnel("chat.example.test", "http://inference:8080")
        broken = FakeConnector(edge, token, first)
        healthy = FakeConnector(edge, token, "serves")
        if first == "refuses connections":
            broken.stop()  # after the other started: it must not get the same port
        results = []
        for _ in range(4):
            try:
                results.append(httpx.get(edge.url + "/v1/models", timeout=10).text)
            except httpx.HTTPError as exc:
                results.append(type(exc).__name__)
    finally:
        edge.close()
    if first == "refuses connections":
        # The requests it could not be sent went to the other connector; nobody saw a failure.
        assert results == ["hello"] * 4 and edge.retried == 1
        assert broken.received == 0 and healthy.received == 4
    else:
        # A request it had received is lost: the stream is cut, and it is not sent again.
        assert results.count("RemoteProtocolError") >= 1 and edge.retried == 0, results
        assert broken.received + healthy.received == 4


# --- the simulation ----------------------------------------------------------------------------


OPERATOR_KEY = f"operator-key-{uuid.uuid4().hex}"


class Load:
    """Streaming chats through the edge, back to back from `workers` clients, until stopped."""

    def __init__(self, url: str, workers: int = 2, headers: dict[str, str] | None = None) -> None:
        self.url, self.headers = url, headers or {}
        self.ok = 0
        self.failures: list[str] = []
        self.seconds: list[float] = []
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
                data = [event.data for event in EventSource(response).iter_sse()]
        except httpx.HTTPError as exc:  # a cut stream, and a hung one (the client's timeout)
            return f"{type(exc).__name__}: {exc}"
        if not data or data[-1] != "[DONE]":
            return f"stream ended without [DONE]: {data[-2:]}"
        finish = json.loads(data[-2])["choices"][0]["finish_reason"]
        return None if finish in ("stop", "length") else f"finish_reason {finish!r}"

    def _loop(self) -> None:
        with httpx.Client(timeout=60, trust_env=False, headers=self.headers) as client:
            while not self._stop.is_set():
                started = time.monotonic()
                error = self._one(client)
                with self._lock:
                    self.seconds.append(time.monotonic() - started)
                    if error:
                        self.failures.append(f"{time.strftime('%H:%M:%S')} {error[:300]}")
                    else:
                        self.ok += 1

    def wait_for(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.total < count:
            assert time.monotonic() < deadline, (
                f"only {self.total} requests in {timeout} s, {len(self.failures)} failed: {self.failures[:3]}"
            )
            time.sleep(0.2)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=90)


def bridge_gateway(docker_client: Any) -> str:
    """This host as containers on any network reach it: the default bridge's gateway."""
    return str(docker_client.networks.get("bridge").attrs["IPAM"]["Config"][0]["Gateway"])


def connector_address(docker_client: Any, stack: str) -> str:
    tunnel = docker_client.containers.get(f"{stack}-tunnel")
    return str(tunnel.attrs["NetworkSettings"]["Networks"][f"{stack}-net"]["IPAddress"])


def replica_settings(
    name: str, port: int, inference: Any, tunnel_image: str, models_dir: Path, wait_timeout: float = 180
) -> StackSettings:
    return StackSettings(
        name=name,
        models=plan_models(["default"]),
        models_dir=models_dir,
        chat=False,
        tunnel=True,
        # The stand-in edge's clients send no key: an open endpoint, on purpose.
        public="true",
        monitor=False,
        inference_image=inference.id,
        chat_image="",
        cloudflared_image=tunnel_image,
        monitor_image="",
        port=port,
        chat_port=port + 1,
        threads=1,
        wait_timeout=wait_timeout,
    )


@pytest.fixture
def edge(docker_client: Any) -> Iterator[Edge]:
    stand_in = Edge(bridge_gateway(docker_client))
    yield stand_in
    stand_in.close()


@pytest.mark.docker
@pytest.mark.timeout(3600)
def test_replicas_a_kill_and_a_handoff_lose_no_request(
    docker_client: Any,
    request: pytest.FixtureRequest,
    default_model: Path,
    edge: Edge,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    inference = request.getfixturevalue("inference_image")
    tunnel_image = request.getfixturevalue("cloudflared_image")
    suffix = uuid.uuid4().hex[:6]
    first, second, successor = (f"rep-{n}-{suffix}" for n in ("a", "b", "c"))
    base_port = 20000 + uuid.uuid4().int % 5000
    # Set once in the "dashboard": the one hostname, to the alias every stack gives its first model.
    monkeypatch.setenv("TUNNEL_TOKEN", edge.add_tunnel("chat.example.test", "http://inference:8080"))
    # The named tunnel's hostname reaches the servers as Host with no setting: it comes through the
    # tunnel. The load is the operator's own (its key), so no per-client limit meant for strangers
    # refuses it, while the kill and the handoff must lose none of it.
    monkeypatch.setenv("SLIMLLM_API_KEY", OPERATOR_KEY)

    def settings(name: str, port: int) -> StackSettings:
        return replica_settings(name, port, inference, tunnel_image, default_model.parent)

    def start(name: str, port: int) -> tuple[str, float]:
        started = time.monotonic()
        up(settings(name, port))
        took = time.monotonic() - started
        address = connector_address(docker_client, name)
        # Readiness includes the registration: the edge routes to it the moment `up` returns.
        assert [c.address for c in edge.ready()].count(address) == 1, edge.connectors
        return address, took

    load: Load | None = None
    successor_errors: list[BaseException] = []
    timings: dict[str, float] = {}
    actions: FakeActions | None = None

    def successor_job() -> None:  # what the dispatched run does, up to its readiness step
        try:
            timings["successor up"] = start(successor, base_port + 20)[1]
            assert actions is not None
            actions.ready.set()
        except BaseException as exc:
            successor_errors.append(exc)

    try:
        # -- two replicas behind one hostname
        address_a, timings["replica a up"] = start(first, base_port)
        address_b, timings["replica b up"] = start(second, base_port + 10)
        load = Load(edge.url, headers={"Authorization": f"Bearer {OPERATOR_KEY}"})
        load.wait_for(100, timeout=900)
        spread = {"a": edge.served_by(address_a), "b": edge.served_by(address_b)}
        assert min(spread.values()) >= 30, spread

        # -- one killed mid-traffic (SIGKILL, between two of its requests: see the edge)
        tunnel_a = docker_client.containers.get(f"{first}-tunnel")
        killed_at = load.total
        edge.kill_between_requests(address_a, lambda: tunnel_a.kill(signal="SIGKILL"))
        served_a = edge.served_by(address_a)
        kill_time = time.monotonic()
        load.wait_for(killed_at + 100, timeout=900)
        timings["100 requests after the kill"] = time.monotonic() - kill_time
        assert edge.served_by(address_a) == served_a, "nothing is served by the killed replica"
        retried_after_kill = edge.retried
        assert main(["stack", "down", "--name", first]) == 0

        # -- the survivor hands off to a successor during steady traffic
        outputs = tmp_path / "outputs"
        for name, value in {
            "GITHUB_ACTIONS": "true",
            "GITHUB_OUTPUT": str(outputs),
            "GITHUB_STEP_SUMMARY": str(tmp_path / "summary"),
            "GITHUB_TOKEN": "token",
            "GITHUB_REPOSITORY": "acme/slimllm",
            "GITHUB_RUN_ID": str(RUN_ID),
            "GITHUB_RUN_ATTEMPT": "1",
            "GITHUB_REF_NAME": "main",
            "GITHUB_API_URL": API,
        }.items():
            monkeypatch.setenv(name, value)
        before_handoff = load.total
        handoff_started = time.monotonic()
        with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
            # The docker SDK and the edge speak through requests/httpx; only GitHub's API is answered here.
            rsps.add_passthru(re.compile(r"http\+docker://.*"))
            actions = FakeActions(rsps, on_dispatch=lambda: threading.Thread(target=successor_job).start())
            status = main(
                [
                    "stack", "handoff", "--name", second, "--instance", "1", "--title", TITLE,
                    "--input", "duration=5h40m", "--poll", "0.5", "--grace", "40",
                ]
            )  # fmt: skip
        timings["handoff (dispatch to drained)"] = time.monotonic() - handoff_started
        assert not successor_errors, successor_errors
        assert status == 0
        during = load.total - before_handoff
        address_c = connector_address(docker_client, successor)
        load.wait_for(max(300, load.total + 60), timeout=900)
    finally:
        if load is not None:
            load.stop()
        for name in (first, second, successor):
            main(["stack", "down", "--name", name])

    assert load.failures == [], load.failures[:5]
    assert load.total >= 300
    assert edge.served_by(address_c) >= 60, edge.connectors
    assert edge.no_connector == 0
    assert actions is not None and [d["inputs"]["predecessor"] for d in actions.dispatches] == [f"{RUN_ID}-1"]
    codes = json.loads(re.search(r"exit-codes<<(\S+)\n(.*)\n\1", outputs.read_text())[2])  # type: ignore[index]
    assert codes == {f"{second}-tunnel": 0, f"{second}-default": 0}, codes
    seconds = sorted(load.seconds)
    print(
        f"\nreplicas: {load.total} requests, {len(load.failures)} failed; "
        f"spread before the kill a={spread['a']} b={spread['b']}; "
        f"{retried_after_kill} sent to the killed connector and retried on the other; "
        f"{during} during the handoff; served {[(c.address, c.served) for c in edge.connectors.values()]}; "
        f"latency median {statistics.median(seconds):.2f} s, max {seconds[-1]:.2f} s; "
        + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items())
    )


@pytest.mark.docker
@pytest.mark.timeout(900)
def test_stack_up_returns_only_once_the_connector_has_registered(
    docker_client: Any,
    request: pytest.FixtureRequest,
    default_model: Path,
    edge: Edge,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Even with a tunnel image whose health check says nothing about the edge (here it passes as
    soon as the binary runs) and a connector slow to reach the edge, `stack up` returns only once
    the connector is registered."""
    inference = request.getfixturevalue("inference_image")
    base = request.getfixturevalue("cloudflared_image")
    tag = f"{base}-slow"
    (tmp_path / "Dockerfile").write_text(
        f"FROM {base}\nENV TEST_DOUBLE_CONNECT_DELAY=12s\nHEALTHCHECK --interval=10s --start-period=60s "
        '--start-interval=1s CMD ["/usr/local/bin/sidecar", "version"]\n'
    )
    built = buildx("--load", "-t", tag, str(tmp_path))
    assert built.returncode == 0, built.stderr[-3000:]
    monkeypatch.setenv("TUNNEL_TOKEN", edge.add_tunnel("chat.example.test", "http://inference:8080"))
    name = f"slow-{uuid.uuid4().hex[:6]}"
    try:
        up(replica_settings(name, 20000 + uuid.uuid4().int % 5000, inference, tag, default_model.parent))
        address = connector_address(docker_client, name)
        assert [c.address for c in edge.ready()] == [address]
        started = docker_client.containers.get(f"{name}-tunnel").attrs["State"]["StartedAt"]
        print(f"tunnel started {started}; stack up returned after its registration")
    finally:
        main(["stack", "down", "--name", name])
        docker_client.images.remove(tag, force=True)
