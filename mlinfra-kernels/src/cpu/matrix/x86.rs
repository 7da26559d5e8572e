//! The x86 kernels: one body per format, instantiated per instruction set (the int8 dot
//! step differs; everything else is the same instructions in the same order).

use std::arch::x86_64::*;

use super::{BlockQ8_1, GROUP, WeightFormat};

/// Lane-wise `acc + Σ_{4 bytes} u8(a) · i8(b)` with AVX2: `maddubs` pairs into i16 (no
/// saturation: |pair| ≤ 2·255·127 only for Q8_0's offset codes, which take the signed
/// path below instead) and `madd` pairs into i32.
macro_rules! dot_avx2 {
    ($acc:expr, $a:expr, $b:expr) => {
        _mm256_add_epi32(
            $acc,
            _mm256_madd_epi16(_mm256_maddubs_epi16($a, $b), _mm256_set1_epi16(1)),
        )
    };
}
macro_rules! dot_vnni {
    ($acc:expr, $a:expr, $b:expr) => {
        _mm256_dpbusd_avx_epi32($acc, $a, $b)
    };
}
macro_rules! dot_vnni512 {
    ($acc:expr, $a:expr, $b:expr) => {
        _mm256_dpbusd_epi32($acc, $a, $b)
    };
}

/// Activation codes `qs[at..at + 4]` in every 32-bit lane.
macro_rules! broadcast4 {
    ($qs:expr, $at:expr) => {
        _mm256_set1_epi32(i32::from_le_bytes([
            $qs[$at] as u8,
            $qs[$at + 1] as u8,
            $qs[$at + 2] as u8,
            $qs[$at + 3] as u8,
        ]))
    };
}

/// A 32-value block's integer sums for 8 rows: chunk `c`'s low-nibble codes against
/// activations `4c..4c + 4`, its high-nibble codes against `16 + 4c..`, with `$dot`.
macro_rules! block_isum {
    ($dot:ident, $low:expr, $high:expr, $xb:expr) => {{
        let mut isum = _mm256_setzero_si256();
        for c in 0..4 {
            isum = $dot!(isum, $low[c], broadcast4!($xb.qs, 4 * c));
            isum = $dot!(isum, $high[c], broadcast4!($xb.qs, 16 + 4 * c));
        }
        isum
    }};
}

/// `block_isum` for two groups at once (512-bit).
macro_rules! block_isum512 {
    ($low:expr, $high:expr, $xb:expr) => {{
        let mut isum = _mm512_setzero_si512();
        for c in 0..4 {
            isum = _mm512_dpbusd_epi32(isum, $low[c], broadcast4_512!($xb.qs, 4 * c));
            isum = _mm512_dpbusd_epi32(isum, $high[c], broadcast4_512!($xb.qs, 16 + 4 * c));
        }
        isum
    }};
}

/// The 4-bit kernels: Q4_1 (`$min`: scales, minimums, codes; `w = d·q + m`) and Q4_0
/// (scales, codes; `w = d·(q - 8)`, so `8·Σx` comes out of the integer sum).
macro_rules! q4_kernel {
    ($name:ident, $features:literal, $dot:ident, $min:literal) => {
        /// # Safety
        ///
        /// The CPU has the enabled features; `bytes` holds as many group blocks of this
        /// kernel's format as each of `xs` has blocks.
        #[target_feature(enable = $features)]
        pub(super) unsafe fn $name<const T: usize>(
            bytes: &[u8],
            xs: [&[BlockQ8_1]; T],
            lanes: &mut [[f32; GROUP]; T],
        ) {
            let format = if $min {
                WeightFormat::Q4_1
            } else {
                WeightFormat::Q4_0
            };
            let (gbb, codes_at) = (format.group_block_bytes(), format.codes_at());
            let nibble = _mm256_set1_epi8(0x0F);
            let mut acc = [_mm256_setzero_ps(); T];
            let mut mins = [_mm256_setzero_ps(); T];
            for (b, block) in bytes.chunks_exact(gbb).enumerate() {
                let p = block.as_ptr();
                // SAFETY: a group block is `gbb` bytes: scales at 0, Q4_1's minimums at
                // 16, code chunks at `codes_at + 32c` (c < 4); unaligned loads.
                let (d, m, packed) = unsafe {
                    (
                        _mm256_cvtph_ps(_mm_loadu_si128(p.cast())),
                        if $min {
                            _mm256_cvtph_ps(_mm_loadu_si128(p.add(16).cast()))
                        } else {
                            _mm256_setzero_ps()
                        },
                        [0, 1, 2, 3].map(|c| _mm256_loadu_si256(p.add(codes_at + 32 * c).cast())),
                    )
                };
                // Chunk c's low nibbles are values 4c.., its high nibbles 16 + 4c...
                let low = packed.map(|packed| _mm256_and_si256(packed, nibble));
                let high =
                    packed.map(|packed| _mm256_and_si256(_mm256_srli_epi16(packed, 4), nibble));
                for t in 0..T {
                    let xb = &xs[t][b];
                    let mut isum = block_isum!($dot, low, high, xb);
                    if !$min {
                        // Codes are q, weights q - 8: take 8·Σx back out, exactly.
                        isum = _mm256_sub_epi32(isum, _mm256_set1_epi32(8 * xb.sum));
                    }
                    let scale = _mm256_mul_ps(d, _mm256_set1_ps(xb.d));
                    acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), scale, acc[t]);
                    if $min {
                        mins[t] = _mm256_fmadd_ps(m, _mm256_set1_ps(xb.s), mins[t]);
                    }
                }
            }
            for t in 0..T {
                let out = if $min {
                    _mm256_add_ps(acc[t], mins[t])
                } else {
                    acc[t]
                };
                // SAFETY: `lanes[t]` is 8 f32.
                unsafe { _mm256_storeu_ps(lanes[t].as_mut_ptr(), out) };
            }
        }
    };
}

q4_kernel!(q4_1_avx2, "avx2,fma,f16c", dot_avx2, true);
q4_kernel!(q4_1_vnni, "avx2,fma,f16c,avxvnni", dot_vnni, true);
q4_kernel!(
    q4_1_vnni512,
    "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni",
    dot_vnni512,
    true
);
q4_kernel!(q4_0_avx2, "avx2,fma,f16c", dot_avx2, false);
q4_kernel!(q4_0_vnni, "avx2,fma,f16c,avxvnni", dot_vnni, false);
q4_kernel!(
    q4_0_vnni512,
    "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni",
    dot_vnni512,
    false
);

/// The signed int8 step of Q8_0: with VNNI, the offset codes `q + 128` go straight into
/// `vpdpbusd` and `128·Σx` comes out at the end; on plain AVX2 `maddubs` would saturate
/// on them (2·255·127 > i16::MAX), so the codes go back to signed and the sign moves onto
/// the activations (`|w| · sign(x, w)`: |pair| ≤ 2·128·127), with nothing to take out.
macro_rules! q8_dot_offset {
    ($acc:expr, $codes:expr, $x:expr) => {
        _mm256_dpbusd_avx_epi32($acc, $codes, $x)
    };
}
macro_rules! q8_dot_offset512 {
    ($acc:expr, $codes:expr, $x:expr) => {
        _mm256_dpbusd_epi32($acc, $codes, $x)
    };
}
macro_rules! q8_dot_signed {
    ($acc:expr, $codes:expr, $x:expr) => {{
        let signed = _mm256_xor_si256($codes, _mm256_set1_epi8(0x80u8 as i8));
        dot_avx2!($acc, _mm256_abs_epi8(signed), _mm256_sign_epi8($x, signed))
    }};
}

macro_rules! q8_0_kernel {
    ($name:ident, $features:literal, $dot:ident, $offset:expr) => {
        /// # Safety
        ///
        /// The CPU has the enabled features; `bytes` holds as many Q8_0 group blocks as
        /// each of `xs` has blocks.
        #[target_feature(enable = $features)]
        pub(super) unsafe fn $name<const T: usize>(
            bytes: &[u8],
            xs: [&[BlockQ8_1]; T],
            lanes: &mut [[f32; GROUP]; T],
        ) {
            let gbb = WeightFormat::Q8_0.group_block_bytes();
            let mut acc = [_mm256_setzero_ps(); T];
            for (b, block) in bytes.chunks_exact(gbb).enumerate() {
                let p = block.as_ptr();
                // SAFETY: a group block is 272 bytes: scales at 0, code chunks at
                // 16 + 32c (c < 8).
                let (d, codes) = unsafe {
                    (
                        _mm256_cvtph_ps(_mm_loadu_si128(p.cast())),
                        [0, 1, 2, 3, 4, 5, 6, 7]
                            .map(|c| _mm256_loadu_si256(p.add(16 + 32 * c).cast())),
                    )
                };
                for t in 0..T {
                    let xb = &xs[t][b];
                    let mut isum = _mm256_setzero_si256();
                    for c in 0..8 {
                        isum = $dot!(isum, codes[c], broadcast4!(xb.qs, 4 * c));
                    }
                    if $offset {
                        // The codes are q + 128: take 128·Σx back out, exactly.
                        isum = _mm256_sub_epi32(isum, _mm256_set1_epi32(128 * xb.sum));
                    }
                    let scale = _mm256_mul_ps(d, _mm256_set1_ps(xb.d));
                    acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), scale, acc[t]);
                }
            }
            for t in 0..T {
                // SAFETY: `lanes[t]` is 8 f32.
                unsafe { _mm256_storeu_ps(lanes[t].as_mut_ptr(), acc[t]) };
            }
        }
    };
}

q8_0_kernel!(q8_0_avx2, "avx2,fma,f16c", q8_dot_signed, false);
q8_0_kernel!(q8_0_vnni, "avx2,fma,f16c,avxvnni", q8_dot_offset, true);
q8_0_kernel!(
    q8_0_vnni512,
    "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni",
    q8_dot_offset512,
    true
);

/// Two consecutive groups' 256-bit vectors at `offset` of their group blocks, as one
/// 512-bit vector (the first group in the low half).
macro_rules! pair256 {
    ($p0:expr, $p1:expr, $offset:expr) => {
        _mm512_inserti64x4(
            _mm512_castsi256_si512(_mm256_loadu_si256($p0.add($offset).cast())),
            _mm256_loadu_si256($p1.add($offset).cast()),
            1,
        )
    };
}
/// Two consecutive groups' 8 f16 scales at `offset`, as 16 f32.
macro_rules! pair_scales {
    ($p0:expr, $p1:expr, $offset:expr) => {
        _mm512_cvtph_ps(_mm256_set_m128i(
            _mm_loadu_si128($p1.add($offset).cast()),
            _mm_loadu_si128($p0.add($offset).cast()),
        ))
    };
}

/// The 4-bit kernels on two groups at once (512-bit), lane for lane the operations of
/// `q4_kernel`.
macro_rules! q4_pair_kernel {
    ($name:ident, $min:literal) => {
        /// # Safety
        ///
        /// The CPU has AVX-512 F, BW, VL and VNNI (and AVX2, FMA, F16C); `bytes` holds two
        /// groups of as many group blocks as each of `xs` has blocks.
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
        pub(super) unsafe fn $name<const T: usize>(
            bytes: &[u8],
            xs: [&[BlockQ8_1]; T],
            lanes: &mut [[f32; 2 * GROUP]; T],
        ) {
            let format = if $min {
                WeightFormat::Q4_1
            } else {
                WeightFormat::Q4_0
            };
            let (gbb, codes_at) = (format.group_block_bytes(), format.codes_at());
            let (g0, g1) = bytes.split_at(bytes.len() / 2);
            let nibble = _mm512_set1_epi8(0x0F);
            let mut acc = [_mm512_setzero_ps(); T];
            let mut mins = [_mm512_setzero_ps(); T];
            for (b, (block0, block1)) in g0.chunks_exact(gbb).zip(g1.chunks_exact(gbb)).enumerate()
            {
                let (p0, p1) = (block0.as_ptr(), block1.as_ptr());
                // SAFETY: each group block is `gbb` bytes: scales at 0, Q4_1's minimums
                // at 16, code chunks at `codes_at + 32c` (c < 4); unaligned loads.
                let (d, m, packed) = unsafe {
                    (
                        pair_scales!(p0, p1, 0),
                        if $min {
                            pair_scales!(p0, p1, 16)
                        } else {
                            _mm512_setzero_ps()
                        },
                        [0, 1, 2, 3].map(|c| pair256!(p0, p1, codes_at + 32 * c)),
                    )
                };
                let low = packed.map(|packed| _mm512_and_si512(packed, nibble));
                let high =
                    packed.map(|packed| _mm512_and_si512(_mm512_srli_epi16(packed, 4), nibble));
                for t in 0..T {
                    let xb = &xs[t][b];
                    let mut isum = block_isum512!(low, high, xb);
                    if !$min {
                        isum = _mm512_sub_epi32(isum, _mm512_set1_epi32(8 * xb.sum));
                    }
                    let scale = _mm512_mul_ps(d, _mm512_set1_ps(xb.d));
                    acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), scale, acc[t]);
                    if $min {
                        mins[t] = _mm512_fmadd_ps(m, _mm512_set1_ps(xb.s), mins[t]);
                    }
                }
            }
            for t in 0..T {
                let out = if $min {
                    _mm512_add_ps(acc[t], mins[t])
                } else {
                    acc[t]
                };
                // SAFETY: `lanes[t]` is 16 f32.
                unsafe { _mm512_storeu_ps(lanes[t].as_mut_ptr(), out) };
            }
        }
    };
}

/// Activation codes `qs[at..at + 4]` in every 32-bit lane of a 512-bit vector.
macro_rules! broadcast4_512 {
    ($qs:expr, $at:expr) => {
        _mm512_set1_epi32(i32::from_le_bytes([
            $qs[$at] as u8,
            $qs[$at + 1] as u8,
            $qs[$at + 2] as u8,
            $qs[$at + 3] as u8,
        ]))
    };
}

q4_pair_kernel!(q4_1_pair512, true);
q4_pair_kernel!(q4_0_pair512, false);

/// Q8_0 on two groups at once (512-bit): lane for lane `q8_0_vnni512`.
///
/// # Safety
///
/// As [`q4_1_pair512`], for Q8_0 group blocks.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) unsafe fn q8_0_pair512<const T: usize>(
    bytes: &[u8],
    xs: [&[BlockQ8_1]; T],
    lanes: &mut [[f32; 2 * GROUP]; T],
) {
    let gbb = WeightFormat::Q8_0.group_block_bytes();
    let (g0, g1) = bytes.split_at(bytes.len() / 2);
    let mut acc = [_mm512_setzero_ps(); T];
    for (b, (block0, block1)) in g0.chunks_exact(gbb).zip(g1.chunks_exact(gbb)).enumerate() {
        let (p0, p1) = (block0.as_ptr(), block1.as_ptr());
        // SAFETY: each group block is 272 bytes: scales at 0, code chunks at 16 + 32c.
        let (d, codes) = unsafe {
            (
                pair_scales!(p0, p1, 0),
                [0, 1, 2, 3, 4, 5, 6, 7].map(|c| pair256!(p0, p1, 16 + 32 * c)),
            )
        };
        for t in 0..T {
            let xb = &xs[t][b];
            let mut isum = _mm512_setzero_si512();
            for (c, &codes) in codes.iter().enumerate() {
                isum = _mm512_dpbusd_epi32(isum, codes, broadcast4_512!(xb.qs, 4 * c));
            }
            isum = _mm512_sub_epi32(isum, _mm512_set1_epi32(128 * xb.sum));
            let scale = _mm512_mul_ps(d, _mm512_set1_ps(xb.d));
            acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), scale, acc[t]);
        }
    }
    for t in 0..T {
        // SAFETY: `lanes[t]` is 16 f32.
        unsafe { _mm512_storeu_ps(lanes[t].as_mut_ptr(), acc[t]) };
    }
}

/// Q5_0 (scales, nibbles, fifth bits; `w = d·(q - 16)`): the 4-bit kernel with each chunk's
/// fifth bits moved into bit 4 of its codes (see `layout`), and `16·Σx` taken out.
macro_rules! q5_0_kernel {
    ($name:ident, $features:literal, $dot:ident) => {
        /// # Safety
        ///
        /// The CPU has the enabled features; `bytes` holds as many Q5_0 group blocks as each
        /// of `xs` has blocks.
        #[target_feature(enable = $features)]
        pub(super) unsafe fn $name<const T: usize>(
            bytes: &[u8],
            xs: [&[BlockQ8_1]; T],
            lanes: &mut [[f32; GROUP]; T],
        ) {
            let gbb = WeightFormat::Q5_0.group_block_bytes();
            let (nibble, bit4) = (_mm256_set1_epi8(0x0F), _mm256_set1_epi8(0x10));
            let mut acc = [_mm256_setzero_ps(); T];
            for (b, block) in bytes.chunks_exact(gbb).enumerate() {
                let p = block.as_ptr();
                // SAFETY: a group block is 176 bytes: scales at 0, code chunks at 16 + 32c
                // (c < 4), fifth bits at 144; unaligned loads.
                let (d, packed, mut top) = unsafe {
                    (
                        _mm256_cvtph_ps(_mm_loadu_si128(p.cast())),
                        [0, 1, 2, 3].map(|c| _mm256_loadu_si256(p.add(16 + 32 * c).cast())),
                        _mm256_loadu_si256(p.add(144).cast()),
                    )
                };
                let mut low = [_mm256_setzero_si256(); 4];
                let mut high = [_mm256_setzero_si256(); 4];
                for c in 0..4 {
                    // Chunk c's fifth bits are bits c and 4 + c: after c shifts right, bits
                    // 0 and 4 of each byte.
                    low[c] = _mm256_or_si256(
                        _mm256_and_si256(packed[c], nibble),
                        _mm256_and_si256(_mm256_slli_epi16(top, 4), bit4),
                    );
                    high[c] = _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16(packed[c], 4), nibble),
                        _mm256_and_si256(top, bit4),
                    );
                    top = _mm256_srli_epi16(top, 1);
                }
                for t in 0..T {
                    let xb = &xs[t][b];
                    let mut isum = block_isum!($dot, low, high, xb);
                    isum = _mm256_sub_epi32(isum, _mm256_set1_epi32(16 * xb.sum));
                    let scale = _mm256_mul_ps(d, _mm256_set1_ps(xb.d));
                    acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), scale, acc[t]);
                }
            }
            for t in 0..T {
                // SAFETY: `lanes[t]` is 8 f32.
                unsafe { _mm256_storeu_ps(lanes[t].as_mut_ptr(), acc[t]) };
            }
        }
    };
}

q5_0_kernel!(q5_0_avx2, "avx2,fma,f16c", dot_avx2);
q5_0_kernel!(q5_0_vnni, "avx2,fma,f16c,avxvnni", dot_vnni);
q5_0_kernel!(
    q5_0_vnni512,
    "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni",
    dot_vnni512
);

/// Q4_K (`w = d·sc·q - dmin·m` per 32-value sub-block): per sub-block the 4-bit dot
/// products, the integer sum times the row's 6-bit scale (exact), then one fma with
/// `d · d_x`; the minimums as `dmin · m` (exact) times `s_x`, taken out at the end.
macro_rules! q4_k_kernel {
    ($name:ident, $features:literal, $dot:ident) => {
        /// # Safety
        ///
        /// The CPU has the enabled features; `bytes` holds Q4_K group blocks, each of `xs`
        /// 8 blocks per group block.
        #[target_feature(enable = $features)]
        pub(super) unsafe fn $name<const T: usize>(
            bytes: &[u8],
            xs: [&[BlockQ8_1]; T],
            lanes: &mut [[f32; GROUP]; T],
        ) {
            let gbb = WeightFormat::Q4_K.group_block_bytes();
            let nibble = _mm256_set1_epi8(0x0F);
            let mut acc = [_mm256_setzero_ps(); T];
            let mut mins = [_mm256_setzero_ps(); T];
            for (sb, block) in bytes.chunks_exact(gbb).enumerate() {
                let p = block.as_ptr();
                // SAFETY: a group block is 1184 bytes: `d` at 0, `dmin` at 16, scales at
                // 32 + 8j, minimums at 96 + 8j, sub-block j's code chunks at 160 + 128j + 32c.
                let (d, dmin) = unsafe {
                    (
                        _mm256_cvtph_ps(_mm_loadu_si128(p.cast())),
                        _mm256_cvtph_ps(_mm_loadu_si128(p.add(16).cast())),
                    )
                };
                for j in 0..8 {
                    // SAFETY: as above.
                    let (sc, m, packed) = unsafe {
                        (
                            _mm256_cvtepu8_epi32(_mm_loadl_epi64(p.add(32 + 8 * j).cast())),
                            _mm256_cvtepu8_epi32(_mm_loadl_epi64(p.add(96 + 8 * j).cast())),
                            [0, 1, 2, 3]
                                .map(|c| _mm256_loadu_si256(p.add(160 + 128 * j + 32 * c).cast())),
                        )
                    };
                    let min = _mm256_mul_ps(dmin, _mm256_cvtepi32_ps(m));
                    let low = packed.map(|packed| _mm256_and_si256(packed, nibble));
                    let high =
                        packed.map(|packed| _mm256_and_si256(_mm256_srli_epi16(packed, 4), nibble));
                    for t in 0..T {
                        let xb = &xs[t][8 * sb + j];
                        let mut isum = block_isum!($dot, low, high, xb);
                        isum = _mm256_mullo_epi32(isum, sc);
                        let scale = _mm256_mul_ps(d, _mm256_set1_ps(xb.d));
                        acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), scale, acc[t]);
                        mins[t] = _mm256_fmadd_ps(min, _mm256_set1_ps(xb.s), mins[t]);
                    }
                }
            }
            for t in 0..T {
                // SAFETY: `lanes[t]` is 8 f32.
                unsafe { _mm256_storeu_ps(lanes[t].as_mut_ptr(), _mm256_sub_ps(acc[t], mins[t])) };
            }
        }
    };
}

q4_k_kernel!(q4_k_avx2, "avx2,fma,f16c", dot_avx2);
q4_k_kernel!(q4_k_vnni, "avx2,fma,f16c,avxvnni", dot_vnni);
q4_k_kernel!(
    q4_k_vnni512,
    "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni",
    dot_vnni512
);

/// Q6_K (`w = d·sc·(q - 32)` per 16-value sub-block): per 32 values, each chunk's codes are
/// nibbles with two top bits moved into bits 4-5 (see `layout`); the two halves' integer
/// sums, less `32·Σx` of their half, times their i8 scales (exact), then one fma with
/// `d · d_x`.
macro_rules! q6_k_kernel {
    ($name:ident, $features:literal, $dot:ident) => {
        /// # Safety
        ///
        /// The CPU has the enabled features; `bytes` holds Q6_K group blocks, each of `xs`
        /// 8 blocks per group block.
        #[target_feature(enable = $features)]
        pub(super) unsafe fn $name<const T: usize>(
            bytes: &[u8],
            xs: [&[BlockQ8_1]; T],
            lanes: &mut [[f32; GROUP]; T],
        ) {
            let gbb = WeightFormat::Q6_K.group_block_bytes();
            let (nibble, bits45) = (_mm256_set1_epi8(0x0F), _mm256_set1_epi8(0x30));
            let mut acc = [_mm256_setzero_ps(); T];
            for (sb, block) in bytes.chunks_exact(gbb).enumerate() {
                let p = block.as_ptr();
                // SAFETY: a group block is 1680 bytes: `d` at 0.
                let d = unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p.cast())) };
                for j in 0..8 {
                    let at = 144 + 192 * j;
                    // SAFETY: scales of sub-block s at 16 + 8s (s < 16); 32 values j's code
                    // chunks at `at + 32c`, their top bits at `at + 128` and `at + 160`.
                    let (sc_low, sc_high, packed, mut top_low, mut top_high) = unsafe {
                        (
                            _mm256_cvtepi8_epi32(_mm_loadl_epi64(p.add(16 + 16 * j).cast())),
                            _mm256_cvtepi8_epi32(_mm_loadl_epi64(p.add(24 + 16 * j).cast())),
                            [0, 1, 2, 3].map(|c| _mm256_loadu_si256(p.add(at + 32 * c).cast())),
                            _mm256_loadu_si256(p.add(at + 128).cast()),
                            _mm256_loadu_si256(p.add(at + 160).cast()),
                        )
                    };
                    let mut low = [_mm256_setzero_si256(); 4];
                    let mut high = [_mm256_setzero_si256(); 4];
                    for c in 0..4 {
                        // Chunk c's top bits are bits 2c..2c + 2: after c shifts by 2, bits
                        // 0-1 of each byte, moved to 4-5.
                        low[c] = _mm256_or_si256(
                            _mm256_and_si256(packed[c], nibble),
                            _mm256_and_si256(_mm256_slli_epi16(top_low, 4), bits45),
                        );
                        high[c] = _mm256_or_si256(
                            _mm256_and_si256(_mm256_srli_epi16(packed[c], 4), nibble),
                            _mm256_and_si256(_mm256_slli_epi16(top_high, 4), bits45),
                        );
                        top_low = _mm256_srli_epi16(top_low, 2);
                        top_high = _mm256_srli_epi16(top_high, 2);
                    }
                    for t in 0..T {
                        let xb = &xs[t][8 * sb + j];
                        let mut sum_low = _mm256_setzero_si256();
                        let mut sum_high = _mm256_setzero_si256();
                        for c in 0..4 {
                            sum_low = $dot!(sum_low, low[c], broadcast4!(xb.qs, 4 * c));
                            sum_high = $dot!(sum_high, high[c], broadcast4!(xb.qs, 16 + 4 * c));
                        }
                        // Codes are q, weights q - 32: take 32·Σx of each half back out.
                        sum_low = _mm256_sub_epi32(sum_low, _mm256_set1_epi32(32 * xb.sum_low));
                        sum_high = _mm256_sub_epi32(
                            sum_high,
                            _mm256_set1_epi32(32 * (xb.sum - xb.sum_low)),
                        );
                        let isum = _mm256_add_epi32(
                            _mm256_mullo_epi32(sum_low, sc_low),
                            _mm256_mullo_epi32(sum_high, sc_high),
                        );
                        let scale = _mm256_mul_ps(d, _mm256_set1_ps(xb.d));
                        acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), scale, acc[t]);
                    }
                }
            }
            for t in 0..T {
                // SAFETY: `lanes[t]` is 8 f32.
                unsafe { _mm256_storeu_ps(lanes[t].as_mut_ptr(), acc[t]) };
            }
        }
    };
}

q6_k_kernel!(q6_k_avx2, "avx2,fma,f16c", dot_avx2);
q6_k_kernel!(q6_k_vnni, "avx2,fma,f16c,avxvnni", dot_vnni);
q6_k_kernel!(
    q6_k_vnni512,
    "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni",
    dot_vnni512
);

/// Q5_0 on two groups at once (512-bit): lane for lane the operations of `q5_0_kernel`.
///
/// # Safety
///
/// As [`q4_1_pair512`], for Q5_0 group blocks.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) unsafe fn q5_0_pair512<const T: usize>(
    bytes: &[u8],
    xs: [&[BlockQ8_1]; T],
    lanes: &mut [[f32; 2 * GROUP]; T],
) {
    let gbb = WeightFormat::Q5_0.group_block_bytes();
    let (g0, g1) = bytes.split_at(bytes.len() / 2);
    let (nibble, bit4) = (_mm512_set1_epi8(0x0F), _mm512_set1_epi8(0x10));
    let mut acc = [_mm512_setzero_ps(); T];
    for (b, (block0, block1)) in g0.chunks_exact(gbb).zip(g1.chunks_exact(gbb)).enumerate() {
        let (p0, p1) = (block0.as_ptr(), block1.as_ptr());
        // SAFETY: each group block is 176 bytes: scales at 0, code chunks at 16 + 32c, fifth
        // bits at 144.
        let (d, packed, mut top) = unsafe {
            (
                pair_scales!(p0, p1, 0),
                [0, 1, 2, 3].map(|c| pair256!(p0, p1, 16 + 32 * c)),
                pair256!(p0, p1, 144),
            )
        };
        let mut low = [_mm512_setzero_si512(); 4];
        let mut high = [_mm512_setzero_si512(); 4];
        for c in 0..4 {
            low[c] = _mm512_or_si512(
                _mm512_and_si512(packed[c], nibble),
                _mm512_and_si512(_mm512_slli_epi16(top, 4), bit4),
            );
            high[c] = _mm512_or_si512(
                _mm512_and_si512(_mm512_srli_epi16(packed[c], 4), nibble),
                _mm512_and_si512(top, bit4),
            );
            top = _mm512_srli_epi16(top, 1);
        }
        for t in 0..T {
            let xb = &xs[t][b];
            let mut isum = block_isum512!(low, high, xb);
            isum = _mm512_sub_epi32(isum, _mm512_set1_epi32(16 * xb.sum));
            let scale = _mm512_mul_ps(d, _mm512_set1_ps(xb.d));
            acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), scale, acc[t]);
        }
    }
    for t in 0..T {
        // SAFETY: `lanes[t]` is 16 f32.
        unsafe { _mm512_storeu_ps(lanes[t].as_mut_ptr(), acc[t]) };
    }
}
