#!/usr/bin/env bash
# Interleaved comparison of `diffuse bench` against bench/pytorch_ref.py, medians and ratios. Each round runs, in
# turn: diffuse (its precision for this CPU unless --precision is given), PyTorch fp32 eager, and PyTorch's best
# setting for this CPU class: bf16 autocast + channels-last where the CPU has native bf16 (avx512_bf16 or amx_bf16),
# fp32 + channels-last elsewhere.
#   bench/compare.sh [--model cfg] [--hidden 64] [--batch 128] [--precision fp32|bf16] [--threads 2] [--rounds 3]
#                    [--steps 10] [--warmup 3] [--sample-steps 20]
# Needs `. scripts/env.sh` and a release build (cargo build --release).
set -euo pipefail
cd "$(dirname "$0")/.."
model=cfg hidden="" batch="" precision="" threads=2 rounds=3 steps=10 warmup=3 sample_steps=20
while [ $# -gt 0 ]; do
  case "$1" in
    --model) model=$2; shift 2 ;;
    --hidden) hidden=$2; shift 2 ;;
    --batch) batch=$2; shift 2 ;;
    --precision) precision=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --warmup) warmup=$2; shift 2 ;;
    --sample-steps) sample_steps=$2; shift 2 ;;
    *) echo "compare.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
case "$model" in denoiser) hidden=${hidden:-128} batch=${batch:-256} ;; *) hidden=${hidden:-64} batch=${batch:-128} ;; esac
flags=" $(grep -m1 '^flags' /proc/cpuinfo | cut -d: -f2) "
has() { [[ $flags == *" $1 "* ]]; }
if has amx_bf16; then class="AMX-BF16" best=bf16
elif has avx512_bf16; then class="AVX512-BF16, no AMX" best=bf16
elif has avx512f; then class="AVX-512, no bf16" best=fp32
else class="AVX2 only" best=fp32
fi
PY=${DIFFUSE_VENV:-$HOME/.cache/diffuse/venv-torch-2.11.0}/bin/python
BIN=${BIN:-target/release/diffuse}
common=(--model "$model" --hidden "$hidden" --batch "$batch" --threads "$threads" --steps "$steps" --warmup "$warmup" --sample-steps "$sample_steps" --json)
ours=(); [ -n "$precision" ] && ours=(--precision "$precision")
rows=$(mktemp)
for ((i = 1; i <= rounds; i++)); do
  "$BIN" bench "${common[@]}" "${ours[@]}" --device cpu | sed 's/^{/{"setting":"diffuse",/' | tee -a "$rows"
  "$PY" bench/pytorch_ref.py "${common[@]}" --precision fp32 | sed 's/^{/{"setting":"pytorch fp32 eager",/' | tee -a "$rows"
  "$PY" bench/pytorch_ref.py "${common[@]}" --precision "$best" --channels-last |
    sed "s/^{/{\"setting\":\"pytorch best ($best channels-last)\",/" | tee -a "$rows"
done
"$PY" - "$rows" "$class" "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
settings = list(dict.fromkeys(r["setting"] for r in rows))
def med(setting, key):
    v = [r[key] for r in rows if r["setting"] == setting and r.get(key) is not None]
    return statistics.median(v) if v else None
d = next(r for r in rows if r["setting"] == "diffuse")
print(f"\n{d['model']} D={d['hidden']} batch={d['batch']} threads={d['threads']}, CPU{sys.argv[3]} ({sys.argv[2]}): "
      f"diffuse {d['precision']}, medians of {len(rows) // len(settings)} interleaved rounds")
print(f"{'setting':<34}{'train img/s':>12}{'diffuse/it':>11}{'sample img/s':>14}{'peak RSS MB':>13}")
for s in settings:
    train, sample, rss = med(s, "train_img_per_s"), med(s, "sample_img_per_s"), med(s, "peak_rss_mb")
    ratio = med("diffuse", "train_img_per_s") / train
    fmt = lambda v, p: "-" if v is None else f"{v:.{p}f}"
    print(f"{s:<34}{fmt(train, 1):>12}{ratio:>11.2f}{fmt(sample, 3):>14}{fmt(rss, 0):>13}")
PY
rm -f "$rows"
