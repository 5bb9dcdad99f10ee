#!/usr/bin/env bash
# Interleaved comparison of `diffuse bench` against bench/pytorch_ref.py, medians and ratios. Each round runs, in
# turn: diffuse (its precision and layout for this CPU unless --precision is given) and PyTorch in every setting that
# can be its best on this CPU class: fp32 eager (contiguous) and fp32 + channels-last everywhere, and bf16 autocast
# with and without channels-last where the CPU has native bf16 (avx512_bf16 or amx_bf16). PyTorch's best is the
# setting with the highest median training throughput, measured here, not inferred from the CPU flags: bf16 is
# slower than fp32 on some CPUs that list native bf16 (no AMX).
#   bench/compare.sh [--model cfg] [--hidden 64] [--batch 128] [--precision fp32|bf16] [--threads 2] [--rounds 3]
#                    [--steps 10] [--warmup 3] [--sample-steps 20]
#                    [--isa avx2]
# --isa avx2 holds both engines to their AVX2 kernels on a CPU that has more (ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA,
# MKL_ENABLE_INSTRUCTIONS), to study the AVX2-only class where no such machine is at hand; the table says "emulated".
# Needs `. scripts/env.sh` and a release build (cargo build --release).
set -euo pipefail
cd "$(dirname "$0")/.."
model=cfg hidden="" batch="" precision="" threads=2 rounds=3 steps=10 warmup=3 sample_steps=20 isa=
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
    --isa) isa=$2; shift 2 ;;
    *) echo "compare.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
case "$model" in denoiser) hidden=${hidden:-128} batch=${batch:-256} ;; *) hidden=${hidden:-64} batch=${batch:-128} ;; esac
flags=" $(grep -m1 '^flags' /proc/cpuinfo | cut -d: -f2) "
has() { [[ $flags == *" $1 "* ]]; }
if has amx_bf16; then class="AMX-BF16"
elif has avx512_bf16; then class="AVX512-BF16, no AMX"
elif has avx512f; then class="AVX-512, no bf16"
else class="AVX2 only"
fi
case "$isa" in
  "") ;;
  avx2)
    export ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2
    class="AVX2 only, emulated on an $class CPU"
    flags=" avx2 " ;;
  *) echo "compare.sh: --isa takes avx2" >&2; exit 2 ;;
esac
# PyTorch's candidate settings as "precision layout"; the first is the eager baseline.
candidates=("fp32 contiguous" "fp32 channels-last")
if has amx_bf16 || has avx512_bf16; then candidates+=("bf16 contiguous" "bf16 channels-last"); fi
PY=${DIFFUSE_VENV:-$HOME/.cache/diffuse/venv-torch-2.11.0}/bin/python
BIN=${BIN:-target/release/diffuse}
common=(--model "$model" --hidden "$hidden" --batch "$batch" --threads "$threads" --steps "$steps" --warmup "$warmup" --sample-steps "$sample_steps" --json)
ours=(); [ -n "$precision" ] && ours=(--precision "$precision")
rows=$(mktemp)
for ((i = 1; i <= rounds; i++)); do
  "$BIN" bench "${common[@]}" "${ours[@]}" --device cpu | sed 's/^{/{"setting":"diffuse",/' | tee -a "$rows"
  for candidate in "${candidates[@]}"; do
    read -r prec layout <<<"$candidate"
    cl=(); [ "$layout" = channels-last ] && cl=(--channels-last)
    name="pytorch $prec $layout"; [ "$candidate" = "fp32 contiguous" ] && name="pytorch fp32 eager"
    "$PY" bench/pytorch_ref.py "${common[@]}" --precision "$prec" "${cl[@]}" |
      sed "s/^{/{\"setting\":\"$name\",/" | tee -a "$rows"
  done
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
# Ratios within each round (a round is one diffuse run and the PyTorch runs after it, minutes apart rather than the
# whole call's span apart): their spread says how much the host drifted, their median is less moved by a slow phase
# that hits one round.
rounds = []
for r in rows:
    if r["setting"] == "diffuse":
        rounds.append({})
    if rounds:
        rounds[-1][r["setting"]] = r
print("diffuse/it round by round, train; sample:")
for s in settings[1:]:
    parts = []
    for key in ("train_img_per_s", "sample_img_per_s"):
        v = [rd["diffuse"][key] / rd[s][key] for rd in rounds if s in rd and rd[s].get(key) and rd["diffuse"].get(key)]
        parts.append(" ".join(f"{x:.2f}" for x in v) + (f" (median {statistics.median(v):.2f})" if v else ""))
    print(f"  {s:<32}{parts[0]}; {parts[1]}")
torch_settings = [s for s in settings if s.startswith("pytorch")]
best = max(torch_settings, key=lambda s: med(s, "train_img_per_s"))
print(f"PyTorch's best here (measured): {best}, {med(best, 'train_img_per_s'):.1f} img/s; "
      f"diffuse/best {med('diffuse', 'train_img_per_s') / med(best, 'train_img_per_s'):.2f}, "
      f"diffuse/eager {med('diffuse', 'train_img_per_s') / med('pytorch fp32 eager', 'train_img_per_s'):.2f}")
PY
rm -f "$rows"
