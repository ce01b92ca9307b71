#!/usr/bin/env bash
# Prints the `docker buildx build` arguments that an image build for PLATFORM needs on this machine
# to start from the right Debian: nothing, or `--build-arg BASE_IMAGE=debian:bookworm-slim-ARCH`.
#
# usage: base-image-args.sh PLATFORM      (linux/arm64, linux/amd64, ...)
#
# With a registry, `FROM debian:bookworm-slim` finds every platform in the official multi-platform
# image, and nothing is printed. Without one, the engine's classic image store holds a single
# platform per tag: the engine's own under debian:bookworm-slim, and another one only under
# debian:bookworm-slim-ARCH (scripts/bootstrap-base-image.sh --arch ARCH). The Dockerfiles start
# their target-platform stages from ${BASE_IMAGE} (default debian:bookworm-slim), so pointing
# BASE_IMAGE at that tag is all a foreign-platform build needs; their build-platform stages keep
# debian:bookworm-slim.
set -euo pipefail

platform=${1:?usage: base-image-args.sh PLATFORM}
arch=${platform#*/}
arch=${arch%%/*}
native=$(docker version --format '{{.Server.Arch}}')
[[ $arch == "$native" ]] && exit 0
tag=debian:bookworm-slim-$arch
if [[ $(docker image inspect --format '{{.Architecture}}' "$tag" 2>/dev/null) == "$arch" ]]; then
  echo "--build-arg BASE_IMAGE=$tag"
fi
