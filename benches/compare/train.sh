#!/usr/bin/env bash
# Side-by-side training benchmark: the digits MLP (64 -> 64 -> 10, batch 64, Adam lr 1e-3) in
# mlinfra-train against scikit-learn's MLPClassifier and PyTorch on the CPU, in one run, plus
# mlinfra's data-parallel scaling from 1 to 2 ranks on a wider, compute-bound MLP.
#
#   benches/compare/train.sh             # 3 reps of 60 epochs per peer
#   REPS=5 EPOCHS=30 benches/compare/train.sh
#
# 1. scripts/digits-export writes the data once (a venv with scikit-learn, numpy, pyarrow at
#    ~/.cache/mlinfra/venvs/train-bench; nothing is downloaded but PyPI wheels).
# 2. mlinfra: the train_digits example (release), $REPS runs with seeds 0..REPS-1; its
#    samples_per_s is training samples over the training loop's wall time (loader, forward,
#    backward, optimizer, the per-step metrics line; not the evaluations' share... see
#    docs/BENCHMARKS.md), accuracy on the 360 test rows.
# 3. Peers: benches/compare/train_peers.py --peer sklearn (train-bench venv) and --peer torch
#    (the loader-bench venv of benches/compare/loader.sh, which has torch; skipped if absent).
# 4. Scaling from 1 to 2 ranks on a compute-bound model: the scaling_compare bench (an MLP of
#    width $WIDE, 1024 samples per rank; weak and strong scaling as paired per-round ratios
#    beside two independent jobs, the machine's ceiling), $SCALE_REPS rounds. The digits MLP
#    itself is far too small to scale: its step is per-parameter work, not arithmetic.
# 5. Markdown tables of medians and ratios on stdout; raw JSON lines kept in $out.
#
# Environment: REPS, EPOCHS, WIDE (width of the scaling model, default 1024), SCALE_REPS
# (default 9), MLINFRA_TRAIN_BENCH_VENV, MLINFRA_LOADER_BENCH_VENV, CARGO_TARGET_DIR,
# TRAIN_DIGITS and SCALING_COMPARE (binaries built already: skip the cargo builds).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

reps=${REPS:-3}
epochs=${EPOCHS:-60}
wide=${WIDE:-1024}
scale_reps=${SCALE_REPS:-9}
train_venv=${MLINFRA_TRAIN_BENCH_VENV:-$HOME/.cache/mlinfra/venvs/train-bench}
loader_venv=${MLINFRA_LOADER_BENCH_VENV:-$HOME/.cache/mlinfra/venvs/loader-bench}
out=$(mktemp -d "${TMPDIR:-/tmp}/mlinfra-train-bench.XXXXXX")

data=$(scripts/digits-export | tail -n 1)
if [[ -n "${TRAIN_DIGITS:-}" ]]; then
    bin=$TRAIN_DIGITS
else
    cargo build --release --quiet -p mlinfra-examples --example train_digits
    bin=${CARGO_TARGET_DIR:-target}/release/examples/train_digits
fi

echo "mlinfra: $reps runs of $epochs epochs" >&2
for ((rep = 0; rep < reps; rep++)); do
    "$bin" --data "$data" --epochs "$epochs" --batch 64 --hidden 64 --lr 1e-3 --seed "$rep" \
        --plot "$out/loss-$rep.png" --metrics "$out/metrics-$rep.jsonl" | tail -n 1 \
        | sed 's/^{/{"peer":"mlinfra",/' >> "$out/results.jsonl"
done

echo "scikit-learn" >&2
"$train_venv/bin/python" benches/compare/train_peers.py --data "$data" --peer sklearn \
    --hidden 64 --batch 64 --epochs "$epochs" --lr 1e-3 --seed 0 --reps "$reps" \
    >> "$out/results.jsonl"
if [[ -x "$loader_venv/bin/python" ]] && "$loader_venv/bin/python" -c 'import torch' 2>/dev/null; then
    echo "torch" >&2
    "$loader_venv/bin/python" benches/compare/train_peers.py --data "$data" --peer torch \
        --hidden 64 --batch 64 --epochs "$epochs" --lr 1e-3 --seed 0 --reps "$reps" \
        >> "$out/results.jsonl"
else
    echo "torch: no venv with torch at $loader_venv (run benches/compare/loader.sh); skipped" >&2
fi

python3 - "$out/results.jsonl" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def runs(peer):
    return [r for r in rows if r.get("peer") == peer and not r.get("summary")]
def med(rs, key):
    return statistics.median(r[key] for r in rs)
ours = runs("mlinfra")
base = med(ours, "samples_per_s")
print("| peer | samples/s (median) | mlinfra / peer | test accuracy (median, min) | runs |")
print("|---|---|---|---|---|")
for peer in ["mlinfra", "sklearn", "torch"]:
    rs = runs(peer)
    if not rs:
        print(f"| {peer} | skipped | | | 0 |")
        continue
    sps = med(rs, "samples_per_s")
    accs = [r["accuracy"] for r in rs]
    print(f"| {peer} | {sps:,.0f} | {base / sps:.2f}x | {statistics.median(accs):.4f}, {min(accs):.4f} | {len(rs)} |")
PY

echo "scaling: MLP of width $wide, 1 and 2 ranks, $scale_reps rounds" >&2
if [[ -n "${SCALING_COMPARE:-}" ]]; then
    scaling=$SCALING_COMPARE
else
    cargo build --release --quiet -p mlinfra-benches --bin scaling_compare
    scaling=${CARGO_TARGET_DIR:-target}/release/scaling_compare
fi
"$scaling" --width "$wide" --batch 1024 --steps 4 --reps "$scale_reps" > "$out/scaling.txt"
grep '^{' "$out/scaling.txt" >> "$out/results.jsonl"
echo
grep '^|' "$out/scaling.txt"
echo "raw results: $out/results.jsonl" >&2
