#!/usr/bin/env bash
# GPU check, run from the repository root on an NVIDIA machine that has PyTorch 2.11 (+cu130) installed, with a
# `diffuse` binary built elsewhere (BIN) and the MNIST files (MNIST_DIR). Results go to $OUT. Sections, run in the
# order SECTIONS gives [default: "parity graphs resume full bench", the correctness checks first, so a short lease
# still answers whether the GPU path is right]:
#   parity  the same training steps on CPU and CUDA (same seed, same init, same batches) give the same losses;
#   graphs  --cuda-graphs on against off: the same losses, a capture per epoch, the sample command's time (the
#           bench section times training and sampler steps both ways);
#   resume  a run resumed on CUDA from its epoch-1 checkpoint against the same run uninterrupted;
#   full    the full 20-epoch cfg run (SPEC.md defaults), with CUDA graphs unless GRAPHS=off: wall time, loss
#           curve, figures, final weights;
#   bench   `diffuse bench` (CUDA graphs, the default, and eager) against bench/pytorch_ref.py (eager) on the same
#           card, fp32 and bf16.
set -uo pipefail
OUT=${OUT:-/tmp/gpu-check}
BIN=${BIN:-target/release/diffuse}
PY=${PY:-python3}
export MNIST_DIR=${MNIST_DIR:-.devcarry/mnist}
mkdir -p "$OUT" "$OUT/work"
TORCH_LIB=$($PY -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
export LD_LIBRARY_PATH="$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
W="$OUT/work"
log() { echo "== $*"; }

parity() {
  log "parity: CPU vs CUDA, 4 training steps of cfg (D=64, batch 128) from the same seed"
  for dev in cpu cuda; do
    "$BIN" train cfg --subset 512 --epochs 1 --no-figures --device "$dev" --out "$W/parity-$dev" 2>&1 | tail -n 2
  done
  $PY - "$W" <<'PY'
import csv, sys
w = sys.argv[1]
rows = {d: [float(r["loss"]) for r in csv.DictReader(open(f"{w}/parity-{d}/losses.csv"))] for d in ("cpu", "cuda")}
for i, (a, b) in enumerate(zip(rows["cpu"], rows["cuda"])):
    print(f"step {i+1}: cpu {a:.6f} cuda {b:.6f} rel diff {abs(a-b)/abs(a):.2e}")
# cuDNN may use TF32 for convolutions, so allow a small relative difference.
ok = abs(rows["cpu"][0] - rows["cuda"][0]) / rows["cpu"][0] < 2e-3
print("PARITY", "OK" if ok else "FAILED")
PY
}

# Largest relative difference of two runs' per-step losses, over the first 3 steps and over all (OK below 1e-3 and
# 2e-2: the first steps see the same weights, later ones drift as two CUDA runs in two processes do).
compare_losses() { # $1 $2 = run folders, $3 = label
  $PY - "$1" "$2" "$3" <<'PY'
import csv, sys
a, b = ([float(r["loss"]) for r in csv.DictReader(open(f"{run}/losses.csv"))] for run in sys.argv[1:3])
rel = [abs(x - y) / abs(x) for x, y in zip(a, b)]
first, worst = max(rel[:3]), max(rel)
print(f"steps {len(a)}/{len(b)}, largest relative loss difference: first 3 steps {first:.2e}, all {worst:.2e}")
print(sys.argv[3], "OK" if len(a) == len(b) and first < 1e-3 and worst < 2e-2 else "FAILED")
PY
}

graphs() {
  log "graphs: 2 epochs of cfg (D=64, batch 128, 10000 images: 78 full steps and a short one), eager against graphed"
  for graphs in off on; do
    "$BIN" train cfg --subset 10000 --epochs 2 --no-figures --device cuda --cuda-graphs "$graphs" -v \
      --out "$W/graphs-$graphs" 2>&1 | grep -E "captured|error|panic|warn|epoch 2" | tail -n 5
  done
  compare_losses "$W/graphs-off" "$W/graphs-on" "GRAPH PARITY"
  for graphs in off on; do
    echo "40 guided digits, DDPM 300 steps, --cuda-graphs $graphs (the command's own timing, then the whole process):"
    /usr/bin/time -f "%e s wall, %M KB peak RSS" "$BIN" sample --device cuda --cuda-graphs "$graphs" -v \
      --sampler ddpm --out "$W/ddpm-$graphs.png" 2>&1 | grep -E "samples in|captured|wall|error|panic|warn"
  done
  # The default guides only at times 0 to 0.5; SPEC's part 3 guides every step with gamma 5 (a batch of 80 each).
  echo "the same, guided at every step with guidance 5 (SPEC part 3), --cuda-graphs on:"
  /usr/bin/time -f "%e s wall, %M KB peak RSS" "$BIN" sample --device cuda -v --sampler ddpm --guidance 5 \
    --guidance-interval all --out "$W/ddpm-spec.png" 2>&1 | grep -E "samples in|captured|wall|error|panic|warn"
}

resume() {
  # Epoch 1's losses come back from the checkpoint: the comparison that matters is epoch 2's ("all").
  log "resume: graphs' 2-epoch run with its epoch-2 checkpoint removed, resumed on CUDA, against the run as it was"
  [ -d "$W/graphs-on" ] || "$BIN" train cfg --subset 10000 --epochs 2 --no-figures --device cuda --cuda-graphs on \
    --out "$W/graphs-on" 2>&1 | tail -n 1
  rm -rf "$W/resumed" && cp -r "$W/graphs-on" "$W/resumed" && rm -rf "$W/resumed/checkpoints/epoch-002"
  "$BIN" train cfg --resume "$W/resumed" --no-figures --device cuda --cuda-graphs on 2>&1 | tail -n 1
  compare_losses "$W/graphs-on" "$W/resumed" "RESUME"
}

full() {
  log "full: cfg run (20 epochs, SPEC.md defaults), precision ${PRECISION:-fp32}, CUDA graphs ${GRAPHS:-on}"
  start=$(date +%s)
  timeout "${TRAIN_TIMEOUT:-330}" "$BIN" train cfg --device cuda --cuda-graphs "${GRAPHS:-on}" \
    --precision "${PRECISION:-fp32}" --out "$W/cfg20" 2>&1 | grep -v "step " | tail -n 25
  end=$(date +%s)
  echo "cfg 20-epoch wall time (incl. figures): $((end - start)) s"
  last=$(ls -d "$W"/cfg20/checkpoints/epoch-* 2>/dev/null | tail -n 1)
  cp "$W/cfg20/losses.csv" "$W/cfg20/figures/loss.png" "$OUT/" 2>/dev/null
  cp "$W/cfg20/figures/reverse.gif" "$OUT/" 2>/dev/null
  ls "$W"/cfg20/figures/samples-epoch-*.png 2>/dev/null | tail -n 1 | xargs -r -I{} cp {} "$OUT/samples-final.png"
  [ -n "$last" ] && cp "$last/model.safetensors" "$OUT/model.safetensors"
}

bench() {
  log "bench: diffuse (graphs, then eager) vs PyTorch eager on this card"
  for prec in fp32 bf16; do
    "$BIN" bench --device cuda --model cfg --precision "$prec" --warmup 20 --steps 100 --sample-steps 100 --json
    "$BIN" bench --device cuda --cuda-graphs off --model cfg --precision "$prec" --warmup 20 --steps 100 \
      --sample-steps 100 --json
    "$BIN" bench --device cuda --model cfg --arch improved --precision "$prec" --warmup 20 --steps 100 --sample-steps 100 --json
    $PY bench/pytorch_ref.py --device cuda --model cfg --precision "$prec" --warmup 20 --steps 100 --sample-steps 100 --json
    $PY bench/pytorch_ref.py --device cuda --model cfg --precision "$prec" --channels-last --warmup 20 --steps 100 --sample-steps 100 --json
  done 2>&1 | tee -a "$OUT/bench.jsonl"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())'
for section in ${SECTIONS:-parity graphs resume full bench}; do
  case "$section" in
    parity | graphs | resume | full | bench) "$section" ;;
    *) echo "gpu_check.sh: unknown section $section" >&2 ;;
  esac
done
rm -rf "$W"
ls -la "$OUT"
