#!/usr/bin/env bash
# Single-stream CPU decode and prompt processing, ours against llama.cpp's `llama-bench`, on
# the same GGUF files and thread count, in alternating rounds (issue 24, item 5):
#
#   tg   decode tokens/s: llama-bench `-n 128` (128 tokens from an empty context) against
#        `llama_generate --prompt Hi --max-new 128 --ignore-eos`
#   pp   prompt tokens/s: llama-bench `-p 512` against `llama_generate` on a 512-token prompt
#   RSS  peak resident memory (GNU time) of llama-bench's process (pp512 then tg128) and of
#        ours on the 512-token prompt then 128 tokens
#
# and our tg as a fraction of the decode ceiling (`mem_ceiling`: read bandwidth at the same
# thread count over the bytes a token reads from that file). The bandwidth is probed in every
# round, right before our tg run, and each round's tg is set against its own probe (the
# median of those fractions is reported): on a shared machine, a probe taken once at the
# start can catch a quieter moment than the runs it is compared with.
#
#   benches/compare/cpu_decode.sh                 # Q4_1, Q4_0, Q8_0, Q4_K_M; 2 threads; 3 rounds
#   THREADS=1 ROUNDS=5 FORMATS="Q4_1" benches/compare/cpu_decode.sh
#
# Files: SmolLM2-135M-Instruct.Q4_1.gguf from scripts/fetch-model; the others (Q4_0, Q8_0,
# Q4_K_M...) made from it once by scripts/smollm2-gguf (llama.cpp's `llama-quantize`).
# llama.cpp's tools come from scripts/llama-cpp-tools (built from the llama-cpp-python sdist).
# Prints one line per run and a summary table of medians; docs/BENCHMARKS.md quotes it.
set -euo pipefail

here=$(cd "$(dirname "$0")/../.." && pwd)
threads=${THREADS:-2}
rounds=${ROUNDS:-3}
formats=${FORMATS:-"Q4_1 Q4_0 Q8_0 Q4_K_M"}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/mlinfra-target}

bin=$("$here/scripts/llama-cpp-tools")

(cd "$here" && cargo build --release --quiet -p mlinfra-examples --example llama_generate \
    && cargo build --release --quiet -p mlinfra-benches --bin mem_ceiling)
ours=$CARGO_TARGET_DIR/release/examples/llama_generate
ceiling=$CARGO_TARGET_DIR/release/mem_ceiling

# 512 one-token words: a 512-token prompt for SmolLM2's tokenizer (checked below).
prompt=$(python3 -c '
import random
words = ("the of and to in is was for on that with as by at from his it an were are which "
         "this be or has had first one their its after new who they two her she been other").split()
r = random.Random(0)
print(" ".join(r.choice(words) for _ in range(512)))')

field() { python3 -c "import json, sys; print(json.loads(sys.stdin.readlines()[-1])['$1'])"; }
median() { sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

results=$(mktemp)
trap 'rm -f "$results" "$results.rss"' EXIT
for format in $formats; do
    model=$("$here/scripts/smollm2-gguf" "$format")
    read -r bandwidth bytes < <("$ceiling" --model "$model" --rounds 1 | python3 -c "
import json, sys
lines = [json.loads(l) for l in sys.stdin]
bw = [l['read_gb_s'] for l in lines if l.get('threads') == $threads]
model = [l for l in lines if 'bytes_per_token' in l][0]
print(bw[0] if bw else 'nan', model['bytes_per_token'])")
    # Bytes per token from the file; the bandwidth the fractions use is probed in every round.
    echo "$format: read ${bandwidth} GB/s on $threads threads (one pass), ${bytes} bytes per token"
    for round in $(seq 1 "$rounds"); do
        # Peak RSS in KiB (GNU time's %M) of each process, on the last line of its stderr.
        /usr/bin/time -f "%M" -o "$results.rss" \
            "$bin/llama-bench" -m "$model" -t "$threads" -p 512 -n 128 -r 1 -o jsonl 2>/dev/null \
            | python3 -c "
import json, sys
for line in sys.stdin:
    d = json.loads(line)
    test = 'pp' if d['n_prompt'] else 'tg'
    print('$format', $round, 'llama.cpp', test, d['avg_ts'])" >> "$results"
        echo "$format $round llama.cpp rss $(tail -n 1 "$results.rss")" >> "$results"
        round_bandwidth=$("$ceiling" --model "$model" --rounds 3 | python3 -c "
import json, sys
print([json.loads(l)['read_gb_s'] for l in sys.stdin if json.loads(l).get('threads') == $threads][0])")
        tg=$("$ours" --model "$model" --prompt Hi --max-new 128 --ignore-eos \
            --threads "$threads" 2>/dev/null | field decode_tokens_per_s)
        echo "$format $round mlinfra fraction $(awk -v m="$tg" -v b="$bytes" -v bw="$round_bandwidth" \
            'BEGIN { print m * b / (bw * 1e9) }') $round_bandwidth" >> "$results"
        pp_line=$(/usr/bin/time -f "%M" -o "$results.rss" "$ours" --model "$model" \
            --prompt "$prompt" --max-new 128 --ignore-eos --threads "$threads" 2>/dev/null | tail -n 1)
        pp=$(field prefill_tokens_per_s <<< "$pp_line")
        [[ $(field prompt_tokens <<< "$pp_line") == 512 ]] || echo "warning: prompt is not 512 tokens" >&2
        echo "$format $round mlinfra tg $tg" >> "$results"
        echo "$format $round mlinfra pp $pp" >> "$results"
        echo "$format $round mlinfra rss $(tail -n 1 "$results.rss")" >> "$results"
        grep "^$format $round " "$results"
    done
    echo "$format ceiling $bandwidth $bytes" >> "$results"
done

echo
echo "| format | test | mlinfra | llama.cpp | ours / llama.cpp | ours, fraction of the decode ceiling |"
echo "|---|---|---|---|---|---|"
for format in $formats; do
    read -r bandwidth bytes < <(awk -v f="$format" '$1 == f && $2 == "ceiling" { print $3, $4 }' "$results")
    for test in tg pp; do
        m=$(awk -v f="$format" -v t="$test" '$1 == f && $3 == "mlinfra" && $4 == t { print $5 }' "$results" | median)
        l=$(awk -v f="$format" -v t="$test" '$1 == f && $3 == "llama.cpp" && $4 == t { print $5 }' "$results" | median)
        fraction=-
        if [[ $test == tg ]]; then
            fraction=$(awk -v f="$format" '$1 == f && $4 == "fraction" { print $5 }' "$results" \
                | median | awk '{ printf "%.0f%%", 100 * $1 }')
            bandwidth=$(awk -v f="$format" '$1 == f && $4 == "fraction" { print $6 }' "$results" | median)
            fraction="$fraction (of $(printf '%.1f' "$bandwidth") GB/s)"
        fi
        awk -v f="$format" -v t="$test" -v m="$m" -v l="$l" -v fr="$fraction" \
            'BEGIN { printf "| %s | %s tok/s | %.1f | %.1f | %.2fx | %s |\n", f, t, m, l, m / l, fr }'
    done
    m=$(awk -v f="$format" '$1 == f && $3 == "mlinfra" && $4 == "rss" { print $5 }' "$results" | median)
    l=$(awk -v f="$format" '$1 == f && $3 == "llama.cpp" && $4 == "rss" { print $5 }' "$results" | median)
    awk -v f="$format" -v m="$m" -v l="$l" \
        'BEGIN { printf "| %s | peak RSS MiB (pp512 + tg128) | %.0f | %.0f | %.2fx | - |\n", f, m / 1024, l / 1024, m / l }'
done
