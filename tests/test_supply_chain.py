"""What the project takes from others stays pinned, and something proposes the updates: every
third-party action by full commit SHA with its exact release in a comment, and a Dependabot entry
for each ecosystem the repository has, over every directory that holds one of its files."""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO_ROOT

DEPENDABOT = REPO_ROOT / ".github" / "dependabot.yml"
_USES = re.compile(r"^\s*(?:-\s*)?uses:\s*([^\s#]+)(.*)$")
_PIN = re.compile(r"[\w.-]+/[\w./-]+@[0-9a-f]{40}")
_VERSION_COMMENT = re.compile(r"\s+#\s*v\d+\.\d+\.\d+\s*")


def pin_problems(text: str) -> list[str]:
    """Each `uses:` line of a workflow or action that is not `./local`, `owner/repo[/path]@<40-hex
    SHA>` followed by nothing but a `# vX.Y.Z` comment."""
    problems = []
    for line in text.splitlines():
        match = _USES.match(line)
        if not match or match[1].startswith("./"):
            continue
        if not _PIN.fullmatch(match[1]):
            problems.append(f"not pinned by a full commit SHA: {line.strip()}")
        elif not _VERSION_COMMENT.fullmatch(match[2]):
            problems.append(f"no '# vX.Y.Z' comment naming the release: {line.strip()}")
    return problems


SHA = "3d3c42e5aac5ba805825da76410c181273ba90b1"


@pytest.mark.parametrize(
    ("line", "ok"),
    [
        pytest.param(f"      - uses: actions/checkout@{SHA} # v7.0.1", True, id="pinned"),
        pytest.param(f"        uses: actions/cache/restore@{SHA} # v5.0.5", True, id="sub-action"),
        pytest.param("      - uses: ./actions/serve", True, id="local"),
        pytest.param("      - uses: actions/checkout@v7", False, id="tag"),
        pytest.param("      - uses: actions/checkout@v7.0.1 # v7.0.1", False, id="full tag"),
        pytest.param(f"      - uses: actions/checkout@{SHA[:12]} # v7.0.1", False, id="short sha"),
        pytest.param(f"      - uses: actions/checkout@{SHA}", False, id="no comment"),
        pytest.param(f"      - uses: actions/checkout@{SHA} # v7", False, id="major only"),
        pytest.param(f"      - uses: actions/checkout@{SHA} # main", False, id="branch comment"),
    ],
)
def test_the_pin_check_tells_a_pin_from_a_tag(line: str, ok: bool) -> None:
    assert (pin_problems(line) == []) == ok


ACTION_AND_WORKFLOW_FILES = sorted(
    [
        REPO_ROOT / "action.yml",
        *REPO_ROOT.glob("actions/*/action.yml"),
        *(REPO_ROOT / ".github" / "workflows").glob("*.yml"),
    ]
)


@pytest.mark.parametrize("path", ACTION_AND_WORKFLOW_FILES, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_every_action_is_pinned_by_sha_with_its_release(path: Path) -> None:
    assert pin_problems(path.read_text(encoding="utf-8")) == []


# ------------------------------------------------------------------------------------ Dependabot


def tracked(pattern: str) -> list[Path]:
    """Files of the repository matching `pattern` anywhere, outside virtual environments and caches."""
    skip = {".git", ".venv", "node_modules", "__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache"}
    return sorted(p for p in REPO_ROOT.rglob(pattern) if not skip & set(p.relative_to(REPO_ROOT).parts))


def hash_locked_requirements() -> list[Path]:
    return [
        p for p in tracked("*.txt") if "--hash=sha256:" in p.read_text(encoding="utf-8", errors="replace")
    ]


def remote_action_dirs() -> list[Path]:
    """ "/" for the workflows and the root action.yml, and each composite action that uses a
    third-party action."""
    dirs = [REPO_ROOT]
    for action in REPO_ROOT.glob("actions/*/action.yml"):
        text = action.read_text(encoding="utf-8")
        if any(m and not m[1].startswith("./") for m in map(_USES.match, text.splitlines())):
            dirs.append(action.parent)
    return dirs


# Each ecosystem Dependabot knows -> the directories of this repository that need it.
ECOSYSTEMS = {
    "github-actions": remote_action_dirs,
    "pip": lambda: [p.parent for p in hash_locked_requirements()],
    "docker": lambda: [p.parent for p in tracked("*Dockerfile*")],
    "gomod": lambda: [p.parent for p in tracked("go.mod")],
    "npm": lambda: [p.parent for p in tracked("package.json")],
}


def directory(path: Path) -> str:
    """A directory as Dependabot names it: from the repository's root, "/" for the root itself."""
    return "/" if path == REPO_ROOT else "/" + path.relative_to(REPO_ROOT).as_posix()


def dependabot_directories() -> dict[str, list[str]]:
    config = yaml.safe_load(DEPENDABOT.read_text(encoding="utf-8"))
    assert config["version"] == 2
    found: dict[str, list[str]] = {}
    for update in config["updates"]:
        assert update["schedule"]["interval"], update
        dirs = update.get("directories") or [update["directory"]]
        found.setdefault(update["package-ecosystem"], []).extend(dirs)
    return found


@pytest.mark.parametrize("ecosystem", sorted(ECOSYSTEMS))
def test_dependabot_covers_every_directory_of_each_ecosystem(ecosystem: str) -> None:
    configured = dependabot_directories().get(ecosystem, [])
    needed = sorted({directory(d) for d in ECOSYSTEMS[ecosystem]()})
    missing = [d for d in needed if not any(fnmatch.fnmatchcase(d, pattern) for pattern in configured)]
    assert missing == [], f"{ecosystem}: no Dependabot entry for {missing}"
    # And nothing stale: each configured directory (or pattern) matches a directory that needs it.
    stale = [p for p in configured if not any(fnmatch.fnmatchcase(d, p) for d in needed)]
    assert stale == [], f"{ecosystem}: Dependabot entries for directories without its files: {stale}"


def test_the_ecosystems_found_are_the_ones_this_repository_has() -> None:
    """The lists the coverage test works from are not empty where files exist (a glob that finds
    nothing would make that test pass for nothing)."""
    assert len(ECOSYSTEMS["github-actions"]()) >= 2  # "/" and the composite actions' own
    assert {p.relative_to(REPO_ROOT).as_posix() for p in hash_locked_requirements()} >= {
        "app/inference/requirements.txt",
        "app/chat-interface/requirements.txt",
        "docker/model-init/requirements.txt",
        "scripts/cli-requirements/base.txt",
    }
    assert len(ECOSYSTEMS["docker"]()) >= 6 and len(ECOSYSTEMS["gomod"]()) >= 2
    assert [directory(d) for d in ECOSYSTEMS["npm"]()] == ["/app/chat-interface/page"]


def test_every_hash_locked_file_has_a_hash_on_every_pin() -> None:
    """What Dependabot edits stays hash-locked: each `name==version` line carries at least one hash."""
    for path in hash_locked_requirements():
        blocks = re.split(r"(?m)^(?=[A-Za-z0-9])", path.read_text(encoding="utf-8"))
        for block in blocks:
            if re.match(r"[A-Za-z0-9][\w.-]*==", block):
                assert "--hash=sha256:" in block, f"{path.relative_to(REPO_ROOT)}: {block.splitlines()[0]}"


def test_the_inference_lock_leaves_out_what_the_image_does_not_install() -> None:
    """scripts/lock-inference-requirements.sh drops some packages after pip-compile; a lock
    recompiled without it (a Dependabot pull request) brings them back and fails here until the
    script has run on its branch."""
    script = (REPO_ROOT / "scripts" / "lock-inference-requirements.sh").read_text(encoding="utf-8")
    match = re.search(r"dropped = \{([^}]*)\}", script)
    assert match, "the script's `dropped` set"
    dropped = set(re.findall(r'"([^"]+)"', match[1]))
    assert dropped
    text = (REPO_ROOT / "app" / "inference" / "requirements.txt").read_text(encoding="utf-8")
    locked = {m.lower() for m in re.findall(r"(?m)^([A-Za-z0-9][\w.-]*)==", text)}
    assert dropped & locked == set(), "re-run scripts/lock-inference-requirements.sh"
