"""PEFT interoperability fixtures (run it through scripts/peft-reference, which makes the venv).

    python scripts/peft_reference.py --gguf SMOLLM2.gguf --out DIR
    python scripts/peft_reference.py --gguf SMOLLM2.gguf --out DIR --ours ADAPTER_DIR...

SmolLM2-135M-Instruct is loaded from its Q4_1 GGUF by transformers (dequantized to float32,
q/k rows un-permuted; nothing from a hub), on the CPU with one thread and fixed seeds.

Default mode: Hugging Face PEFT writes adapters, and the logits they give
    DIR/peft_lora/    LoraConfig(r=4, lora_alpha=16, lora_dropout=0.05, target_modules a regex
                      over layers 0, 15 and 29: self_attn.q_proj, self_attn.v_proj,
                      mlp.down_proj), init_lora_weights=False (B drawn, not zero) and then B
                      scaled by 0.1 so that the model stays fluent
    DIR/peft_dora/    LoraConfig(r=4, lora_alpha=8, use_dora=True, use_rslora=True,
                      target_modules a regex over layers 1 and 28: self_attn.k_proj,
                      self_attn.o_proj, mlp.gate_proj), B as above, the magnitude vector
                      multiplied by 1 + 0.05 * randn so that it is not the initial norm
    Each holds what save_pretrained writes (adapter_model.safetensors, adapter_config.json;
    the README.md model card is removed). Each is read back with PeftModel.from_pretrained into
    a fresh base and must give the same logits (a check of the files, not only of the model).
    DIR/logits.safetensors
        vocab_ids          I64 [K]: every 48th id (K = 1024), the ids whose logits are kept
        p{i}.input_ids     I64 [S_i]: prompt i's ids (transformers' tokenizer; no digits in
                           the prompts, where its GGUF tokenizer differs from llama.cpp's)
        p{i}.{m}.logits    F32 [S_i, K]: model m's logits at every position, at vocab_ids
        p{i}.{m}.logsumexp F32 [S_i]: log-sum-exp over the whole vocabulary, in float64
        p{i}.{m}.argmax    I64 [S_i]: the arg-max over the whole vocabulary
        for m in base (no adapter), peft_lora, peft_dora. Metadata: the versions and settings.

--ours ADAPTER_DIR: adapters written by mlinfra (Llama::save_adapter, the finetune example)
    are loaded with PeftModel.from_pretrained, and ADAPTER_DIR/peft_logits.safetensors gets
    p{i}.input_ids and p{i}.adapter.{logits,logsumexp,argmax} in the layout above, for the
    prompts of DIR/logits.safetensors (which must exist). If ADAPTER_DIR/mlinfra_logits.
    safetensors exists (the same layout, written by mlinfra), the largest difference is
    printed.

Each file is written under a temporary name and renamed when complete.
"""
import argparse
import copy
import importlib.metadata
import json
import os
import platform
import sys

# One thread, set before torch loads its libraries, so that summation orders (and so the last
# bits of the fixtures) do not depend on the machine's core count. No hub, no hub kernels.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("USE_HUB_KERNELS", "0")

import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

PROMPTS = [
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "The quick brown fox jumps over the lazy dog because",
]
BASE_MODEL_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"
VOCAB_STRIDE = 48
B_SCALE = 0.1
CASES = {
    "peft_lora": dict(
        seed=1,
        config=dict(
            r=4, lora_alpha=16, lora_dropout=0.05,
            target_modules=r"model\.layers\.(0|15|29)\.(self_attn\.(q_proj|v_proj)|mlp\.down_proj)",
        ),
    ),
    "peft_dora": dict(
        seed=2,
        config=dict(
            r=4, lora_alpha=8, use_dora=True, use_rslora=True,
            target_modules=r"model\.layers\.(1|28)\.(self_attn\.(k_proj|o_proj)|mlp\.gate_proj)",
        ),
    ),
}


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def versions():
    out = {"python": platform.python_version()}
    for dist in ("torch", "transformers", "peft", "safetensors", "gguf"):
        out[dist] = importlib.metadata.version(dist)
    return out


def load_base(gguf_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d, fname = os.path.split(os.path.abspath(gguf_path))
    tok = AutoTokenizer.from_pretrained(d, gguf_file=fname)
    model = AutoModelForCausalLM.from_pretrained(
        d, gguf_file=fname, dtype=torch.float32, attn_implementation="eager").eval()
    return tok, model


@torch.no_grad()
def logits_of(model, ids, vocab_ids):
    logits = model(torch.tensor([ids])).logits[0].float()  # [S, V]
    return {
        "logits": logits[:, vocab_ids].contiguous(),
        "logsumexp": torch.logsumexp(logits.double(), dim=-1).float(),
        "argmax": logits.argmax(dim=-1).to(torch.int64),
    }


def save_atomic(tensors, path, metadata):
    tmp = os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".tmp")
    save_file(tensors, tmp, metadata=metadata)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    log(f"wrote {path} ({os.path.getsize(path)} bytes)")


def perturb(peft_model, seed):
    """Non-zero B (init_lora_weights=False drew it), scaled down; DoRA's magnitude moved."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if ".lora_B." in name:
                param.mul_(B_SCALE)
            elif "lora_magnitude_vector" in name:
                param.mul_(1 + 0.05 * torch.randn(param.shape, generator=g))


def write_peft_adapters(base, ids_per_prompt, vocab_ids, out):
    from peft import LoraConfig, PeftModel, get_peft_model

    results = {"base": [logits_of(base, ids, vocab_ids) for ids in ids_per_prompt]}
    for name, case in CASES.items():
        torch.manual_seed(case["seed"])
        config = LoraConfig(task_type="CAUSAL_LM", init_lora_weights=False, **case["config"])
        model = get_peft_model(copy.deepcopy(base), config).eval()
        perturb(model, case["seed"])
        # The model's name, not this machine's directory, goes into the config.
        model.peft_config["default"].base_model_name_or_path = BASE_MODEL_NAME
        adapter_dir = os.path.join(out, name)
        model.save_pretrained(adapter_dir)
        readme = os.path.join(adapter_dir, "README.md")
        if os.path.exists(readme):
            os.remove(readme)
        for file in os.listdir(adapter_dir):
            os.chmod(os.path.join(adapter_dir, file), 0o644)
        got = [logits_of(model, ids, vocab_ids) for ids in ids_per_prompt]
        # The files, not only the model in memory: read back into a fresh copy of the base.
        reread = PeftModel.from_pretrained(copy.deepcopy(base), adapter_dir).eval()
        for ids, want in zip(ids_per_prompt, got):
            again = logits_of(reread, ids, vocab_ids)
            diff = (again["logits"] - want["logits"]).abs().max().item()
            assert diff == 0.0, f"{name}: re-read adapter differs by {diff}"
        moved = max((g["logits"] - b["logits"]).abs().max().item()
                    for g, b in zip(got, results["base"]))
        log(f"{name}: logits moved by up to {moved:.4f} from the base")
        assert moved > 0.05, f"{name}: the adapter barely changes the logits ({moved})"
        results[name] = got
    return results


def flatten(ids_per_prompt, results, vocab_ids):
    tensors = {"vocab_ids": torch.tensor(vocab_ids, dtype=torch.int64)}
    for i, ids in enumerate(ids_per_prompt):
        tensors[f"p{i}.input_ids"] = torch.tensor(ids, dtype=torch.int64)
        for model_name, per_prompt in results.items():
            for key, value in per_prompt[i].items():
                tensors[f"p{i}.{model_name}.{key}"] = value
    return tensors


def check_ours(base, adapter_dir, reference):
    from peft import PeftModel

    vocab_ids = reference["vocab_ids"].tolist()
    prompts = sorted({k.split(".")[0] for k in reference if k.endswith(".input_ids")})
    ids_per_prompt = [reference[f"{p}.input_ids"].tolist() for p in prompts]
    model = PeftModel.from_pretrained(copy.deepcopy(base), adapter_dir).eval()
    results = {"adapter": [logits_of(model, ids, vocab_ids) for ids in ids_per_prompt]}
    tensors = flatten(ids_per_prompt, results, vocab_ids)
    meta = {"versions": json.dumps(versions()), "adapter_dir": os.path.basename(adapter_dir)}
    save_atomic(tensors, os.path.join(adapter_dir, "peft_logits.safetensors"), meta)
    ours_path = os.path.join(adapter_dir, "mlinfra_logits.safetensors")
    if os.path.exists(ours_path):
        ours = load_file(ours_path)
        worst = 0.0
        for i in range(len(ids_per_prompt)):
            key = f"p{i}.adapter.logits"
            worst = max(worst, (ours[key] - tensors[key]).abs().max().item())
        log(f"{adapter_dir}: mlinfra's logits vs PEFT's: max |diff| {worst:.3e}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gguf", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--ours", nargs="*", default=[])
    args = parser.parse_args()
    torch.set_num_threads(1)
    tok, base = load_base(args.gguf)
    if args.ours:
        reference = load_file(os.path.join(args.out, "logits.safetensors"))
        for adapter_dir in args.ours:
            check_ours(base, adapter_dir, reference)
        return
    vocab_ids = list(range(0, base.config.vocab_size, VOCAB_STRIDE))
    ids_per_prompt = [tok(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    os.makedirs(args.out, exist_ok=True)
    results = write_peft_adapters(base, ids_per_prompt, vocab_ids, args.out)
    meta = {
        "versions": json.dumps(versions()),
        "cases": json.dumps(CASES),
        "b_scale": str(B_SCALE),
        "prompts": json.dumps(PROMPTS),
    }
    save_atomic(flatten(ids_per_prompt, results, vocab_ids),
                os.path.join(args.out, "logits.safetensors"), meta)


if __name__ == "__main__":
    main()
