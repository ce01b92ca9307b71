#!/usr/bin/env bash
# A local OCI registry standing in for a published one in the release tests (tests/test_release.py):
# Debian's docker-registry package (distribution 2.8), serving plain HTTP on 127.0.0.1 only, which
# Docker treats as an insecure-allowed registry by default. The package's own service (every
# interface, an htpasswd file it does not ship) is left stopped; this script runs the registry
# with a configuration of its own. Idempotent: a registry already answering on the port is kept.
# Run as root. Prints one line saying what it found or did.
#
#   SLIMLLM_REGISTRY_PORT   port on 127.0.0.1 (default 5000)
#   SLIMLLM_REGISTRY_DIR    storage directory (default /var/lib/slimllm-registry)
set -euo pipefail

log() { printf '[install-registry] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

PORT=${SLIMLLM_REGISTRY_PORT:-5000}
STORAGE=${SLIMLLM_REGISTRY_DIR:-/var/lib/slimllm-registry}
CONFIG=/etc/slimllm/registry.yml
PIDFILE=/run/slimllm-registry.pid
LOGFILE=/var/log/slimllm-registry.log
BINARY=/usr/bin/docker-registry
[[ $PORT =~ ^[0-9]{2,5}$ ]] || die "SLIMLLM_REGISTRY_PORT must be a port number, not '$PORT'"
ADDRESS=127.0.0.1:$PORT

answers() { curl -fsS --max-time 3 -o /dev/null "http://$ADDRESS/v2/" 2>/dev/null; }
version() { "$BINARY" --version | awk '{print $NF}'; }

if [[ -x $BINARY ]] && answers; then
  log "registry $(version) already serving on $ADDRESS (storage $STORAGE)"
  exit 0
fi
[[ $(id -u) -eq 0 ]] || die "installing and starting the registry needs root"

if [[ ! -x $BINARY ]]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends docker-registry curl >/dev/null
fi
# The packaged service would listen on every interface; ours listens on 127.0.0.1 only.
if command -v systemctl >/dev/null && systemctl is-active --quiet docker-registry 2>/dev/null; then
  systemctl disable --now docker-registry >/dev/null 2>&1 || true
fi

if ss -ltnH "sport = :$PORT" 2>/dev/null | grep -q .; then
  die "port $PORT is taken by something that is not a registry; set SLIMLLM_REGISTRY_PORT"
fi

mkdir -p "$(dirname "$CONFIG")" "$STORAGE"
cat >"$CONFIG" <<EOF
# Written by scripts/install-registry.sh: a test registry on $ADDRESS, no authentication.
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $STORAGE
  delete:
    enabled: true
http:
  addr: $ADDRESS
  headers:
    X-Content-Type-Options: [nosniff]
EOF

setsid "$BINARY" serve "$CONFIG" >>"$LOGFILE" 2>&1 </dev/null &
echo $! >"$PIDFILE"
for _ in $(seq 1 50); do
  if answers; then
    log "started registry $(version) on $ADDRESS (pid $(cat "$PIDFILE"), storage $STORAGE, log $LOGFILE)"
    exit 0
  fi
  kill -0 "$(cat "$PIDFILE")" 2>/dev/null || break
  sleep 0.2
done
die "the registry did not answer on $ADDRESS; its log: $(tail -n 5 "$LOGFILE" 2>/dev/null)"
