#!/usr/bin/env bash
# Fill deploy/wheelhouse with every wheel requirements.txt needs (dependencies included),
# so that the image build can install offline (PIP_OFFLINE=1):
#
#   deploy/make_wheelhouse.sh
#
# The wheels come through this machine's pip and its configuration (its indexes and
# local find-links: here the multi-GB torch and nvidia-* wheels are local files), for
# the image's platform: CPython 3.11 on glibc x86_64, like this host. Re-runs only when
# requirements.txt changed (a stamp file records its hash).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
wheelhouse="$repo/deploy/wheelhouse"
stamp="$wheelhouse/.requirements.sha256"
want="$(sha256sum "$repo/requirements.txt" | cut -d' ' -f1)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    echo "make_wheelhouse: deploy/wheelhouse is up to date with requirements.txt"
    exit 0
fi
mkdir -p "$wheelhouse"
find "$wheelhouse" -maxdepth 1 -name '*.whl' -delete
rm -f "$stamp"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
if ! "${PYTHON:-python3}" -m pip download --disable-pip-version-check -q --only-binary=:all: \
        --dest "$wheelhouse" -r "$repo/requirements.txt" >"$log" 2>&1; then
    cat "$log" >&2
    echo "make_wheelhouse: pip download failed" >&2
    exit 1
fi
"${PYTHON:-python3}" - "$wheelhouse" "$repo/requirements.txt" <<'PY'
import sys
from pathlib import Path
wheelhouse, requirements = Path(sys.argv[1]), Path(sys.argv[2])
# name==version of each wheel, without a local label (torch-2.14.1+cpu satisfies torch==2.14.1)
names = {w.name.split("-")[0].lower().replace("_", "-") + "==" + w.name.split("-")[1].split("+")[0]
         for w in wheelhouse.glob("*.whl")}
pins = [line.split("#")[0].strip().lower().replace("_", "-") for line in requirements.read_text().splitlines()]
missing = [pin for pin in pins if pin and pin not in names]
sys.exit(f"make_wheelhouse: missing after download: {missing}" if missing else 0)
PY
echo "$want" > "$stamp"
echo "make_wheelhouse: $(find "$wheelhouse" -maxdepth 1 -name '*.whl' | wc -l) wheels," \
     "$(du -sh "$wheelhouse" | cut -f1) in deploy/wheelhouse"
