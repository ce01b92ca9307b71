"""Readiness-based handoff across GitHub's 6-hour job limit.

Before its job ends, a serving job dispatches its successor (the same workflow, through
`workflow_dispatch`, with `GITHUB_TOKEN` and `actions: write`), waits until the successor is
ready -- its run and job in progress, its readiness step succeeded: its stack is healthy and its
cloudflared has joined the same named tunnel as a replica -- and only then drains its own stack:
cloudflared first (it unregisters from the edge and finishes the requests in flight), then the
servers (they finish their streams).

Runs are matched exactly: the workflow's numeric id (from this run, never its name) and the
successor's run title, which the workflow builds from the instance key and this attempt's marker,
RUN_ID-ATTEMPT (`run-name` in .github/workflows/chat-interface.yml). A re-run keeps its run id
but not its attempt, so it never mistakes the successor of an earlier attempt for its own. A run
with the right title that has ended is stale: it is not waited for, and a successor is dispatched
instead. Before dispatching, and before any retry, the successor is looked up first, so a retried
dispatch never starts a second one.
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


def predecessor_marker(run_id: int, run_attempt: int) -> str:
    """What names one attempt of one run: the `predecessor` input of its successor's dispatch."""
    return f"{run_id}-{run_attempt}"


def successor_title(workflow_title: str, instance: str, marker: str) -> str:
    """The run title of the successor, as the workflow's `run-name` renders it."""
    return f"{workflow_title} {instance} (after run {marker})"


@dataclass
class HandoffPlan:
    repo: str
    run_id: int
    ref: str
    instance: str
    title_prefix: str
    run_attempt: int = 1
    inputs: Mapping[str, str] = field(default_factory=dict)
    dispatch_attempts: int = 3
    appear_timeout: float = 300.0
    ready_timeout: float = 1800.0
    poll: float = 10.0

    @property
    def marker(self) -> str:
        return predecessor_marker(self.run_id, self.run_attempt)


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
        self.title = successor_title(plan.title_prefix, plan.instance, plan.marker)
        self._stale: set[int] = set()

    def _candidates(self) -> list[Any]:
        """Runs of this workflow with the successor's exact title, created after this run."""
        created = f">={(self._since - timedelta(seconds=1)).strftime('%Y-%m-%dT%H:%M:%SZ')}"
        return [
            run
            for run in self._workflow.get_runs(event="workflow_dispatch", created=created)
            if run.display_title == self.title and run.id != self.plan.run_id
        ]

    def find_successor(self) -> Any | None:
        """The successor's run, if one was started and has not ended; ended ones are stale."""
        for run in self._candidates():
            if run.id in self._stale:
                continue
            if run.status == "completed":
                self._stale.add(run.id)
                self._log(f"run {run.id} has this title but ended ({run.conclusion}): not a successor")
                continue
            return run
        return None

    def start_successor(self) -> Any:
        run = self.find_successor()
        if run is not None:
            self._log(f"the successor is running already: run {run.id}")
            return run
        inputs = {**self.plan.inputs, "instance": self.plan.instance, "predecessor": self.plan.marker}
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

    def ready(self, run: Any) -> bool:
        """Whether `run` serves now: in progress, with a job in progress whose readiness step has
        succeeded. Raises HandoffError when it can no longer become ready."""
        run.update()
        if run.status == "completed":
            raise HandoffError(f"the successor (run {run.id}) ended {run.conclusion} before it was ready")
        if run.status != "in_progress":
            return False
        for job in run.jobs():
            for step in job.steps:
                if step.name != READY_STEP or step.status != "completed":
                    continue
                if step.conclusion != "success":
                    raise HandoffError(f"the successor's readiness step ended {step.conclusion}")
                if job.status != "in_progress":
                    raise HandoffError(f"the successor's job {job.name!r} is {job.status}, not serving")
                self._log(f"the successor is ready (run {run.id}, job {job.name})")
                return True
        return False

    def wait_until_ready(self, run: Any) -> None:
        """Until the successor is ready (see `ready`); fails if it ends or the time is up first."""
        deadline = self._clock() + self.plan.ready_timeout
        while not self.ready(run):
            if self._clock() > deadline:
                raise HandoffError(f"the successor was not ready within {self.plan.ready_timeout:g} s")
            self._sleep(self.plan.poll)

    def run(self) -> Any:
        successor = self.start_successor()
        self.wait_until_ready(successor)
        return successor
