#!/usr/bin/env bash
# The TLS variant of the compose cluster, end to end, the way `make
# cluster-tls` brings it up: `docker/cluster.sh up --tls` (the image makes
# the certificates, the nodes start with them, the config is posted from
# inside node1 over HTTPS), under a project, a /24 and a certificate folder
# of its own, with the host ports left to Docker. Then, from the host:
#   - the config posted again over HTTPS with `curl --cacert` (the same
#     config: 200, nothing changes);
#   - increments on nodes 1 and 2, and a consistent read on node 3 that
#     includes both (so the nodes reached each other over mutual TLS);
#   - plain HTTP refused, and HTTPS refused to a client without the CA;
#   - every container `healthy` (the image's HEALTHCHECK speaks HTTPS);
# then `docker/cluster.sh down`, on every exit path, and a check that it
# left no container, network, volume or certificate behind.
#
# Usage: docker/test-tls.sh (run by `make image-test`). Environment:
# TALLY_IMAGE (default tally:latest), COMPOSE (as for docker/cluster.sh).
# Every wait is bounded; on a failure the nodes' last log lines are shown.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
heal_bound=30 # seconds for a consistent read to include every increment
health_bound=40 # seconds for every container's HEALTHCHECK to say healthy

say() { printf 'container-tls: %s\n' "$*"; }
fail() {
    echo "container-tls: FAIL: $*" >&2
    exit 1
}

work="$(mktemp -d "${TMPDIR:-/tmp}/tally-container-tls.XXXXXX")"
export CLUSTER_PROJECT="tallytls$$x${RANDOM}"
export TALLY_TLS_DIR="$work/tls"
export TALLY_BIND=127.0.0.1 TALLY_LOG=info
# Empty: Docker picks free host ports (read back with `compose port`).
export TALLY_PORT_1='' TALLY_PORT_2='' TALLY_PORT_3=''

if [[ -z "${COMPOSE:-}" ]]; then
    if docker compose version >/dev/null 2>&1; then COMPOSE="docker compose"; else COMPOSE=docker-compose; fi
fi
export COMPOSE
read -r -a compose <<<"$COMPOSE"
compose+=(-p "$CLUSTER_PROJECT" -f "$here/compose.yaml" -f "$here/compose-tls.yaml")

cluster() { bash "$here/cluster.sh" "$@"; }

removed=false
cleanup() {
    local status=$? n
    if ((status != 0)); then
        echo "container-tls: the nodes' last log lines:" >&2
        timeout 30 "${compose[@]}" logs --no-color --tail 20 >&2 2>&1 || true
    fi
    $removed || cluster down >/dev/null 2>&1 || echo "container-tls: cluster.sh down failed" >&2
    rm -rf "$work"
    exit "$status"
}
trap cleanup EXIT

# Up on a /24 that no other Docker network uses: another one is tried when
# Docker says it overlaps.
for attempt in 1 2 3 4 5 6; do
    export TALLY_NET="10.214.$((100 + RANDOM % 150))"
    if cluster up --tls >"$work/up.log" 2>&1; then
        break
    fi
    if ! grep -q overlap "$work/up.log" || ((attempt == 6)); then
        cat "$work/up.log" >&2
        fail "cluster.sh up --tls did not succeed"
    fi
    say "$TALLY_NET.0/24 is taken; trying another"
    cluster down >/dev/null 2>&1 || true
done
grep -q 'making a CA' "$work/up.log" || fail "cluster.sh up --tls made no certificates: $(cat "$work/up.log")"
say "up with TLS: project $CLUSTER_PROJECT, network $TALLY_NET.0/24, config posted from node1"

ca="$TALLY_TLS_DIR/ca/ca.pem"
[[ -s "$ca" ]] || fail "no CA certificate at $ca"
ports=()
for n in 1 2 3; do
    published="$(timeout 30 "${compose[@]}" port "node$n" 7777 | tail -1)"
    [[ "$published" == 127.0.0.1:* ]] || fail "node$n: no port published on 127.0.0.1: $published"
    ports+=("${published#127.0.0.1:}")
done

# https NODE PATH ARGS...: curl trusting the CA, to node NODE's published
# port; prints the body, then the status code on a line of its own.
https() {
    local n="$1" path="$2"
    shift 2
    curl -sS --max-time 15 --noproxy '*' --cacert "$ca" -w '\n%{http_code}' "$@" \
        "https://127.0.0.1:${ports[n - 1]}$path"
}

# ok NODE PATH ARGS...: the body of a 200 answer; anything else fails.
ok() {
    local out
    out="$(https "$@")" || fail "curl --cacert ... $2 on node$1 failed"
    [[ "${out##*$'\n'}" == 200 ]] || fail "$2 on node$1: $out"
    printf '%s' "${out%$'\n'*}"
}

# The same config once more (G8: changes nothing), over HTTPS from the host.
ok 1 /config -X POST -H 'content-type: application/json' \
    -d "{\"actors\": [\"$TALLY_NET.11\", \"$TALLY_NET.12\", \"$TALLY_NET.13\"]}" >/dev/null
say "config posted over HTTPS with curl --cacert"

v="$(ok 1 /counter/x -X POST -d 5)"
[[ "$v" == 5 ]] || fail "node1 answered $v to the first increment"
v="$(ok 2 /counter/x -X POST -d 7)"
[[ "$v" =~ ^[0-9]+$ ]] || fail "node2 answered $v to an increment"

# Node 3 hears from both over mutual TLS, so its consistent read holds both.
deadline=$((SECONDS + heal_bound))
until [[ "$(https 3 '/counter/x/consistent_value?timeout=2s' 2>&1 || true)" == $'12\n200' ]]; do
    ((SECONDS < deadline)) || fail "consistent_value on node3 is not 12 within ${heal_bound}s: $(
        https 3 '/counter/x/consistent_value?timeout=2s' 2>&1)"
    sleep 0.5
done
say "increments on node1 and node2; consistent read on node3: 12"

if out="$(curl -sS --max-time 15 --noproxy '*' "http://127.0.0.1:${ports[0]}/counter/x/value" 2>&1)"; then
    fail "plain HTTP answered: $out"
fi
say "plain HTTP refused ($out)"
if out="$(curl -sS --max-time 15 --noproxy '*' "https://127.0.0.1:${ports[0]}/counter/x/value" 2>&1)"; then
    fail "HTTPS without the CA answered: $out"
fi
say "HTTPS without the CA refused"

deadline=$((SECONDS + health_bound))
for n in 1 2 3; do
    id="$(timeout 30 "${compose[@]}" ps -q "node$n")"
    until [[ "$(timeout 30 docker inspect -f '{{.State.Health.Status}}' "$id")" == healthy ]]; do
        ((SECONDS < deadline)) || fail "node$n not healthy within ${health_bound}s: $(
            timeout 30 docker inspect -f '{{json .State.Health}}' "$id")"
        sleep 1
    done
done
say "every container healthy (the HEALTHCHECK speaks HTTPS)"

removed=true
cluster down >"$work/down.log" 2>&1 || fail "cluster.sh down did not succeed: $(cat "$work/down.log")"
label="label=com.docker.compose.project=$CLUSTER_PROJECT"
left="$(timeout 30 docker ps -aq --filter "$label")$(timeout 30 docker network ls -q --filter "$label")$(
    timeout 30 docker volume ls -q --filter "$label")"
[[ -z "$left" ]] || fail "cluster.sh down left: $left"
[[ ! -e "$TALLY_TLS_DIR" ]] || fail "cluster.sh down left $TALLY_TLS_DIR"
say "PASS: down, nothing left behind"
