//! [`LlamaConfig`]: the shape of a Llama-family decoder, from serde, GGUF metadata or a
//! Hugging Face `config.json`.

use mlinfra_data::tensor::{GgufFile, GgufValue, quoted};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Shape and numerics of a [`Llama`](super::Llama) decoder.
///
/// Field names follow Hugging Face's `LlamaConfig` where one exists, so a `config.json`
/// reads naturally beside it ([`LlamaConfig::from_hf_config`] converts one).
///
/// ```
/// use mlinfra_train::models::LlamaConfig;
///
/// let config: LlamaConfig = serde_json::from_str(
///     r#"{"vocab_size": 64, "hidden_size": 32, "intermediate_size": 48, "num_layers": 2,
///         "num_heads": 4, "num_kv_heads": 2, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
///         "max_seq_len": 64, "tie_embeddings": true}"#,
/// )?;
/// assert_eq!(config.head_dim(), 8);
/// config.validate()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlamaConfig {
    /// Token ids `0..vocab_size`.
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the SwiGLU feed-forward layer.
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_layers: usize,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads (grouped-query attention: each serves `num_heads / num_kv_heads`
    /// query heads; equal to `num_heads` for plain multi-head attention).
    pub num_kv_heads: usize,
    /// Width of one head; `hidden_size / num_heads` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_dim: Option<usize>,
    /// The epsilon inside RMSNorm's square root.
    pub rms_norm_eps: f64,
    /// RoPE base: head-dimension pair `i` rotates by `position · rope_theta^(-2i/head_dim)`.
    pub rope_theta: f64,
    /// Longest sequence (prompt and generated tokens) the model accepts.
    pub max_seq_len: usize,
    /// Whether the output projection is the token embedding, transposed (no `lm_head`).
    pub tie_embeddings: bool,
}

impl LlamaConfig {
    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_heads.max(1))
    }

    /// Checks that the shape can be built: non-zero sizes, whole groups of query heads per
    /// key/value head, an even head width (RoPE rotates pairs), and a parameter count that
    /// does not overflow (the sizes may come from an untrusted file).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] naming the field.
    pub fn validate(&self) -> Result<()> {
        let invalid = |reason: String| {
            Err(Error::InvalidConfig {
                reason: reason.into(),
            })
        };
        for (name, value) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_heads", self.num_heads),
            ("num_kv_heads", self.num_kv_heads),
            ("max_seq_len", self.max_seq_len),
        ] {
            if value == 0 {
                return invalid(format!("Llama {name} is 0"));
            }
        }
        if self.head_dim.is_none() && !self.hidden_size.is_multiple_of(self.num_heads) {
            return invalid(format!(
                "Llama hidden_size {} is not a multiple of num_heads {} (set head_dim)",
                self.hidden_size, self.num_heads
            ));
        }
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return invalid(format!(
                "Llama num_heads {} is not a multiple of num_kv_heads {}",
                self.num_heads, self.num_kv_heads
            ));
        }
        let head_dim = self.head_dim();
        if head_dim == 0 || !head_dim.is_multiple_of(2) {
            return invalid(format!(
                "Llama head_dim {head_dim} is not a positive even number"
            ));
        }
        if !(self.rms_norm_eps >= 0.0 && self.rope_theta > 0.0) {
            return invalid(format!(
                "Llama rms_norm_eps {} must be >= 0 and rope_theta {} > 0",
                self.rms_norm_eps, self.rope_theta
            ));
        }
        // f32 weights: every tensor's byte size, and their sum, must be representable.
        if self
            .checked_num_params()
            .and_then(|n| n.checked_mul(4))
            .is_none_or(|bytes| bytes > isize::MAX as usize)
        {
            return invalid(format!(
                "Llama sizes overflow: vocab_size {}, hidden_size {}, intermediate_size {}, \
                 num_layers {}, {} heads of width {head_dim} ({} key/value heads)",
                self.vocab_size,
                self.hidden_size,
                self.intermediate_size,
                self.num_layers,
                self.num_heads,
                self.num_kv_heads
            ));
        }
        Ok(())
    }

    /// Parameters of the model this config builds (saturating at `usize::MAX` for a config
    /// that does not [`validate`](Self::validate)).
    pub fn num_params(&self) -> usize {
        self.checked_num_params().unwrap_or(usize::MAX)
    }

    /// [`num_params`](Self::num_params), `None` on overflow.
    fn checked_num_params(&self) -> Option<usize> {
        let (h, f, v) = (self.hidden_size, self.intermediate_size, self.vocab_size);
        let q = self.num_heads.checked_mul(self.head_dim())?;
        let kv = self.num_kv_heads.checked_mul(self.head_dim())?;
        // q_proj, o_proj: h·q each; k_proj, v_proj: h·kv each.
        let attention = h.checked_mul(q)?.checked_mul(2)?;
        let attention = attention.checked_add(h.checked_mul(kv)?.checked_mul(2)?)?;
        let layer = attention
            .checked_add(h.checked_mul(f)?.checked_mul(3)?)?
            .checked_add(h.checked_mul(2)?)?;
        let embedding = v.checked_mul(h)?;
        let head = if self.tie_embeddings { 0 } else { embedding };
        embedding
            .checked_add(self.num_layers.checked_mul(layer)?)?
            .checked_add(h)?
            .checked_add(head)
    }

    /// The config a GGUF file describes (`general.architecture = "llama"` and its `llama.*`
    /// keys). `tie_embeddings` is true when the file has no `output.weight` tensor.
    ///
    /// # Errors
    ///
    /// [`Error::Weights`] when the architecture is not `llama`, a required key is missing, or
    /// the file asks for something this decoder does not do (RoPE scaling, partial RoPE);
    /// [`Error::InvalidConfig`] if the result does not [`validate`](Self::validate).
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        let origin = file.path().display().to_string();
        let fail = |reason: String| Error::Weights {
            origin: origin.clone().into(),
            reason: reason.into(),
        };
        let arch = file
            .get("general.architecture")
            .and_then(GgufValue::as_str)
            .ok_or_else(|| fail("no general.architecture".into()))?;
        if arch != "llama" {
            return Err(fail(format!(
                "general.architecture is {}; only `llama` is supported",
                quoted(arch)
            )));
        }
        let int = |key: &str| -> Result<Option<usize>> {
            match file.get(key) {
                None => Ok(None),
                Some(value) => value
                    .as_u64()
                    .and_then(|v| usize::try_from(v).ok())
                    .map(Some)
                    .ok_or_else(|| fail(format!("{key} is {value:?}, not a count"))),
            }
        };
        let required = |key: &str| int(key)?.ok_or_else(|| fail(format!("no {key}")));
        let float = |key: &str, default: f64| -> Result<f64> {
            match file.get(key) {
                None => Ok(default),
                Some(value) => value
                    .as_f64()
                    .ok_or_else(|| fail(format!("{key} is {value:?}, not a number"))),
            }
        };
        if let Some(kind) = file
            .get("llama.rope.scaling.type")
            .and_then(GgufValue::as_str)
            .filter(|kind| *kind != "none")
        {
            return Err(fail(format!(
                "RoPE scaling {} is not supported",
                quoted(kind)
            )));
        }
        if file.tensor_info("rope_freqs.weight").is_some() {
            return Err(fail(
                "rope_freqs.weight (Llama 3.1 RoPE frequency factors) is not supported".into(),
            ));
        }
        let embed = file
            .tensor_info("token_embd.weight")
            .ok_or_else(|| fail("no token_embd.weight tensor".into()))?;
        // The layer count sizes allocations before any tensor is read: it must not claim more
        // blocks than the file holds (bounded by its tensor count).
        let blocks_present = (0..file.tensors().len())
            .take_while(|i| {
                file.tensor_info(&format!("blk.{i}.attn_norm.weight"))
                    .is_some()
            })
            .count();
        if let Some(claimed) = int("llama.block_count")?
            && claimed > blocks_present
        {
            return Err(fail(format!(
                "llama.block_count is {claimed}, but the file holds tensors for {blocks_present} \
                 blocks"
            )));
        }
        let vocab_from_tensor = embed.shape().get(1).map(|&v| v as usize);
        let num_heads = required("llama.attention.head_count")?;
        let hidden_size = required("llama.embedding_length")?;
        let head_dim = int("llama.attention.key_length")?;
        let config = LlamaConfig {
            vocab_size: int("llama.vocab_size")?
                .or(vocab_from_tensor)
                .ok_or_else(|| fail("no llama.vocab_size".into()))?,
            hidden_size,
            intermediate_size: required("llama.feed_forward_length")?,
            num_layers: required("llama.block_count")?,
            num_heads,
            num_kv_heads: int("llama.attention.head_count_kv")?.unwrap_or(num_heads),
            head_dim: head_dim.filter(|&d| num_heads == 0 || d != hidden_size / num_heads),
            rms_norm_eps: float("llama.attention.layer_norm_rms_epsilon", 1e-5)?,
            rope_theta: float("llama.rope.freq_base", 10_000.0)?,
            max_seq_len: required("llama.context_length")?,
            tie_embeddings: file.tensor_info("output.weight").is_none(),
        };
        if let Some(rotated) = int("llama.rope.dimension_count")?
            && rotated != config.head_dim()
        {
            return Err(fail(format!(
                "llama.rope.dimension_count {rotated} differs from head_dim {}: partial RoPE \
                 is not supported",
                config.head_dim()
            )));
        }
        config.validate()?;
        Ok(config)
    }

    /// The config of a Hugging Face `config.json` for `LlamaForCausalLM` (transformers 4 or 5
    /// spelling of the RoPE base).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] naming a missing or mistyped field, an activation other than
    /// SiLU, biases, or RoPE scaling, none of which this decoder has.
    pub fn from_hf_config(config: &serde_json::Value) -> Result<Self> {
        let invalid = |reason: String| Error::InvalidConfig {
            reason: format!("Hugging Face Llama config: {reason}").into(),
        };
        let count = |key: &str| -> Result<Option<usize>> {
            match config.get(key) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(value) => value
                    .as_u64()
                    .and_then(|v| usize::try_from(v).ok())
                    .map(Some)
                    .ok_or_else(|| invalid(format!("{key} is {value}, not a count"))),
            }
        };
        let required = |key: &str| count(key)?.ok_or_else(|| invalid(format!("no {key}")));
        if let Some(act) = config.get("hidden_act").and_then(|v| v.as_str())
            && act != "silu"
        {
            return Err(invalid(format!(
                "hidden_act is {}; only `silu` is supported",
                quoted(act)
            )));
        }
        for flag in ["attention_bias", "mlp_bias"] {
            if config.get(flag).and_then(|v| v.as_bool()) == Some(true) {
                return Err(invalid(format!("{flag} is true; biases are not supported")));
            }
        }
        let rope = config.get("rope_parameters");
        let scaling = config
            .get("rope_scaling")
            .filter(|v| !v.is_null())
            .or_else(|| rope.and_then(|r| r.get("rope_type")));
        if let Some(kind) = scaling
            && kind.as_str() != Some("default")
        {
            return Err(invalid(format!("RoPE scaling {kind} is not supported")));
        }
        let rope_theta = config
            .get("rope_theta")
            .or_else(|| rope.and_then(|r| r.get("rope_theta")))
            .map_or(Some(10_000.0), |v| v.as_f64())
            .ok_or_else(|| invalid("rope_theta is not a number".into()))?;
        let num_heads = required("num_attention_heads")?;
        let hidden_size = required("hidden_size")?;
        let result = LlamaConfig {
            vocab_size: required("vocab_size")?,
            hidden_size,
            intermediate_size: required("intermediate_size")?,
            num_layers: required("num_hidden_layers")?,
            num_heads,
            num_kv_heads: count("num_key_value_heads")?.unwrap_or(num_heads),
            head_dim: count("head_dim")?
                .filter(|&d| num_heads == 0 || d != hidden_size / num_heads),
            rms_norm_eps: config
                .get("rms_norm_eps")
                .map_or(Some(1e-6), |v| v.as_f64())
                .ok_or_else(|| invalid("rms_norm_eps is not a number".into()))?,
            rope_theta,
            max_seq_len: required("max_position_embeddings")?,
            tie_embeddings: config
                .get("tie_word_embeddings")
                .and_then(|v| v.as_bool())
                .unwrap_or(false),
        };
        result.validate()?;
        Ok(result)
    }
}
