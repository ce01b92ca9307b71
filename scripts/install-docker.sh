#!/usr/bin/env bash
# Installs and starts a Docker engine with buildx and compose v2 on a Debian bookworm host.
#
# Bookworm ships neither buildx nor compose v2, so the three packages come from the trixie suite,
# pinned so that nothing else on the host is upgraded from it. The trixie source reuses the host's
# own configured Debian mirror. Idempotent: each step is skipped when its result is already there.
set -euo pipefail

log() { printf '[install-docker] %s\n' "$*" >&2; }

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

start_engine() {
  if docker info >/dev/null 2>&1; then return 0; fi
  log "starting dockerd"
  mkdir -p /var/log
  nohup setsid dockerd >/var/log/slimllm-dockerd.log 2>&1 &
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && return 0
    sleep 1
  done
  log "dockerd did not come up; last log lines:"
  tail -n 20 /var/log/slimllm-dockerd.log >&2
  return 1
}

if ! have_stack; then
  log "installing docker.io, docker-buildx and docker-compose"
  install_packages
fi
start_engine
docker buildx version
docker compose version
