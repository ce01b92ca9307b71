#!/usr/bin/env bash
# Installs slimllm (from this checkout of the action) into a private venv and puts it on PATH.
# Inputs arrive as environment variables: SLIMLLM_EXTRAS, SLIMLLM_PYTHON, SLIMLLM_ACTION_PATH.
#
# The jobs that run it may hold write tokens, so nothing is installed unpinned: the dependencies
# come from the hash-locked files in scripts/cli-requirements (base.txt and one per extra, made by
# scripts/lock_cli_requirements.py) with --require-hashes, then slimllm itself with --no-deps and
# without build isolation (its build backend, setuptools, is locked in base.txt too).
set -euo pipefail

extras=${SLIMLLM_EXTRAS:-}
python=${SLIMLLM_PYTHON:-python3}
source_dir=${SLIMLLM_ACTION_PATH:-$(cd "$(dirname "$0")/.." && pwd)}
venv=${RUNNER_TEMP:-/tmp}/slimllm-venv
locks=$source_dir/scripts/cli-requirements

if [[ -n $extras && ! $extras =~ ^[a-z,]+$ ]]; then
  echo "::error::extras must be a comma-separated list of extra names (e.g., model,docker), got: $extras"
  exit 1
fi
parts=(base)
IFS=, read -r -a asked <<<"$extras"
for extra in "${asked[@]}"; do
  [[ -z $extra ]] && continue
  if [[ ! -f $locks/$extra.txt || $extra == base ]]; then
    echo "::error::unknown extra '$extra'; the actions install docker, github and model"
    exit 1
  fi
  [[ " ${parts[*]} " == *" $extra "* ]] || parts+=("$extra")
done

# Several slimllm actions in one job share the venv; each installs only what is not there yet.
marker=$venv/.slimllm-installed
missing=()
for part in "${parts[@]}"; do
  grep -qxF -- "$source_dir $part" "$marker" 2>/dev/null || missing+=("$part")
done
if ((${#missing[@]})); then
  "$python" -m venv "$venv"
  requirements=()
  for part in "${missing[@]}"; do requirements+=(-r "$locks/$part.txt"); done
  pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)
  "${pip[@]}" --require-hashes "${requirements[@]}"
  if [[ " ${missing[*]} " == *" base "* ]]; then
    "${pip[@]}" --no-deps --no-build-isolation "$source_dir"
  fi
  for part in "${missing[@]}"; do echo "$source_dir $part" >>"$marker"; done
fi
echo "$venv/bin" >>"${GITHUB_PATH:-/dev/null}"
echo "bin=$venv/bin/slimllm" >>"${GITHUB_OUTPUT:-/dev/stdout}"
