#!/usr/bin/env bash
# Interleaved comparison of `diffuse bench` against bench/pytorch_ref.py (A B A B ...), medians and ratios.
#   bench/compare.sh [--model cfg] [--hidden 64] [--batch 128] [--precision fp32] [--threads 2] [--rounds 3]
#                    [--steps 10] [--warmup 3] [--sample-steps 20] [--torch-precision fp32] [--channels-last]
# --torch-precision lets the Rust side run bf16 against PyTorch fp32 (the "1.5x PyTorch fp32" target).
# Needs `. scripts/env.sh` and a release build (cargo build --release).
set -euo pipefail
cd "$(dirname "$0")/.."
model=cfg hidden="" batch="" precision=fp32 torch_precision="" threads=2 rounds=3 steps=10 warmup=3 sample_steps=20 cl=""
while [ $# -gt 0 ]; do
  case "$1" in
    --model) model=$2; shift 2 ;;
    --hidden) hidden=$2; shift 2 ;;
    --batch) batch=$2; shift 2 ;;
    --precision) precision=$2; shift 2 ;;
    --torch-precision) torch_precision=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --warmup) warmup=$2; shift 2 ;;
    --sample-steps) sample_steps=$2; shift 2 ;;
    --channels-last) cl=--channels-last; shift ;;
    *) echo "compare.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
case "$model" in denoiser) hidden=${hidden:-128} batch=${batch:-256} ;; *) hidden=${hidden:-64} batch=${batch:-128} ;; esac
torch_precision=${torch_precision:-$precision}
PY=${DIFFUSE_VENV:-$HOME/.cache/diffuse/venv-torch-2.11.0}/bin/python
BIN=${BIN:-target/release/diffuse}
common=(--model "$model" --hidden "$hidden" --batch "$batch" --threads "$threads" --steps "$steps" --warmup "$warmup" --sample-steps "$sample_steps" --json)
rows=$(mktemp)
for ((i = 1; i <= rounds; i++)); do
  "$BIN" bench "${common[@]}" --precision "$precision" --device cpu | tee -a "$rows"
  "$PY" bench/pytorch_ref.py "${common[@]}" --precision "$torch_precision" $cl | tee -a "$rows"
done
"$PY" - "$rows" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
def med(engine, key):
    v = [r[key] for r in rows if r["engine"] == engine and r.get(key) is not None]
    return statistics.median(v) if v else None
d, p = (next(r for r in rows if r["engine"] == e) for e in ("diffuse", "pytorch"))
print(f"\n{d['model']} D={d['hidden']} batch={d['batch']} threads={d['threads']}: diffuse {d['precision']} vs PyTorch {p['precision']}{' channels-last' if p.get('channels_last') else ''} (medians of {len(rows)//2} interleaved runs)")
print(f"{'metric':<18}{'diffuse':>12}{'pytorch':>12}{'ratio':>8}")
for key in ("train_img_per_s", "sample_img_per_s", "peak_rss_mb"):
    a, b = med("diffuse", key), med("pytorch", key)
    if a is None or b is None:
        continue
    print(f"{key:<18}{a:>12.3f}{b:>12.3f}{a / b:>8.2f}")
PY
rm -f "$rows"
