#!/usr/bin/env bash
# Makes `debian:bookworm-slim` available to the local Docker engine.
#
# Order: already present -> pull -> build it here with debootstrap (minbase) and `docker import`,
# trimmed the way the official slim image is (no docs, man pages, locales or apt lists) so that
# image sizes measured on top of it stay comparable with the official one.
#
# usage: bootstrap-base-image.sh [--arch amd64|arm64] [--tag TAG] [--force]
#   --arch   Debian architecture to bootstrap (default: the host's). A foreign architecture needs
#            qemu-user-static + binfmt-support; the image is then tagged TAG-ARCH unless --tag is given.
#   --tag    image tag to produce (default: debian:bookworm-slim)
#   --force  rebuild even if the tag exists
set -euo pipefail

log() { printf '[bootstrap-base] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

host_arch=$(dpkg --print-architecture)
arch=$host_arch
tag=""
force=0
while (($#)); do
  case $1 in
    --arch) arch=${2:?--arch needs a value}; shift 2 ;;
    --tag) tag=${2:?--tag needs a value}; shift 2 ;;
    --force) force=1; shift ;;
    -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done
case $arch in amd64|arm64) ;; *) die "unsupported architecture '$arch' (amd64 or arm64)" ;; esac
if [[ -z $tag ]]; then
  tag=debian:bookworm-slim
  [[ $arch == "$host_arch" ]] || tag="debian:bookworm-slim-$arch"
fi

docker info >/dev/null 2>&1 || die "no Docker engine is answering (run scripts/install-docker.sh first)"

if ((force == 0)) && docker image inspect "$tag" >/dev/null 2>&1; then
  log "$tag is present"
  exit 0
fi
if ((force == 0)) && [[ $arch == "$host_arch" ]] && timeout 60 docker pull -q "$tag" >/dev/null 2>&1; then
  log "pulled $tag"
  exit 0
fi

command -v debootstrap >/dev/null || die "debootstrap is not installed (apt-get install debootstrap)"
log "building $tag ($arch) with debootstrap"
rootfs=$(mktemp -d /tmp/slimllm-rootfs.XXXXXX)
trap 'rm -rf "$rootfs"' EXIT

# Keep the dpkg excludes in place from the start so later `apt-get install` in derived images
# stays slim too, exactly like the official image.
mkdir -p "$rootfs/etc/dpkg/dpkg.cfg.d"
cat >"$rootfs/etc/dpkg/dpkg.cfg.d/docker" <<'CFG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
CFG

debootstrap --variant=minbase --arch="$arch" --foreign bookworm "$rootfs" >/tmp/slimllm-debootstrap.log 2>&1 \
  || { tail -n 20 /tmp/slimllm-debootstrap.log >&2; die "debootstrap (first stage) failed"; }
if [[ $arch != "$host_arch" ]]; then
  [[ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]] || die "no binfmt handler for $arch (install qemu-user-static binfmt-support)"
fi
chroot "$rootfs" /debootstrap/debootstrap --second-stage >>/tmp/slimllm-debootstrap.log 2>&1 \
  || { tail -n 20 /tmp/slimllm-debootstrap.log >&2; die "debootstrap (second stage) failed"; }

# apt settings of the official image: keep no downloaded .debs, no translations, no suggests.
cat >"$rootfs/etc/apt/apt.conf.d/docker-clean" <<'CFG'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
CFG
echo 'Acquire::Languages "none";' >"$rootfs/etc/apt/apt.conf.d/docker-no-languages"
echo 'Acquire::GzipIndexes "true";' >"$rootfs/etc/apt/apt.conf.d/docker-gzip-indexes"
printf 'Apt::AutoRemove::SuggestsImportant "false";\n' >"$rootfs/etc/apt/apt.conf.d/docker-autoremove-suggests"

# debootstrap lists only the main suite; add the updates suite on the same mirror.
mirror=$(awk '/^deb /{print $2; exit}' "$rootfs/etc/apt/sources.list")
rm -f "$rootfs/etc/apt/sources.list"
cat >"$rootfs/etc/apt/sources.list.d/debian.sources" <<SRC
Types: deb
URIs: $mirror
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC

# Remove what the official slim image does not carry.
find "$rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete 2>/dev/null || true
find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete 2>/dev/null || true
rm -rf "$rootfs"/usr/share/{man,groff,info,lintian,linda,locale}/* \
  "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* "$rootfs"/var/cache/debconf/*-old \
  "$rootfs"/var/log/* "$rootfs"/tmp/* "$rootfs"/debootstrap
: >"$rootfs/etc/machine-id"
echo 'debian' >"$rootfs/etc/hostname"

tar -C "$rootfs" --numeric-owner -c . \
  | docker import --platform "linux/$arch" --change 'CMD ["bash"]' - "$tag" >/dev/null
size=$(docker image inspect --format '{{.Size}}' "$tag")
log "built $tag: $((size / 1000000)) MB uncompressed"
