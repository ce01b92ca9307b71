#!/usr/bin/env bash
# Installs and starts a Docker engine with buildx and compose v2 on a Debian bookworm host.
#
# Bookworm ships neither buildx nor compose v2, so the three packages come from the trixie suite,
# pinned so that nothing else on the host is upgraded from it. The trixie source reuses the host's
# own configured Debian mirror. Idempotent: each step is skipped when its result is already there.
set -euo pipefail

log() { printf '[slimllm] %s\n' "$*" >&2; }

have_stack() {
  docker buildx version >/dev/null 2>&1 && docker compose version >/dev/null 2>&1 && command -v dockerd >/dev/null 2>&1
}

add_trixie_source() {
  local src=/etc/apt/sources.list.d/slimllm-trixie.sources
  [[ -f $src ]] && return 0
  local uri
  uri=$(awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  if [[ -z $uri ]]; then
    uri=$(awk '/^deb / && $0 !~ /security/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
  fi
  [[ -n $uri ]] || { log "no Debian mirror found in the apt configuration"; return 1; }
  cat >"$src" <<SRC
Types: deb
URIs: $uri
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  # Only the Docker packages may come from trixie; everything else stays on bookworm.
  cat >/etc/apt/preferences.d/slimllm-trixie <<'PIN'
Package: *
Pin: release n=trixie
Pin-Priority: 100

Package: docker.io docker-buildx docker-compose docker-cli containerd runc tini
Pin: release n=trixie
Pin-Priority: 990
PIN
}

install_packages() {
  export DEBIAN_FRONTEND=noninteractive
  add_trixie_source
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends \
    -t trixie docker.io docker-buildx docker-compose >/dev/null
  apt-get install -y -qq --no-install-recommends iptables debootstrap ca-certificates >/dev/null
}

# DOCKER_HOST (unix://PATH), if set, is where the engine listens; SLIMLLM_DOCKERD_ARGS adds
# arguments (e.g., --data-root for a second engine) and SLIMLLM_DOCKERD_LOG moves its log.
start_engine() {
  if docker info >/dev/null 2>&1; then return 0; fi
  local log_file=${SLIMLLM_DOCKERD_LOG:-/var/log/slimllm-dockerd.log} args=()
  [[ $(id -u) -eq 0 ]] || { log "error: no Docker engine answers, and starting dockerd needs root"; return 1; }
  if [[ -n ${DOCKER_HOST:-} ]]; then
    [[ $DOCKER_HOST == unix://* ]] || { log "error: DOCKER_HOST=$DOCKER_HOST is not a local unix socket to start dockerd on"; return 1; }
    args+=(-H "$DOCKER_HOST")
  fi
  read -ra extra <<<"${SLIMLLM_DOCKERD_ARGS:-}"
  args+=("${extra[@]}")
  log "no Docker engine answers${DOCKER_HOST:+ on $DOCKER_HOST}: starting dockerd (log $log_file)"
  mkdir -p "$(dirname "$log_file")"
  nohup setsid dockerd "${args[@]}" >"$log_file" 2>&1 </dev/null &
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && return 0
    sleep 1
  done
  log "error: dockerd did not come up; last log lines:"
  tail -n 20 "$log_file" >&2
  return 1
}

if ! have_stack; then
  [[ $(id -u) -eq 0 ]] || { log "error: no Docker engine with buildx and compose is installed, and installing one needs root"; exit 1; }
  log "no Docker engine with buildx and compose is installed: installing docker.io, docker-buildx and docker-compose (Debian)"
  install_packages
fi
start_engine
log "Docker $(docker version --format '{{.Server.Version}}') answers; buildx $(docker buildx version | awk '{print $2}'), compose $(docker compose version --short)"
