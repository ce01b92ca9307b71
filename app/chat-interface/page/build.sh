#!/usr/bin/env bash
# Rebuilds the chat page's vendored script from package-lock.json, reproducibly: the same lock gives
# the same src/slimllm/chat/static/vendor.js byte for byte (tests/test_chat_page.py checks its size;
# the built file is committed, so neither the image build nor the tests need npm). Also copies the
# licences of what the bundle contains, and axe-core (the accessibility checker the browser tests
# inject; never served) into tests/vendor/.
set -euo pipefail
cd "$(dirname "$0")"
npm ci --no-audit --no-fund --ignore-scripts
node node_modules/esbuild/bin/esbuild entry.js --bundle --minify --format=iife --legal-comments=none \
  --target=es2020 --outfile=../../../src/slimllm/chat/static/vendor.js \
  "--banner:js=/*! markdown-it, highlight.js and their dependencies; licences: /static/vendor-licenses.txt */"
out=../../../src/slimllm/chat/static/vendor-licenses.txt
: >"$out"
for package in markdown-it linkify-it mdurl uc.micro entities punycode.js highlight.js; do
  version=$(node -p "require('./node_modules/$package/package.json').version")
  licence=$(ls node_modules/$package | grep -iE '^licen[cs]e' | head -1)
  printf '==== %s %s ====\n\n' "$package" "$version" >>"$out"
  cat "node_modules/$package/$licence" >>"$out"
  printf '\n' >>"$out"
done
mkdir -p ../../../tests/vendor
cp node_modules/axe-core/axe.min.js ../../../tests/vendor/axe.min.js
cp node_modules/axe-core/LICENSE ../../../tests/vendor/axe-core.LICENSE
echo "[build] vendor.js $(wc -c <../../../src/slimllm/chat/static/vendor.js) bytes," \
  "sha256 $(sha256sum ../../../src/slimllm/chat/static/vendor.js | cut -c1-16)"
