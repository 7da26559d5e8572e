#!/usr/bin/env bash
# Side-by-side LoRA fine-tuning benchmark (issue 22, item 10): SmolLM2-135M-Instruct, SFT on
# the finetune example's arithmetic chats, mlinfra (LoRA on the f32 base, and QLoRA on the
# GGUF's Q4_1 blocks) against Hugging Face PEFT + transformers on torch (CPU), in one run,
# with the same rank, alpha, targets, conversations per step (the very same conversations),
# optimizer, schedule and steps.
#
#   benches/compare/finetune.sh              # 50 steps, batch 16, r 16, q_proj,v_proj
#   STEPS=20 benches/compare/finetune.sh
#
# 1. mlinfra: the finetune example (release) with --dpo-steps 0 --eval-questions 1, under
#    /usr/bin/time -v, --method lora then --method qlora; the LoRA run also dumps each step's
#    conversations (--dump-batches).
# 2. PEFT: benches/compare/finetune_peft.py in scripts/reference-venv's venv (torch,
#    transformers, peft from PyPI), under /usr/bin/time -v, on the dumped steps. mlinfra
#    packs a step's conversations into rows of --seq-len; PEFT pads them (transformers'
#    dynamic padding): the same loss, each side's usual way.
# 3. A markdown table on stdout: tokens/s (real tokens over the training loop's wall time),
#    peak RSS (whole process), their ratios, and the losses at steps 1, 10, 25 and 50 with the
#    mean |difference| over all steps. Raw outputs stay in $out.
#
# Environment: STEPS (50), BATCH (16), RANK (16), ALPHA (32), TARGETS (q_proj,v_proj),
# SEQ_LEN (128), LR (1e-3), FINETUNE (a built example binary: skip the cargo build),
# CARGO_TARGET_DIR (default: the shared ~/.cache/mlinfra-target), MLINFRA_LLAMA_REF_VENV (scripts/reference-venv).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

steps=${STEPS:-50}
batch=${BATCH:-16}
rank=${RANK:-16}
alpha=${ALPHA:-32}
targets=${TARGETS:-q_proj,v_proj}
seq_len=${SEQ_LEN:-128}
lr=${LR:-1e-3}
out=$(mktemp -d "${TMPDIR:-/tmp}/mlinfra-finetune-bench.XXXXXX")

gguf=$(scripts/fetch-model smollm2-135m-instruct | tail -n 1)
venv=$(scripts/reference-venv | tail -n 1)
if [[ -n "${FINETUNE:-}" ]]; then
    bin=$FINETUNE
else
    # The shared build cache, as scripts/check uses it.
    export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/mlinfra-target}
    cargo build --release --quiet -p mlinfra-examples --example finetune
    bin=$CARGO_TARGET_DIR/release/examples/finetune
fi

# Peak RSS in bytes from /usr/bin/time -v's report.
peak_rss() { awk -F': ' '/Maximum resident set size/ { print $2 * 1024 }' "$1"; }

common=(--model "$gguf" --rank "$rank" --alpha "$alpha" --targets "$targets" --steps "$steps"
    --seq-len "$seq_len" --batch "$batch" --lr "$lr" --dpo-steps 0 --eval-questions 1)
for method in lora qlora; do
    echo "mlinfra $method: $steps steps" >&2
    extra=()
    [[ $method == lora ]] && extra=(--dump-batches "$out/batches.jsonl")
    /usr/bin/time -v -o "$out/time-$method.txt" "$bin" --method "$method" "${common[@]}" \
        --out "$out/$method" "${extra[@]}" > "$out/$method.json" 2> "$out/$method.err"
    tail -n 1 "$out/$method.json" > "$out/$method.last.json"
done

echo "PEFT: $steps steps" >&2
/usr/bin/time -v -o "$out/time-peft.txt" "$venv/bin/python" benches/compare/finetune_peft.py \
    --gguf "$gguf" --batches "$out/batches.jsonl" --rank "$rank" --alpha "$alpha" \
    --targets "$targets" --lr "$lr" --steps "$steps" > "$out/peft.json" 2> "$out/peft.err"

python3 - "$out" "$(peak_rss "$out/time-lora.txt")" "$(peak_rss "$out/time-qlora.txt")" \
    "$(peak_rss "$out/time-peft.txt")" <<'PY'
import json, sys
out, rss_lora, rss_qlora, rss_peft = sys.argv[1], *map(float, sys.argv[2:])
def train_losses(run):
    losses = []
    with open(f"{out}/{run}/metrics.jsonl") as f:
        for line in f:
            r = json.loads(line)
            if r.get("kind") == "train":
                losses.append(r["loss"])
    return losses
lora = json.load(open(f"{out}/lora.last.json"))
qlora = json.load(open(f"{out}/qlora.last.json"))
peft = json.loads(open(f"{out}/peft.json").read().strip().splitlines()[-1])
curves = {"mlinfra LoRA": train_losses("lora"), "mlinfra QLoRA": train_losses("qlora"),
          "PEFT LoRA": peft["losses"]}
mib = lambda b: f"{b / 1048576:.0f} MiB"
print(f"| run | tokens/s | vs PEFT | peak RSS | vs PEFT |")
print("|---|---|---|---|---|")
for name, tps, rss in [("mlinfra LoRA", lora["tokens_per_s"], rss_lora),
                       ("mlinfra QLoRA", qlora["tokens_per_s"], rss_qlora),
                       ("PEFT LoRA (torch)", peft["tokens_per_s"], rss_peft)]:
    print(f"| {name} | {tps:.0f} | {tps / peft['tokens_per_s']:.2f}x | {mib(rss)} | "
          f"{rss / rss_peft:.2f}x |")
print()
steps = [s for s in (1, 10, 25, 50) if s <= len(peft["losses"])]
print("| run | " + " | ".join(f"loss @ {s}" for s in steps) + " | mean abs diff vs PEFT |")
print("|---|" + "---|" * (len(steps) + 1))
for name, losses in curves.items():
    n = min(len(losses), len(peft["losses"]))
    diff = sum(abs(a - b) for a, b in zip(losses[:n], peft["losses"][:n])) / max(n, 1)
    print(f"| {name} | " + " | ".join(f"{losses[s - 1]:.3f}" for s in steps) + f" | {diff:.3f} |")
    if name != "PEFT LoRA":
        verdict = "within" if diff <= 0.05 else "OUTSIDE"
        print(f"{name}: loss curve {verdict} the 0.05 mean-absolute-difference tolerance", file=sys.stderr)
print()
print(f"versions: {peft['versions']}, torch threads {peft['torch_threads']}; raw outputs in {out}")
PY
