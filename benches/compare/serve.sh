#!/usr/bin/env bash
# Side-by-side serving load benchmark (issue 23, item 9): SmolLM2-135M-Instruct (the same
# Q4_1 GGUF) behind mlinfra's OpenAI server (the serve_openai example, release) and behind
# llama.cpp's own OpenAI server (llama-server, built by scripts/llama-cpp-tools from the
# llama.cpp sources inside the llama-cpp-python sdist), in one run, loopback only.
#
#   benches/compare/serve.sh                      # concurrency 1 2 4 8 16
#   CONCURRENCY="1 4" REQUESTS=8 benches/compare/serve.sh
#
# For each concurrency C, each server is started fresh (llama-server with -np C and C times
# the per-slot context, the same thread count as ours), then benches/compare/serve_load.py
# sends the seeded ShareGPT-like workload from C streaming clients (the openai SDK, in
# scripts/openai-venv's venv) and prints TTFT and inter-token latency p50/p99, aggregate
# output tokens/s and errors. A markdown table closes the run; raw JSON lines stay in $out.
#
# Environment: GGUF (another model file, e.g. the Q4_0 / Q8_0 files cpu_decode.sh makes),
# CONCURRENCY ("1 2 4 8 16"), REQUESTS (per level; default max(8, 2C)), SEED (0),
# THREADS (nproc), SERVE_OPENAI (a built example binary: skip the cargo build), CARGO_TARGET_DIR
# (default: the shared ~/.cache/mlinfra-target), LLAMA_CPP_BIN (llama-server's directory).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

levels=${CONCURRENCY:-1 2 4 8 16}
threads=${THREADS:-$(nproc)}
seed=${SEED:-0}
port=${PORT:-18431}
out=$(mktemp -d "${TMPDIR:-/tmp}/mlinfra-serve-bench.XXXXXX")

gguf=${GGUF:-$(scripts/fetch-model smollm2-135m-instruct | tail -n 1)}
python=$(scripts/openai-venv | tail -n 1)
llama_bin=${LLAMA_CPP_BIN:-$(scripts/llama-cpp-tools | tail -n 1)}
if [[ -n "${SERVE_OPENAI:-}" ]]; then
    ours=$SERVE_OPENAI
else
    export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/mlinfra-target}
    cargo build --release --quiet -p mlinfra-examples --example serve_openai
    ours=$CARGO_TARGET_DIR/release/examples/serve_openai
fi
model=$(basename "$gguf" .gguf)

server=
stop_server() {
    if [[ -n $server ]]; then
        kill -TERM "$server" 2>/dev/null || true
        wait "$server" 2>/dev/null || true
        server=
    fi
}
trap stop_server EXIT

# Waits (up to 120 s) until GET /health answers 200.
wait_healthy() {
    for _ in $(seq 600); do
        if curl -sf "http://127.0.0.1:$port/health" >/dev/null; then return 0; fi
        kill -0 "$server" 2>/dev/null || { echo "the server exited; see $1" >&2; exit 1; }
        sleep 0.2
    done
    echo "the server did not become healthy; see $1" >&2
    exit 1
}

load() {
    local name=$1 conc=$2
    local requests=()
    [[ -n ${REQUESTS:-} ]] && requests=(--requests "$REQUESTS")
    "$python" benches/compare/serve_load.py "http://127.0.0.1:$port/v1" "$model" \
        --concurrency "$conc" --seed "$seed" "${requests[@]}" |
        sed "s/^{/{\"server\": \"$name\", /" | tee -a "$out/results.jsonl"
}

for conc in $levels; do
    echo "== concurrency $conc: mlinfra" >&2
    RAYON_NUM_THREADS=$threads "$ours" --model "$gguf" --port "$port" --threads "$threads" \
        --kv-blocks $((conc * 128 > 512 ? conc * 128 : 512)) \
        > "$out/mlinfra-$conc.log" 2>&1 &
    server=$!
    wait_healthy "$out/mlinfra-$conc.log"
    load mlinfra "$conc"
    stop_server

    echo "== concurrency $conc: llama-server" >&2
    "$llama_bin/llama-server" -m "$gguf" --host 127.0.0.1 --port "$port" -t "$threads" \
        -tb "$threads" -np "$conc" -c $((conc * 2048)) > "$out/llama-$conc.log" 2>&1 &
    server=$!
    wait_healthy "$out/llama-$conc.log"
    load llama.cpp "$conc"
    stop_server
done

"$python" - "$out/results.jsonl" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
by = {(r["server"], r["concurrency"]) for r in rows}
print("\n| clients | server | TTFT p50 / p99 (ms) | ITL p50 / p99 (ms) | output tok/s | ratio | errors |")
print("|---|---|---|---|---|---|---|")
for conc in sorted({r["concurrency"] for r in rows}):
    level = {r["server"]: r for r in rows if r["concurrency"] == conc}
    peer = level.get("llama.cpp", {}).get("output_tokens_per_s")
    for name in ("mlinfra", "llama.cpp"):
        r = level.get(name)
        if not r:
            continue
        ratio = f"{r['output_tokens_per_s'] / peer:.2f}x" if peer else "-"
        print(f"| {conc} | {name} | {r['ttft_p50_ms']} / {r['ttft_p99_ms']} | "
              f"{r['itl_p50_ms']} / {r['itl_p99_ms']} | {r['output_tokens_per_s']} | "
              f"{ratio if name == 'mlinfra' else '1.00x'} | {r['errors']} |")
PY
echo "raw results: $out" >&2
