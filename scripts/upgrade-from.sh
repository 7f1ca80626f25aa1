#!/usr/bin/env bash
# The tally binary that the rolling-upgrade test starts a cluster with (the
# version it upgrades from), built once from the commit below and cached
# outside the clone; prints the binary's path on stdout, the build's output
# on stderr.
#
#   bash scripts/upgrade-from.sh            the commit below
#   bash scripts/upgrade-from.sh COMMIT     another one (e.g. to try an upgrade from it)
#
# Cache: ${TALLY_UPGRADE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tally/upgrade-from}/<commit>/,
# holding `tally` and `tally.sha256`. A cached binary whose checksum does not
# hold is rebuilt, never used. The sources come from this clone's history
# (`git archive`), so a shallow clone that lacks the commit fails, saying so.
set -euo pipefail

# main before the first change of the binary-protocol and speed work
# (issue 18): the protocol and data format every later version must
# interoperate with during a rolling upgrade.
BASE=8aed78627e2b19bd476dba4c5b70da60d608b721

cd "$(dirname "${BASH_SOURCE[0]}")/.."
commit="$(git rev-parse --verify --quiet "${1:-$BASE}^{commit}")" || {
    echo "upgrade-from: commit ${1:-$BASE} is not in this clone (a shallow clone? fetch it, or set TALLY_UPGRADE_FROM to a binary)" >&2
    exit 1
}
cache="${TALLY_UPGRADE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tally/upgrade-from}/$commit"
mkdir -p "$cache"

# One build at a time per commit; a second caller waits (bounded) and then
# finds the binary cached.
exec 9>"$cache/lock"
flock -w 1800 9 || { echo "upgrade-from: $cache is locked by another build for 30 min" >&2; exit 1; }

if [[ -x "$cache/tally" && -f "$cache/tally.sha256" ]] &&
    (cd "$cache" && sha256sum --quiet --check tally.sha256 >/dev/null 2>&1); then
    echo "$cache/tally"
    exit 0
fi

echo "upgrade-from: building tally at ${commit:0:12} into $cache (once; later runs reuse it)" >&2
rm -rf "$cache/src" "$cache/target" "$cache/tally" "$cache/tally.sha256"
mkdir -p "$cache/src"
git archive "$commit" | tar -x -C "$cache/src"
# The build must not take this environment's flags or target folder.
(
    cd "$cache/src"
    unset RUSTFLAGS CARGO_ENCODED_RUSTFLAGS CARGO_BUILD_RUSTFLAGS CARGO_BUILD_TARGET_DIR
    CARGO_TARGET_DIR="$cache/target" cargo build --locked --release --bin tally >&2
)
install -m 0755 "$cache/target/release/tally" "$cache/tally"
(cd "$cache" && sha256sum tally >tally.sha256)
rm -rf "$cache/src" "$cache/target"
echo "$cache/tally"
