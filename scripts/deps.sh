#!/usr/bin/env bash
# The system packages `make test` needs, in one place: `make test` and
# `bash .ci/run` both run this first.
#
# Usage: scripts/deps.sh [--check]
#
# As root on Debian (apt-get present), it installs whatever is missing, in
# one bounded apt-get run, and fails if that install fails. Not as root (or
# with --check, or without apt-get) it installs nothing: it prints what is
# missing and which suites will then fail or be skipped, and exits 0, so
# that `make test` goes on and each suite says for itself why it cannot run.
#
# What each suite needs beyond Rust (1.89 or later, with rustfmt and clippy):
#   every suite         a C linker (gcc), procps (`kill`, used to stop and
#                       pause node processes), ca-certificates (cargo fetches
#                       crates over TLS)
#   chaos, disk         root, iproute2 (`ip`, `tc`), nftables, mount
#                       (`mount`, `umount`, `losetup`), e2fsprogs
#                       (`mkfs.ext4`), util-linux (`fsfreeze`)
#   console             chromium, chromium-driver (`chromedriver`, which
#                       drives the page over WebDriver) and fonts-dejavu-core
#   package-test        root (chroot), make, libc6-dev (glibc's static
#                       library), binutils (`readelf`), file, curl
#   image-test          a running Docker and a compose tool (Debian's
#                       docker.io and docker-compose when missing)
#   bench-guard         wrk, redis-server and redis-tools (Redis is the
#                       anchor the guard's B1 ratios are measured against)
#   monitoring          promtool (taken out of Debian's prometheus package)
set -euo pipefail

check_only=0
case "${1:-}" in
    "") ;;
    --check) check_only=1 ;;
    -h | --help)
        sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
        exit 0
        ;;
    *)
        echo "deps: unknown argument: $1 (try --help)" >&2
        exit 2
        ;;
esac

export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
say() { printf 'deps: %s\n' "$*"; }
have() { command -v "$1" >/dev/null 2>&1; }

# Each requirement: a test (a command on PATH, or a file), the Debian
# package that provides it, and what fails without it.
declare -a missing_pkgs=() missing_why=()
need() { # need KIND WHAT PACKAGE CONSEQUENCE
    local kind=$1 what=$2 pkg=$3 why=$4
    case "$kind" in
        cmd) have "$what" && return 0 ;;
        file) [[ -e "$what" ]] && return 0 ;;
    esac
    local i
    for i in "${!missing_pkgs[@]}"; do
        if [[ "${missing_pkgs[$i]}" == "$pkg" ]]; then return 0; fi
    done
    missing_pkgs+=("$pkg")
    missing_why+=("$why")
}

chaos_why="the chaos and disk suites fail (TALLY_CHAOS_SKIP=1 skips them, and says so)"
need cmd cc gcc "nothing builds (no C linker)"
need file /etc/ssl/certs/ca-certificates.crt ca-certificates "cargo cannot fetch crates"
need file /bin/kill procps "every suite that runs nodes fails (no \`kill\`)"
need cmd make make "\`make test\` itself cannot run"
need file /usr/lib/x86_64-linux-gnu/libc.a libc6-dev "make package (static link) fails"
need cmd readelf binutils "make package's static check fails"
need cmd file file "the package check cannot describe the executable"
need cmd curl curl "nothing (the package check falls back to bash's /dev/tcp)"
need cmd ip iproute2 "$chaos_why"
need cmd tc iproute2 "$chaos_why"
need cmd nft nftables "$chaos_why"
need cmd mount mount "$chaos_why"
need cmd umount mount "$chaos_why"
need cmd losetup mount "$chaos_why"
need cmd mkfs.ext4 e2fsprogs "the disk suite's stalled-disk test fails (TALLY_CHAOS_SKIP=1 skips it, and says so)"
need cmd fsfreeze util-linux "the disk suite's stalled-disk test fails (TALLY_CHAOS_SKIP=1 skips it, and says so)"
# The console's browser test screenshots the page: without a font its text
# would be boxes.
if ! have chromium && ! have chromium-browser && ! have google-chrome && [[ -z "${TALLY_CHROMIUM:-}" ]]; then
    need cmd chromium chromium "the console test fails (TALLY_CONSOLE_SKIP=1 skips it, and says so)"
fi
if ! have chromedriver && [[ -z "${TALLY_CHROMEDRIVER:-}" ]]; then
    need cmd chromedriver chromium-driver \
        "the console's driven test (forms, buttons, charts) fails (TALLY_CONSOLE_SKIP=1 skips it, and says so)"
fi
need file /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf fonts-dejavu-core \
    "the console's screenshot shows boxes for text"
guard_why="the regression guard (make bench-guard) fails"
need cmd wrk wrk "$guard_why"
need cmd redis-server redis-server "$guard_why"
need cmd redis-benchmark redis-tools "$guard_why"
container_why="the container test (make image-test) fails (TALLY_CONTAINER_SKIP=1 skips it, and says so)"
need cmd docker docker.io "$container_why"
if ! { have docker && docker compose version >/dev/null 2>&1; } && ! have docker-compose; then
    need cmd docker-compose docker-compose "$container_why"
fi

root=0
[[ $EUID -eq 0 ]] && root=1

if ((${#missing_pkgs[@]})) && ((root && !check_only)) && have apt-get; then
    say "installing: ${missing_pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    timeout 600 apt-get update -q </dev/null
    timeout 1200 apt-get install -y -q --no-install-recommends "${missing_pkgs[@]}" </dev/null
    say "installed: ${missing_pkgs[*]}"
    missing_pkgs=()
    missing_why=()
fi

# promtool, for the monitoring test (`promtool check rules` and `test rules`
# on docs/monitoring/): Debian ships it in the `prometheus` package, whose
# installation would also start a Prometheus server. So only its promtool is
# taken out of the package, into /usr/local/bin.
promtool_why="the monitoring test fails (TALLY_MONITORING_SKIP=1 skips it, and says so)"
if ! have promtool && ((root && !check_only)) && have apt-get && have dpkg-deb; then
    say "installing promtool (from Debian's prometheus package, nothing else of it)"
    unpack=$(mktemp -d)
    (
        cd "$unpack"
        timeout 600 apt-get download -q prometheus </dev/null >/dev/null 2>&1 || {
            timeout 600 apt-get update -q </dev/null >/dev/null
            timeout 600 apt-get download -q prometheus </dev/null >/dev/null 2>&1
        }
        dpkg-deb -x prometheus_*.deb root
        install -m 0755 root/usr/bin/promtool /usr/local/bin/promtool
    ) || say "could not install promtool: $promtool_why"
    rm -rf "$unpack"
fi
if ! have promtool; then
    missing_pkgs+=("prometheus (promtool)")
    missing_why+=("$promtool_why")
fi

if ((${#missing_pkgs[@]})); then
    if ((check_only)); then
        say "missing (--check: nothing installed):"
    elif ((!root)); then
        say "missing (not root, so nothing installed; as root this script installs them):"
    else
        say "missing (no apt-get here, so nothing installed):"
    fi
    for i in "${!missing_pkgs[@]}"; do
        printf 'deps:   %-18s %s\n' "${missing_pkgs[$i]}" "${missing_why[$i]}"
    done
else
    say "every package the tests need is installed"
fi

# Not packages, but what decides whether suites run at all.
if ((!root)); then
    say "not root: $chaos_why; the package check fails (chroot needs root)"
fi
if have docker && ! timeout 30 docker info >/dev/null 2>&1; then
    say "docker does not answer (is the daemon running, may this user use it?): $container_why"
fi
exit 0
