//! Paged attention for [`SimdKernels`](super::SimdKernels): serve's [`AttentionStep`] with
//! AVX2 and FMA, in tiles of up to four consecutive queries of one sequence and head.
//!
//! One pass over the keys and values with an online softmax (FlashAttention's recurrence):
//! positions go in chunks of 128 (at fixed positions: 0, 128, 256...); for each, the
//! scores `q·k`, their maximum `m'` with the running one `m`, the weights `e^(s - m')`
//! (serve's [`exp_slice`], compiled here for AVX2), the running sum and the weighted values
//! rescaled by `e^(m - m')`, then the chunk's values added. Memory is a chunk's scores
//! whatever the context length. The scores and the values are two functions, so that the
//! queries and the running sums are not both held in registers (measured: with both in one
//! loop the compiler spilled them and decode ran 10-20% slower than the three-pass kernel
//! this replaced; now it is faster, docs/BENCHMARKS.md run S5). A tile loads each key and
//! value row once for all its queries (a prefill's queries share almost all their positions),
//! the dot products and the weighted sums are 8-lane FMA, and four scores come out of one
//! horizontal-add tree.
//!
//! Batch invariance: a query's arithmetic is the same operations in the same order whatever
//! tile it is in (a missing query is a zero lane of the tree, its results dropped; chunks
//! start at the same positions and a query takes only its own positions of each), so its
//! output depends on its own query and sequence only. It differs from serve's three-pass
//! reference ([`AttentionStep::attend_reference`]) by rounding.

use mlinfra_serve::host::{AttentionStep, KvSlice};

use super::matrix::Isa;
use super::pool::{Parallelism, SharedOut};

/// Queries per tile.
const TILE: usize = 4;

/// `step` into `out` (`[tokens, heads · head_dim]`) on `isa` and `parallelism`: tiles spread
/// over the parts in turn (their costs grow with their positions, so neighbours balance).
/// The reference, piece by piece, where there is no AVX2 or the head size is not 32, 64 or
/// 128.
pub(crate) fn attention(
    step: &AttentionStep<'_>,
    out: &mut [f32],
    isa: Isa,
    parallelism: &Parallelism,
) {
    let hd = step.head_dim;
    let half = match (step.k, step.v) {
        (KvSlice::F16(_), KvSlice::F16(_)) => Some(true),
        (KvSlice::F32(_), KvSlice::F32(_)) => Some(false),
        _ => None,
    };
    if isa == Isa::Portable
        || !matches!(hd, 32 | 64 | 128)
        || half.is_none()
        || !cfg!(target_arch = "x86_64")
    {
        parallelism.for_each_chunk(out, hd, &|piece, out| step.attend_reference(piece, out));
        return;
    }
    // (head, first token, queries) of every tile.
    let mut tiles = Vec::new();
    for seq in &step.layout.seqs {
        for head in 0..step.heads {
            let end = seq.query_start + seq.query_len;
            let mut first = seq.query_start;
            while first < end {
                let n = (end - first).min(TILE);
                tiles.push((head, first, n));
                first += n;
            }
        }
    }
    assert_eq!(out.len(), step.pieces() * hd, "the attention output's size");
    let base = SharedOut(out.as_mut_ptr());
    let parts = parallelism.parts().min(tiles.len()).max(1);
    parallelism.run(&|part| {
        if part >= parts {
            return;
        }
        for &(head, first, n) in tiles.iter().skip(part).step_by(parts) {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: on x86-64 every ISA but Portable implies AVX2, FMA and F16C (checked
            // when it was chosen); the head size is 32, 64 or 128, the cache's precision
            // matched. Tiles write disjoint pieces of `out` (each (token, head) is in one
            // tile), which outlives `run`.
            unsafe {
                match (hd, half == Some(true)) {
                    (32, true) => x86::tile::<4, true>(step, head, first, n, base),
                    (64, true) => x86::tile::<8, true>(step, head, first, n, base),
                    (_, true) => x86::tile::<16, true>(step, head, first, n, base),
                    (32, false) => x86::tile::<4, false>(step, head, first, n, base),
                    (64, false) => x86::tile::<8, false>(step, head, first, n, base),
                    (_, false) => x86::tile::<16, false>(step, head, first, n, base),
                }
            }
            #[cfg(not(target_arch = "x86_64"))]
            let _ = (head, first, n, base);
        }
    });
}

#[cfg(target_arch = "x86_64")]
// Registers are indexed by query and column on purpose: the loops mirror the tile.
#[allow(clippy::needless_range_loop)]
mod x86 {
    use std::arch::x86_64::*;

    use mlinfra_serve::host::exp_slice;

    use super::{AttentionStep, KvSlice, SharedOut, TILE};

    /// Positions per step of the online softmax.
    const CHUNK: usize = 64;

    /// Row `at..at + len` of `kv` (bounds-checked), as a pointer to elements of the kind
    /// `HALF` names (f16 or f32).
    #[inline(always)]
    fn row<const HALF: bool>(kv: KvSlice<'_>, at: usize, len: usize) -> *const u8 {
        match kv {
            KvSlice::F16(values) if HALF => values[at..at + len].as_ptr().cast(),
            KvSlice::F32(values) if !HALF => values[at..at + len].as_ptr().cast(),
            _ => unreachable!("the caller dispatched on the cache's precision"),
        }
    }

    /// 8 values from element `index` of a row of `HALF`'s kind, as f32.
    ///
    /// # Safety
    ///
    /// The CPU has AVX2 and F16C; `index + 8` is within the row.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn load8<const HALF: bool>(row: *const u8, index: usize) -> __m256 {
        // SAFETY: the caller's promise.
        unsafe {
            if HALF {
                _mm256_cvtph_ps(_mm_loadu_si128(row.add(2 * index).cast()))
            } else {
                _mm256_loadu_ps(row.add(4 * index).cast())
            }
        }
    }

    /// Where the keys (and values) of positions `start..start + offsets.len()` of `piece`'s
    /// sequence start, for its KV head: one division for the chunk, then block by block.
    #[inline(always)]
    fn chunk_offsets(step: &AttentionStep<'_>, piece: usize, start: usize, offsets: &mut [usize]) {
        let seq = step.seq(piece);
        let stride = step.kv_heads * step.head_dim;
        let head = piece % step.heads / (step.heads / step.kv_heads) * step.head_dim;
        let (mut block, mut within) = (start / step.block_size, start % step.block_size);
        for offset in offsets.iter_mut() {
            let slot = seq.block_table[block] as usize * step.block_size + within;
            *offset = slot * stride + head;
            within += 1;
            if within == step.block_size {
                (block, within) = (block + 1, 0);
            }
        }
    }

    /// The 8 lanes of `v` reduced by `op` in one fixed tree.
    #[target_feature(enable = "avx2,fma,f16c")]
    fn reduce8(v: __m256, op: fn(__m128, __m128) -> __m128) -> f32 {
        let quad = op(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let pair = op(quad, _mm_movehl_ps(quad, quad));
        _mm_cvtss_f32(op(pair, _mm_shuffle_ps(pair, pair, 1)))
    }

    /// `x` (a multiple of 8 values) reduced by `op`, in a fixed order: 8 lanes at a time into
    /// one vector, then [`reduce8`].
    #[target_feature(enable = "avx2,fma,f16c")]
    fn reduce_lanes(
        x: &[f32],
        lanes: fn(__m256, __m256) -> __m256,
        op: fn(__m128, __m128) -> __m128,
    ) -> f32 {
        let mut vectors = x.chunks_exact(8).map(|v| {
            // SAFETY: `v` is 8 f32.
            unsafe { _mm256_loadu_ps(v.as_ptr()) }
        });
        let first = vectors.next().unwrap_or(_mm256_setzero_ps());
        reduce8(vectors.fold(first, lanes), op)
    }

    /// The four lanes' sums of `a`, `b`, `c`, `d` by one fixed tree: lane `t` is
    /// `((x0+x1)+(x2+x3)) + ((x4+x5)+(x6+x7))` of the `t`-th vector.
    #[target_feature(enable = "avx2,fma,f16c")]
    fn sums4(a: __m256, b: __m256, c: __m256, d: __m256) -> __m128 {
        let tree = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
        _mm_add_ps(_mm256_castps256_ps128(tree), _mm256_extractf128_ps(tree, 1))
    }

    /// Queries `first..first + n` (consecutive tokens of one sequence) of head `head`, each
    /// into its piece of the output at `out`. `N · 8` is the head size.
    ///
    /// # Safety
    ///
    /// The CPU has AVX2, FMA and F16C; the head size is `N · 8`; the cache is f16 if `HALF`,
    /// else f32; no other thread writes these pieces of the output, which is
    /// `step.pieces() · head_dim` long.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn tile<const N: usize, const HALF: bool>(
        step: &AttentionStep<'_>,
        head: usize,
        first: usize,
        n: usize,
        out: SharedOut,
    ) {
        // SAFETY: the caller's promise, passed on.
        unsafe {
            if n == 1 {
                tile_of::<N, HALF, 1>(step, head, first, n, out);
            } else {
                tile_of::<N, HALF, TILE>(step, head, first, n, out);
            }
        }
    }

    /// Scores `q·k · scale` of `n` queries (of `Q` slots; absent ones are zeros) against the
    /// keys at `offsets`, into `scores[t][i]`. Its own function, so that the queries live in
    /// registers here and the weighted values in [`chunk_values`], not both at once.
    ///
    /// # Safety
    ///
    /// As [`tile`].
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline(never)]
    unsafe fn chunk_scores<const N: usize, const HALF: bool, const Q: usize>(
        step: &AttentionStep<'_>,
        queries: &[&[f32]; Q],
        n: usize,
        offsets: &[usize],
        scores: &mut [[f32; CHUNK]; Q],
    ) {
        let zero = _mm256_setzero_ps();
        let mut q = [[zero; N]; Q];
        for t in 0..n {
            for j in 0..N {
                // SAFETY: a query is N·8 values.
                q[t][j] = unsafe { _mm256_loadu_ps(queries[t].as_ptr().add(8 * j)) };
            }
        }
        let scale = _mm_set1_ps(step.scale);
        for (i, &at) in offsets.iter().enumerate() {
            let k = row::<HALF>(step.k, at, N * 8);
            let mut dots = [zero; Q];
            for j in 0..N {
                // SAFETY: the row holds N·8 values.
                let kj = unsafe { load8::<HALF>(k, 8 * j) };
                for t in 0..Q {
                    dots[t] = _mm256_fmadd_ps(q[t][j], kj, dots[t]);
                }
            }
            let lane = |t: usize| if t < Q { dots[t] } else { zero };
            let mut four = [0f32; TILE];
            // SAFETY: `four` is 4 f32.
            unsafe {
                _mm_storeu_ps(
                    four.as_mut_ptr(),
                    _mm_mul_ps(sums4(lane(0), lane(1), lane(2), lane(3)), scale),
                )
            };
            for t in 0..n {
                scores[t][i] = four[t];
            }
        }
    }

    /// `acc[t] += Σ_i scores[t][i] · v_i` over the values at `offsets` (positions `start..`),
    /// for the queries that see each: they are consecutive positions from `last0`, so those
    /// from `p - last0` on see position `p`.
    ///
    /// # Safety
    ///
    /// As [`tile`].
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline(never)]
    unsafe fn chunk_values<const N: usize, const HALF: bool, const Q: usize>(
        step: &AttentionStep<'_>,
        n: usize,
        start: usize,
        last0: usize,
        offsets: &[usize],
        scores: &[[f32; CHUNK]; Q],
        acc_out: &mut [[__m256; N]; Q],
    ) {
        let mut acc = *acc_out;
        for (i, &at) in offsets.iter().enumerate() {
            let v = row::<HALF>(step.v, at, N * 8);
            let seen_from = (start + i).saturating_sub(last0).min(n);
            let w: [__m256; Q] =
                std::array::from_fn(|t| _mm256_set1_ps(if t < n { scores[t][i] } else { 0.0 }));
            for j in 0..N {
                // SAFETY: the row holds N·8 values.
                let vj = unsafe { load8::<HALF>(v, 8 * j) };
                for t in seen_from..n {
                    acc[t][j] = _mm256_fmadd_ps(w[t], vj, acc[t][j]);
                }
            }
        }
        *acc_out = acc;
    }

    /// [`tile`] with `Q` query slots (`n ≤ Q` of them used): one for a decode row, so that it
    /// does a quarter of the multiplications; a lane of [`sums4`] depends on its own vector
    /// only, so a query's scores are the same bits with either.
    ///
    /// # Safety
    ///
    /// As [`tile`].
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn tile_of<const N: usize, const HALF: bool, const Q: usize>(
        step: &AttentionStep<'_>,
        head: usize,
        first: usize,
        n: usize,
        out: SharedOut,
    ) {
        let pieces: [usize; Q] =
            std::array::from_fn(|t| (first + t.min(n - 1)) * step.heads + head);
        let last: [usize; Q] = pieces.map(|piece| step.position(piece));
        let queries: [&[f32]; Q] = pieces.map(|piece| step.query(piece));
        let zero = _mm256_setzero_ps();
        // The online softmax's state per query: running maximum, sum of weights, and the
        // weighted values (all relative to the running maximum).
        let mut max = [f32::NEG_INFINITY; Q];
        let mut total = [0f32; Q];
        let mut acc = [[zero; N]; Q];
        let mut offsets = [0usize; CHUNK];
        let mut scores = [[0f32; CHUNK]; Q];
        let end = last[n - 1] + 1;
        for start in (0..end).step_by(CHUNK) {
            let len = CHUNK.min(end - start);
            let offsets = &mut offsets[..len];
            chunk_offsets(step, pieces[n - 1], start, offsets);
            // SAFETY: the caller's promise on the CPU, the head size and the cache.
            unsafe { chunk_scores::<N, HALF, Q>(step, &queries, n, offsets, &mut scores) };
            for t in 0..n {
                // Query t sees positions up to its own.
                let seen = (last[t] + 1).saturating_sub(start).min(len);
                if seen == 0 {
                    continue;
                }
                // Whole vectors of scores: the lanes past `seen` weigh e^-∞ = 0. `seen` is the
                // query's own, so these are the same operations whatever the tile.
                let width = seen.div_ceil(8) * 8;
                let weights = &mut scores[t][..width];
                weights[seen..].fill(f32::NEG_INFINITY);
                let max_of = |a, b| _mm256_max_ps(a, b);
                let new_max = reduce_lanes(weights, max_of, |a, b| _mm_max_ps(a, b)).max(max[t]);
                for w in weights.iter_mut() {
                    *w -= new_max;
                }
                exp_slice(weights);
                // e^(m - m'): 0 for the first chunk (m = -∞), 1 while the maximum holds.
                let mut rescale = [max[t] - new_max];
                exp_slice(&mut rescale);
                let sum_of = |a, b| _mm256_add_ps(a, b);
                let chunk_total = reduce_lanes(weights, sum_of, |a, b| _mm_add_ps(a, b));
                total[t] = total[t].mul_add(rescale[0], chunk_total);
                let rescale = _mm256_set1_ps(rescale[0]);
                for j in 0..N {
                    acc[t][j] = _mm256_mul_ps(acc[t][j], rescale);
                }
                max[t] = new_max;
            }
            // SAFETY: as above.
            unsafe {
                chunk_values::<N, HALF, Q>(step, n, start, last[0], offsets, &scores, &mut acc)
            };
        }
        for t in 0..n {
            let inverse = _mm256_set1_ps(1.0 / total[t]);
            for j in 0..N {
                // SAFETY: piece `pieces[t]` is N·8 values inside the output, written by this
                // tile alone (the caller's promise).
                unsafe {
                    _mm256_storeu_ps(
                        out.at(pieces[t] * N * 8 + 8 * j),
                        _mm256_mul_ps(acc[t][j], inverse),
                    )
                };
            }
        }
    }
}
