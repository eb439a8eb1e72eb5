#!/usr/bin/env bash
# Installs the llama.cpp reference peer (node-llama-cpp, prebuilt CPU binaries) into the gitignored .bench/ folder.
set -euo pipefail
VERSION=3.21.1
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
DIR="$ROOT/.bench/llamacpp"
PKG="$DIR/node_modules/node-llama-cpp/package.json"

# Idempotent: skip if the exact pinned version is already present.
if [ -f "$PKG" ] && [ "$(node -p "require('$PKG').version")" = "$VERSION" ]; then
  echo "node-llama-cpp@$VERSION already installed in $DIR" >&2
  exit 0
fi

mkdir -p "$DIR"
# A private package.json keeps npm from walking up into the repo root.
[ -f "$DIR/package.json" ] || cat > "$DIR/package.json" <<JSON
{ "name": "denollm-bench-llamacpp", "private": true, "type": "module" }
JSON

# NODE_LLAMA_CPP_SKIP_DOWNLOAD stops the postinstall from trying to fetch/build llama.cpp from source;
# the prebuilt binaries come as optional npm deps (@node-llama-cpp/<platform>).
cd "$DIR"
NODE_LLAMA_CPP_SKIP_DOWNLOAD=true npm install --no-audit --no-fund --save-exact "node-llama-cpp@$VERSION" >&2
echo "installed node-llama-cpp@$VERSION in $DIR" >&2
