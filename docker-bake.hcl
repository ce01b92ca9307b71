# The one definition of slimllm's image builds: `slimllm images build` (and so the build action),
# the Makefile and the tests all run `docker buildx bake` on this file. Run it from the repository
# root (contexts are relative to it), and name it with -f (without, bake would also read the
# compose files):
#
#   docker buildx bake -f docker-bake.hcl                  # the stack's images, as slimllm/IMAGE:local
#   docker buildx bake -f docker-bake.hcl --print inference   # what a build would do, as JSON
#   PLATFORMS=linux/amd64,linux/arm64 docker buildx bake -f docker-bake.hcl all
#   REGISTRY=registry.example.com/acme TAG=v1.2.0 PUSH=true PLATFORMS=linux/amd64,linux/arm64 \
#     docker buildx bake -f docker-bake.hcl all
#
# Every variable below can be set in the environment (as above); any attribute of a target with
# `--set TARGET.ATTRIBUTE=VALUE` (e.g. --set inference.tags=slimllm/inference:test).

# Images are named REGISTRY/IMAGE:TAG.
variable "REGISTRY" {
  default = "slimllm"
}

# Tags, comma separated (e.g., latest,v1.2.0).
variable "TAG" {
  default = "local"
}

# Target platforms, comma separated (e.g., linux/amd64,linux/arm64); empty: the engine's own.
#
# Loading into the local engine (PUSH=false): the engine's classic image store holds one platform
# per tag, and an image is loaded one platform at a time. So each platform is a build of its own
# (target IMAGE-ARCH when there are several, e.g. inference-arm64), tagged TAG-ARCH (e.g.
# slimllm/inference:local-arm64); TAG itself goes only to the engine's own platform, so a stack
# that runs TAG never starts an emulated image by surprise. A foreign platform runs under QEMU
# (scripts/install-qemu.sh) and, where debian:bookworm-slim cannot be pulled, needs BASE_IMAGES.
# Pushing (PUSH=true): one build per image, all platforms in one multi-platform manifest, TAG.
variable "PLATFORMS" {
  default = ""
}

# true: push to REGISTRY; false: load into the local engine.
variable "PUSH" {
  default = false
}

# Build cache: none, gha (the GitHub Actions cache), registry (REGISTRY/IMAGE:buildcache-SCOPE) or
# local (directories under CACHE_DIR). One cache per image and platform set (SCOPE, e.g.
# inference-linuxarm64), so builds do not evict each other's layers. Exporting a cache needs a
# docker-container builder (`slimllm images build` makes one); the engine's own `docker` builder
# cannot.
variable "CACHE" {
  default = "none"
}

variable "CACHE_DIR" {
  default = ""
}

# A CA bundle handed to the builds as the BuildKit secret `ca` (pip trusts it; it is never stored
# in a layer): needed behind a TLS-intercepting proxy, harmless elsewhere. Empty: no secret. make
# hands /etc/ssl/certs/ca-certificates.crt when it exists.
variable "SLIMLLM_BUILD_CA" {
  default = ""
}

# The Debian an image for a platform starts from where the multi-platform debian:bookworm-slim
# cannot be pulled: PLATFORM=IMAGE pairs, comma separated (e.g.,
# linux/arm64=debian:bookworm-slim-arm64). `scripts/base-image-args.sh PLATFORMS` prints them for
# this machine. They apply to builds of a single platform (every load is one).
variable "BASE_IMAGES" {
  default = ""
}

# The engine's own platform, which gets TAG in a load: by default the platform bake runs on (set
# it when the engine is a remote one of another architecture).
variable "NATIVE_PLATFORM" {
  default = BAKE_LOCAL_PLATFORM
}

# true: attach an SBOM and a provenance attestation (mode=max) to each image pushed; needs a push
# through a docker-container builder (the engine's own `docker` builder keeps no attestations).
variable "ATTEST" {
  default = false
}

# The release version (e.g., v1.2.0), carried as the OCI version label; empty: no label.
variable "VERSION" {
  default = ""
}

# Set on GitHub Actions: images built there carry their repository and commit as OCI labels.
variable "GITHUB_SERVER_URL" {
  default = ""
}

variable "GITHUB_REPOSITORY" {
  default = ""
}

variable "GITHUB_SHA" {
  default = ""
}

function "platform_list" {
  params = []
  result = distinct(compact([for p in split(",", PLATFORMS) : trimspace(p)]))
}

function "tag_list" {
  params = []
  result = distinct(compact([for t in split(",", TAG) : trimspace(t)]))
}

# The builds of an image, one matrix value each: "" for one build of every platform in
# PLATFORMS (a push, or the engine's default platform), else one platform.
function "builds" {
  params = []
  result = PUSH || length(platform_list()) == 0 ? [""] : platform_list()
}

# linux/arm64 -> arm64, linux/arm/v7 -> armv7.
function "arch" {
  params = [platform]
  result = replace(trimprefix(platform, "linux/"), "/", "")
}

function "build_name" {
  params = [image, build]
  result = length(builds()) > 1 ? "${image}-${arch(build)}" : image
}

function "build_platforms" {
  params = [build]
  result = build == "" ? platform_list() : [build]
}

function "build_tags" {
  params = [image, build]
  result = concat(
    build == "" || build == trimsuffix(NATIVE_PLATFORM, "/v8") ? [for t in tag_list() : "${REGISTRY}/${image}:${t}"] : [],
    build == "" ? [] : [for t in tag_list() : "${REGISTRY}/${image}:${t}-${arch(build)}"],
  )
}

function "cache_scope" {
  params = [image, build]
  result = "${image}-${length(build_platforms(build)) > 0 ? join("-", [for p in build_platforms(build) : replace(p, "/", "")]) : "default"}"
}

function "cache_from" {
  params = [image, build]
  result = (
    CACHE == "gha" ? ["type=gha,scope=${cache_scope(image, build)}"] :
    CACHE == "registry" ? ["type=registry,ref=${REGISTRY}/${image}:buildcache-${cache_scope(image, build)}"] :
    CACHE == "local" ? ["type=local,src=${CACHE_DIR}/${cache_scope(image, build)}"] :
    []
  )
}

function "cache_to" {
  params = [image, build]
  result = (
    CACHE == "gha" ? ["type=gha,mode=max,scope=${cache_scope(image, build)}"] :
    CACHE == "registry" ? ["type=registry,ref=${REGISTRY}/${image}:buildcache-${cache_scope(image, build)},mode=max"] :
    CACHE == "local" ? ["type=local,dest=${CACHE_DIR}/${cache_scope(image, build)},mode=max"] :
    []
  )
}

# {BASE_IMAGE = ...} for a build of one platform that BASE_IMAGES names, else {}.
function "base_image_args" {
  params = [build]
  result = {
    for pair in compact(split(",", BASE_IMAGES)) :
    "BASE_IMAGE" => trimspace(split("=", pair)[1])
    if length(build_platforms(build)) == 1 && contains(build_platforms(build), trimspace(split("=", pair)[0]))
  }
}

group "default" {
  targets = ["stack"]
}

# The images the compose stacks run (the tunnel profile's cloudflared aside: `make images` adds it
# when that profile is on).
group "stack" {
  targets = ["model-init", "inference", "chat-interface", "health-monitor"]
}

# Every image: what `slimllm images build` offers.
group "all" {
  targets = ["inference", "chat-interface", "cloudflared", "health-monitor", "model-init"]
}

# What every image shares: the output, the CA secret, the source and version labels and, for a
# release, the attestations.
target "_common" {
  output = [PUSH ? "type=registry" : "type=docker"]
  secret = SLIMLLM_BUILD_CA == "" ? [] : ["id=ca,src=${SLIMLLM_BUILD_CA}"]
  attest = ATTEST ? ["type=sbom", "type=provenance,mode=max"] : []
  labels = merge(
    GITHUB_SERVER_URL != "" && GITHUB_REPOSITORY != "" ? { "org.opencontainers.image.source" = "${GITHUB_SERVER_URL}/${GITHUB_REPOSITORY}" } : {},
    GITHUB_SHA != "" ? { "org.opencontainers.image.revision" = GITHUB_SHA } : {},
    VERSION != "" ? { "org.opencontainers.image.version" = VERSION } : {},
  )
}

# The inference server (llama-cpp-python).
target "inference" {
  inherits   = ["_common"]
  matrix     = { build = builds() }
  name       = build_name("inference", build)
  context    = "."
  dockerfile = "app/inference/Dockerfile"
  platforms  = build_platforms(build)
  tags       = build_tags("inference", build)
  cache-from = cache_from("inference", build)
  cache-to   = cache_to("inference", build)
  args       = base_image_args(build)
}

# The chat page and its API.
target "chat-interface" {
  inherits   = ["_common"]
  matrix     = { build = builds() }
  name       = build_name("chat-interface", build)
  context    = "."
  dockerfile = "app/chat-interface/Dockerfile"
  platforms  = build_platforms(build)
  tags       = build_tags("chat-interface", build)
  cache-from = cache_from("chat-interface", build)
  cache-to   = cache_to("chat-interface", build)
  args       = base_image_args(build)
}

# The tunnel sidecar (downloads the pinned cloudflared release).
target "cloudflared" {
  inherits   = ["_common"]
  matrix     = { build = builds() }
  name       = build_name("cloudflared", build)
  context    = "docker/cloudflared"
  dockerfile = "Dockerfile"
  platforms  = build_platforms(build)
  tags       = build_tags("cloudflared", build)
  cache-from = cache_from("cloudflared", build)
  cache-to   = cache_to("cloudflared", build)
}

# The monitor sidecar.
target "health-monitor" {
  inherits   = ["_common"]
  matrix     = { build = builds() }
  name       = build_name("health-monitor", build)
  context    = "docker/health-monitor"
  dockerfile = "Dockerfile"
  platforms  = build_platforms(build)
  tags       = build_tags("health-monitor", build)
  cache-from = cache_from("health-monitor", build)
  cache-to   = cache_to("health-monitor", build)
}

# The model volume filler (the embedded default model).
target "model-init" {
  inherits   = ["_common"]
  matrix     = { build = builds() }
  name       = build_name("model-init", build)
  context    = "docker/model-init"
  dockerfile = "Dockerfile"
  platforms  = build_platforms(build)
  tags       = build_tags("model-init", build)
  cache-from = cache_from("model-init", build)
  cache-to   = cache_to("model-init", build)
  args       = base_image_args(build)
}
