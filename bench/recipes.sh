#!/usr/bin/env bash
# Same-budget comparison of the four recipes: {basic, improved} UNet x {DDPM-cfg, rectified flow}.
#
#   . scripts/env.sh && MNIST_DIR=../shared/data/mnist bench/recipes.sh EPOCHS [OUT_DIR]
#
# Trains each recipe for EPOCHS epochs into OUT_DIR/<arch>-<kind> (default runs/recipes; a run that already has
# the epochs is reused, a stopped one is resumed), then scores every epoch's checkpoint with `diffuse eval` on 300
# samples (30 per digit) at each sampler setting below, guided at every step (not only in the default interval),
# and prints one markdown row per run and epoch: mean loss of that epoch, the best Frechet distance and its
# setting, the classifier accuracy there, and the whole-process wall time of `diffuse sample` drawing 40 digits
# with that setting. Every number comes from this machine.
#
# Training takes the machine's measured precision and layout (README, Training).
# Environment: BIN (default target/release/diffuse), PRECISION for sampling (default bf16), PER_DIGIT (default 30),
# FULL=1 to add ancestral DDPM-300 to the DDPM settings (slow on a CPU).
set -euo pipefail

mode=train
if [ "${1:-}" = score ]; then
  # bench/recipes.sh score RUN_DIR EPOCH: the row of one existing checkpoint (images seen assume full epochs).
  mode=score score_run=${2:?run folder} score_epoch=${3:?epoch}
  set -- 0
fi
epochs=${1:?usage: bench/recipes.sh EPOCHS [OUT_DIR] | bench/recipes.sh score RUN_DIR EPOCH}
out=${2:-runs/recipes}
bin=${BIN:-target/release/diffuse}
precision=${PRECISION:-bf16}
per_digit=${PER_DIGIT:-30}
last=$(printf %03d "$epochs")

for arch in basic improved; do
  [ "$mode" = train ] || break
  for kind in cfg flow; do
    run="$out/$arch-$kind"
    if [ -f "$run/checkpoints/epoch-$last/state.json" ]; then
      continue
    elif [ -d "$run/checkpoints" ]; then
      "$bin" train "$kind" --resume "$run" --no-figures
    else
      "$bin" train "$kind" --arch "$arch" --epochs "$epochs" --out "$run" --no-figures
    fi
  done
done

settings_for() {
  if [ "$1" = flow ]; then
    echo "euler:50:1 euler:50:3"
  else
    echo "ddim:50:1 ddim:50:3${FULL:+ ddpm:300:1}"
  fi
}

# Mean training loss of one epoch from losses.csv (step,epoch,loss).
epoch_loss() {
  awk -F, -v e="$2" 'NR > 1 && $2 == e { s += $3; n++ } END { if (n) printf "%.4f", s / n; else print "-" }' \
    "$1/losses.csv"
}

# One markdown row for RUN's checkpoint of EPOCH.
score_row() {
  local run=$1 epoch=$2 arch kind best=""
  arch=$(grep -o '"arch": *"[a-z]*"' "$run/config.json" | grep -o '[a-z]*"$' | tr -d '"')
  kind=$(grep -o '"kind": *"[a-z]*"' "$run/config.json" | grep -o '[a-z]*"$' | tr -d '"')
  for setting in $(settings_for "$kind"); do
    IFS=: read -r sampler steps guidance <<<"$setting"
    # stdout: header, then "sampler steps guidance n accuracy FD seconds".
    row=$("$bin" eval --run "$run" --epoch "$epoch" --sampler "$sampler" --steps "$steps" --guidance "$guidance" \
      --guidance-interval all --per-digit "$per_digit" --precision "$precision" 2>/dev/null | tail -1)
    read -r _ _ _ _ accuracy fd _ <<<"$row"
    echo "  $arch-$kind epoch $epoch $sampler-$steps g$guidance: FD $fd, accuracy $accuracy" >&2
    if [ -z "$best" ] || awk -v a="$fd" -v b="${best%% *}" 'BEGIN { exit !(a < b) }'; then
      best="$fd $sampler-$steps/g$guidance $accuracy $sampler $steps $guidance"
    fi
  done
  read -r fd label accuracy sampler steps guidance <<<"$best"
  local start seconds
  start=$(date +%s.%N)
  "$bin" sample --run "$run" --epoch "$epoch" --sampler "$sampler" --steps "$steps" --guidance "$guidance" \
    --guidance-interval all --precision "$precision" --out "$run/recipes-sample-epoch-$epoch.png" >/dev/null 2>&1
  seconds=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { print b - a }')
  printf '| %s %s | %d | %d | %s | %s | %s | %s | %.1f |\n' "$arch" "$([ "$kind" = cfg ] && echo DDPM-cfg || echo flow)" \
    "$epoch" $((epoch * 60000)) "$(epoch_loss "$run" "$epoch")" "$fd" "$label" "$accuracy" "$seconds"
}

header() {
  echo "| recipe | epochs | images seen | mean loss (that epoch) | best FD | setting | accuracy | 40 digits (s) |"
  echo "|---|---|---|---|---|---|---|---|"
}

if [ "$mode" = score ]; then
  header
  score_row "$score_run" "$score_epoch"
  exit 0
fi

header
for arch in basic improved; do
  for kind in cfg flow; do
    for epoch in $(seq 1 "$epochs"); do
      [ -f "$out/$arch-$kind/checkpoints/epoch-$(printf %03d "$epoch")/state.json" ] || continue
      score_row "$out/$arch-$kind" "$epoch"
    done
  done
done
