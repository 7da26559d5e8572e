//! What each kernel must move and compute for a given shape: the roofline terms every
//! benchmark divides by its time, so that a figure reads as a fraction of the device's peak
//! (memory-bound kernels against the measured copy bandwidth, `gpu_bench`).
//!
//! Bytes are the kernels' minimum traffic to device memory: every operand read once and every
//! output written once, in the element size given (the kernels' re-reads that a cache should
//! absorb, such as RMSNorm's second pass over its row, are not counted: a kernel that misses
//! the cache shows as a lower fraction). FLOPs count multiplies, adds and transcendental
//! functions as one each, the convention of FlashAttention's and Liger's reports.

use std::time::Instant;

use cubecl::prelude::*;

use crate::Result;
use crate::device::{DeviceBuffer, synchronize};

/// Bytes moved and floating-point operations of one launch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Traffic {
    /// Bytes read from and written to device memory.
    pub bytes: u64,
    /// Floating-point operations.
    pub flops: u64,
}

impl Traffic {
    /// Achieved bandwidth for a launch of `seconds`, in GB/s (10⁹ bytes).
    pub fn gb_per_s(&self, seconds: f64) -> f64 {
        self.bytes as f64 / seconds / 1e9
    }

    /// Achieved throughput for a launch of `seconds`, in TFLOP/s.
    pub fn tflop_per_s(&self, seconds: f64) -> f64 {
        self.flops as f64 / seconds / 1e12
    }

    /// FLOPs per byte: below the device's ratio of peak FLOP/s to bandwidth, the kernel is
    /// memory-bound.
    pub fn intensity(&self) -> f64 {
        self.flops as f64 / self.bytes.max(1) as f64
    }

    fn new(bytes: usize, flops: usize) -> Self {
        Self {
            bytes: bytes as u64,
            flops: flops as u64,
        }
    }
}

/// Fused SwiGLU forward over `elements` of `element_bytes`: reads `g`, `u`, writes `h`;
/// sigmoid, multiply twice (≈ 6 operations).
pub fn swiglu(elements: usize, element_bytes: usize) -> Traffic {
    Traffic::new(3 * elements * element_bytes, 6 * elements)
}

/// Fused SwiGLU backward: reads `g`, `u`, `dh`, writes `dg`, `du` (≈ 12 operations).
pub fn swiglu_backward(elements: usize, element_bytes: usize) -> Traffic {
    Traffic::new(5 * elements * element_bytes, 12 * elements)
}

/// RMSNorm of `rows × cols`, with a residual add when `residual`: reads `x` (and `r`) and
/// the weight, writes `y` (and the stream `s`) and `rstd` (f32 per row); square-add,
/// scale, weight (and the add).
pub fn rms_norm(rows: usize, cols: usize, residual: bool, element_bytes: usize) -> Traffic {
    let tensors = if residual { 4 } else { 2 };
    Traffic::new(
        (tensors * rows * cols + cols) * element_bytes + 4 * rows,
        (if residual { 5 } else { 4 }) * rows * cols,
    )
}

/// RMSNorm backward: reads `dy`, `s`, the weight and `rstd` (and the stream's gradient),
/// writes `ds` and the weight's gradient; the weight-gradient pass reads `dy` and `s` again
/// (a separate kernel: counted).
pub fn rms_norm_backward(
    rows: usize,
    cols: usize,
    stream_grad: bool,
    element_bytes: usize,
) -> Traffic {
    let tensors = if stream_grad { 6 } else { 5 };
    Traffic::new(
        (tensors * rows * cols + 2 * cols) * element_bytes + 4 * rows,
        (if stream_grad { 9 } else { 8 }) * rows * cols,
    )
}

/// Softmax cross-entropy over `rows × vocab` logits: reads them once for the loss (online
/// maximum and sum: compare, subtract, exp, multiply-add), and with `with_grad` reads them
/// again and writes the gradient over them (exp, subtract, scale).
pub fn cross_entropy(rows: usize, vocab: usize, with_grad: bool, element_bytes: usize) -> Traffic {
    let logits = rows * vocab;
    let passes = if with_grad { 3 } else { 1 };
    Traffic::new(
        passes * logits * element_bytes + 4 * rows * 3,
        (if with_grad { 8 } else { 5 }) * logits,
    )
}

/// Paged attention for query tokens attending to `attended[t]` positions each (a decode
/// token at context length `c` attends to `c`): every key and value of a token's positions
/// read once per KV head (the query group shares them), queries read and outputs written in
/// `query_bytes`; two multiply-adds per query head, position and dimension (scores and
/// values) plus the softmax.
pub fn paged_attention(
    attended: &[usize],
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    cache_bytes: usize,
    query_bytes: usize,
) -> Traffic {
    let positions: usize = attended.iter().sum();
    let tokens = attended.len();
    Traffic::new(
        2 * positions * kv_heads * head_dim * cache_bytes
            + 2 * tokens * heads * head_dim * query_bytes
            + 4 * positions * 4,
        4 * positions * heads * head_dim + 5 * positions * heads,
    )
}

/// Causal prefill of a sequence's last `tokens` positions over a `context`-position cache of
/// `cache_bytes` per value, as [`crate::prefill::prefill_attention`] runs it: the context
/// gathered once into dense `element_bytes` buffers (read and written), then read once by the
/// flash kernel, queries in and outputs out. FLOPs as [`paged_attention`]'s for the same
/// tokens (the causal triangle only).
pub fn prefill_attention(
    tokens: usize,
    context: usize,
    (heads, kv_heads, head_dim): (usize, usize, usize),
    cache_bytes: usize,
    element_bytes: usize,
) -> Traffic {
    let kv_values = 2 * context * kv_heads * head_dim;
    let attended = causal_positions(tokens, context);
    Traffic::new(
        kv_values * (cache_bytes + 2 * element_bytes)
            + 2 * tokens * heads * head_dim * element_bytes,
        4 * attended * heads * head_dim + 5 * attended * heads,
    )
}

/// Positions attended by a sequence's last `tokens` positions of `context`, each attending
/// to itself and every earlier one.
pub fn causal_positions(tokens: usize, context: usize) -> usize {
    tokens * (context - tokens) + tokens * (tokens + 1) / 2
}

/// Dequantize-GEMV of `tokens` tokens through a `rows × cols` matrix of `weight_bytes` in
/// device memory ([`crate::gemv::DeviceWeights::resident_bytes`]): the weights read once,
/// activations in and outputs out in `activation_bytes` per value; one multiply-add per
/// weight and token.
pub fn quant_gemv(
    rows: usize,
    cols: usize,
    tokens: usize,
    weight_bytes: usize,
    activation_bytes: usize,
) -> Traffic {
    Traffic::new(
        weight_bytes + tokens * (rows + cols) * activation_bytes,
        2 * rows * cols * tokens,
    )
}

/// Wall times of repeated runs, in seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timing {
    /// The median.
    pub median: f64,
    /// The 10th percentile.
    pub p10: f64,
    /// The 90th percentile.
    pub p90: f64,
    /// Runs timed.
    pub runs: usize,
}

/// Times `runs` calls of `launch`, each followed by [`synchronize`] (the launch and the
/// device's work, measured from the host: for working sets larger than the device's cache the
/// launch overhead is a small part), after two untimed warm-up calls (kernel compilation).
///
/// # Errors
///
/// The first error `launch` or the device returns.
pub fn time_runs(
    client: &Client,
    runs: usize,
    mut launch: impl FnMut() -> Result<()>,
) -> Result<Timing> {
    for _ in 0..2 {
        launch()?;
        synchronize(client)?;
    }
    let mut times = Vec::with_capacity(runs.max(1));
    for _ in 0..runs.max(1) {
        let started = Instant::now();
        launch()?;
        synchronize(client)?;
        times.push(started.elapsed().as_secs_f64());
    }
    Ok(Timing::from_samples(times))
}

impl Timing {
    /// The median and percentiles of `seconds` (nearest rank; at least one sample).
    pub fn from_samples(mut seconds: Vec<f64>) -> Self {
        assert!(!seconds.is_empty(), "a timing of no runs");
        seconds.sort_by(f64::total_cmp);
        let at = |q: f64| seconds[((seconds.len() - 1) as f64 * q).round() as usize];
        Timing {
            median: at(0.5),
            p10: at(0.1),
            p90: at(0.9),
            runs: seconds.len(),
        }
    }
}

#[cube(launch)]
fn copy_kernel(input: &[f32], output: &mut [f32]) {
    if ABSOLUTE_POS < input.len() {
        output[ABSOLUTE_POS] = input[ABSOLUTE_POS];
    }
}

/// The device-to-device copy bandwidth the kernels are measured against: a `values`-long f32
/// buffer copied by a cubecl kernel of one unit per value (the kernels' own access pattern),
/// `runs` times; GB/s of bytes read plus written at the median, and the timing.
///
/// # Errors
///
/// [`crate::Error::Device`] when the device fails.
pub fn copy_bandwidth(client: &Client, values: usize, runs: usize) -> Result<(f64, Timing)> {
    let input = DeviceBuffer::<f32>::poisoned(client, values);
    let output = DeviceBuffer::<f32>::poisoned(client, values);
    let cube_dim = CubeDim::new_1d(256);
    let cube_count = cubecl::calculate_cube_count_elemwise(client, values, cube_dim);
    let timing = time_runs(client, runs, || {
        copy_kernel::launch(
            client,
            cube_count.clone(),
            cube_dim,
            input.arg(),
            output.arg(),
        );
        Ok(())
    })?;
    let bytes = Traffic::new(2 * values * 4, 0);
    Ok((bytes.gb_per_s(timing.median), timing))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_attention_is_memory_bound_and_counts_the_group_once() {
        // SmolLM2: 9 query heads over 3 KV heads of 64, one decode token at 1,024 positions,
        // an f16 cache: 2 · 1024 · 3 · 64 · 2 bytes of keys and values.
        let t = paged_attention(&[1024], 9, 3, 64, 2, 4);
        assert_eq!(t.bytes, 786_432 + 2 * 9 * 64 * 4 + 16 * 1024);
        assert_eq!(t.flops, 4 * 1024 * 9 * 64 + 5 * 1024 * 9);
        assert!(t.intensity() < 5.0, "{}", t.intensity());
        assert!((t.gb_per_s(1e-6) - t.bytes as f64 / 1e3).abs() < 1e-9);
    }

    #[test]
    fn gemv_bytes_are_the_weights_plus_the_vectors() {
        let t = quant_gemv(4096, 4096, 1, 4096 * 4096 / 32 * 20, 4);
        assert_eq!(t.bytes, 10_485_760 + 8192 * 4);
        assert_eq!(t.flops, 2 * 4096 * 4096);
    }

    #[test]
    fn a_whole_prompt_attends_to_the_causal_triangle_as_the_paged_kernel_counts_it() {
        // Three tokens after a two-position prefix attend to 3, 4 and 5 positions.
        assert_eq!(causal_positions(3, 5), 12);
        let prompt = 512;
        let attended: Vec<usize> = (1..=prompt).collect();
        let paged = paged_attention(&attended, 9, 3, 64, 2, 4);
        let flash = prefill_attention(prompt, prompt, (9, 3, 64), 2, 4);
        assert_eq!(flash.flops, paged.flops);
        // The context moves a constant number of times, not once per token: 2 · 512 · 3 · 64
        // values at 2 + 2 · 4 bytes, and the queries and outputs.
        assert_eq!(flash.bytes, 196_608 * 10 + 2 * 512 * 9 * 64 * 4);
        assert!(flash.intensity() > 20.0 * paged.intensity());
    }
}
