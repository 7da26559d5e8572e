//! Paged decode and prefill attention over host memory: [`AttentionStep`], one layer's
//! problem as [`HostKernels::attention`](super::HostKernels::attention) receives it, and its
//! reference computation.

use half::f16;

use crate::attention::{BatchLayout, SeqLayout};

/// One layer's keys or values as the cache holds them.
#[derive(Debug, Clone, Copy)]
pub enum KvSlice<'a> {
    /// Half precision ([`KvPrecision::F16`](super::KvPrecision::F16)).
    F16(&'a [f16]),
    /// Single precision.
    F32(&'a [f32]),
}

impl KvSlice<'_> {
    /// `Σ q[i] · self[at + i]`, in eight independent sums.
    fn dot(&self, at: usize, q: &[f32]) -> f32 {
        let mut lanes = [0f32; 8];
        let mut row = [0f32; 8];
        for (c, qs) in q.chunks(8).enumerate() {
            let len = qs.len();
            match self {
                KvSlice::F16(values) => {
                    for (r, v) in row.iter_mut().zip(&values[at + 8 * c..at + 8 * c + len]) {
                        *r = v.to_f32();
                    }
                }
                KvSlice::F32(values) => row[..len].copy_from_slice(&values[at + 8 * c..][..len]),
            }
            for i in 0..len {
                lanes[i] += qs[i] * row[i];
            }
        }
        lanes.iter().sum()
    }

    /// `out[i] += w · self[at + i]`.
    fn add_scaled(&self, at: usize, w: f32, out: &mut [f32]) {
        match self {
            KvSlice::F16(values) => {
                for (o, v) in out.iter_mut().zip(&values[at..]) {
                    *o += w * v.to_f32();
                }
            }
            KvSlice::F32(values) => {
                for (o, v) in out.iter_mut().zip(&values[at..]) {
                    *o += w * v;
                }
            }
        }
    }
}

/// One layer's attention for a flat batch: every token's query heads against its own
/// sequence's keys and values, up to its own position, through the block tables.
///
/// Pieces: the output is `[tokens, heads · head_dim]`, and piece `i` (of `head_dim` values)
/// is token `i / heads`, query head `i % heads`; grouped-query head `h` reads KV head
/// `h / (heads / kv_heads)`.
#[derive(Debug, Clone, Copy)]
pub struct AttentionStep<'a> {
    /// The layer's index: kernels that keep their own copy of the cache (device memory) key
    /// it by this.
    pub layer: usize,
    /// The layer's keys, `[slots, kv_heads, head_dim]` (slot `block · block_size + offset`).
    pub k: KvSlice<'a>,
    /// The layer's values, as `k`.
    pub v: KvSlice<'a>,
    /// Each token's Q, K and V projections side by side, `qkv_width` values per token; the
    /// queries are the first `heads · head_dim` (RoPE applied).
    pub qkv: &'a [f32],
    /// Values per token in `qkv`.
    pub qkv_width: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Values per head.
    pub head_dim: usize,
    /// Slots per KV block.
    pub block_size: usize,
    /// The score scale, `1 / √head_dim`.
    pub scale: f32,
    /// Where each sequence's queries and blocks are.
    pub layout: &'a BatchLayout<'a>,
    /// Each token's sequence (an index into `layout.seqs`).
    pub seq_of_token: &'a [usize],
}

impl AttentionStep<'_> {
    /// Pieces in the output (`tokens · heads`).
    #[inline]
    pub fn pieces(&self) -> usize {
        self.seq_of_token.len() * self.heads
    }

    /// Piece `piece`'s query (`head_dim` values).
    #[inline]
    pub fn query(&self, piece: usize) -> &[f32] {
        let (token, head) = (piece / self.heads, piece % self.heads);
        &self.qkv[token * self.qkv_width + head * self.head_dim..][..self.head_dim]
    }

    /// Piece `piece`'s sequence.
    #[inline]
    pub fn seq(&self, piece: usize) -> &SeqLayout<'_> {
        &self.layout.seqs[self.seq_of_token[piece / self.heads]]
    }

    /// The last position piece `piece` attends to (its token's own).
    #[inline]
    pub fn position(&self, piece: usize) -> usize {
        let token = piece / self.heads;
        let seq = self.seq(piece);
        seq.context_len - seq.query_len + (token - seq.query_start)
    }

    /// Where the key (and value) of position `position` of piece `piece`'s sequence starts
    /// in [`k`](Self::k) (and [`v`](Self::v)), for the piece's KV head.
    #[inline]
    pub fn kv_offset(&self, piece: usize, position: usize) -> usize {
        let seq = self.seq(piece);
        let kv_head = piece % self.heads / (self.heads / self.kv_heads);
        let slot = seq.block_table[position / self.block_size] as usize * self.block_size
            + position % self.block_size;
        (slot * self.kv_heads + kv_head) * self.head_dim
    }

    /// The reference computation of piece `piece` into `out` (`head_dim` values):
    /// `softmax(q · Kᵀ · scale) · V` over positions `0..=position`, the scores in a buffer,
    /// their maximum taken out, [`exp_slice`], then the values weighted and summed in
    /// position order.
    pub fn attend_reference(&self, piece: usize, out: &mut [f32]) {
        thread_local! {
            static SCORES: std::cell::RefCell<Vec<f32>> =
                const { std::cell::RefCell::new(Vec::new()) };
        }
        let q = self.query(piece);
        SCORES.with_borrow_mut(|scores| {
            scores.clear();
            for p in 0..=self.position(piece) {
                scores.push(self.k.dot(self.kv_offset(piece, p), q) * self.scale);
            }
            let max = scores.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
            for s in scores.iter_mut() {
                *s -= max;
            }
            exp_slice(scores);
            let sum: f32 = scores.iter().sum();
            out.fill(0.0);
            for (p, &weight) in scores.iter().enumerate() {
                self.v.add_scaled(self.kv_offset(piece, p), weight, out);
            }
            let inverse = 1.0 / sum;
            for o in out.iter_mut() {
                *o *= inverse;
            }
        });
    }
}

/// `x = e^x` in place, for `x ≤ 0` (softmax after its maximum is taken out), in straight-line
/// code the compiler vectorizes: `e^x = 2^n · e^r` with `n = round(x / ln 2)`, `|r| ≤ ln 2 / 2`,
/// and `e^r` by its degree-6 Taylor polynomial (relative error < 3e-7, below f32's rounding
/// of the scores). Arguments below -87 give 0 (as `expf` underflows there). Public so that
/// faster kernels compute the same function (compiled for their instruction set).
#[inline(always)]
pub fn exp_slice(x: &mut [f32]) {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    // ln 2 in two parts, so that `x - n·ln 2` is exact for |n| < 2^11.
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // 1.5 · 2^23: adding and subtracting it rounds to the nearest integer.
    const ROUND: f32 = 12_582_912.0;
    for v in x.iter_mut() {
        let clamped = v.max(-87.0);
        let n = (clamped * LOG2_E + ROUND) - ROUND;
        let r = (clamped - n * LN2_HI) - n * LN2_LO;
        let p = 1.0
            + r * (1.0
                + r * (0.5
                    + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
        // 2^n from its exponent bits (n ≥ -126 here).
        let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
        *v = if *v < -87.0 { 0.0 } else { p * scale };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_slice_is_exp_to_within_a_few_ulps() {
        let mut x: Vec<f32> = (0..=20_000).map(|i| -(i as f32) * 0.005).collect();
        x.extend([-86.9, -87.0, -87.5, -100.0, f32::NEG_INFINITY, -0.0]);
        let want: Vec<f64> = x.iter().map(|&v| f64::from(v).exp()).collect();
        exp_slice(&mut x);
        for (&got, &want) in x.iter().zip(&want) {
            // Below e^-87 the result is 0 by design (as expf underflows a little further on).
            let tolerance = if want < 2e-38 { 2e-38 } else { 5e-7 * want };
            assert!(
                (f64::from(got) - want).abs() <= tolerance,
                "{got} vs {want}"
            );
        }
    }
}
