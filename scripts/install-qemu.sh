#!/usr/bin/env bash
# Lets this amd64 host run linux/arm64 containers and build steps: QEMU user mode from Debian's
# packages (qemu-user-static, binfmt-support) and the kernel's binfmt_misc handler for aarch64.
#
# Debian's packages register the handler with the F (fix binary) flag: the kernel opens the
# interpreter once, at registration, so it also works inside containers, whose root filesystems
# do not carry /usr/bin/qemu-aarch64-static. Nothing is downloaded from outside the distribution
# (no tonistiigi/binfmt image). Idempotent; run as root. Prints the handler it found or made.
set -euo pipefail

log() { printf '[install-qemu] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

BINFMT=/proc/sys/fs/binfmt_misc
HANDLER=$BINFMT/qemu-aarch64
INTERPRETER=/usr/bin/qemu-aarch64-static

# A handler without F would make every arm64 container fail with "exec format error" or
# "no such file", which is harder to diagnose than failing here.
handler_ok() {
  [[ -r $HANDLER ]] && grep -qx enabled "$HANDLER" && grep -q '^flags:.*F' "$HANDLER"
}

if handler_ok; then
  log "$(tr '\n' ' ' <"$HANDLER")"
  exit 0
fi
[[ $(id -u) -eq 0 ]] || die "registering a binfmt handler needs root"

if [[ ! -x $INTERPRETER ]] || ! command -v update-binfmts >/dev/null; then
  log "installing qemu-user-static and binfmt-support"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends qemu-user-static binfmt-support >/dev/null
fi

# Machines without systemd (containers, CI sandboxes) do not mount binfmt_misc by themselves, and
# the packages' postinst then registers nothing.
if ! mountpoint -q "$BINFMT"; then
  mount -t binfmt_misc binfmt_misc "$BINFMT" || die "cannot mount binfmt_misc on $BINFMT"
fi

# A stale registration (another interpreter path, or one without F) is replaced.
if [[ -e $HANDLER ]] && ! handler_ok; then
  echo -1 >"$HANDLER"
fi
if [[ ! -e $HANDLER ]]; then
  update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 \
    || update-binfmts --import qemu-aarch64 >/dev/null 2>&1 || true
fi
handler_ok || die "no usable aarch64 handler in $BINFMT after update-binfmts: $(cat "$HANDLER" 2>/dev/null || echo none)"
log "$(tr '\n' ' ' <"$HANDLER")"
