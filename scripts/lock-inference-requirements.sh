#!/usr/bin/env bash
# Regenerates app/inference/requirements.txt (pinned, with sha256 hashes for every platform).
# The image installs with --no-deps, so what is dropped here is never installed:
# - numpy and diskcache: llama-cpp-python's high-level API needs them; the server uses only the
#   ctypes binding (src/slimllm/inference/binding.py);
# - hf-xet and fsspec: huggingface_hub downloads over plain HTTP without them (xet is an optional
#   transfer backend, fsspec serves HfFileSystem), and together they are 13 MB.
set -euo pipefail
cd "$(dirname "$0")/../app/inference"
pip-compile --quiet --generate-hashes --allow-unsafe --strip-extras --no-emit-index-url \
  --no-emit-find-links --output-file requirements.txt requirements.in
python3 - <<'PY'
import re
from pathlib import Path

path = Path("requirements.txt")
blocks = re.split(r"(?m)^(?=[a-z0-9])", path.read_text())
dropped = {"numpy", "diskcache", "hf-xet", "fsspec"}
kept = [b for b in blocks if b.split("==", 1)[0].strip() not in dropped]
path.write_text("".join(kept))
PY
