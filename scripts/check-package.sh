#!/usr/bin/env bash
# Proves that the packaged executable needs nothing but the kernel.
#
# Usage: scripts/check-package.sh [dist/challenge.tar.gz]
#
# The tarball is extracted into an otherwise EMPTY root (no libraries, no /etc,
# no /dev, no /proc, no /tmp: just challenge/ and an empty data folder), and the
# executable is run there with chroot(8), as an ordinary user (65534, "nobody")
# like SPEC §1 requires:
#   1. `--help` exits 0 and prints usage;
#   2. a node starts, answers GET /status, POST /counter/x (body 5) -> "5",
#      GET /counter/x/value -> "5", and exits 0 on SIGTERM;
#   3. restarted on the same data folder, it still answers "5" (durable state),
#      and again exits 0 on SIGTERM;
#   4. it wrote nothing outside its data folder.
# Loopback works across a chroot (same network namespace), so the host side
# talks to the node with curl, or with bash's /dev/tcp when curl is absent.
# Needs root (for chroot). Prints one final PASS or FAIL line.

set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
tarball="${1:-$repo/dist/challenge.tar.gz}"
run_uid="${CHECK_UID:-65534}"
run_gid="${CHECK_GID:-65534}"
ready_timeout=10 # seconds for a node to answer /status
stop_timeout=20  # seconds for a node to exit after SIGTERM (its own bound is 10 s)

say() { printf 'check-package: %s\n' "$*"; }

work=""
node_pid=""
passed=0

cleanup() {
    local rc=$? p
    if [[ -n "$node_pid" ]] && kill -0 "$node_pid" 2>/dev/null; then
        kill -KILL "$node_pid" 2>/dev/null || true
        wait "$node_pid" 2>/dev/null || true
    fi
    # Belt and braces: any process still rooted in our temp root is ours.
    if [[ -n "$work" && -d "$work/root" ]]; then
        for p in /proc/[0-9]*; do
            if [[ "$(readlink "$p/root" 2>/dev/null)" == "$work/root" ]]; then
                kill -KILL "${p#/proc/}" 2>/dev/null || true
            fi
        done
    fi
    if [[ -n "$work" && -d "$work" ]]; then
        rm -rf -- "$work"
    fi
    if [[ $passed -eq 1 && $rc -eq 0 ]]; then
        echo "check-package: PASS: $tarball runs in an empty chroot as uid $run_uid"
    else
        [[ $rc -ne 0 ]] || rc=1
        echo "check-package: FAIL (exit $rc)" >&2
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

fail() {
    echo "check-package: FAIL: $*" >&2
    if [[ -n "${log:-}" && -s "${log:-}" ]]; then
        echo "----- node log (last 40 lines) -----" >&2
        tail -n 40 "$log" >&2 || true
        echo "------------------------------------" >&2
    fi
    exit 1
}

[[ $EUID -eq 0 ]] || fail "must run as root (chroot needs it)"
[[ -f "$tarball" ]] || fail "no tarball at $tarball (run make package)"
command -v chroot >/dev/null || fail "chroot not found (coreutils)"

# ---------------------------------------------------------------- tarball shape
listing="$(tar -tzf "$tarball")"
expected=$'challenge/\nchallenge/bin/\nchallenge/bin/challenge-executable'
[[ "$listing" == "$expected" ]] || fail "tarball must hold exactly challenge/bin/challenge-executable, holds:
$listing"
mode="$(tar -tvzf "$tarball" challenge/bin/challenge-executable | awk '{print $1}')"
[[ "$mode" == "-rwxr-xr-x" ]] || fail "challenge/bin/challenge-executable has mode $mode, want -rwxr-xr-x (0755)"

# ------------------------------------------------------------------ empty root
work="$(mktemp -d "${TMPDIR:-/tmp}/tally-check.XXXXXX")"
work="$(cd "$work" && pwd -P)" # /proc/<pid>/root shows the resolved path
root="$work/root"
log="$work/node.log"
mkdir -m 0755 "$root"
tar -xzf "$tarball" -C "$root" --no-same-owner
mkdir -m 0700 "$root/data"
chown "$run_uid:$run_gid" "$root/data"
exe=/challenge/bin/challenge-executable
in_root() { chroot --userspec="$run_uid:$run_gid" "$root" "$@"; }

# ------------------------------------------------------------------ HTTP client
# CHECK_HTTP=devtcp forces the bash /dev/tcp client (to test that path).
use_curl=0
if [[ "${CHECK_HTTP:-}" != devtcp ]] && command -v curl >/dev/null; then use_curl=1; fi

# http METHOD PATH [BODY]: sets $status and $body (exact bytes, minus NULs).
# The body is written to $work/body too, for byte-exact comparisons.
http() {
    local method="$1" path="$2" data="${3-}"
    status=000
    body=""
    : >"$work/body"
    if [[ $use_curl -eq 1 ]]; then
        local args=(-sS --noproxy '*' --max-time 5 -o "$work/body" -w '%{http_code}' -X "$method")
        if [[ $# -ge 3 ]]; then args+=(-H 'Content-Type: text/plain' --data-binary "$data"); fi
        status="$(curl "${args[@]}" "http://127.0.0.1:$port$path" 2>/dev/null)" || status=000
    else
        local resp
        resp="$(
            { exec 3<>"/dev/tcp/127.0.0.1/$port"; } 2>/dev/null || exit 1
            printf '%s %s HTTP/1.1\r\nHost: 127.0.0.1:%s\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s' \
                "$method" "$path" "$port" "${#data}" "$data" >&3
            timeout 5 cat <&3
        )" || resp=""
        if [[ "$resp" =~ ^HTTP/1\.[01]\ ([0-9]{3}) ]]; then
            status="${BASH_REMATCH[1]}"
            printf '%s' "${resp#*$'\r\n\r\n'}" >"$work/body"
        fi
    fi
    body="$(cat "$work/body"; printf x)"
    body="${body%x}"
}

# expect_exact METHOD PATH BODY WANT: the answer must be 200 with body exactly WANT.
expect_exact() {
    local method="$1" path="$2" data="$3" want="$4"
    if [[ "$data" == "-" ]]; then http "$method" "$path"; else http "$method" "$path" "$data"; fi
    [[ "$status" == 200 ]] || fail "$method $path: status $status, body: $body"
    printf '%s' "$want" | cmp -s - "$work/body" ||
        fail "$method $path: body $(printf %q "$body"), want exactly $(printf %q "$want")"
    say "$method $path -> 200 $(printf %q "$body")"
}

# -------------------------------------------------------------- free TCP port
port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
pick_port() {
    local p
    if command -v python3 >/dev/null &&
        p="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null)" &&
        [[ "$p" =~ ^[0-9]+$ ]]; then
        echo "$p"
        return
    fi
    for _ in $(seq 50); do
        p=$((20000 + RANDOM % 40000))
        if ! port_in_use "$p"; then
            echo "$p"
            return
        fi
    done
    fail "found no free port"
}

# ------------------------------------------------------------- node lifecycle
# start_node: starts the node in the chroot and waits until /status answers
# 200. Retries on a fresh port if the chosen one was taken meanwhile.
start_node() {
    local attempt deadline
    for attempt in 1 2 3; do
        port="$(pick_port)"
        : >"$log"
        # chroot itself, not a shell function, goes to the background, so
        # that $! is the node's own pid (chroot execs the executable).
        chroot --userspec="$run_uid:$run_gid" "$root" \
            "$exe" 1 --listen "127.0.0.1:$port" --data-dir /data >>"$log" 2>&1 &
        node_pid=$!
        deadline=$((SECONDS + ready_timeout))
        while ((SECONDS < deadline)); do
            if ! kill -0 "$node_pid" 2>/dev/null; then
                local rc=0
                wait "$node_pid" || rc=$?
                node_pid=""
                if grep -qi 'in use' "$log" && [[ $attempt -lt 3 ]]; then
                    say "port $port was taken; retrying"
                    continue 2
                fi
                fail "node exited with status $rc before answering /status"
            fi
            http GET /status
            if [[ "$status" == 200 ]]; then
                [[ "$body" == "{"* ]] || fail "GET /status: 200 but not a JSON object: $body"
                [[ "$(readlink "/proc/$node_pid/root" 2>/dev/null)" == "$root" ]] ||
                    fail "pid $node_pid is not the node in $root"
                say "node up on 127.0.0.1:$port (pid $node_pid), GET /status -> 200"
                return
            fi
            sleep 0.1
        done
        fail "node did not answer GET /status with 200 within ${ready_timeout}s (last status $status)"
    done
}

# stop_node: SIGTERM, then a bounded wait for exit status 0.
stop_node() {
    local rc=0 deadline
    kill -TERM "$node_pid"
    deadline=$((SECONDS + stop_timeout))
    while kill -0 "$node_pid" 2>/dev/null; do
        ((SECONDS < deadline)) || fail "node still running ${stop_timeout}s after SIGTERM"
        sleep 0.1
    done
    wait "$node_pid" || rc=$?
    node_pid=""
    [[ $rc -eq 0 ]] || fail "node exited with status $rc after SIGTERM, want 0"
    say "SIGTERM -> node exited 0"
}

# --------------------------------------------------------------------- checks
say "tarball: $tarball ($(stat -c %s "$tarball") bytes)"
if command -v file >/dev/null; then
    say "file: $(file -b "$root$exe")"
fi
say "root: $(cd "$root" && find . -mindepth 1 | sort | tr '\n' ' ')"
say "running as uid:gid $run_uid:$run_gid; HTTP via $([[ $use_curl -eq 1 ]] && echo curl || echo /dev/tcp)"

help_rc=0
help_out="$(in_root "$exe" --help 2>&1)" || help_rc=$?
[[ $help_rc -eq 0 ]] || fail "--help exited $help_rc: $help_out"
grep -q '^Usage:' <<<"$help_out" || fail "--help printed no usage line: $help_out"
say "--help -> exit 0, $(grep -m1 '^Usage:' <<<"$help_out")"

version_rc=0
version_out="$(in_root "$exe" --version 2>&1)" || version_rc=$?
[[ $version_rc -eq 0 ]] || fail "--version exited $version_rc: $version_out"
say "--version -> $version_out"

start_node
expect_exact POST /counter/x 5 5
expect_exact GET /counter/x/value - 5
stop_node
[[ -n "$(ls -A "$root/data")" ]] || fail "the node left its data folder empty"

# Restart on the same data folder: the acknowledged increment must still be there.
start_node
expect_exact GET /counter/x/value - 5
stop_node

# Nothing written outside the data folder.
extra="$(cd "$root" && find . -mindepth 1 -maxdepth 1 ! -name challenge ! -name data)"
[[ -z "$extra" ]] || fail "the node created files outside /data: $extra"
changed="$(cd "$root" && find challenge -newer "$root/challenge/bin/challenge-executable" ! -type d)"
[[ -z "$changed" ]] || fail "the node wrote under /challenge: $changed"

passed=1
