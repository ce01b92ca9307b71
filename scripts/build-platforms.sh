#!/usr/bin/env bash
# Builds the images of a compose file once per platform, for `make build-all PLATFORMS=...`.
#
# usage: build-platforms.sh PLATFORMS COMPOSE_FILE [SERVICE...]
#   PLATFORMS     comma-separated, e.g. linux/amd64,linux/arm64
#
# The engine's classic image store holds one platform per tag, and `--load` can put only one
# platform into it at a time. So each platform is built on its own (Compose with
# DOCKER_DEFAULT_PLATFORM), and every image is tagged IMAGE-ARCH as well, e.g.
# slimllm/inference:local-arm64. Afterwards IMAGE (the tag the stacks run) is the engine's own
# platform when that was built, and otherwise what it was before: a stack never starts an emulated
# image by surprise. Pushing one multi-platform manifest is a job for a registry
# (`docker buildx build --platform linux/amd64,linux/arm64 --push`), not for this script.
set -euo pipefail

log() { printf '[build-platforms] %s\n' "$*" >&2; }

platforms=${1:?usage: build-platforms.sh PLATFORMS COMPOSE_FILE [SERVICE...]}
compose_file=${2:?usage: build-platforms.sh PLATFORMS COMPOSE_FILE [SERVICE...]}
shift 2
here=$(cd "$(dirname "$0")" && pwd)
native=$(docker version --format '{{.Server.Arch}}')

mapfile -t images < <(docker compose -f "$compose_file" config --images "$@" | sort -u)
((${#images[@]})) || { log "error: $compose_file names no images"; exit 1; }
declare -A before=()
for image in "${images[@]}"; do
  before[$image]=$(docker image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)
done

restore() {
  for image in "${images[@]}"; do
    if [[ -n ${built_native:-} ]]; then
      docker tag "$image-$native" "$image"
    elif [[ -n ${before[$image]} ]]; then
      docker tag "${before[$image]}" "$image"
    else
      docker image rm "$image" >/dev/null 2>&1 || true
    fi
  done
}
trap restore EXIT

IFS=, read -ra wanted <<<"$platforms"
for platform in "${wanted[@]}"; do
  arch=${platform#*/}
  arch=${arch%%/*}
  # An argument list on purpose: empty, or --build-arg BASE_IMAGE=...
  # shellcheck disable=SC2207
  base_args=($(bash "$here/base-image-args.sh" "$platform"))
  log "building ${#images[@]} images for $platform ${base_args[*]}"
  start=$SECONDS
  DOCKER_DEFAULT_PLATFORM=$platform docker compose -f "$compose_file" build "${base_args[@]}" "$@"
  for image in "${images[@]}"; do
    got=$(docker image inspect --format '{{.Architecture}}' "$image")
    [[ $got == "$arch" ]] || { log "error: $image was built for $got, not $arch"; exit 1; }
    docker tag "$image" "$image-$arch"
  done
  [[ $arch == "$native" ]] && built_native=1
  log "built for $platform in $((SECONDS - start)) s: ${images[*]/%/-$arch}"
done
