#!/bin/sh
# Copy the model into $MODELS_DIR unless a verified copy is already there; exit 0 once it is.
# The copy is written under a temporary name and renamed only after its sha256 checks, so an
# interrupted run never leaves a file that the inference server would take for the model.
set -eu

src="/opt/model/${MODEL_NAME}"
dst="${MODELS_DIR}/${MODEL_NAME}"

verified() {
  echo "${MODEL_SHA256}  $1" | sha256sum -c --status - 2>/dev/null
}

if [ -f "$dst" ] && verified "$dst"; then
  echo "model-init: ${dst} is in place (sha256 verified)"
  exit 0
fi

tmp="${MODELS_DIR}/.${MODEL_NAME}.partial-$$"
trap 'rm -f "$tmp"' EXIT
if ! cp "$src" "$tmp"; then
  echo "model-init: error: cannot write to ${MODELS_DIR} (it must be writable by uid $(id -u))" >&2
  exit 1
fi
if ! verified "$tmp"; then
  echo "model-init: error: the copy of ${MODEL_NAME} does not match sha256 ${MODEL_SHA256}" >&2
  exit 1
fi
mv -f "$tmp" "$dst"
echo "model-init: wrote ${dst} (sha256 verified)"
