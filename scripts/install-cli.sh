#!/usr/bin/env bash
# Installs slimllm (from this checkout of the action) into a private venv and puts it on PATH.
# Inputs arrive as environment variables: SLIMLLM_EXTRAS, SLIMLLM_PYTHON, SLIMLLM_ACTION_PATH.
set -euo pipefail

extras=${SLIMLLM_EXTRAS:-}
python=${SLIMLLM_PYTHON:-python3}
source_dir=${SLIMLLM_ACTION_PATH:-$(cd "$(dirname "$0")/.." && pwd)}
venv=${RUNNER_TEMP:-/tmp}/slimllm-venv

if [[ -n $extras && ! $extras =~ ^[a-z,]+$ ]]; then
  echo "::error::extras must be a comma-separated list of extra names (e.g., model,docker), got: $extras"
  exit 1
fi
spec=$source_dir
[[ -n $extras ]] && spec="$source_dir[$extras]"

# Several slimllm actions in one job share the venv; each installs only what is not there yet.
marker=$venv/.slimllm-installed
if ! grep -qxF -- "$spec" "$marker" 2>/dev/null; then
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$spec"
  echo "$spec" >>"$marker"
fi
echo "$venv/bin" >>"${GITHUB_PATH:-/dev/null}"
echo "bin=$venv/bin/slimllm" >>"${GITHUB_OUTPUT:-/dev/stdout}"
