#!/usr/bin/env bash
# README's test command: `cargo test --release`, plus the tests that need something of the machine (root, a browser,
# a Debian data package, Prometheus, a GPU), each included when that is present and named when it is not. Those
# tests are `#[ignore = "needs ..."]` with a `needs_<what>_` name prefix, so a plain `cargo test` lists them as
# ignored, with the reason, instead of passing them unchecked.
#
# Run it where scripts/env.sh was sourced and MNIST_DIR is set (README). Extra arguments go to cargo test.
set -euo pipefail
cd "$(dirname "$0")/.."

skip=()
missing() { # $1 = name prefix, $2 = what is missing
    skip+=(--skip "$1")
    echo "test.sh: not running the $1* tests: $2" >&2
}
[ "$(id -u)" = 0 ] || missing needs_root_ "not root (they mount a tmpfs)"
{ command -v chromium >/dev/null && command -v chromedriver >/dev/null; } ||
    missing needs_chromium_ "no chromium and chromedriver (apt-get install chromium chromium-driver)"
[ -d /usr/share/datasets/fashion-mnist ] ||
    missing needs_fashion_mnist_ "no /usr/share/datasets/fashion-mnist (apt-get install dataset-fashion-mnist)"
command -v prometheus >/dev/null || missing needs_prometheus_ "no prometheus (apt-get install prometheus)"
command -v patchelf >/dev/null || missing needs_patchelf_ "no patchelf, which builds the release bundle (apt-get install patchelf)"
{ command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; } || missing needs_cuda_ "no NVIDIA GPU"

exec cargo test --release --no-fail-fast "$@" -- --include-ignored "${skip[@]}"
