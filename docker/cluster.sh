#!/usr/bin/env bash
# Brings the compose cluster of docker/compose.yaml up or down.
#
# Usage: docker/cluster.sh up|down
#   up    starts the three containers, waits until every node is live,
#         posts the config (the three nodes' addresses) once, waits until
#         every node is ready, and prints how to use and break the cluster
#   down  stops the containers and removes them, their network and volume
#
# Environment: COMPOSE (the compose command, default `docker compose` when
# it works, else docker-compose), CLUSTER_PROJECT (compose project name,
# default tally), and the settings of docker/compose.yaml (TALLY_IMAGE,
# TALLY_NET, TALLY_BIND, TALLY_PORT_1..3, TALLY_LOG).
# Every wait is bounded; on a failure the nodes' last log lines are shown.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
project="${CLUSTER_PROJECT:-tally}"
net="${TALLY_NET:-10.213.77}"
exe=/challenge/bin/challenge-executable
live_bound=60  # seconds for every node to serve HTTP
ready_bound=30 # seconds for every node to hold the config, storage healthy

if [[ -z "${COMPOSE:-}" ]]; then
    if docker compose version >/dev/null 2>&1; then COMPOSE="docker compose"; else COMPOSE=docker-compose; fi
fi
read -r -a compose <<<"$COMPOSE"
compose+=(-p "$project" -f "$here/compose.yaml")

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

up() {
    say "starting project $project (${TALLY_IMAGE:-tally:latest}, network $net.0/24)"
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

down() {
    # A paused container cannot be stopped: unpause first (errors: not paused).
    local ids
    ids="$(timeout 30 "${compose[@]}" ps -q 2>/dev/null || true)"
    [[ -z "$ids" ]] || timeout 30 docker unpause $ids >/dev/null 2>&1 || true
    timeout 120 "${compose[@]}" down -v --remove-orphans -t 15
    say "project $project removed"
}

case "${1:-}" in
up) up ;;
down) down ;;
*)
    echo "usage: $0 up|down" >&2
    exit 2
    ;;
esac
