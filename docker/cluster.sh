#!/usr/bin/env bash
# Brings the compose cluster of docker/compose.yaml up or down.
#
# Usage: docker/cluster.sh up [--tls]|down
#   up    starts the three containers, waits until every node is live,
#         posts the config (the three nodes' addresses) once, waits until
#         every node is ready, and prints how to use and break the cluster
#   up --tls
#         the same with TLS (docker/compose-tls.yaml on top): first makes a
#         CA and the three nodes' certificates in TALLY_TLS_DIR with the
#         image's own executable, or uses the ones an earlier `up --tls`
#         made there for the same network
#   down  stops the containers and removes them, their network and volume,
#         and TALLY_TLS_DIR
#
# Environment: COMPOSE (the compose command, default `docker compose` when
# it works, else docker-compose), CLUSTER_PROJECT (compose project name,
# default tally), TALLY_TLS_DIR (the certificate folders, default
# target/cluster-tls/PROJECT in this repository), and the settings of
# docker/compose.yaml (TALLY_IMAGE, TALLY_NET, TALLY_BIND, TALLY_PORT_1..3,
# TALLY_LOG).
# Every wait is bounded; on a failure the nodes' last log lines are shown.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
project="${CLUSTER_PROJECT:-tally}"
net="${TALLY_NET:-10.213.77}"
image="${TALLY_IMAGE:-tally:latest}"
exe=/challenge/bin/challenge-executable
tls_dir="${TALLY_TLS_DIR:-$(cd "$here/.." && pwd)/target/cluster-tls/$project}"
# The image's user: it must own the node keys, readable by their owner only.
node_user=10001:10001
live_bound=60  # seconds for every node to serve HTTP
ready_bound=30 # seconds for every node to hold the config, storage healthy

if [[ -z "${COMPOSE:-}" ]]; then
    if docker compose version >/dev/null 2>&1; then COMPOSE="docker compose"; else COMPOSE=docker-compose; fi
fi
read -r -a compose <<<"$COMPOSE"
compose+=(-p "$project" -f "$here/compose.yaml")
tls=false
if [[ "${1:-}" == up && "${2:-}" == --tls ]]; then
    tls=true
    [[ "$tls_dir" == /* ]] || tls_dir="$PWD/$tls_dir"
    export TALLY_TLS_DIR="$tls_dir"
    compose+=(-f "$here/compose-tls.yaml")
fi

say() { printf 'cluster: %s\n' "$*"; }
fail() {
    echo "cluster: FAIL: $*" >&2
    timeout 30 "${compose[@]}" logs --tail 20 >&2 || true
    echo "cluster: the containers are left running; \`make cluster-down\` removes them" >&2
    exit 1
}

# node_ok N ARGS...: runs `challenge-executable health ARGS` inside node N.
node_ok() {
    local n="$1"
    shift
    timeout 10 "${compose[@]}" exec -T "node$n" "$exe" health "$@" >/dev/null 2>&1
}

# wait_all WHAT BOUND ARGS...: until `health ARGS` passes in every node.
wait_all() {
    local what="$1" bound="$2" n deadline
    shift 2
    deadline=$((SECONDS + bound))
    for n in 1 2 3; do
        until node_ok "$n" "$@"; do
            ((SECONDS < deadline)) || fail "node$n not $what within ${bound}s: $(
                timeout 10 "${compose[@]}" exec -T "node$n" "$exe" health "$@" 2>&1 | tail -1)"
            sleep 0.5
        done
    done
    say "every node is $what"
}

# cert ARGS...: the image's `cert` command, run as the image's user with
# TALLY_TLS_DIR mounted at /out and no network.
cert() {
    timeout 60 docker run --rm --network none --user "$node_user" \
        -v "$tls_dir:/out" "$image" cert "$@" >/dev/null
}

# Makes the CA in TALLY_TLS_DIR/ca and node N's certificate and key in
# TALLY_TLS_DIR/nodeN, beside a copy of the CA certificate: each node's
# folder is mounted alone, so no node holds the CA's key or another's key.
# Files made earlier for the same hosts are used again, so that running
# `up --tls` on a running cluster changes nothing.
make_certs() {
    local n hosts=()
    for n in 1 2 3; do
        hosts+=("node$n: node$n $net.1$n 127.0.0.1 localhost")
    done
    if [[ -f "$tls_dir/hosts" ]]; then
        [[ "$(cat "$tls_dir/hosts")" == "$(printf '%s\n' "${hosts[@]}")" ]] ||
            fail "$tls_dir holds certificates for other hosts ($(head -1 "$tls_dir/hosts"), ...); \
\`make cluster-down\` (or removing the folder) has new ones made"
        for n in 1 2 3; do
            [[ -f "$tls_dir/node$n/ca.pem" && -f "$tls_dir/node$n/node-$n.pem" ]] ||
                fail "$tls_dir/node$n is incomplete; \`make cluster-down\` (or removing $tls_dir) has new ones made"
        done
        say "using the certificates in $tls_dir"
        return
    fi
    [[ ! -e "$tls_dir" ]] || fail "$tls_dir exists without its hosts file; remove it to have new certificates made"
    say "making a CA and the nodes' certificates in $tls_dir ($image cert ...)"
    mkdir -p "$tls_dir/ca" "$tls_dir/node1" "$tls_dir/node2" "$tls_dir/node3"
    # Writable by the image's user while it writes; the host's user keeps
    # the folders, so it can remove them later (the keys belong to 10001).
    chmod 0777 "$tls_dir" "$tls_dir"/ca "$tls_dir"/node?
    cert ca --out /out/ca --name "tally cluster $project CA" ||
        fail "could not make the CA with $image"
    for n in 1 2 3; do
        cert node --ca /out/ca --id "$n" --host "node$n" --host "$net.1$n" \
            --host 127.0.0.1 --host localhost --out "/out/node$n" ||
            fail "could not make node$n's certificate with $image"
        cp "$tls_dir/ca/ca.pem" "$tls_dir/node$n/ca.pem"
        chmod 0644 "$tls_dir/node$n/ca.pem"
    done
    chmod 0755 "$tls_dir" "$tls_dir"/ca "$tls_dir"/node?
    printf '%s\n' "${hosts[@]}" >"$tls_dir/hosts"
}

up() {
    if $tls; then make_certs; fi
    say "starting project $project (${TALLY_IMAGE:-tally:latest}, network $net.0/24$($tls && echo ', TLS'))"
    timeout 180 "${compose[@]}" up -d || fail "$COMPOSE up did not succeed"
    wait_all live "$live_bound" --live
    say "posting the config: $net.11 $net.12 $net.13"
    timeout 30 "${compose[@]}" exec -T node1 "$exe" config "$net.11" "$net.12" "$net.13" --timeout 20s ||
        fail "posting the config did not succeed"
    wait_all ready "$ready_bound"

    local n network published=() containers=()
    for n in 1 2 3; do
        published+=("$(timeout 10 "${compose[@]}" port "node$n" 7777 | tail -1)")
        containers+=("$(timeout 10 docker inspect -f '{{.Name}}' "$(timeout 10 "${compose[@]}" ps -q "node$n")" | sed 's#^/##')")
    done
    network="$(timeout 10 docker inspect -f '{{range $k, $v := .NetworkSettings.Networks}}{{$k}}{{end}}' "${containers[0]}")"
    if $tls; then
        usage_tls "${published[@]}"
        return
    fi
    echo
    echo "A three-node tally cluster is up (project $project, image ${TALLY_IMAGE:-tally:latest}):"
    for n in 1 2 3; do
        printf '  node%s  container %s  %s:7777 in the cluster  http://%s/ from this host\n' \
            "$n" "${containers[n - 1]}" "$net.1$n" "${published[n - 1]}"
    done
    cat <<USAGE

  curl -X POST http://${published[0]}/counter/visits -d 5
  curl http://${published[1]}/counter/visits/value
  curl http://${published[2]}/counter/visits/consistent_value
  console: http://${published[0]}/   (status: curl http://${published[0]}/status)

Break it, then read again (a consistent read answers 503 naming the node
it cannot hear from, and 200 with every increment once it is back):
  docker pause ${containers[2]}   ...   docker unpause ${containers[2]}
  docker network disconnect $network ${containers[2]}
      ...   docker network connect --ip $net.13 $network ${containers[2]}
      (cut off, node3 is reachable only with
       docker exec ${containers[2]} $exe inc visits 1)
  docker restart ${containers[2]}   (comes back with its config and counters)

  make cluster-down   removes the containers, network and volume
USAGE
}

# usage_tls PUBLISHED...: what `up --tls` prints at the end (it reads
# `containers` of its caller, up).
usage_tls() {
    local n ca="$tls_dir/ca/ca.pem"
    echo
    echo "A three-node tally cluster with TLS is up (project $project, image $image):"
    for n in 1 2 3; do
        printf '  node%s  container %s  %s:7777 in the cluster  https://%s/ from this host\n' \
            "$n" "${containers[n - 1]}" "$net.1$n" "${!n}"
    done
    cat <<USAGE

Every node speaks only TLS, to clients and to its peers (mutual TLS).
Clients trust the CA $ca:
  curl --cacert $ca -X POST https://$1/counter/visits -d 5
  curl --cacert $ca https://$2/counter/visits/value
  curl --cacert $ca https://$3/counter/visits/consistent_value
  tally status --cluster --node https://$1 --cacert $ca
  curl http://$1/counter/visits/value   fails: plain HTTP is not served
  console: https://$1/   (a browser asks first, unless it trusts the CA)
Inside a container the executable's commands use TLS already:
  docker exec ${containers[2]} $exe get visits --consistent

Break it as without TLS (docker pause, docker network disconnect, docker
restart; see the README).

  make cluster-down   removes the containers, network and volume, and $tls_dir
USAGE
}

down() {
    # A paused container cannot be stopped: unpause first (errors: not paused).
    local ids
    ids="$(timeout 30 "${compose[@]}" ps -q 2>/dev/null || true)"
    [[ -z "$ids" ]] || timeout 30 docker unpause $ids >/dev/null 2>&1 || true
    timeout 120 "${compose[@]}" down -v --remove-orphans -t 15
    say "project $project removed"
    [[ -d "$tls_dir" ]] || return 0
    # Only the files make_certs writes, then the folders if that empties
    # them: a TALLY_TLS_DIR set by mistake loses nothing else.
    local n
    rm -f "$tls_dir/hosts" "$tls_dir/ca/ca.pem" "$tls_dir/ca/ca-key.pem"
    for n in 1 2 3; do
        rm -f "$tls_dir/node$n/ca.pem" "$tls_dir/node$n/node-$n.pem" "$tls_dir/node$n/node-$n-key.pem"
        rmdir "$tls_dir/node$n" 2>/dev/null || true
    done
    rmdir "$tls_dir/ca" 2>/dev/null || true
    if rmdir "$tls_dir" 2>/dev/null; then
        say "certificates $tls_dir removed"
    else
        say "certificates removed; $tls_dir holds other files and stays"
    fi
}

case "${1:-} ${2:-}" in
"up ") up ;;
"up --tls") up ;;
"down ") down ;;
*)
    echo "usage: $0 up [--tls]|down" >&2
    exit 2
    ;;
esac
