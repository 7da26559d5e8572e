//! The group layout: a GGUF block written as one lane of a group block, and read back.
//!
//! Every format keeps its codes per 32 values the same way: lane `r` of 32-byte chunk `c`
//! holds 4 bytes whose low nibbles are values `4c..4c + 4` and whose high nibbles are values
//! `16 + 4c..16 + 4c + 4` (Q4_0 and Q4_1 bytes as the GGUF has them). Wider codes add their
//! top bits in 32-byte vectors of the same byte positions:
//!
//! - Q5_0: one vector; bit `c` of a byte is value `4c + i`'s fifth bit, bit `4 + c` value
//!   `16 + 4c + i`'s;
//! - Q6_K: two vectors, for values `0..16` then `16..32`; bits `2c..2c + 2` of a byte are
//!   value `4c + i`'s (or `16 + 4c + i`'s) top two bits.
//!
//! So a kernel gets chunk `c`'s codes by masking nibbles and shifting the top-bit vectors
//! right by a constant step per chunk.
//!
//! | format | group block (8 rows) |
//! |---|---|
//! | Q4_0 | `d` ×8 f16 · codes 4 × 32 |
//! | Q4_1 | `d` ×8 · `m` ×8 · codes |
//! | Q5_0 | `d` ×8 · codes · fifth bits 32 |
//! | Q8_0 | `d` ×8 · 8 chunks × 32 of `q + 128` (4 values per lane) |
//! | Q4_K | `d` ×8 · `dmin` ×8 · `sc` \[8\]\[8 rows\] u8 · `m` likewise · 8 × codes |
//! | Q6_K | `d` ×8 · `sc` \[16\]\[8 rows\] i8 · per 32 values: codes · top bits 2 × 32 |

use half::f16;
use mlinfra_data::tensor::{q4_k_scale_min, q5_codes};

use super::{BLOCK, GROUP, WeightFormat};

/// Writes GGUF block `src` of `format` as lane `lane` of group block `dst`.
pub(super) fn write_lane(format: WeightFormat, src: &[u8], dst: &mut [u8], lane: usize) {
    let mut put_f16 = |at: usize, bytes: &[u8]| {
        dst[at + 2 * lane..at + 2 * lane + 2].copy_from_slice(bytes);
    };
    match format {
        WeightFormat::Q4_0 => {
            put_f16(0, &src[0..2]);
            put_codes(&mut dst[16..144], lane, &q4_codes(&src[2..18]));
        }
        WeightFormat::Q4_1 => {
            put_f16(0, &src[0..2]);
            put_f16(16, &src[2..4]);
            put_codes(&mut dst[32..160], lane, &q4_codes(&src[4..20]));
        }
        WeightFormat::Q5_0 => {
            put_f16(0, &src[0..2]);
            let mut qh = [0u8; 4];
            let mut qs = [0u8; 16];
            qh.copy_from_slice(&src[2..6]);
            qs.copy_from_slice(&src[6..22]);
            let codes = q5_codes(qh, &qs);
            put_codes(&mut dst[16..144], lane, &codes);
            put_top_bits(&mut dst[144..176], lane, &codes, 1);
        }
        WeightFormat::Q8_0 => {
            put_f16(0, &src[0..2]);
            for c in 0..8 {
                for i in 0..4 {
                    // i8 + 128 as u8: unsigned for `vpdpbusd`.
                    dst[16 + 32 * c + 4 * lane + i] = src[2 + 4 * c + i] ^ 0x80;
                }
            }
        }
        WeightFormat::Q4_K => {
            put_f16(0, &src[0..2]);
            put_f16(16, &src[2..4]);
            for j in 0..8 {
                let (sc, m) = q4_k_scale_min(j, &src[4..16]);
                dst[32 + 8 * j + lane] = sc;
                dst[96 + 8 * j + lane] = m;
            }
            // A 32-byte run holds sub-block 2·pair in its low nibbles, 2·pair + 1 in its high.
            for (pair, qs) in src[16..144].chunks_exact(32).enumerate() {
                for (half, shift) in [(0, 0), (1, 4)] {
                    let codes: [u8; BLOCK] = std::array::from_fn(|i| (qs[i] >> shift) & 0x0F);
                    let j = 2 * pair + half;
                    put_codes(&mut dst[160 + 128 * j..][..128], lane, &codes);
                }
            }
        }
        WeightFormat::Q6_K => {
            put_f16(0, &src[208..210]);
            for s in 0..16 {
                dst[16 + GROUP * s + lane] = src[192 + s];
            }
            let codes = q6_k_codes(src);
            for (j, codes) in codes.chunks_exact(BLOCK).enumerate() {
                let at = 144 + 192 * j;
                let codes: &[u8; BLOCK] = codes.try_into().expect("32 codes");
                put_codes(&mut dst[at..at + 128], lane, codes);
                put_top_bits(&mut dst[at + 128..at + 192], lane, codes, 2);
            }
        }
    }
}

/// The 32 codes of a Q4_0 / Q4_1 block's 16 bytes (byte `j`: value `j` low, `16 + j` high).
fn q4_codes(bytes: &[u8]) -> [u8; BLOCK] {
    std::array::from_fn(|v| {
        let byte = bytes[v % 16];
        if v < 16 { byte & 0x0F } else { byte >> 4 }
    })
}

/// The 256 six-bit codes of a Q6_K block (ggml's `dequantize_row_q6_K` order): each half of
/// 128 values takes 64 bytes of low nibbles `ql` and 32 bytes of top bits `qh`; value
/// `l + 32k` of a half combines a nibble of `ql[l + 32(k % 2)]` (low for k < 2) with bits
/// `2k..2k + 2` of `qh[l]`.
fn q6_k_codes(src: &[u8]) -> [u8; 256] {
    let mut codes = [0u8; 256];
    for half in 0..2 {
        let ql = &src[64 * half..64 * half + 64];
        let qh = &src[128 + 32 * half..128 + 32 * half + 32];
        let out = &mut codes[128 * half..128 * half + 128];
        for l in 0..32 {
            let top = |k: u32| ((qh[l] >> (2 * k)) & 3) << 4;
            out[l] = (ql[l] & 0x0F) | top(0);
            out[l + 32] = (ql[l + 32] & 0x0F) | top(1);
            out[l + 64] = (ql[l] >> 4) | top(2);
            out[l + 96] = (ql[l + 32] >> 4) | top(3);
        }
    }
    codes
}

/// Lane `lane` of 4 code chunks (`dst`, 128 bytes): the low nibbles of 32 codes.
fn put_codes(dst: &mut [u8], lane: usize, codes: &[u8; BLOCK]) {
    for c in 0..4 {
        for i in 0..4 {
            dst[32 * c + 4 * lane + i] = (codes[4 * c + i] & 0x0F) | (codes[16 + 4 * c + i] << 4);
        }
    }
}

/// Lane `lane` of the top-bit vectors (`dst`: 32 bytes for `width` 1, 64 for 2) of 32 codes.
fn put_top_bits(dst: &mut [u8], lane: usize, codes: &[u8; BLOCK], width: u32) {
    for i in 0..4 {
        let top = |v: usize| codes[v] >> 4;
        if width == 1 {
            let byte = (0..4).fold(0u8, |byte, c| {
                byte | (top(4 * c + i) & 1) << c | (top(16 + 4 * c + i) & 1) << (4 + c)
            });
            dst[4 * lane + i] = byte;
        } else {
            for (half, at) in [(0, 0), (16, 32)] {
                let byte =
                    (0..4).fold(0u8, |byte, c| byte | (top(half + 4 * c + i) & 3) << (2 * c));
                dst[at + 4 * lane + i] = byte;
            }
        }
    }
}

/// The f16 at `bytes[at..at + 2]`, widened.
pub(super) fn f16_at(bytes: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

/// Lane `lane`'s scale `d` (and the second f16 of formats that have one: Q4_1's `m`, Q4_K's
/// `dmin`) in group block `block`.
pub(super) fn lane_scales(block: &[u8], lane: usize) -> (f32, f32) {
    (f16_at(block, 2 * lane), f16_at(block, 16 + 2 * lane))
}

/// Lane `lane`'s 32 codes from 4 code chunks (`codes`, 128 bytes) and, for wider codes, the
/// top-bit vectors (`top`: 32 bytes of width 1 or 64 of width 2; empty for 4-bit codes).
pub(super) fn lane_codes(codes: &[u8], top: &[u8], lane: usize) -> [u8; BLOCK] {
    std::array::from_fn(|v| {
        let (c, i, high) = ((v % 16) / 4, v % 4, v >= 16);
        let byte = codes[32 * c + 4 * lane + i];
        let nibble = if high { byte >> 4 } else { byte & 0x0F };
        let bits = match top.len() {
            32 => (top[4 * lane + i] >> (c + 4 * usize::from(high))) & 1,
            64 => (top[32 * usize::from(high) + 4 * lane + i] >> (2 * c)) & 3,
            _ => 0,
        };
        nibble | bits << 4
    })
}

/// Lane `lane`'s 32 Q8_0 codes from a group block.
pub(super) fn lane_q8_0(block: &[u8], lane: usize) -> [i8; BLOCK] {
    std::array::from_fn(|v| (block[16 + 32 * (v / 4) + 4 * lane + v % 4] ^ 0x80) as i8)
}

/// Row `lane`'s values in group block `block` of `format` (`out`: the block's values), as
/// ggml's reference dequantization computes them.
pub(super) fn read_lane(format: WeightFormat, block: &[u8], lane: usize, out: &mut [f32]) {
    let (d, second) = lane_scales(block, lane);
    match format {
        WeightFormat::Q4_0 => {
            let codes = lane_codes(&block[16..144], &[], lane);
            for (y, q) in out.iter_mut().zip(codes) {
                *y = (f32::from(q) - 8.0) * d;
            }
        }
        WeightFormat::Q4_1 => {
            let codes = lane_codes(&block[32..160], &[], lane);
            for (y, q) in out.iter_mut().zip(codes) {
                *y = f32::from(q) * d + second;
            }
        }
        WeightFormat::Q5_0 => {
            let codes = lane_codes(&block[16..144], &block[144..176], lane);
            for (y, q) in out.iter_mut().zip(codes) {
                *y = (f32::from(q) - 16.0) * d;
            }
        }
        WeightFormat::Q8_0 => {
            for (y, q) in out.iter_mut().zip(lane_q8_0(block, lane)) {
                *y = f32::from(q) * d;
            }
        }
        WeightFormat::Q4_K => {
            for (j, out) in out.chunks_exact_mut(BLOCK).enumerate() {
                let scale = d * f32::from(block[32 + 8 * j + lane]);
                let min = second * f32::from(block[96 + 8 * j + lane]);
                let codes = lane_codes(&block[160 + 128 * j..][..128], &[], lane);
                for (y, q) in out.iter_mut().zip(codes) {
                    *y = scale * f32::from(q) - min;
                }
            }
        }
        WeightFormat::Q6_K => {
            for (j, out) in out.chunks_exact_mut(BLOCK).enumerate() {
                let at = 144 + 192 * j;
                let codes = lane_codes(&block[at..at + 128], &block[at + 128..at + 192], lane);
                for (v, (y, q)) in out.iter_mut().zip(codes).enumerate() {
                    let sc = block[16 + GROUP * (2 * j + v / 16) + lane] as i8;
                    *y = d * f32::from(sc) * f32::from(q as i8 - 32);
                }
            }
        }
    }
}
