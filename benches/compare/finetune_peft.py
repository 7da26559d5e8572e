"""The PEFT peer of benches/compare/finetune.sh: LoRA SFT of SmolLM2-135M-Instruct with
Hugging Face PEFT + transformers on torch (CPU), on the very conversations mlinfra's `finetune`
example trained on, step by step (its --dump-batches file).

    python benches/compare/finetune_peft.py --gguf SMOLLM2.gguf --batches FILE \
        --rank 16 --alpha 32 --targets q_proj,v_proj --lr 1e-3 --steps 50 [--qlora]

Each step takes the conversations of the same step on the mlinfra side, pads them on the
right (transformers' usual dynamic padding; mlinfra packs them instead, which computes the same
loss), and minimises the mean cross-entropy of the assistant tokens (TRL's
assistant_only_loss). AdamW (torch defaults: betas 0.9/0.999, eps 1e-8, weight decay 0.01),
gradient clipping at 1.0, and mlinfra's schedule: linear warmup over steps/10, cosine decay to
0.1 of the peak at the last step.

--qlora: the base loaded through bitsandbytes' 4-bit NF4 where bitsandbytes is installed and
has a CPU backend; otherwise the run says so and stops (exit 3).

One JSON line on stdout: {"peer", "steps", "tokens", "seconds", "tokens_per_s", "losses",
"torch_threads", "versions"}; progress on stderr. Peak RSS is measured from outside
(/usr/bin/time -v).
"""
import argparse
import importlib.metadata
import json
import math
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("USE_HUB_KERNELS", "0")

import torch  # noqa: E402


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def lr_at(step, peak, steps):
    """mlinfra's LrSchedule::warmup_cosine(peak, steps/10 (at least 1), steps, 0.1)."""
    warmup = max(steps // 10, 1)
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(steps - warmup, 1)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--gguf", required=True)
    parser.add_argument("--batches", required=True)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--alpha", type=float, default=32)
    parser.add_argument("--targets", default="q_proj,v_proj")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--pad", type=int, default=2)
    parser.add_argument("--qlora", action="store_true")
    args = parser.parse_args()

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    d, fname = os.path.split(os.path.abspath(args.gguf))
    if args.qlora:
        try:
            from transformers import BitsAndBytesConfig
            quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                       bnb_4bit_compute_dtype=torch.float32)
            model = AutoModelForCausalLM.from_pretrained(
                d, gguf_file=fname, quantization_config=quant, attn_implementation="eager")
        except Exception as error:  # noqa: BLE001 - any failure means no CPU QLoRA here
            log(f"QLoRA peer unavailable: {error}")
            sys.exit(3)
    else:
        model = AutoModelForCausalLM.from_pretrained(
            d, gguf_file=fname, dtype=torch.float32, attn_implementation="eager")
    config = LoraConfig(r=args.rank, lora_alpha=args.alpha, lora_dropout=0.0,
                        target_modules=args.targets.split(","), task_type="CAUSAL_LM")
    model = get_peft_model(model, config)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.999), eps=1e-8,
                                  weight_decay=0.01)

    with open(args.batches, encoding="utf-8") as f:
        steps = [json.loads(line) for line in f][: args.steps]
    losses, tokens = [], 0
    started = time.perf_counter()
    for index, step in enumerate(steps):
        ids, masks = step["input_ids"], step["assistant_masks"]
        longest = max(len(s) for s in ids)
        input_ids = torch.full((len(ids), longest), args.pad, dtype=torch.long)
        attention = torch.zeros((len(ids), longest), dtype=torch.long)
        labels = torch.full((len(ids), longest), -100, dtype=torch.long)
        for row, (seq, mask) in enumerate(zip(ids, masks)):
            input_ids[row, : len(seq)] = torch.tensor(seq)
            attention[row, : len(seq)] = 1
            trained = torch.tensor(seq)
            trained[~torch.tensor(mask, dtype=torch.bool)] = -100
            labels[row, : len(seq)] = trained
            tokens += len(seq)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(index, args.lr, args.steps)
        logits = model(input_ids=input_ids, attention_mask=attention).logits
        # Next-token loss over the assistant tokens: logits at t score the token at t + 1.
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
            labels[:, 1:].reshape(-1),
            ignore_index=-100,
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        losses.append(loss.item())
        log(f"peft step {index + 1}: loss {losses[-1]:.4f}")
    seconds = time.perf_counter() - started
    print(json.dumps({
        "peer": "peft-qlora" if args.qlora else "peft",
        "steps": len(steps),
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_s": tokens / seconds,
        "losses": losses,
        "torch_threads": torch.get_num_threads(),
        "versions": {d: importlib.metadata.version(d)
                     for d in ("torch", "transformers", "peft")},
    }))


if __name__ == "__main__":
    main()
