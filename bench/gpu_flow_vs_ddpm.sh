#!/usr/bin/env bash
# Same-budget comparison on an NVIDIA machine: trains the rectified-flow model with the cfg recipe (20 epochs, seed
# 0), then sweeps sample quality (diffuse eval --sweep, 100 per digit) for it and for the shipped cfg-d64 DDPM.
# Environment as in bench/gpu_check.sh (BIN, MNIST_DIR, OUT, PY).
set -uo pipefail
OUT=${OUT:-/tmp/gpu-flow}
BIN=${BIN:-target/release/diffuse}
PY=${PY:-python3}
export MNIST_DIR=${MNIST_DIR:-.devcarry/mnist}
mkdir -p "$OUT"
TORCH_LIB=$($PY -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
export LD_LIBRARY_PATH="$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
W=$(mktemp -d)
start=$(date +%s)
timeout "${TRAIN_TIMEOUT:-130}" "$BIN" train flow --device cuda --out "$W/flow20" 2>&1 | grep -v "step " | tail -n 4
echo "flow 20-epoch wall time (incl. figures): $(($(date +%s) - start)) s"
last=$(ls -d "$W"/flow20/checkpoints/epoch-* 2>/dev/null | tail -n 1)
[ -n "$last" ] && cp "$last/model.safetensors" "$OUT/flow-model.safetensors"
cp "$W/flow20/losses.csv" "$OUT/flow-losses.csv" 2>/dev/null
ls "$W"/flow20/figures/samples-epoch-*.png 2>/dev/null | tail -n 1 | xargs -r -I{} cp {} "$OUT/flow-samples.png"
timeout "${EVAL_TIMEOUT:-50}" "$BIN" eval --run "$W/flow20" --sweep --per-digit 100 --device cuda --csv "$OUT/sweep-flow.csv" --plot "$OUT/sweep-flow.png" 2>/dev/null
timeout "${EVAL_TIMEOUT:-50}" "$BIN" eval --model cfg-d64 --sweep --per-digit 100 --device cuda --csv "$OUT/sweep-cfg.csv" --plot "$OUT/sweep-cfg.png" 2>/dev/null
rm -rf "$W"
