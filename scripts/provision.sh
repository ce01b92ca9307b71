#!/usr/bin/env bash
# Provisions this host for slimllm, step by step; the one definition of each step, which the
# Makefile (`make start-*`, `make test`, `make install`) and .ci/run use. Every step finds what is
# already there and is then quick; each says in one line what it found or does, and why.
#
# usage: provision.sh [--times] [--keep-going] STEP...
#   engine            a Docker engine with buildx and compose answers: started when installed but
#                     stopped, installed when missing (scripts/install-docker.sh; Debian, as root)
#   base-image        debian:bookworm-slim (scripts/bootstrap-base-image.sh)
#   registry          a registry on 127.0.0.1 for the release tests (scripts/install-registry.sh)
#   browser           Debian's Chromium for the browser tests (scripts/install-browser.sh)
#   qemu              QEMU user mode for linux/arm64 (scripts/install-qemu.sh)
#   arm64-base-image  debian:bookworm-slim-arm64 (scripts/bootstrap-base-image.sh --arch arm64)
#   python            $VENV (default .venv) with slimllm and its test and lint tools
#   test              all of the above, in that order: what `make test` needs
#   --times           print each step's duration ([slimllm] <<< STEP  SECONDS)
#   --keep-going      a step that fails leaves one line and the next step runs (the tests that
#                     need it skip), unless CI=true; the `test` group always runs so
#
# DOCKER_HOST, if set, names the engine to check or start.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '[slimllm] %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

VENV=${VENV:-.venv}
TIMES=0
KEEP_GOING=0

engine_answers() { docker info >/dev/null 2>&1; }
have_plugins() { docker buildx version >/dev/null 2>&1 && docker compose version >/dev/null 2>&1; }

step_engine() {
  if engine_answers && have_plugins; then
    say "engine: Docker $(docker version --format '{{.Server.Version}}' 2>/dev/null) answers, with buildx and compose"
    return 0
  fi
  # scripts/install-docker.sh says which it does and why: installs what is missing, starts dockerd.
  bash scripts/install-docker.sh
}

step_base_image() { bash scripts/bootstrap-base-image.sh; }
step_registry() { bash scripts/install-registry.sh; }
step_browser() { bash scripts/install-browser.sh; }
step_qemu() { bash scripts/install-qemu.sh; }
step_arm64_base_image() {
  if [[ $(dpkg --print-architecture 2>/dev/null || uname -m) == arm64 ]]; then
    say "arm64 base image: this host is arm64, debian:bookworm-slim is its own"
    return 0
  fi
  bash scripts/bootstrap-base-image.sh --arch arm64
}

step_python() {
  local py=$VENV/bin/python
  if [[ -x $py && $py -nt pyproject.toml ]]; then
    say "python: $VENV is up to date with pyproject.toml"
    return 0
  fi
  if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null \
      || die "python: python3 with venv is missing (apt-get install python3-venv, as root)"
    say "python: python3-venv is missing: installing it (apt-get)"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3 python3-venv >/dev/null
  fi
  if [[ -x $py ]]; then
    say "python: pyproject.toml changed: updating $VENV (pip install -e '.[test,lint]')"
  else
    say "python: no $VENV: creating it with slimllm and its test and lint tools (pip install -e '.[test,lint]')"
    python3 -m venv "$VENV"
    "$py" -m pip install -q --upgrade pip
  fi
  "$py" -m pip install -q -e '.[test,lint]'
  touch "$py"
}

TEST_STEPS=(engine base-image registry browser qemu arm64-base-image python)

run_step() {
  local step=$1 keep_going=$2 start=$SECONDS status=0
  case $step in
    engine | base-image | registry | browser | qemu | arm64-base-image | python) ;;
    *) die "unknown step '$step' (see scripts/provision.sh --help)" ;;
  esac
  if ((!keep_going)); then
    "step_${step//-/_}"
  else
    # A subshell, so that a step's `die` ends the step, not the run.
    ("step_${step//-/_}") || status=$?
    if ((status != 0)); then
      if [[ ${CI:-} == true ]]; then
        die "$step: failed (exit status $status); CI=true needs every prerequisite"
      fi
      say "$step: not provisioned (see above); the tests that need it will skip"
    fi
  fi
  if ((TIMES)); then printf '[slimllm] <<< %-24s %4ds\n' "$step" $((SECONDS - start)) >&2; fi
}

(($#)) || die "no step given (see scripts/provision.sh --help)"
for arg in "$@"; do
  case $arg in
    -h | --help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    --times) TIMES=1 ;;
    --keep-going) KEEP_GOING=1 ;;
    test) for step in "${TEST_STEPS[@]}"; do run_step "$step" 1; done ;;
    *) run_step "$arg" "$KEEP_GOING" ;;
  esac
done
