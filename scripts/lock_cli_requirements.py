#!/usr/bin/env python3
"""Lock the CLI that the actions install: scripts/cli-requirements/*.txt, pinned with hashes.

    python scripts/lock_cli_requirements.py           # regenerate (pip-compile, needs the index)
    python scripts/lock_cli_requirements.py --check   # exit 1 if a lock is stale (offline)

The actions run `slimllm` in jobs that hold write tokens, so what they install is locked:
scripts/install-cli.sh installs base.txt plus one file per extra it needs (docker, github, model)
with `pip install --require-hashes`, then slimllm itself from the action's checkout with
`--no-deps --no-build-isolation` (setuptools, its build backend, is in base.txt). An extra's file
holds everything that extra needs; every file is compiled against one resolution of all of them
together, so a package that several files lock has the same version and hashes in each, and pip
takes it once.

Each file starts with a fingerprint of what it was locked from (pyproject.toml's dependencies, the
extra's, and build-system.requires); `--check` and tests/test_workflows.py fail when pyproject.toml
has changed since, or when a locked version no longer satisfies a declared range.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = ROOT / "pyproject.toml"
LOCK_DIR = ROOT / "scripts" / "cli-requirements"
# The extras the actions install (scripts/install-cli.sh accepts these only).
EXTRAS = ("docker", "github", "model")
FINGERPRINT = re.compile(r"^# locked from pyproject\.toml: ([0-9a-f]{64})$", re.MULTILINE)
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+?)(?: \\)?$")


def declared(pyproject: dict, part: str) -> list[str]:
    """The requirements a lock file covers: `base` (the dependencies and the build backend) or an
    extra's."""
    if part == "base":
        return list(pyproject["project"]["dependencies"]) + list(pyproject["build-system"]["requires"])
    return list(pyproject["project"]["optional-dependencies"][part])


def fingerprint(pyproject: dict, part: str) -> str:
    return hashlib.sha256(json.dumps(sorted(declared(pyproject, part))).encode()).hexdigest()


def parts() -> list[str]:
    return ["base", *EXTRAS]


def pins(text: str) -> dict[str, tuple[str, int]]:
    """Each locked package (normalised name) -> (version, number of hashes)."""
    found: dict[str, tuple[str, int]] = {}
    name = ""
    for line in text.splitlines():
        match = _PIN.match(line)
        if match:
            name = re.sub(r"[-_.]+", "-", match[1]).lower()
            found[name] = (match[2], 0)
        elif line.strip().startswith("--hash=sha256:") and name:
            version, count = found[name]
            found[name] = (version, count + 1)
    return found


def problems() -> list[str]:
    """What is wrong with the lock files now; empty when they are current."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pyproject = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))
    found = []
    for part in parts():
        path = LOCK_DIR / f"{part}.txt"
        if not path.is_file():
            found.append(f"{path.relative_to(ROOT)} is missing")
            continue
        text = path.read_text(encoding="utf-8")
        stamp = FINGERPRINT.search(text)
        if not stamp or stamp[1] != fingerprint(pyproject, part):
            found.append(f"{path.relative_to(ROOT)} was locked from another pyproject.toml: run {__file__}")
        locked = pins(text)
        for name, (version, hashes) in locked.items():
            if hashes == 0:
                found.append(f"{path.relative_to(ROOT)}: {name}=={version} has no hash")
        for spec in declared(pyproject, part):
            requirement = Requirement(spec)
            if requirement.name == "slimllm":
                continue
            name = canonicalize_name(requirement.name)
            if name not in locked:
                found.append(f"{path.relative_to(ROOT)} does not lock {requirement.name}")
            elif not requirement.specifier.contains(locked[name][0], prereleases=True):
                found.append(f"{path.relative_to(ROOT)}: {name}=={locked[name][0]} is outside {spec}")
    return found


def compile_lock(
    output: Path, extras: list[str], *, hashes: bool, constraints: Path | None, build: bool
) -> None:
    command = [
        sys.executable, "-m", "piptools", "compile", "--quiet", "--allow-unsafe", "--strip-extras",
        "--no-emit-index-url", "--no-emit-find-links", "--no-header", "--output-file", str(output),
    ]  # fmt: skip
    command += ["--generate-hashes"] if hashes else []
    command += [arg for extra in extras for arg in ("--extra", extra)]
    command += ["--build-deps-for", "wheel"] if build else []
    command += ["--constraint", str(constraints)] if constraints else []
    subprocess.run([*command, str(PYPROJECT)], check=True, cwd=ROOT)


def lock() -> None:
    pyproject = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))
    LOCK_DIR.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        everything = Path(tmp) / "all.txt"
        # One resolution of everything the actions may install, which each file is held to.
        compile_lock(everything, list(EXTRAS), hashes=False, constraints=None, build=True)
        for part in parts():
            output = Path(tmp) / f"{part}.txt"
            extras = [] if part == "base" else [part]
            compile_lock(output, extras, hashes=True, constraints=everything, build=part == "base")
            # The joint resolution is a temporary file: its name says nothing in the lock.
            body = "".join(
                line
                for line in output.read_text(encoding="utf-8").splitlines(keepends=True)
                if line.strip() != f"#   -c {everything}"
            )
            what = (
                "What slimllm itself needs, and its build backend" if part == "base" else f"The {part} extra"
            )
            python = f"{sys.version_info.major}.{sys.version_info.minor}"
            header = (
                f"# {what}, for the CLI that the actions install (scripts/install-cli.sh), resolved\n"
                f"# with Python {python} together with the other extras' files.\n"
                f"# Generated by scripts/lock_cli_requirements.py; do not edit.\n"
                f"# locked from pyproject.toml: {fingerprint(pyproject, part)}\n"
            )
            (LOCK_DIR / f"{part}.txt").write_text(header + body, encoding="utf-8")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that the locks are current")
    args = parser.parse_args()
    if not args.check:
        lock()
    found = problems()
    for problem in found:
        print(f"error: {problem}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
