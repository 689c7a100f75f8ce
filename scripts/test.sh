#!/usr/bin/env bash
# The test command: packages, lint, fast tier, then setup (cached: kernels, agent, images) and
# the slow tier — the end-to-end tests that boot the virtual KVM host and run every scenario in
# rig/scenarios/ inside it.
# Env: EMBER_SKIP_SLOW=1 runs the fast tier only.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/lib.sh"
cd "$EMBER_ROOT"
export PATH=$HOME/.cargo/bin:$PATH

# Packages first (seconds when installed): the fast tier's tests use busybox and mkfs.ext4.
"$HERE/setup.sh" --packages

# Lint and the fast tier before the long setup (kernels, images), so a slip fails in seconds.
log "Lint: cargo fmt --check, cargo clippy -D warnings"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# The CRI test client is a workspace of its own (rig/cri-test/Cargo.toml): its gRPC stack
# stays out of the main build.
cargo fmt --manifest-path rig/cri-test/Cargo.toml -- --check
cargo clippy --manifest-path rig/cri-test/Cargo.toml --all-targets -- -D warnings

log "Fast tier: unit and integration tests (no guest; /dev/kvm payload tests where it exists)"
cargo test --workspace --exclude ember-rig --exclude ember-fuzz
cargo test -p ember-rig --lib --bins
cargo test --manifest-path rig/cri-test/Cargo.toml
log "Fuzz: every target's seed corpus, then ${EMBER_FUZZ_SECS:-3} s of mutation each (fuzz/README.md)"
cargo test -p ember-fuzz -- --nocapture

if [ "${EMBER_SKIP_SLOW:-0}" = 1 ]; then
    log "Slow tier skipped (EMBER_SKIP_SLOW=1)"
    exit 0
fi
"$HERE/setup.sh"
log "Slow tier: one virtual KVM host boot, every scenario in rig/scenarios/"
export EMBER_E2E_LOG=${EMBER_E2E_LOG:-/tmp/ember-e2e-console.log}
export EMBER_E2E_OCI_LOG=${EMBER_E2E_OCI_LOG:-/tmp/ember-e2e-oci-console.log}
rc=0
EMBER_E2E=1 cargo test -p ember-rig --test e2e -- --test-threads 4 || rc=$?
# Scenario files that failed once and ran again in a fresh virtual host (rig/tests/e2e/main.rs).
for f in "$EMBER_E2E_LOG.reruns" "$EMBER_E2E_OCI_LOG.reruns"; do
    if [ -f "$f" ]; then
        log "Slow tier: run twice ($f)"
        cat "$f"
    fi
done
exit $rc
