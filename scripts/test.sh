#!/usr/bin/env bash
# The whole test suite: installs the real peers the tests use (see install-deps.sh), builds every
# binary (end-to-end tests run the real binaries), then runs all tests of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh --control-plane
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
cargo build --workspace --bins
cargo test --workspace --no-fail-fast "$@"
