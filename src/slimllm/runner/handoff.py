"""Readiness-based handoff across GitHub's 6-hour job limit.

Before its job ends, a serving job dispatches its successor (the same workflow, through
`workflow_dispatch`, with `GITHUB_TOKEN` and `actions: write`), waits until the successor's
readiness step has succeeded -- its stack is healthy and its cloudflared has joined the same named
tunnel as a replica -- and only then drains its own stack: cloudflared first (it unregisters from
the edge and finishes the requests in flight), then the servers (they finish their streams).

Runs are matched exactly: the workflow's numeric id (from this run, never its name) and the
successor's run title, which the workflow builds from the instance key and this run's id
(`run-name` in .github/workflows/chat-interface.yml). Before dispatching, and before any retry,
the successor is looked up first, so a retried dispatch never starts a second successor.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

READY_STEP = "Ready for handoff"


class HandoffError(Exception):
    """The successor could not be started or did not become ready; this stack keeps serving."""


def successor_title(workflow_title: str, instance: str, predecessor_run_id: int) -> str:
    """The run title of the successor, as the workflow's `run-name` renders it."""
    return f"{workflow_title} {instance} (after run {predecessor_run_id})"


@dataclass
class HandoffPlan:
    repo: str
    run_id: int
    ref: str
    instance: str
    title_prefix: str
    inputs: Mapping[str, str] = field(default_factory=dict)
    dispatch_attempts: int = 3
    appear_timeout: float = 300.0
    ready_timeout: float = 1800.0
    poll: float = 10.0


class Handoff:
    """Dispatch the successor of this run and wait until it is ready; `sleep`/`clock` are injectable."""

    def __init__(
        self,
        github: Any,
        plan: HandoffPlan,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        log: Callable[[str], None] = print,
    ) -> None:
        self.plan = plan
        self._repo = github.get_repo(plan.repo)
        self._sleep, self._clock, self._log = sleep, clock, log
        current = self._repo.get_workflow_run(plan.run_id)
        self._since = current.created_at
        self._workflow = self._repo.get_workflow(current.workflow_id)
        self.title = successor_title(plan.title_prefix, plan.instance, plan.run_id)

    def find_successor(self) -> Any | None:
        """The successor's run, if one was started: same workflow id, exact title, after this run."""
        created = f">={(self._since - timedelta(seconds=1)).strftime('%Y-%m-%dT%H:%M:%SZ')}"
        for run in self._workflow.get_runs(event="workflow_dispatch", created=created):
            if run.display_title == self.title and run.id != self.plan.run_id:
                return run
        return None

    def start_successor(self) -> Any:
        run = self.find_successor()
        if run is not None:
            self._log(f"the successor is running already: run {run.id}")
            return run
        inputs = {**self.plan.inputs, "instance": self.plan.instance, "predecessor": str(self.plan.run_id)}
        last_error = ""
        for attempt in range(1, self.plan.dispatch_attempts + 1):
            try:
                if self._workflow.create_dispatch(self.plan.ref, inputs):
                    break
                last_error = "GitHub refused the dispatch"
            except Exception as exc:  # PyGithub raises GithubException and requests' errors
                last_error = f"{type(exc).__name__}: {exc}"
            self._log(f"dispatch attempt {attempt} failed ({last_error})")
            # The dispatch may have gone through even though its answer was lost.
            run = self.find_successor()
            if run is not None:
                return run
            self._sleep(self.plan.poll * attempt)
        else:
            raise HandoffError(f"cannot dispatch the successor: {last_error}")
        deadline = self._clock() + self.plan.appear_timeout
        while (run := self.find_successor()) is None:
            if self._clock() > deadline:
                raise HandoffError(
                    f"no run titled {self.title!r} appeared within {self.plan.appear_timeout:g} s"
                )
            self._sleep(self.plan.poll)
        self._log(f"dispatched the successor: run {run.id}")
        return run

    def wait_until_ready(self, run: Any) -> None:
        """Until the successor's readiness step has succeeded; fails if the successor ends first."""
        deadline = self._clock() + self.plan.ready_timeout
        while True:
            for job in run.jobs():
                for step in job.steps:
                    if step.name == READY_STEP and step.status == "completed":
                        if step.conclusion == "success":
                            self._log(f"the successor is ready (run {run.id}, job {job.name})")
                            return
                        raise HandoffError(f"the successor's readiness step ended {step.conclusion}")
            run.update()
            if run.status == "completed":
                raise HandoffError(f"the successor (run {run.id}) ended {run.conclusion} before it was ready")
            if self._clock() > deadline:
                raise HandoffError(f"the successor was not ready within {self.plan.ready_timeout:g} s")
            self._sleep(self.plan.poll)

    def run(self) -> Any:
        successor = self.start_successor()
        self.wait_until_ready(successor)
        return successor
