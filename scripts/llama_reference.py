"""Writes the Llama reference fixtures (run it through scripts/llama-reference, which makes the venv).

    python scripts/llama_reference.py --out DIR [--only tiny|smollm2|all] [--gguf SMOLLM2.gguf]

Everything runs on the CPU with one thread and fixed seeds, so a rerun on the same library
versions rewrites the same bytes (the versions are recorded in every JSON file). Each file is
written under a temporary name in DIR and renamed when complete.

tiny (no input needed)
    transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48,
    num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2 (head_dim 8),
    max_position_embeddings=64, rms_norm_eps=1e-5, rope_theta=10000.0,
    tie_word_embeddings=True, attention_bias=False, mlp_bias=False), float32, eager attention.
    After torch.manual_seed(0) and model construction, every parameter is drawn again, in
    named_parameters() order, from torch.Generator().manual_seed(0): RMSNorm weights
    1 + 0.1 * randn, everything else 0.2 * randn (so activations are not near zero and a wrong
    norm weight shows).
    tiny.safetensors  the state dict with Hugging Face names, f32, without lm_head.weight (tied
                      to model.embed_tokens.weight).
    tiny.gguf         the same weights written with gguf.GGUFWriter as llama.cpp's
                      convert_hf_to_gguf.py (LlamaModel) writes an F32 conversion: arch "llama",
                      general.name, llama.{block_count, context_length, embedding_length,
                      feed_forward_length, attention.head_count, attention.head_count_kv,
                      rope.freq_base, attention.layer_norm_rms_epsilon, attention.key_length,
                      attention.value_length, vocab_size, rope.dimension_count},
                      general.file_type 0 (ALL_F32); tensors token_embd, blk.N.attn_norm,
                      blk.N.attn_{q,k,v,output}, blk.N.ffn_norm, blk.N.ffn_{gate,up,down},
                      output_norm (no output.weight: tied), all F32. The rows of attn_q and
                      attn_k are permuted by LlamaModel.permute (n_head for q, n_head_kv for k),
                      which turns Hugging Face's rotate-half RoPE pairing (i, i + head_dim/2)
                      into llama.cpp's adjacent pairing (2i, 2i + 1). No tokenizer metadata. The
                      file is read back with gguf.GGUFReader and, after undoing the permutation,
                      must equal the Hugging Face weights bit for bit; transformers' own GGUF
                      loader must then give the same logits.
    tiny.json         {"config", "input_ids" (10 ids), "logits" (10 x 64, the float32 forward;
                      each value is an f32 printed as a float64, so it parses back exactly),
                      "logits_f64" (a float64 forward, see below), "max_abs_diff_to_logits_f64",
                      "sha256" of the two weight files, "versions", "notes"}.
                      logits_f64 is not transformers' model.double(): its LlamaRMSNorm and
                      rotary embedding compute in float32 whatever the dtype (about 1e-6 off
                      here). It is forward_f64 below, numpy, every step in float64; run on
                      tiny.gguf's permuted weights with adjacent-pair RoPE it must agree to
                      1e-12, and transformers' model.double() to 1e-5.

smollm2 (needs --gguf: SmolLM2-135M-Instruct.Q4_1.gguf, see scripts/fetch-model)
    AutoTokenizer / AutoModelForCausalLM.from_pretrained(dir, gguf_file=name, dtype=float32):
    transformers dequantizes the Q4_1/Q8_0 tensors to f32 and undoes the q/k permutation.
    smollm2.json      {"gguf" (file name, sha256, the model's metadata, tensor type counts),
                      "tokenizer" (class, pre-tokenizer, the GGUF's tokenizer.ggml.pre),
                      "prompt", "prompt_ids" (add_special_tokens=False; the GGUF says
                      add_bos_token false), "last_logits_top10" ([id, logit] at the last prompt
                      position, f32), "last_logits_logsumexp" (float64 over the f32 logits),
                      "last_logits_at" ([id, logit] for the first 3 top ids and 0, 1, 2, 100,
                      1000), "greedy_ids" (16 new ids: argmax of a full re-forward each step,
                      no sampling, no repetition penalty, no stop at EOS), "greedy_margins"
                      (top-1 minus top-2 logit at each step), "greedy_text" (decode with
                      skip_special_tokens=False), "tokenization" ([{text, ids, decoded,
                      ids_smollm_pre}], add_special_tokens=False), "config" (as transformers
                      read it from the GGUF), "versions", "notes"}.
                      transformers builds the tokenizer with a plain ByteLevel pre-tokenizer and
                      ignores tokenizer.ggml.pre ("smollm" here); ids_smollm_pre is the same
                      vocab and merges with llama.cpp's smollm pre-tokenizer (every \p{N} char
                      split off first), which the last string shows to differ.
"""
import argparse
import copy
import hashlib
import importlib.metadata
import json
import math
import os
import platform
import sys

# One BLAS/OpenMP thread, set before numpy and torch load their libraries, so that summation
# orders (and so the last bits of the fixtures) do not depend on the machine's core count.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import numpy as np  # noqa: E402
import torch  # noqa: E402

TINY_CONFIG = dict(
    vocab_size=64,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    rms_norm_eps=1e-5,
    rope_theta=10000.0,
    tie_word_embeddings=True,
    attention_bias=False,
    mlp_bias=False,
)
TINY_INPUT_IDS = [1, 5, 17, 33, 2, 60, 7, 7, 12, 40]

PROMPT = "The capital of France is"
GREEDY_NEW_TOKENS = 16
EXTRA_LOGIT_IDS = [0, 1, 2, 100, 1000]
TOKENIZATION_TEXTS = [
    "The capital of France is",
    "Hello, world!",
    "  two  spaces\tand a tab\n\nnewlines",
    "numbers 12345 and 3.14159",
    "unicode: café, naïve, 日本語, emoji 🚀",
    "<|im_start|>user\nHi<|im_end|>\n",
    "don't I'll we're",
    # Not in the original list: a string on which transformers' GGUF tokenizer (plain
    # ByteLevel) and llama.cpp's "smollm" pre-tokenizer (every \p{N} char split off first)
    # disagree, so that ids_smollm_pre has a case that differs.
    "superscripts x²³ and ½ cup",
]


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def versions():
    out = {"python": platform.python_version()}
    for dist in ("torch", "transformers", "tokenizers", "safetensors", "gguf", "numpy"):
        out[dist] = importlib.metadata.version(dist)
    return out


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def to_json(obj, indent=0):
    """JSON with one line per list of scalars (a logits row stays on one line)."""
    pad = " " * indent
    inner = " " * (indent + 2)
    if isinstance(obj, dict):
        if not obj:
            return "{}"
        items = [f"{inner}{json.dumps(k)}: {to_json(v, indent + 2)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, (list, tuple)):
        scalar = lambda v: not isinstance(v, (dict, list, tuple)) and not (  # noqa: E731
            isinstance(v, str) and len(v) > 40)
        if all(scalar(v) for v in obj) or all(
                isinstance(v, (list, tuple)) and len(v) <= 2 and
                all(scalar(x) for x in v) for v in obj):
            return json.dumps(obj, ensure_ascii=False, allow_nan=False)
        return "[\n" + ",\n".join(inner + to_json(v, indent + 2) for v in obj) + "\n" + pad + "]"
    return json.dumps(obj, ensure_ascii=False, allow_nan=False)


def write_atomic(path, write):
    tmp = os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".tmp")
    write(tmp)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    log(f"wrote {path} ({os.path.getsize(path)} bytes)")


def write_json(path, obj):
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(to_json(obj))
            f.write("\n")
    write_atomic(path, write)


# --- tiny -----------------------------------------------------------------------------------

def permute(w, n_head, n_head_kv):
    """llama.cpp convert_hf_to_gguf.py LlamaModel.permute."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2)
            .reshape(w.shape))


def unpermute(w, n_head, n_head_kv):
    """The inverse of permute (what transformers' GGUF loader does for llama)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:])
            .swapaxes(1, 2)
            .reshape(w.shape))


def hf_to_gguf_name(name):
    if name == "model.embed_tokens.weight":
        return "token_embd.weight"
    if name == "model.norm.weight":
        return "output_norm.weight"
    parts = name.split(".")
    assert parts[0] == "model" and parts[1] == "layers", name
    bid, rest = parts[2], ".".join(parts[3:])
    suffix = {
        "input_layernorm.weight": "attn_norm.weight",
        "self_attn.q_proj.weight": "attn_q.weight",
        "self_attn.k_proj.weight": "attn_k.weight",
        "self_attn.v_proj.weight": "attn_v.weight",
        "self_attn.o_proj.weight": "attn_output.weight",
        "post_attention_layernorm.weight": "ffn_norm.weight",
        "mlp.gate_proj.weight": "ffn_gate.weight",
        "mlp.up_proj.weight": "ffn_up.weight",
        "mlp.down_proj.weight": "ffn_down.weight",
    }[rest]
    return f"blk.{bid}.{suffix}"


def gguf_tensor_order(n_layers):
    order = ["token_embd.weight"]
    for i in range(n_layers):
        order += [f"blk.{i}.{s}.weight" for s in (
            "attn_norm", "attn_q", "attn_k", "attn_v", "attn_output",
            "ffn_norm", "ffn_gate", "ffn_up", "ffn_down")]
    return order + ["output_norm.weight"]


def forward_f64(w, config, ids, rope_pairs):
    """An independent float64 Llama forward in numpy (logits for every position).

    w: tensor name -> array, with Hugging Face names (rope_pairs "half": pairs (i, i + D/2),
    Hugging Face's rotate_half) or GGUF names (rope_pairs "adjacent": pairs (2i, 2i + 1) on the
    permuted q/k rows, llama.cpp's LLAMA_ROPE_TYPE_NORM). Every step in float64, RoPE angles
    included."""
    c = config
    n_head, n_kv, d = c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]
    eps, theta, n = c["rms_norm_eps"], c["rope_theta"], len(ids)
    gg = rope_pairs == "adjacent"
    name = (lambda hf, g: g) if gg else (lambda hf, g: hf)
    w = {k: np.asarray(v, dtype=np.float64) for k, v in w.items()}

    def rms(x, weight):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * weight

    ang = np.arange(n)[:, None] * theta ** (-np.arange(0, d, 2) / d)[None, :]  # (n, d/2)
    cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]

    def rope(x):  # (n, heads, d)
        if gg:
            x0, x1 = x[..., 0::2], x[..., 1::2]
        else:
            x0, x1 = x[..., : d // 2], x[..., d // 2:]
        y0, y1 = x0 * cos - x1 * sin, x0 * sin + x1 * cos
        if gg:
            return np.stack([y0, y1], axis=-1).reshape(x.shape)
        return np.concatenate([y0, y1], axis=-1)

    emb = w[name("model.embed_tokens.weight", "token_embd.weight")]
    x = emb[ids]
    mask = np.triu(np.full((n, n), -np.inf), 1)
    for b in range(c["num_hidden_layers"]):
        hf, g = f"model.layers.{b}.", f"blk.{b}."
        h = rms(x, w[name(hf + "input_layernorm.weight", g + "attn_norm.weight")])
        q = rope((h @ w[name(hf + "self_attn.q_proj.weight", g + "attn_q.weight")].T)
                 .reshape(n, n_head, d))
        k = rope((h @ w[name(hf + "self_attn.k_proj.weight", g + "attn_k.weight")].T)
                 .reshape(n, n_kv, d))
        v = (h @ w[name(hf + "self_attn.v_proj.weight", g + "attn_v.weight")].T).reshape(n, n_kv, d)
        k = np.repeat(k, n_head // n_kv, axis=1)
        v = np.repeat(v, n_head // n_kv, axis=1)
        s = np.einsum("thd,shd->hts", q, k) / math.sqrt(d) + mask
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        a = np.einsum("hts,shd->thd", s, v).reshape(n, n_head * d)
        x = x + a @ w[name(hf + "self_attn.o_proj.weight", g + "attn_output.weight")].T
        h = rms(x, w[name(hf + "post_attention_layernorm.weight", g + "ffn_norm.weight")])
        gate = h @ w[name(hf + "mlp.gate_proj.weight", g + "ffn_gate.weight")].T
        up = h @ w[name(hf + "mlp.up_proj.weight", g + "ffn_up.weight")].T
        x = x + (gate / (1.0 + np.exp(-gate)) * up) @ \
            w[name(hf + "mlp.down_proj.weight", g + "ffn_down.weight")].T
    x = rms(x, w[name("model.norm.weight", "output_norm.weight")])
    return x @ emb.T  # tied embeddings


def tiny(out):
    import gguf
    from safetensors.numpy import load_file
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    c = TINY_CONFIG
    n_head, n_head_kv = c["num_attention_heads"], c["num_key_value_heads"]
    head_dim = c["hidden_size"] // n_head

    torch.manual_seed(0)
    config = LlamaConfig(**c)
    model = LlamaForCausalLM(config).float().eval()
    # Drawn from a generator of its own, so the weights do not depend on how much of the
    # global random stream transformers' own initialisation used.
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr(), "untied"
    model.config._attn_implementation = "eager"
    assert model.config.head_dim == head_dim

    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()
             if k != "lm_head.weight"}
    assert all(v.dtype == torch.float32 for v in state.values())
    st_path = os.path.join(out, "tiny.safetensors")
    write_atomic(st_path, lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))

    # The GGUF, as convert_hf_to_gguf.py --outtype f32 would write it.
    arrays = {}
    for name, t in state.items():
        a = t.numpy()
        if name.endswith("self_attn.q_proj.weight"):
            a = permute(a, n_head, n_head)
        elif name.endswith("self_attn.k_proj.weight"):
            a = permute(a, n_head, n_head_kv)
        arrays[hf_to_gguf_name(name)] = np.ascontiguousarray(a, dtype=np.float32)
    order = gguf_tensor_order(c["num_hidden_layers"])
    assert sorted(order) == sorted(arrays), (sorted(order), sorted(arrays))

    def write_gguf(tmp):
        w = gguf.GGUFWriter(tmp, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
        w.add_type(gguf.GGUFType.MODEL)
        w.add_name("Tiny Random Llama")
        w.add_block_count(c["num_hidden_layers"])
        w.add_context_length(c["max_position_embeddings"])
        w.add_embedding_length(c["hidden_size"])
        w.add_feed_forward_length(c["intermediate_size"])
        w.add_head_count(n_head)
        w.add_head_count_kv(n_head_kv)
        w.add_rope_freq_base(c["rope_theta"])
        w.add_layer_norm_rms_eps(c["rms_norm_eps"])
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
        w.add_file_type(gguf.LlamaFileType.ALL_F32)
        w.add_vocab_size(c["vocab_size"])
        w.add_rope_dimension_count(head_dim)
        for name in order:
            w.add_tensor(name, arrays[name])
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()

    gguf_path = os.path.join(out, "tiny.gguf")
    write_atomic(gguf_path, write_gguf)

    # Read both files back: the safetensors as written, the GGUF un-permuted, bit for bit.
    st = load_file(st_path)
    assert sorted(st) == sorted(state)
    for name, t in state.items():
        assert np.array_equal(st[name], t.numpy()), name
    reader = gguf.GGUFReader(gguf_path)
    meta = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    expect_meta = {
        "general.architecture": "llama",
        "llama.block_count": c["num_hidden_layers"],
        "llama.context_length": c["max_position_embeddings"],
        "llama.embedding_length": c["hidden_size"],
        "llama.feed_forward_length": c["intermediate_size"],
        "llama.attention.head_count": n_head,
        "llama.attention.head_count_kv": n_head_kv,
        "llama.rope.freq_base": c["rope_theta"],
        "llama.rope.dimension_count": head_dim,
        "llama.vocab_size": c["vocab_size"],
        "general.file_type": 0,
    }
    for k, v in expect_meta.items():
        assert meta[k] == v, (k, meta.get(k), v)
    assert math.isclose(meta["llama.attention.layer_norm_rms_epsilon"], c["rms_norm_eps"],
                        rel_tol=1e-7)
    assert [t.name for t in reader.tensors] == order
    by_gguf = {hf_to_gguf_name(k): k for k in state}
    for t in reader.tensors:
        assert t.tensor_type == gguf.GGMLQuantizationType.F32, (t.name, t.tensor_type)
        hf = state[by_gguf[t.name]].numpy()
        data = np.asarray(t.data).reshape(hf.shape)
        # ne (GGUF's dims, innermost first) is the numpy shape reversed.
        assert list(t.shape) == list(reversed(hf.shape)), (t.name, t.shape, hf.shape)
        if t.name.endswith("attn_q.weight"):
            assert not np.array_equal(data, hf), "q not permuted"
            data = unpermute(data, n_head, n_head)
        elif t.name.endswith("attn_k.weight"):
            assert not np.array_equal(data, hf), "k not permuted"
            data = unpermute(data, n_head, n_head_kv)
        assert np.array_equal(data, hf), t.name
    log(f"tiny.gguf: {len(reader.tensors)} F32 tensors, metadata and un-permuted q/k equal the "
        "Hugging Face weights")

    ids = torch.tensor([TINY_INPUT_IDS])
    with torch.no_grad():
        logits = model(ids).logits[0]
        hf64 = copy.deepcopy(model).double()(ids).logits[0].numpy()
    assert logits.dtype == torch.float32 and hf64.dtype == np.float64
    assert logits.std().item() > 0.5, "logits near zero"
    # The float64 reference. Hugging Face's model.double() is not one: LlamaRMSNorm and
    # LlamaRotaryEmbedding compute in float32 whatever the model's dtype. So forward_f64, in
    # numpy, twice: Hugging Face weights with rotate_half RoPE, and tiny.gguf's permuted weights
    # (as read back) with adjacent-pair RoPE; the two must agree to rounding.
    cfg64 = dict(TINY_CONFIG, head_dim=head_dim)
    logits64 = forward_f64({k: v.numpy() for k, v in state.items()}, cfg64, TINY_INPUT_IDS, "half")
    gguf64 = forward_f64({t.name: np.asarray(t.data).reshape(list(reversed(
        [int(x) for x in t.shape]))) for t in reader.tensors}, cfg64, TINY_INPUT_IDS, "adjacent")
    d_gguf = np.abs(gguf64 - logits64).max()
    d_hf64 = np.abs(hf64 - logits64).max()
    d_f32 = np.abs(logits.double().numpy() - logits64).max()
    log(f"tiny: logits std {logits.std().item():.3f}; max |diff| to the float64 reference: "
        f"GGUF + adjacent RoPE {d_gguf:.3g}, HF model.double() {d_hf64:.3g}, HF float32 {d_f32:.3g}")
    assert d_gguf < 1e-12, d_gguf
    assert d_hf64 < 1e-5, d_hf64
    assert d_f32 < 1e-4, d_f32

    # transformers' own GGUF reader on tiny.gguf must give the same model.
    hf_gguf = AutoModelForCausalLM.from_pretrained(
        out, gguf_file="tiny.gguf", dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        logits_gguf = hf_gguf(ids).logits[0]
    gdiff = (logits_gguf - logits).abs().max().item()
    log(f"tiny: transformers loading tiny.gguf: max |logits diff| {gdiff:.3g}")
    assert gdiff <= 1e-6, gdiff

    config_json = dict(TINY_CONFIG)
    config_json.update(head_dim=head_dim, hidden_act=config.hidden_act,
                       model_type=config.model_type, architectures=["LlamaForCausalLM"],
                       torch_dtype="float32")
    write_json(os.path.join(out, "tiny.json"), {
        "config": config_json,
        "init": "torch.manual_seed(0); LlamaForCausalLM(config); then, from "
                "torch.Generator().manual_seed(0), in named_parameters() order "
                "(embed_tokens, layers.0.{q,k,v,o}_proj, mlp.{gate,up,down}_proj, "
                "{input,post_attention}_layernorm, layers.1..., norm): *norm.weight = "
                "1 + 0.1 * randn(shape), others = 0.2 * randn(shape)",
        "input_ids": TINY_INPUT_IDS,
        "logits": [[float(x) for x in row] for row in logits.tolist()],
        "logits_f64": [[float(x) for x in row] for row in logits64.tolist()],
        "max_abs_diff_to_logits_f64": {"logits": float(d_f32),
                                       "hf_model_double": float(d_hf64),
                                       "gguf_adjacent_rope_f64": float(d_gguf)},
        "sha256": {"tiny.safetensors": sha256_file(st_path), "tiny.gguf": sha256_file(gguf_path)},
        "versions": versions(),
        "notes": [
            "logits: transformers' float32 forward (eager attention, CPU, one thread); each "
            "value is an f32 printed as a float64. Its RoPE angles are float32: inv_freq = "
            "1 / theta^(arange(0, D, 2) / D) and pos * inv_freq, cos and sin all in f32.",
            "logits_f64: a float64 forward of the same weights, every step in float64 (RoPE "
            "angles included), by llama_reference.py's numpy forward_f64; the same on "
            "tiny.gguf's weights with adjacent-pair RoPE agrees to rounding. transformers' "
            "model.double() is not used for it: its RMSNorm and rotary embedding compute in "
            "float32 whatever the dtype (max_abs_diff_to_logits_f64.hf_model_double).",
            "tiny.safetensors: Hugging Face names and layout, no lm_head.weight (tied).",
            "tiny.gguf: attn_q/attn_k rows permuted as convert_hf_to_gguf.py does "
            "(reshape(n_head, 2, head_dim/2, in).swapaxes(1, 2), n_head_kv heads for k), so "
            "llama.cpp's adjacent-pair RoPE (2i, 2i+1) on them equals Hugging Face's "
            "rotate_half RoPE (i, i + head_dim/2) on the unpermuted weights.",
        ],
    })


# --- smollm2 --------------------------------------------------------------------------------

def gguf_summary(path):
    import collections

    import gguf
    reader = gguf.GGUFReader(path)
    meta = {}
    for k, f in reader.fields.items():
        if k.startswith("GGUF.") or k in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges",
                                           "tokenizer.ggml.token_type", "tokenizer.chat_template"):
            continue
        v = f.contents()
        if isinstance(v, float):
            v = float(np.float32(v))
        meta[k] = v
    meta["tokenizer.ggml.tokens"] = f"[{len(reader.fields['tokenizer.ggml.tokens'].data)} strings]"
    meta["tokenizer.ggml.merges"] = f"[{len(reader.fields['tokenizer.ggml.merges'].data)} strings]"
    types = collections.Counter(t.tensor_type.name for t in reader.tensors)
    tensor_types = {t.name: t.tensor_type.name for t in reader.tensors
                    if t.name in ("token_embd.weight", "output.weight", "output_norm.weight",
                                  "blk.0.attn_q.weight", "blk.0.attn_norm.weight")}
    return meta, dict(sorted(types.items())), tensor_types


# llama.cpp's "smollm" pre-tokenizer as a tokenizers pre-tokenizer (individual_digits splits
# off every char with Rust's char::is_numeric, i.e. \p{N}, as llama.cpp's first regex does).
SMOLLM_PRE = {
    "type": "Sequence",
    "pretokenizers": [
        {"type": "Digits", "individual_digits": True},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
    ],
}


def smollm2(out, gguf_path):
    import tokenizers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = os.path.abspath(gguf_path)
    d, fname = os.path.split(gguf_path)
    meta, type_counts, tensor_types = gguf_summary(gguf_path)
    log(f"smollm2: {gguf_path}: tokenizer.ggml.pre = {meta.get('tokenizer.ggml.pre')!r}, "
        f"add_bos_token = {meta.get('tokenizer.ggml.add_bos_token')}, tensor types {type_counts}")

    tok = AutoTokenizer.from_pretrained(d, gguf_file=fname)
    model = AutoModelForCausalLM.from_pretrained(
        d, gguf_file=fname, dtype=torch.float32, attn_implementation="eager").eval()
    assert next(model.parameters()).dtype == torch.float32
    backend = tok.backend_tokenizer
    # llama.cpp's "smollm" pre-tokenizer (the GGUF's tokenizer.ggml.pre): each \p{N} char on
    # its own, then the GPT-2 regex; in tokenizers terms Digits(individual_digits) + ByteLevel.
    smollm_json = json.loads(backend.to_str())
    smollm_json["pre_tokenizer"] = SMOLLM_PRE
    smollm_tok = tokenizers.Tokenizer.from_str(json.dumps(smollm_json))
    tok_info = {
        "class": type(tok).__name__,
        "ggml_pre": meta.get("tokenizer.ggml.pre"),
        "ggml_model": meta.get("tokenizer.ggml.model"),
        "add_bos_token": meta.get("tokenizer.ggml.add_bos_token"),
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "pre_tokenizer": json.loads(backend.to_str())["pre_tokenizer"],
        "pre_tokenizer_smollm": SMOLLM_PRE,
    }
    cfg = model.config
    model_config = {k: getattr(cfg, k) for k in (
        "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
        "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings",
        "rms_norm_eps", "rope_parameters", "tie_word_embeddings", "hidden_act")}
    log(f"smollm2: {tok_info['class']}, pre_tokenizer {json.dumps(tok_info['pre_tokenizer'])}")
    log(f"smollm2: config {model.config.to_json_string(use_diff=True)}")

    prompt_ids = tok(PROMPT, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        last = model(torch.tensor([prompt_ids])).logits[0, -1]
    top = torch.topk(last, 10)
    top10 = [[int(i), float(v)] for v, i in zip(top.values.tolist(), top.indices.tolist())]
    at_ids = [i for i, _ in top10[:3]] + EXTRA_LOGIT_IDS
    lse = torch.logsumexp(last.double(), 0).item()

    ids = list(prompt_ids)
    greedy, margins = [], []
    with torch.no_grad():
        for _ in range(GREEDY_NEW_TOKENS):
            logits = model(torch.tensor([ids])).logits[0, -1]
            two = torch.topk(logits, 2)
            nxt = int(torch.argmax(logits))
            assert nxt == int(two.indices[0])
            greedy.append(nxt)
            margins.append(float(two.values[0] - two.values[1]))
            ids.append(nxt)
    text = tok.decode(greedy, skip_special_tokens=False)
    log(f"smollm2: prompt ids {prompt_ids}")
    log(f"smollm2: top5 {top10[:5]}")
    log(f"smollm2: greedy {greedy} -> {text!r} (min margin {min(margins):.4f})")

    tokenization = []
    for s in TOKENIZATION_TEXTS:
        t_ids = tok(s, add_special_tokens=False)["input_ids"]
        s_ids = smollm_tok.encode(s, add_special_tokens=False).ids
        tokenization.append({"text": s, "ids": t_ids, "decoded": tok.decode(t_ids),
                             "ids_smollm_pre": s_ids})
        log(f"smollm2: {s!r} -> {t_ids}" + ("" if s_ids == t_ids else f", smollm pre {s_ids}"))

    write_json(os.path.join(out, "smollm2.json"), {
        "gguf": {"file": fname, "sha256": sha256_file(gguf_path), "metadata": meta,
                 "tensor_type_counts": type_counts, "tensor_types": tensor_types},
        "config": model_config,
        "tokenizer": tok_info,
        "prompt": PROMPT,
        "prompt_ids": prompt_ids,
        "last_logits_top10": top10,
        "last_logits_logsumexp": lse,
        "last_logits_at": [[i, float(last[i])] for i in at_ids],
        "greedy_ids": greedy,
        "greedy_margins": margins,
        "greedy_text": text,
        "tokenization": tokenization,
        "versions": versions(),
        "notes": [
            "Weights: the GGUF's Q4_1 (and Q8_0 token_embd) tensors dequantized to f32 by "
            "transformers, q/k un-permuted to Hugging Face layout; forward in float32, eager "
            "attention, CPU, one thread.",
            "greedy: argmax over a full re-forward of prompt + generated ids at each step; no "
            "sampling, no repetition penalty, no stop at EOS. greedy_margins: top-1 minus "
            "top-2 logit at each step (small margins may flip under a different summation "
            "order).",
            "RoPE: transformers applies rotate_half (pairs i, i + head_dim/2) to the "
            "un-permuted q/k; llama.cpp applies adjacent-pair RoPE (2i, 2i+1) to the permuted "
            "GGUF rows, which is the same computation. theta from llama.rope.freq_base.",
            "tokenization ids: transformers' tokenizer built from the GGUF, whose pre-tokenizer "
            "is plain ByteLevel (the GPT-2 regex): it does not apply tokenizer.ggml.pre. "
            "ids_smollm_pre: the same vocab and merges with llama.cpp's 'smollm' "
            "pre-tokenizer (every \\p{N} char split off first, then the GPT-2 regex; "
            "tokenizer.pre_tokenizer_smollm). Special tokens such as <|im_start|> in the text "
            "are matched as special tokens in both.",
        ],
    })


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--only", choices=("all", "tiny", "smollm2"), default="all")
    p.add_argument("--gguf", help="SmolLM2-135M-Instruct.Q4_1.gguf (for smollm2)")
    args = p.parse_args()
    if args.only != "tiny" and not args.gguf:
        p.error("--gguf is needed for smollm2")

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    os.makedirs(args.out, exist_ok=True)
    if args.only in ("all", "tiny"):
        tiny(args.out)
    if args.only in ("all", "smollm2"):
        smollm2(args.out, args.gguf)


if __name__ == "__main__":
    main()
