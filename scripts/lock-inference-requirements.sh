#!/usr/bin/env bash
# Regenerates app/inference/requirements.txt (pinned, with sha256 hashes for every platform).
# numpy and diskcache, which llama-cpp-python declares for its high-level API, are dropped: the
# image installs with --no-deps and the server never imports that layer.
set -euo pipefail
cd "$(dirname "$0")/../app/inference"
pip-compile --quiet --generate-hashes --allow-unsafe --strip-extras --no-emit-index-url \
  --no-emit-find-links --output-file requirements.txt requirements.in
python3 - <<'PY'
import re
from pathlib import Path

path = Path("requirements.txt")
blocks = re.split(r"(?m)^(?=[a-z0-9])", path.read_text())
dropped = {"numpy", "diskcache"}
kept = [b for b in blocks if b.split("==", 1)[0].strip() not in dropped]
path.write_text("".join(kept))
PY
