#!/usr/bin/env bash
# `make compose-test`: a real `docker compose up` of the five-hospital stack on this
# machine, with no image registry: 3 secure rounds, tiny model, small synthetic set
# (40 local epochs, so a round lasts long enough to be interrupted).
# Chaos: hospital-5 is frozen (`docker compose pause`) once round 2 opens, so the round it
# has not uploaded to stays open; `docker compose kill aggregator` (SIGKILL) inside that
# round and `start`: the aggregator abandons it, resumes from its checkpoint, and the run
# finishes. Asserts over Prometheus's
# HTTP API that every round completed and the restart shows; checks every Grafana
# dashboard query and the alert rules against that Prometheus, and the alert rules with
# Debian's promtool (`check config`, `test rules`); reads the aggregator's rows (one per
# round id). Always tears the stack down (`docker compose down -v`).
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
#   7. up; freeze hospital-5 once round 2 opens, so a round stays open; kill the aggregator
#      inside it and start it again (COMPOSE_TEST_KILL=after-end: kill once the run has
#      ended instead); poll Prometheus, assert the rounds, the restart, the dashboard
#      queries and the alert rules, promtool, the rows, down;
#   8. remove the FedXray images a rebuild left untagged, and trim the build cache to
#      FEDXRAY_BUILD_CACHE (default 12GB): without this, every run leaves ~5 GB behind.
#
# Settings (environment): COMPOSE_TEST_TIMEOUT (seconds to wait for the rounds, default
# 900), COMPOSE_TEST_KILL (mid-round, the default, or after-end), PY (the project's Python, default .venv/bin/python), FEDXRAY_KEEP_DOCKERD=1
# (leave a dockerd this script started running).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

ROUNDS=3
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
    FEDXRAY_SYNTHETIC_IMAGES=200 FEDXRAY_MIN_VALIDATION_IMAGES=5 FEDXRAY_PROMETHEUS_PORT="$prometheus_port" \
    FEDXRAY_LOCAL_EPOCHS=40 `# rounds of several seconds: hospital-5 is frozen before round 2 ends` \
    FEDXRAY_HEAD_REFIT=false  # the chaos run counts training rounds only
compose() { deploy/compose.sh --project-name "$PROJECT" -f deploy/docker-compose.yml "$@"; }
export DOCKER_HOST="${DOCKER_HOST:-unix:///var/run/docker.sock}"
log "building images (FedXray on $BASE_IMAGE, offline from deploy/wheelhouse; Prometheus from Debian's package); log: $work/build.log"
compose build >"$work/build.log" 2>&1 || { tail -n 60 "$work/build.log"; fail "image build failed; see $work/build.log"; }
for image in fedxray-key-authority:local fedxray-cpu:local; do
    log "image $image: $("$DOCKER" image inspect --format '{{.Size}}' "$image" | awk '{printf "%.0f MB", $1 / 1e6}')"
done

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
prometheus="http://127.0.0.1:$prometheus_port"
# Where the chaos step kills the aggregator (COMPOSE_TEST_KILL): mid-round (default), or after-end, once the run
# and its closing evaluation are over and the nodes have gone home.
kill_point="${COMPOSE_TEST_KILL:-mid-round}"
# The aggregator's log, whole, in a file: `grep -q` on a pipe would exit at the first match and, under pipefail,
# fail the pipeline with the writer's SIGPIPE.
aggregator_log() { compose logs --no-color --no-log-prefix aggregator >"$work/aggregator.log" 2>/dev/null; cat "$work/aggregator.log"; }
logged() { compose logs --no-color --no-log-prefix aggregator >"$work/aggregator.log" 2>/dev/null; grep -qF -- "$1" "$work/aggregator.log"; }
wait_for_aggregator_log() {  # TEXT SECONDS: poll the aggregator's log (not Prometheus: no scrape delay)
    local deadline=$((SECONDS + $2))
    until logged "$1"; do
        ((SECONDS < deadline)) || fail "the aggregator never logged '$1' within $2 s"
        sleep 0.2
    done
}
case "$kill_point" in
mid-round)
    # Chaos at a point the test controls, whatever the machine's speed: freeze hospital-5 (the cgroup freezer of
    # `docker compose pause`) once round 2 has opened (round 1 is then applied, so the restart shows as a reset of
    # the killed process's counters). A round it has not uploaded to stays open until the round deadline (1800 s),
    # so the kill below lands inside a round known to be open.
    log "waiting for round 2 to open, then freezing hospital-5 (docker compose pause)"
    wait_for_aggregator_log "round 2 attempt 1 opened" "${COMPOSE_TEST_TIMEOUT:-900}"
    # The cgroup freezer can give up on a busy container ("OCI runtime pause failed: unable to freeze"), seen once
    # on a loaded 2-core machine: up to 5 tries, 3 s apart, then a failure that says so.
    for try in 1 2 3 4 5; do
        if compose pause hospital-5 2>&1 | sed -u 's/^/    /'; then
            break
        fi
        ((try < 5)) || fail "docker compose pause hospital-5 failed 5 times (the cgroup freezer)"
        log "docker compose pause hospital-5 failed (try $try of 5); trying again in 3 s"
        compose unpause hospital-5 >/dev/null 2>&1 || true
        sleep 3
    done
    held=""
    deadline=$((SECONDS + ${COMPOSE_TEST_TIMEOUT:-900}))
    until [[ -n "$held" ]]; do
        ((SECONDS < deadline)) || fail "no round was held open by the frozen hospital-5"
        sleep 0.5
        held="$(aggregator_log | python3 deploy/held_round.py --frozen hospital-5)"
    done
    log "round $held is open, every upload but hospital-5's folded: chaos: docker compose kill aggregator (SIGKILL)"
    compose kill aggregator 2>&1 | sed -u 's/^/    /'
    sleep 3
    log "docker compose start aggregator, unpause hospital-5: the aggregator resumes from its checkpoint"
    compose start aggregator 2>&1 | sed -u 's/^/    /'
    compose unpause hospital-5 2>&1 | sed -u 's/^/    /'
    python3 deploy/wait_for_rounds.py --prometheus "$prometheus" --rounds "$ROUNDS" --expect-restart \
        --aggregator-down-seconds 300 --timeout "${COMPOSE_TEST_TIMEOUT:-900}" \
        || fail "the run did not finish all $ROUNDS rounds after the aggregator's restart"
    logged "round $held was interrupted and is abandoned" \
        || fail "the restarted aggregator did not abandon round $held, the round it was killed in"
    ;;
after-end)
    log "waiting for the run to end (every round and the closing evaluation)"
    wait_for_aggregator_log "training finished; serving status and metrics" "${COMPOSE_TEST_TIMEOUT:-900}"
    deadline=$((SECONDS + 120))
    until [[ -z "$(compose ps --status running --services 2>/dev/null | grep '^hospital-')" ]]; do
        ((SECONDS < deadline)) || fail "the hospitals did not exit after the run ended"
        sleep 1
    done
    log "the nodes have gone home: chaos: docker compose kill aggregator (SIGKILL), after the end"
    compose kill aggregator 2>&1 | sed -u 's/^/    /'
    sleep 3
    compose start aggregator 2>&1 | sed -u 's/^/    /'
    wait_for_aggregator_log "the run finished before this restart" 300
    held=""
    python3 deploy/wait_for_rounds.py --prometheus "$prometheus" --rounds "$ROUNDS" --restarted-after-end \
        --timeout 300 || fail "the restarted aggregator does not report all $ROUNDS rounds, or sealed one of its own"
    if logged "is abandoned"; then fail "the restart after the end abandoned a round"; fi
    ;;
*) fail "COMPOSE_TEST_KILL is mid-round or after-end, not '$kill_point'" ;;
esac
log "all $ROUNDS rounds completed across the restart"

log "monitoring: every Grafana dashboard query returns series; every alert rule loaded and evaluated"
python3 deploy/check_monitoring.py --prometheus "$prometheus" --timeout 180 || fail "monitoring check failed"
log "promtool (Debian's, in the Prometheus image): check config, test rules"
"$DOCKER" run --rm --network none --entrypoint /usr/bin/promtool \
    -v "$repo/deploy/prometheus.yml:/etc/prometheus/prometheus.yml:ro" \
    -v "$repo/deploy/prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro" \
    "${FEDXRAY_PROMETHEUS_IMAGE:-fedxray-prometheus:local}" check config /etc/prometheus/prometheus.yml \
    || fail "promtool check config failed"
"$DOCKER" run --rm --network none --entrypoint /usr/bin/promtool -w /etc/prometheus/rules \
    -v "$repo/deploy/prometheus:/etc/prometheus/rules:ro" \
    "${FEDXRAY_PROMETHEUS_IMAGE:-fedxray-prometheus:local}" test rules alerts_test.yml \
    || fail "promtool test rules failed"

log "the aggregator's rows (rounds.jsonl): one per round id, $ROUNDS training rounds applied"
compose exec -T aggregator cat /var/lib/fedxray/aggregator/rounds.jsonl > "$work/rounds.jsonl" \
    || fail "could not read the aggregator's rounds.jsonl"
python3 - "$work/rounds.jsonl" "$ROUNDS" "$held" <<'PY' || fail "the rows are not one per round with $ROUNDS applied"
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
held = int(sys.argv[3]) if sys.argv[3] else None
ids = [row["round"] for row in rows]
applied = [row for row in rows if row["round"] > 0 and not row.get("failed") and not row.get("head_refit")]
for row in rows:
    print(f"    round {row['round']}: participants {row.get('participants')}, "
          f"{'failed: ' + str(row.get('error', '')) if row.get('failed') else 'applied'}")
assert len(ids) == len(set(ids)), f"a round id has two rows: {ids}"
assert len(applied) == int(sys.argv[2]), f"{len(applied)} applied training rounds, expected {sys.argv[2]}"
by_id = {row["round"]: row for row in rows}
if held is None:  # killed after the end: the restart abandoned nothing
    assert not any(row.get("interrupted") for row in rows), "a row says interrupted after a kill after the end"
else:  # the round killed mid-way is abandoned, and the restart ran its successor
    assert by_id[held].get("interrupted"), f"round {held}, killed mid-way, is not marked interrupted"
    assert held + 1 in by_id and not by_id[held + 1].get("failed"), f"round {held + 1} did not follow"
PY
