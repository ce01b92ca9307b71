#!/usr/bin/env bash
# Prints the value of docker-bake.hcl's BASE_IMAGES for builds for PLATFORMS on this machine: the
# Debian each foreign platform starts from, as PLATFORM=IMAGE pairs, comma separated (e.g.
# linux/arm64=debian:bookworm-slim-arm64), or nothing.
#
# usage: base-image-args.sh PLATFORMS     (comma separated: linux/arm64, linux/amd64,linux/arm64, ...)
#        BASE_IMAGES=$(bash scripts/base-image-args.sh linux/arm64) PLATFORMS=linux/arm64 \
#          docker buildx bake -f docker-bake.hcl chat-interface
#
# With a registry, `FROM debian:bookworm-slim` finds every platform in the official multi-platform
# image, and nothing is printed. Without one, the engine's classic image store holds a single
# platform per tag: the engine's own under debian:bookworm-slim, and another one only under
# debian:bookworm-slim-ARCH (scripts/bootstrap-base-image.sh --arch ARCH). The Dockerfiles start
# their target-platform stages from ${BASE_IMAGE} (default debian:bookworm-slim), so pointing
# BASE_IMAGE at that tag is all a foreign-platform build needs; their build-platform stages keep
# debian:bookworm-slim.
set -euo pipefail

platforms=${1?usage: base-image-args.sh PLATFORMS}
[[ -n $platforms ]] || exit 0
native=$(docker version --format '{{.Server.Arch}}')
pairs=()
IFS=, read -ra wanted <<<"$platforms"
for platform in "${wanted[@]}"; do
  arch=${platform#*/}
  arch=${arch%%/*}
  [[ $arch == "$native" ]] && continue
  tag=debian:bookworm-slim-$arch
  if [[ $(docker image inspect --format '{{.Architecture}}' "$tag" 2>/dev/null) == "$arch" ]]; then
    pairs+=("$platform=$tag")
  fi
done
(IFS=,; echo "${pairs[*]}")
