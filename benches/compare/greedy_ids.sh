#!/usr/bin/env bash
# The greedy ids of the chat prompt "What is 2+2?" (issue 24, item 4), ours against
# llama.cpp's, on each GGUF type of SmolLM2-135M-Instruct:
#
#   llama.cpp  `llama-server`: /apply-template on the message, then /completion of that text
#              with top_k 1, 16 tokens, end of sequence ignored, `return_tokens`
#   ours       `llama_generate --chat --prompt "What is 2+2?" --max-new 16 --ignore-eos`
#              (the host runner on SimdKernels), its `output_ids`
#
#   benches/compare/greedy_ids.sh                      # Q4_1 Q4_0 Q8_0 Q4_K_M
#   FORMATS=Q4_K_M benches/compare/greedy_ids.sh
#
# Prints each format's two id lists and whether they are equal; exits 1 when one differs.
# The Q4_1 agreement also runs in CI (examples' `greedy_chat_ids_are_llama_cpps`); the other
# files need llama-quantize (scripts/smollm2-gguf), so they are checked here.
set -euo pipefail

here=$(cd "$(dirname "$0")/../.." && pwd)
formats=${FORMATS:-"Q4_1 Q4_0 Q8_0 Q4_K_M"}
port=${PORT:-18089}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/mlinfra-target}

bin=$("$here/scripts/llama-cpp-tools")
(cd "$here" && cargo build --release --quiet -p mlinfra-examples --example llama_generate)
ours=$CARGO_TARGET_DIR/release/examples/llama_generate

server=
trap '[[ -n $server ]] && kill "$server" 2> /dev/null; true' EXIT
status=0
for format in $formats; do
    model=$("$here/scripts/smollm2-gguf" "$format")
    "$bin/llama-server" -m "$model" --port "$port" -t 2 > /dev/null 2>&1 &
    server=$!
    for _ in $(seq 1 100); do
        curl -sf "localhost:$port/health" > /dev/null && break
        sleep 0.2
    done
    theirs=$(curl -sf "localhost:$port/apply-template" \
        -d '{"messages": [{"role": "user", "content": "What is 2+2?"}]}' | python3 -c '
import json, sys, urllib.request
prompt = json.load(sys.stdin)["prompt"]
body = {"prompt": prompt, "n_predict": 16, "top_k": 1, "temperature": 0, "ignore_eos": True,
        "return_tokens": True, "cache_prompt": False}
request = urllib.request.Request("http://localhost:'"$port"'/completion",
                                 data=json.dumps(body).encode())
print(json.load(urllib.request.urlopen(request))["tokens"])')
    kill "$server"
    wait "$server" 2> /dev/null || true
    server=
    mine=$("$ours" --model "$model" --chat --prompt "What is 2+2?" --max-new 16 --ignore-eos \
        --threads 2 2> /dev/null | tail -n 1 | python3 -c 'import json, sys; print(json.load(sys.stdin)["output_ids"])')
    verdict=equal
    [[ $mine == "$theirs" ]] || { verdict=DIFFERENT; status=1; }
    printf '%s: %s\n  llama.cpp %s\n  mlinfra   %s\n' "$format" "$verdict" "$theirs" "$mine"
done
exit "$status"
