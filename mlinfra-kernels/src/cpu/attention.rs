//! Paged attention for [`SimdKernels`](super::SimdKernels): serve's
//! [`AttentionStep`] pieces, one (token, query head) each, with AVX2 and FMA.
//!
//! The same three passes as serve's reference ([`AttentionStep::attend_reference`]): scores
//! `q·k` for every position up to the token's own, `exp` of the scores less their maximum
//! (serve's [`exp_slice`], compiled here for AVX2), and the values weighted and summed. The
//! dot products and the weighted sum use 8-lane FMA; for the usual head sizes (32, 64, 128)
//! the output stays in registers across positions. A piece's result depends on its own
//! query and sequence only (serve's batch invariance); it differs from the reference by the
//! summation order's rounding.

use mlinfra_serve::host::{AttentionStep, exp_slice};

use super::matrix::Isa;

/// Piece `piece` of `step` into `out` on `isa` (the reference where it has no AVX2 or the
/// head size is not a multiple of 8).
pub(crate) fn attend(step: &AttentionStep<'_>, piece: usize, out: &mut [f32], isa: Isa) {
    #[cfg(target_arch = "x86_64")]
    if isa != Isa::Portable && step.head_dim.is_multiple_of(8) {
        // SAFETY: every ISA but Portable implies AVX2 and FMA, checked when it was chosen.
        return unsafe { x86::attend(step, piece, out) };
    }
    let _ = isa;
    step.attend_reference(piece, out);
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;
    use std::cell::RefCell;

    use super::{AttentionStep, exp_slice};

    thread_local! {
        static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
        static OFFSETS: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
    }

    /// Where the keys (and values) of positions `0..=position(piece)` start, in position
    /// order: walked block by block (no division per position).
    #[inline(always)]
    fn kv_offsets(step: &AttentionStep<'_>, piece: usize, offsets: &mut Vec<usize>) {
        let seq = step.seq(piece);
        let stride = step.kv_heads * step.head_dim;
        let head = piece % step.heads / (step.heads / step.kv_heads) * step.head_dim;
        let last = step.position(piece);
        offsets.clear();
        for (b, &block) in seq.block_table.iter().enumerate() {
            let first = b * step.block_size;
            if first > last {
                break;
            }
            let base = block as usize * step.block_size * stride + head;
            let count = step.block_size.min(last + 1 - first);
            offsets.extend((0..count).map(|i| base + i * stride));
        }
    }

    /// # Safety
    ///
    /// The CPU has AVX2 and FMA; `step.head_dim` is a multiple of 8.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn attend(step: &AttentionStep<'_>, piece: usize, out: &mut [f32]) {
        OFFSETS.with_borrow_mut(|offsets| {
            kv_offsets(step, piece, offsets);
            SCORES.with_borrow_mut(|scores| {
                // SAFETY: the caller's promise, passed on.
                unsafe {
                    scores_into(step, piece, offsets, scores);
                    softmax_weights(scores);
                    match step.head_dim {
                        32 => weighted_sum::<4>(step, offsets, scores, out),
                        64 => weighted_sum::<8>(step, offsets, scores, out),
                        128 => weighted_sum::<16>(step, offsets, scores, out),
                        _ => weighted_sum_any(step, offsets, scores, out),
                    }
                }
            });
        });
    }

    /// `q · k · scale` for positions `0..=position`.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn scores_into(
        step: &AttentionStep<'_>,
        piece: usize,
        offsets: &[usize],
        scores: &mut Vec<f32>,
    ) {
        let q = step.query(piece);
        let hd = step.head_dim;
        scores.clear();
        for &at in offsets {
            let k = &step.k[at..][..hd];
            let mut acc = [_mm256_setzero_ps(), _mm256_setzero_ps()];
            for (j, (qs, ks)) in q.chunks_exact(8).zip(k.chunks_exact(8)).enumerate() {
                // SAFETY: both chunks are 8 f32.
                let (qv, kv) =
                    unsafe { (_mm256_loadu_ps(qs.as_ptr()), _mm256_loadu_ps(ks.as_ptr())) };
                acc[j % 2] = _mm256_fmadd_ps(qv, kv, acc[j % 2]);
            }
            scores.push(horizontal_sum(_mm256_add_ps(acc[0], acc[1])) * step.scale);
        }
    }

    /// Scores to unnormalized softmax weights, in place; returns nothing (the sum is taken
    /// by the weighted sum).
    #[target_feature(enable = "avx2,fma")]
    unsafe fn softmax_weights(scores: &mut [f32]) {
        let max = scores.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
        for s in scores.iter_mut() {
            *s -= max;
        }
        exp_slice(scores);
    }

    #[target_feature(enable = "avx2,fma")]
    fn horizontal_sum(v: __m256) -> f32 {
        let quad = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let pair = _mm_add_ps(quad, _mm_movehl_ps(quad, quad));
        _mm_cvtss_f32(_mm_add_ss(pair, _mm_shuffle_ps(pair, pair, 1)))
    }

    /// `out = Σ_p w_p · v_p / Σ_p w_p`, the `N · 8` output values in registers.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn weighted_sum<const N: usize>(
        step: &AttentionStep<'_>,
        offsets: &[usize],
        weights: &[f32],
        out: &mut [f32],
    ) {
        let mut acc = [_mm256_setzero_ps(); N];
        let mut total = 0f32;
        for (&at, &w) in offsets.iter().zip(weights) {
            let v = &step.v[at..][..N * 8];
            let weight = _mm256_set1_ps(w);
            for (j, acc) in acc.iter_mut().enumerate() {
                // SAFETY: `v` holds N·8 values.
                let values = unsafe { _mm256_loadu_ps(v.as_ptr().add(8 * j)) };
                *acc = _mm256_fmadd_ps(weight, values, *acc);
            }
            total += w;
        }
        let inverse = _mm256_set1_ps(1.0 / total);
        for (j, acc) in acc.iter().enumerate() {
            // SAFETY: `out` holds N·8 values (the head size).
            unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(8 * j), _mm256_mul_ps(*acc, inverse)) };
        }
    }

    /// [`weighted_sum`] for other multiples of 8, the output in memory.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn weighted_sum_any(
        step: &AttentionStep<'_>,
        offsets: &[usize],
        weights: &[f32],
        out: &mut [f32],
    ) {
        let hd = step.head_dim;
        out.fill(0.0);
        let mut total = 0f32;
        for (&at, &w) in offsets.iter().zip(weights) {
            let v = &step.v[at..][..hd];
            let weight = _mm256_set1_ps(w);
            for (o, vs) in out.chunks_exact_mut(8).zip(v.chunks_exact(8)) {
                // SAFETY: both chunks are 8 f32.
                unsafe {
                    let sum = _mm256_fmadd_ps(
                        weight,
                        _mm256_loadu_ps(vs.as_ptr()),
                        _mm256_loadu_ps(o.as_ptr()),
                    );
                    _mm256_storeu_ps(o.as_mut_ptr(), sum);
                }
            }
            total += w;
        }
        let inverse = 1.0 / total;
        for o in out.iter_mut() {
            *o *= inverse;
        }
    }
}
