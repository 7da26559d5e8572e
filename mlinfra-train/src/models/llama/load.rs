//! Building a [`Llama`]: fresh weights from a seed, or trained ones from GGUF or
//! safetensors files read through mlinfra-data.
//!
//! Every path goes through one builder that asks a weight source for each tensor by its
//! Hugging Face name and shape (`[out, in]` for projections), so the sources only translate
//! names and layouts:
//!
//! - **safetensors** files hold exactly that: Hugging Face names, row-major `[out, in]`.
//! - **GGUF** files name tensors llama.cpp's way (`blk.3.attn_q.weight`), list shapes
//!   fastest-first (`[in, out]`, the same bytes), may quantize them (dequantized here to f32,
//!   bit-identical to ggml's reference), and store the query and key projections with their
//!   rows permuted: llama.cpp rotates adjacent pairs `(2i, 2i+1)` where Hugging Face rotates
//!   `(i, i + head_dim/2)`, and `convert_hf_to_gguf.py` permutes the rows to match. The
//!   loader undoes that permutation, so one RoPE serves both formats.

use burn::module::Param;
use burn::nn::{Embedding, Linear, RmsNorm};
use burn::tensor::{Device, Tensor, TensorData};
use mlinfra_data::tensor::{GgufFile, SafetensorsFile};

use super::model::{LlamaAttention, LlamaLayer, LlamaMlp};
use super::{Llama, LlamaConfig};
use crate::peft::{LoraLinear, QuantizedWeight};
use crate::rng::SplitMix64;
use crate::{Error, Result};

/// One tensor the builder needs.
struct WeightSpec {
    /// Hugging Face name: `model.layers.0.self_attn.q_proj.weight`.
    hf: String,
    /// llama.cpp's GGUF name: `blk.0.attn_q.weight`.
    gguf: String,
    /// Row-major shape, slowest first: `[out, in]` for projections.
    shape: Vec<usize>,
    /// For the query and key projections: their head count, whose rows GGUF permutes.
    rope_heads: Option<usize>,
    /// A decoder layer's projection, which a source may hand over quantized (QLoRA).
    projection: bool,
}

/// What a source hands the builder for one tensor.
enum Fetched {
    /// f32 values, row-major in the spec's shape.
    Dense(Vec<f32>),
    /// A projection kept in its ggml blocks, rows in Hugging Face's order.
    Quantized(QuantizedWeight),
}

impl LlamaConfig {
    /// A model with fresh weights: every matrix drawn from `N(0, 0.02²)` (Hugging Face's
    /// `initializer_range`) by SplitMix64 from `seed` in a fixed order, norms at 1. The same
    /// seed gives the same weights on every rank and every run.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] if the config does not [`validate`](Self::validate).
    pub fn init(&self, seed: u64, device: &Device) -> Result<Llama> {
        self.init_with_std(seed, 0.02, device)
    }

    /// [`init`](Self::init) with matrices drawn from `N(0, std²)`. A tiny untrained model at
    /// 0.02 mostly repeats its input token; a larger `std` (around `1/sqrt(hidden_size)`)
    /// makes a deterministic stand-in whose outputs depend on the whole context, which is
    /// what serving tests and simulations need.
    ///
    /// # Errors
    ///
    /// As [`init`](Self::init).
    pub fn init_with_std(&self, seed: u64, std: f64, device: &Device) -> Result<Llama> {
        self.validate()?;
        let mut rng = SplitMix64::new(seed);
        build(self, device, &mut |spec| {
            let len = spec.shape.iter().product();
            Ok(Fetched::Dense(if spec.shape.len() == 1 {
                vec![1.0; len]
            } else {
                (0..len).map(|_| (std * rng.normal()) as f32).collect()
            }))
        })
    }
}

impl Llama {
    /// The model in a GGUF file (llama.cpp's `llama` architecture, any tensor type
    /// mlinfra-data dequantizes), with its config. Weights are dequantized to f32: about
    /// 4 bytes per parameter of memory.
    ///
    /// ```no_run
    /// use mlinfra_data::tensor::GgufFile;
    /// use mlinfra_train::models::Llama;
    ///
    /// let file = GgufFile::open("SmolLM2-135M-Instruct.Q4_1.gguf")?;
    /// let (model, config) = Llama::from_gguf(&file, &burn::tensor::Device::flex())?;
    /// assert_eq!(model.num_layers(), config.num_layers);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Weights`] for a file that does not describe a supported Llama (see
    /// [`LlamaConfig::from_gguf`]) or a tensor that is missing or has the wrong shape;
    /// [`Error::ModelFile`] when mlinfra-data cannot read or dequantize a tensor.
    pub fn from_gguf(file: &GgufFile, device: &Device) -> Result<(Llama, LlamaConfig)> {
        Self::from_gguf_with(file, device, false)
    }

    /// [`Llama::from_gguf`] for QLoRA: the decoder layers' projections stay in their GGUF
    /// blocks (Q4_0, Q4_1, Q8_0, and any other type whose rows are whole blocks), dequantized
    /// a tile of rows at a time inside each forward and backward pass
    /// ([`QuantizedWeight`]); the embedding, norms and output projection are f32 as in
    /// [`Llama::from_gguf`]. Projections the file stores unquantized (F32, F16) load dense.
    ///
    /// The base is frozen: train it with adapters ([`Llama::with_adapter`], LoRA only; DoRA
    /// and merging need the dense weight and are refused).
    ///
    /// # Errors
    ///
    /// As [`Llama::from_gguf`].
    pub fn from_gguf_quantized(file: &GgufFile, device: &Device) -> Result<(Llama, LlamaConfig)> {
        Self::from_gguf_with(file, device, true)
    }

    fn from_gguf_with(
        file: &GgufFile,
        device: &Device,
        quantized: bool,
    ) -> Result<(Llama, LlamaConfig)> {
        let config = LlamaConfig::from_gguf(file)?;
        let origin = file.path().display().to_string();
        let model = build(&config, device, &mut |spec| {
            let info = file.tensor_info(&spec.gguf).ok_or_else(|| Error::Weights {
                origin: origin.clone().into(),
                reason: format!("no tensor {} (for {})", spec.gguf, spec.hf).into(),
            })?;
            // ggml lists dimensions fastest first: the reverse of the row-major shape.
            let shape: Vec<usize> = info.shape().iter().rev().map(|&d| d as usize).collect();
            check_shape(&origin, &spec.gguf, &shape, &spec.shape)?;
            let ty = info.ggml_type();
            if quantized
                && spec.projection
                && ty.block_size() > 1
                && spec.shape[1].is_multiple_of(ty.block_size())
            {
                let bytes = file.tensor(&spec.gguf).map_err(Error::from)?.bytes();
                let row_bytes = spec.shape[1] / ty.block_size() * ty.type_size();
                let bytes = match spec.rope_heads {
                    Some(heads) => unpermute_rope_rows(bytes, heads, spec.shape[0], row_bytes),
                    None => bytes.to_vec(),
                };
                let weight = QuantizedWeight::new(ty, spec.shape[0], spec.shape[1], bytes)
                    .map_err(|e| Error::Weights {
                        origin: origin.clone().into(),
                        reason: format!("{}: {e}", spec.gguf).into(),
                    })?;
                return Ok(Fetched::Quantized(weight));
            }
            let values = file.dequantize_f32(&spec.gguf).map_err(Error::from)?;
            Ok(Fetched::Dense(match spec.rope_heads {
                Some(heads) => unpermute_rope_rows(&values, heads, spec.shape[0], spec.shape[1]),
                None => values,
            }))
        })?;
        Ok((model, config))
    }

    /// The model in Hugging Face safetensors files (one, or the shards of a sharded
    /// checkpoint; names as `LlamaForCausalLM` saves them). Any dtype mlinfra-data converts to
    /// f32 (F32, F16, BF16...).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] if `config` does not validate; [`Error::Weights`] for a
    /// tensor missing from every file or of the wrong shape; [`Error::ModelFile`] when
    /// mlinfra-data cannot convert one.
    pub fn from_safetensors(
        config: &LlamaConfig,
        files: &[SafetensorsFile],
        device: &Device,
    ) -> Result<Llama> {
        config.validate()?;
        let origin = match files {
            [one] => one.path().display().to_string(),
            _ => format!("{} safetensors files", files.len()),
        };
        build(config, device, &mut |spec| {
            let (file, info) = files
                .iter()
                .find_map(|file| file.tensor_info(&spec.hf).map(|info| (file, info)))
                .ok_or_else(|| Error::Weights {
                    origin: origin.clone().into(),
                    reason: format!("no tensor {}", spec.hf).into(),
                })?;
            check_shape(&origin, &spec.hf, info.shape(), &spec.shape)?;
            file.to_f32(&spec.hf)
                .map(Fetched::Dense)
                .map_err(Error::from)
        })
    }
}

fn check_shape(origin: &str, name: &str, found: &[usize], expected: &[usize]) -> Result<()> {
    if found == expected {
        return Ok(());
    }
    Err(Error::Weights {
        origin: origin.into(),
        reason: format!("{name} has shape {found:?}, the config needs {expected:?}").into(),
    })
}

/// Undoes `convert_hf_to_gguf.py`'s permutation of a query or key projection of `rows` rows
/// of `cols` elements (f32 values, or the bytes of quantized rows) with `heads` heads: GGUF
/// row `head · d + 2j + t` is Hugging Face row `head · d + t · d/2 + j` (`d` the head width,
/// `j < d/2`, `t ∈ {0, 1}`).
pub(super) fn unpermute_rope_rows<T: Copy + Default>(
    values: &[T],
    heads: usize,
    rows: usize,
    cols: usize,
) -> Vec<T> {
    let head_dim = rows / heads;
    let half = head_dim / 2;
    let mut out = vec![T::default(); values.len()];
    for head in 0..heads {
        for j in 0..half {
            for t in 0..2 {
                let from = (head * head_dim + 2 * j + t) * cols;
                let to = (head * head_dim + t * half + j) * cols;
                out[to..to + cols].copy_from_slice(&values[from..from + cols]);
            }
        }
    }
    out
}

/// Builds the model, asking `fetch` for each tensor in Hugging Face order and layout.
fn build(
    config: &LlamaConfig,
    device: &Device,
    fetch: &mut dyn FnMut(&WeightSpec) -> Result<Fetched>,
) -> Result<Llama> {
    let (hidden, ffn, vocab) = (
        config.hidden_size,
        config.intermediate_size,
        config.vocab_size,
    );
    let head_dim = config.head_dim();
    let (q_width, kv_width) = (config.num_heads * head_dim, config.num_kv_heads * head_dim);
    let mut fetch_as = |hf: String, gguf: String, shape: Vec<usize>, rope_heads, projection| {
        fetch(&WeightSpec {
            hf,
            gguf,
            shape,
            rope_heads,
            projection,
        })
    };
    let mut linear = |hf: String, gguf: String, out: usize, input: usize, rope: Option<usize>| {
        Ok::<_, Error>(match fetch_as(hf, gguf, vec![out, input], rope, true)? {
            Fetched::Dense(values) => projection(&values, out, input, device),
            Fetched::Quantized(weight) => LoraLinear::quantized(weight, device),
        })
    };

    // Grown, not reserved: a file's layer count is untrusted, and a missing tensor ends the
    // loop with an error after at most the layers the file really holds.
    let mut layers = Vec::new();
    for i in 0..config.num_layers {
        let hf = |part: &str| format!("model.layers.{i}.{part}.weight");
        let gguf = |part: &str| format!("blk.{i}.{part}.weight");
        let self_attn = LlamaAttention {
            q_proj: linear(
                hf("self_attn.q_proj"),
                gguf("attn_q"),
                q_width,
                hidden,
                Some(config.num_heads),
            )?,
            k_proj: linear(
                hf("self_attn.k_proj"),
                gguf("attn_k"),
                kv_width,
                hidden,
                Some(config.num_kv_heads),
            )?,
            v_proj: linear(
                hf("self_attn.v_proj"),
                gguf("attn_v"),
                kv_width,
                hidden,
                None,
            )?,
            o_proj: linear(
                hf("self_attn.o_proj"),
                gguf("attn_output"),
                hidden,
                q_width,
                None,
            )?,
            num_heads: config.num_heads,
            num_kv_heads: config.num_kv_heads,
            head_dim,
        };
        let mlp = LlamaMlp {
            gate_proj: linear(hf("mlp.gate_proj"), gguf("ffn_gate"), ffn, hidden, None)?,
            up_proj: linear(hf("mlp.up_proj"), gguf("ffn_up"), ffn, hidden, None)?,
            down_proj: linear(hf("mlp.down_proj"), gguf("ffn_down"), hidden, ffn, None)?,
        };
        layers.push((self_attn, mlp));
    }
    // Everything else is f32: only projections are ever handed over quantized.
    let mut get =
        |hf: String, gguf: String, shape: Vec<usize>, rope_heads: Option<usize>| match fetch_as(
            hf.clone(),
            gguf,
            shape,
            rope_heads,
            false,
        )? {
            Fetched::Dense(values) => Ok(values),
            Fetched::Quantized(_) => Err(Error::Weights {
                origin: "the model builder".into(),
                reason: format!("{hf} came quantized; only projections may").into(),
            }),
        };
    // Norms last only in the order of this function, not of the files: sources look tensors
    // up by name.
    let mut norm = |hf: String, gguf: String| {
        let values = get(hf, gguf, vec![hidden], None)?;
        Ok::<_, Error>(RmsNorm {
            gamma: Param::from_tensor(Tensor::<1>::from_data(
                TensorData::new(values, [hidden]),
                device,
            )),
            epsilon: config.rms_norm_eps,
        })
    };
    let layers = layers
        .into_iter()
        .enumerate()
        .map(|(i, (self_attn, mlp))| {
            Ok(LlamaLayer {
                input_layernorm: norm(
                    format!("model.layers.{i}.input_layernorm.weight"),
                    format!("blk.{i}.attn_norm.weight"),
                )?,
                self_attn,
                post_attention_layernorm: norm(
                    format!("model.layers.{i}.post_attention_layernorm.weight"),
                    format!("blk.{i}.ffn_norm.weight"),
                )?,
                mlp,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let final_norm = norm("model.norm.weight".into(), "output_norm.weight".into())?;
    let embedding = get(
        "model.embed_tokens.weight".into(),
        "token_embd.weight".into(),
        vec![vocab, hidden],
        None,
    )?;
    let lm_head = if config.tie_embeddings {
        None
    } else {
        let values = get(
            "lm_head.weight".into(),
            "output.weight".into(),
            vec![vocab, hidden],
            None,
        )?;
        Some(output_projection(&values, vocab, hidden, device))
    };
    Ok(Llama {
        embed_tokens: Embedding {
            weight: Param::from_tensor(tensor2(embedding, [vocab, hidden], device)),
        },
        layers,
        norm: final_norm,
        lm_head,
        rope_theta: config.rope_theta,
        max_seq_len: config.max_seq_len,
        adapters: Vec::new(),
    })
}

/// A bias-free projection from a file's row-major `[out, in]` matrix: it computes `x · W` with
/// W `[in, out]`, hence the transpose.
fn projection(values: &[f32], out: usize, input: usize, device: &Device) -> LoraLinear {
    LoraLinear::new(
        tensor2(transpose(values, out, input), [input, out], device),
        None,
    )
}

/// The output projection (never adapted: PEFT leaves `lm_head` out of `all-linear` too).
fn output_projection(values: &[f32], out: usize, input: usize, device: &Device) -> Linear {
    Linear {
        weight: Param::from_tensor(tensor2(transpose(values, out, input), [input, out], device)),
        bias: None,
    }
}

fn tensor2(values: Vec<f32>, shape: [usize; 2], device: &Device) -> Tensor<2> {
    Tensor::from_data(TensorData::new(values, shape), device)
}

/// `[rows, cols]` row-major → `[cols, rows]` row-major.
fn transpose(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; values.len()];
    // Blocked so both sides stay in cache for the 49k × 576 embeddings and the like.
    const BLOCK: usize = 32;
    for r0 in (0..rows).step_by(BLOCK) {
        for c0 in (0..cols).step_by(BLOCK) {
            for r in r0..(r0 + BLOCK).min(rows) {
                for c in c0..(c0 + BLOCK).min(cols) {
                    out[c * rows + r] = values[r * cols + c];
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The permutation `convert_hf_to_gguf.py` applies, written the way it is there
    /// (`reshape(heads, 2, d/2, cols).swapaxes(1, 2)`), as the twin to undo.
    fn permute_like_llama_cpp(values: &[f32], heads: usize, rows: usize, cols: usize) -> Vec<f32> {
        let half = rows / heads / 2;
        let mut out = Vec::with_capacity(values.len());
        for head in 0..heads {
            for j in 0..half {
                for t in 0..2 {
                    let row = head * 2 * half + t * half + j;
                    out.extend_from_slice(&values[row * cols..(row + 1) * cols]);
                }
            }
        }
        out
    }

    #[test]
    fn unpermuting_undoes_llama_cpps_rope_permutation() {
        let (heads, rows, cols) = (3, 3 * 8, 5);
        let original: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
        let permuted = permute_like_llama_cpp(&original, heads, rows, cols);
        assert_ne!(permuted, original);
        assert_eq!(unpermute_rope_rows(&permuted, heads, rows, cols), original);
    }

    #[test]
    fn transpose_matches_the_definition() {
        let (rows, cols) = (37, 70);
        let values: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
        let t = transpose(&values, rows, cols);
        for r in 0..rows {
            for c in 0..cols {
                assert_eq!(t[c * rows + r], values[r * cols + c]);
            }
        }
    }
}
