# The peer for bench/inference.py: llama.cpp's own llama-server, built from the llama.cpp sources
# vendored in the same llama-cpp-python release the inference image uses, with the same portable
# CPU flags. Bench-only; not shipped. Build from the repository root:
#   docker buildx build -f bench/llama-server.Dockerfile -t slimllm/llama-server:bench .

FROM debian:bookworm-slim AS builder
ARG TARGETARCH
RUN rm -f /etc/apt/apt.conf.d/docker-clean
RUN --mount=type=cache,target=/var/cache/apt,sharing=locked \
    --mount=type=cache,target=/var/lib/apt,sharing=locked \
    apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-pip g++ make cmake ca-certificates
COPY app/inference/requirements.txt /tmp/requirements.txt
# The same sdist (and hash) as the inference image: take its pinned line from the lock file.
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=secret,id=ca,required=false \
    set -eu; \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi; \
    awk '/^llama-cpp-python==/{p=1} p{print} p&&!/\\$/{exit}' /tmp/requirements.txt > /tmp/llama.txt; \
    pip3 download --no-deps --no-binary llama-cpp-python --require-hashes -r /tmp/llama.txt -d /tmp/sdist; \
    mkdir /src && tar -xzf /tmp/sdist/llama_cpp_python-*.tar.gz -C /src --strip-components=1
WORKDIR /src/vendor/llama.cpp
# ${cpu} is a list of flags: it is split on purpose.
# hadolint ignore=SC2086
RUN --mount=type=cache,target=/cache \
    set -eu; \
    case "${TARGETARCH:-amd64}" in \
      amd64) cpu="-DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON" ;; \
      *) cpu="" ;; \
    esac; \
    cmake -S . -B /cache/build -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF ${cpu} \
      -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF \
      -DBUILD_SHARED_LIBS=OFF >/dev/null; \
    cmake --build /cache/build --target llama-server -j "$(nproc)"; \
    install -m 0755 /cache/build/bin/llama-server /usr/local/bin/llama-server

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home llama
COPY --from=builder /usr/local/bin/llama-server /usr/local/bin/llama-server
USER 10001
EXPOSE 8080
ENTRYPOINT ["llama-server", "--host", "0.0.0.0", "--port", "8080"]
