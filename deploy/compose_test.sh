#!/usr/bin/env bash
# `make compose-test`: a real `docker compose up` of the five-hospital stack on this
# machine, with no image registry: 2 secure rounds, tiny model, small synthetic set;
# asserts over Prometheus's HTTP API that the round latency histogram covers both
# rounds; always tears the stack down (`docker compose down -v`).
#
# Steps (each prints its time):
#   1. apt-get install docker.io and debootstrap when missing (root needed);
#   2. start dockerd when none answers (iptables off: see docs/DEPLOYMENT.md);
#      where bridged packets pass a FORWARD chain whose policy is DROP, step 7 inserts
#      one ACCEPT rule for traffic within the stack's own bridge, and removes it on exit;
#   3. debootstrap a Debian bookworm base with python3 once, as image local/fedxray-base;
#   4. fill deploy/wheelhouse with the pinned wheels (deploy/make_wheelhouse.sh);
#   5. make a fresh CA and certificates in build/compose-test/certs;
#   6. build the FedXray and Prometheus images through compose (build.network: host);
#   7. up, poll Prometheus, assert, down;
#   8. remove the FedXray images a rebuild left untagged, and trim the build cache to
#      FEDXRAY_BUILD_CACHE (default 12GB): without this, every run leaves ~5 GB behind.
#
# Settings (environment): COMPOSE_TEST_TIMEOUT (seconds to wait for the rounds, default
# 900), PY (the project's Python, default .venv/bin/python), FEDXRAY_KEEP_DOCKERD=1
# (leave a dockerd this script started running).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

ROUNDS=2
PROJECT=fedxray-compose-test
BASE_IMAGE=local/fedxray-base
MIRROR=http://deb.debian.org/debian
work="$repo/build/compose-test"
PY="${PY:-$repo/.venv/bin/python}"
started=$SECONDS
dockerd_pid=""
stack_up=0
forward_bridges=()  # bridges given an ACCEPT rule in iptables' FORWARD chain, removed on exit

log() { printf '[compose-test %4ss] %s\n' "$((SECONDS - started))" "$*"; }
fail() { log "FAIL: $*"; exit 1; }

[[ "$(id -u)" == 0 ]] || fail "needs root (apt-get, dockerd, debootstrap)"
mkdir -p "$work"

# --- 1. tools -------------------------------------------------------------------------
missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v debootstrap >/dev/null || missing+=(debootstrap)
if ((${#missing[@]})); then
    log "installing ${missing[*]} (apt)"
    # Keep the package's init script from starting a dockerd of its own (iptables on).
    policy_rc_d=""
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        policy_rc_d=/usr/sbin/policy-rc.d
        printf '#!/bin/sh\nexit 101\n' > "$policy_rc_d"; chmod +x "$policy_rc_d"
    fi
    installed=1
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || installed=0
    if [[ -n "$policy_rc_d" ]]; then rm -f "$policy_rc_d"; fi
    ((installed)) || fail "apt-get install ${missing[*]} failed"
fi
# docker.io's own client matches its engine; another `docker` may come first on PATH.
DOCKER=docker
if [[ -x /usr/bin/docker ]]; then DOCKER=/usr/bin/docker; fi

# --- 2. engine ------------------------------------------------------------------------
cleanup() {
    local code=$?
    set +e
    if ((stack_up)); then
        if ((code != 0)); then
            log "stack state and logs, for the failure above:"
            compose ps -a
            compose logs --no-color --tail 60
        fi
        log "docker compose down -v"
        compose down -v --remove-orphans --timeout 20 >/dev/null 2>&1
    fi
    for bridge in "${forward_bridges[@]}"; do
        iptables -D FORWARD -i "$bridge" -o "$bridge" -j ACCEPT 2>/dev/null \
            && log "removed the FORWARD ACCEPT rule for $bridge"
    done
    if "$DOCKER" info >/dev/null 2>&1; then
        # Each rebuild leaves the previous fedxray image untagged (about 5 GB); remove only ours.
        "$DOCKER" image prune -f --filter label=io.fedxray.image >/dev/null 2>&1
        # Keep the build cache (what makes a rebuild take minutes, not ten) but bound it.
        "$DOCKER" builder prune -f --keep-storage "${FEDXRAY_BUILD_CACHE:-12GB}" >/dev/null 2>&1
    fi
    if [[ -n "$dockerd_pid" && "${FEDXRAY_KEEP_DOCKERD:-0}" != 1 ]]; then
        log "stopping the dockerd this script started (pid $dockerd_pid)"
        kill "$dockerd_pid" 2>/dev/null
        wait "$dockerd_pid" 2>/dev/null
    fi
    if ((code == 0)); then log "PASS in $((SECONDS - started)) s"; else log "FAILED (exit $code) after $((SECONDS - started)) s"; fi
    exit "$code"
}
trap cleanup EXIT

if ! "$DOCKER" info >/dev/null 2>&1; then
    log "starting dockerd (--iptables=false --ip-forward=false --ip-masq=false), log: $work/dockerd.log"
    # No iptables: containers on one compose bridge still reach each other, the host
    # reaches published ports through docker-proxy, and nothing is NATed off the machine.
    dockerd --iptables=false --ip-forward=false --ip-masq=false >"$work/dockerd.log" 2>&1 &
    dockerd_pid=$!
    for _ in $(seq 60); do "$DOCKER" info >/dev/null 2>&1 && break; sleep 1; done
    "$DOCKER" info >/dev/null 2>&1 || fail "dockerd did not answer within 60 s; see $work/dockerd.log"
fi
# With br_netfilter loaded, packets between two containers on one bridge pass iptables'
# FORWARD chain; a dockerd without iptables adds no rule there, so where the policy is
# DROP (left by any dockerd that once ran with iptables) they vanish and every RPC
# between services times out. Step 7 opens the stack's own bridge, and only within it.
forward_drops() {
    [[ "$(cat /proc/sys/net/bridge/bridge-nf-call-iptables 2>/dev/null)" == 1 ]] \
        && [[ "$(iptables -S FORWARD 2>/dev/null)" == *"-P FORWARD DROP"* ]]  # no pipe: grep -q + pipefail
}
log "engine: $("$DOCKER" version --format 'server {{.Server.Version}}, API {{.Server.APIVersion}}')"

# --- 3. base image --------------------------------------------------------------------
if "$DOCKER" image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    log "base image $BASE_IMAGE is cached"
else
    rootfs="$(mktemp -d /var/tmp/fedxray-base.XXXXXX)"
    log "debootstrap bookworm (minbase + python3, python3-venv) into $rootfs"
    debootstrap --variant=minbase --include=python3,python3-venv bookworm "$rootfs" "$MIRROR" \
        >"$work/debootstrap.log" 2>&1 || { rm -rf "$rootfs"; fail "debootstrap failed; see $work/debootstrap.log"; }
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    log "importing it as $BASE_IMAGE"
    tar -C "$rootfs" -c . | "$DOCKER" import --change 'ENV LANG=C.UTF-8' --change 'CMD ["/bin/bash"]' \
        - "$BASE_IMAGE" >/dev/null
    rm -rf "$rootfs"
fi

# --- 4. wheelhouse --------------------------------------------------------------------
log "filling deploy/wheelhouse (2.9 GB the first time, through this machine's pip)"
deploy/make_wheelhouse.sh

# --- 5. certificates ------------------------------------------------------------------
log "making a CA and certificates in $work/certs"
rm -rf "$work/certs"
"$PY" -m scripts.make_certs --out "$work/certs" --nodes 5 >/dev/null
# The image runs as uid 10001; keys stay mode 0600, now owned by that user.
chown -R 10001:10001 "$work/certs"

# --- 6. build -------------------------------------------------------------------------
prometheus_port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
export FEDXRAY_CERTS_DIR="$work/certs" FEDXRAY_BASE_IMAGE="$BASE_IMAGE" FEDXRAY_PROMETHEUS_BASE_IMAGE="$BASE_IMAGE" \
    FEDXRAY_PIP_OFFLINE=1 FEDXRAY_ROUNDS="$ROUNDS" FEDXRAY_ARCHITECTURE=tiny FEDXRAY_IMAGE_SIZE=32 \
    FEDXRAY_SYNTHETIC_IMAGES=200 FEDXRAY_PROMETHEUS_PORT="$prometheus_port"
compose() { deploy/compose.sh --project-name "$PROJECT" -f deploy/docker-compose.yml "$@"; }
export DOCKER_HOST="${DOCKER_HOST:-unix:///var/run/docker.sock}"
log "building images (FedXray on $BASE_IMAGE, offline from deploy/wheelhouse; Prometheus from Debian's package); log: $work/build.log"
compose build >"$work/build.log" 2>&1 || { tail -n 60 "$work/build.log"; fail "image build failed; see $work/build.log"; }
log "FedXray image: $("$DOCKER" image inspect --format '{{.Size}}' fedxray:local | awk '{printf "%.0f MB", $1 / 1e6}')"

# --- 7. run ---------------------------------------------------------------------------
stack_up=1
compose up --no-start --no-build >"$work/create.log" 2>&1 || fail "docker compose up --no-start failed; see $work/create.log"
if forward_drops; then
    for network in $("$DOCKER" network ls -q --filter "label=com.docker.compose.project=$PROJECT"); do
        bridge="$("$DOCKER" network inspect --format '{{index .Options "com.docker.network.bridge.name"}}' "$network")"
        [[ -n "$bridge" ]] || bridge="br-${network:0:12}"
        [[ -e "/sys/class/net/$bridge" ]] || fail "network $network has no bridge $bridge"
        iptables -I FORWARD -i "$bridge" -o "$bridge" -j ACCEPT || fail "iptables could not open $bridge"
        forward_bridges+=("$bridge")
        log "iptables' FORWARD policy is DROP for bridged packets: accepting traffic within $bridge (removed on exit)"
    done
    ((${#forward_bridges[@]})) || fail "FORWARD drops bridged packets and the stack has no bridge network to open"
fi
log "docker compose up: key authority, aggregator, 5 hospitals, Prometheus; $ROUNDS rounds (tiny model)"
compose up -d --no-build 2>&1 | sed -u 's/^/    /'
log "polling Prometheus at 127.0.0.1:$prometheus_port for fedxray_round_latency_seconds_count"
python3 deploy/wait_for_rounds.py --prometheus "http://127.0.0.1:$prometheus_port" --rounds "$ROUNDS" \
    --timeout "${COMPOSE_TEST_TIMEOUT:-900}"
log "the round latency histogram covers $ROUNDS rounds"
