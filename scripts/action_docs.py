"""Write the inputs and outputs tables of each action into README.md, from the action.yml files.

The README holds, for each action, a block between `<!-- action-docs: PATH -->` and
`<!-- /action-docs -->`; this script replaces its content. `--check` changes nothing and exits 1
when a block is out of date (the test suite runs it), so the tables cannot drift from the actions.

    python scripts/action_docs.py [--check] [README]
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"(<!-- action-docs: (?P<path>[\w./-]+) -->\n)(?P<body>.*?)(<!-- /action-docs -->)", re.S)


def _cell(text: object) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def render(action_file: Path) -> str:
    action: dict[str, Any] = yaml.safe_load(action_file.read_text(encoding="utf-8"))
    lines = []
    inputs = action.get("inputs") or {}
    if inputs:
        lines += ["| input | description | default |", "| --- | --- | --- |"]
        for name, spec in inputs.items():
            default = spec.get("default", "")
            shown = f"`{_cell(default)}`" if default not in ("", None) else ""
            required = " (required)" if spec.get("required") else ""
            lines.append(f"| `{name}` | {_cell(spec.get('description', ''))}{required} | {shown} |")
    outputs = action.get("outputs") or {}
    if outputs:
        lines += ["", "| output | description |", "| --- | --- |"]
        for name, spec in outputs.items():
            lines.append(f"| `{name}` | {_cell(spec.get('description', ''))} |")
    return "\n".join(lines) + "\n"


def update(text: str, root: Path) -> str:
    def replace(match: re.Match[str]) -> str:
        path = root / match["path"]
        if not path.is_file():
            raise SystemExit(f"error: README names {match['path']}, which does not exist")
        return match.group(1) + render(path) + match.group(4)

    return BLOCK.sub(replace, text)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if out of date")
    parser.add_argument("readme", nargs="?", type=Path, default=ROOT / "README.md")
    args = parser.parse_args(argv)
    text = args.readme.read_text(encoding="utf-8")
    documented = {m["path"] for m in BLOCK.finditer(text)}
    actions = {str(p.relative_to(ROOT)) for p in [ROOT / "action.yml", *ROOT.glob("actions/*/action.yml")]}
    missing = sorted(actions - documented)
    if missing:
        print(f"error: {args.readme.name} has no action-docs block for {', '.join(missing)}", file=sys.stderr)
        return 1
    new = update(text, ROOT)
    if new == text:
        return 0
    if args.check:
        print(f"error: {args.readme.name} is out of date: run python scripts/action_docs.py", file=sys.stderr)
        return 1
    args.readme.write_text(new, encoding="utf-8")
    print(f"updated {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
