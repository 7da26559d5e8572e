//! One hand-built block per type, with the expected values worked out by hand from ggml's
//! block layouts. Scales are chosen so that every product is exact in `f32`: the expected
//! values are then exact too, and compared bit for bit (which also pins the sign of zeros).

use super::*;

/// Asserts `got` and `want` are bit-identical, element by element.
fn assert_bits(got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.to_bits(), w.to_bits(), "element {i}: got {g}, want {w}");
    }
}

const F16_ONE: [u8; 2] = 0x3C00u16.to_le_bytes(); // 1.0
const F16_HALF: [u8; 2] = 0x3800u16.to_le_bytes(); // 0.5
const F16_QUARTER: [u8; 2] = 0x3400u16.to_le_bytes(); // 0.25
const F16_TWO: [u8; 2] = 0x4000u16.to_le_bytes(); // 2.0
const F16_MINUS_ONE: [u8; 2] = 0xBC00u16.to_le_bytes(); // -1.0

#[test]
fn plain_types_widen_exactly() {
    // f16: 1.0, -2.0, max normal 65504, min subnormal 2^-24, +inf, -0.0.
    let f16s: Vec<u8> = [0x3C00u16, 0xC000, 0x7BFF, 0x0001, 0x7C00, 0x8000]
        .iter()
        .flat_map(|b| b.to_le_bytes())
        .collect();
    let want = [1.0, -2.0, 65504.0, 2f32.powi(-24), f32::INFINITY, -0.0];
    assert_bits(&dequantize(GgmlType::F16, &f16s).unwrap(), &want);

    // bf16 is the top half of an f32: 0x3F80 -> 1.0, 0xC040 -> -3.0, 0x0001 -> the f32 with
    // bits 0x0001_0000 (a subnormal, 2^-133), 0xFF80 -> -inf.
    let bf16s: Vec<u8> = [0x3F80u16, 0xC040, 0x0001, 0xFF80]
        .iter()
        .flat_map(|b| b.to_le_bytes())
        .collect();
    let want = [1.0, -3.0, f32::from_bits(0x0001_0000), f32::NEG_INFINITY];
    assert_bits(&dequantize(GgmlType::BF16, &bf16s).unwrap(), &want);

    let f32s: Vec<u8> = [1.5f32, -0.0, f32::MIN_POSITIVE]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    assert_bits(
        &dequantize(GgmlType::F32, &f32s).unwrap(),
        &[1.5, -0.0, f32::MIN_POSITIVE],
    );
}

#[test]
fn q8_0_block() {
    // d = 0.5; quants q[k] = k - 16 (so -16..=15), except q[0] = 127 and q[1] = -128.
    // y = q * d: y[0] = 63.5, y[1] = -64, y[k] = (k - 16) / 2 otherwise (y[2] = -7, y[31] = 7.5).
    let mut block = F16_HALF.to_vec();
    block.extend((0..32).map(|k| (k as i8 - 16) as u8));
    block[2] = 127;
    block[3] = (-128i8) as u8;
    let mut want: Vec<f32> = (0..32).map(|k| (k as f32 - 16.0) / 2.0).collect();
    want[0] = 63.5;
    want[1] = -64.0;
    let got = dequantize(GgmlType::Q8_0, &block).unwrap();
    assert_bits(&got, &want);
    assert_eq!((got[2], got[31]), (-7.0, 7.5));
}

#[test]
fn q4_0_block() {
    // d = 2; byte j = j | (15 - j) << 4, so element j has nibble j and element j + 16 has
    // nibble 15 - j. y = (q - 8) * d: y[j] = 2(j - 8), y[j + 16] = 2(7 - j).
    // So y[0] = -16, y[8] = 0, y[15] = 14, y[16] = 14, y[31] = -16.
    let mut block = F16_TWO.to_vec();
    block.extend((0..16u8).map(|j| j | (15 - j) << 4));
    let mut want = vec![0.0; 32];
    for j in 0..16 {
        want[j] = 2.0 * (j as f32 - 8.0);
        want[j + 16] = 2.0 * (7.0 - j as f32);
    }
    let got = dequantize(GgmlType::Q4_0, &block).unwrap();
    assert_bits(&got, &want);
    assert_eq!(
        (got[0], got[15], got[16], got[31]),
        (-16.0, 14.0, 14.0, -16.0)
    );
}

#[test]
fn q4_1_block() {
    // d = 0.25, m = -1; nibbles as in Q4_0 (element j: j, element j + 16: 15 - j).
    // y = q * d + m: y[j] = j/4 - 1, y[j + 16] = (15 - j)/4 - 1.
    // So y[0] = -1, y[4] = 0, y[15] = 2.75, y[16] = 2.75, y[31] = -1.
    let mut block = F16_QUARTER.to_vec();
    block.extend(F16_MINUS_ONE);
    block.extend((0..16u8).map(|j| j | (15 - j) << 4));
    let mut want = vec![0.0; 32];
    for j in 0..16 {
        want[j] = j as f32 / 4.0 - 1.0;
        want[j + 16] = (15 - j) as f32 / 4.0 - 1.0;
    }
    let got = dequantize(GgmlType::Q4_1, &block).unwrap();
    assert_bits(&got, &want);
    assert_eq!((got[0], got[4], got[15], got[31]), (-1.0, 0.0, 2.75, -1.0));
}

#[test]
fn q5_0_and_q5_1_blocks() {
    // Nibbles as in Q4_0 (element j: j, element j + 16: 15 - j); fifth bits qh = 0xAAAA_0F0F
    // (little-endian): elements 0-3 and 8-11 set, 16-31 alternate starting unset (bit 17, 19...).
    // So code[j] = nibble + 16 where the bit is set: code[0] = 16, code[4] = 4, code[11] = 27,
    // code[16] = 15 (bit 16 unset), code[17] = 30 (14 + 16), code[31] = 16.
    let qh = 0xAAAA_0F0Fu32;
    let nibbles: Vec<u8> = (0..16u8).map(|j| j | (15 - j) << 4).collect();
    let code = |e: usize| {
        let nibble = if e < 16 { e } else { 31 - e } as f32;
        nibble + if qh >> e & 1 == 1 { 16.0 } else { 0.0 }
    };
    assert_eq!(
        (code(0), code(4), code(11), code(16), code(17), code(31)),
        (16.0, 4.0, 27.0, 15.0, 30.0, 16.0)
    );

    // Q5_0, d = 2: y = (q - 16) * d.
    let mut block = F16_TWO.to_vec();
    block.extend(qh.to_le_bytes());
    block.extend(&nibbles);
    let want: Vec<f32> = (0..32).map(|e| (code(e) - 16.0) * 2.0).collect();
    let got = dequantize(GgmlType::Q5_0, &block).unwrap();
    assert_bits(&got, &want);
    assert_eq!((got[0], got[4], got[17]), (0.0, -24.0, 28.0));

    // Q5_1, d = 0.5, m = -1: y = q * d + m.
    let mut block = F16_HALF.to_vec();
    block.extend(F16_MINUS_ONE);
    block.extend(qh.to_le_bytes());
    block.extend(&nibbles);
    let want: Vec<f32> = (0..32).map(|e| code(e) * 0.5 - 1.0).collect();
    let got = dequantize(GgmlType::Q5_1, &block).unwrap();
    assert_bits(&got, &want);
    assert_eq!((got[0], got[11], got[31]), (7.0, 12.5, 7.0));
}

#[test]
fn q4_k_block() {
    // d = 1, dmin = 0.5. Sub-block scales sc = [1, 2, 3, 4, 33, 40, 63, 17] and minimums
    // m = [0, 1, 2, 3, 20, 50, 5, 63]; values >= 16 in sub-blocks 4-7 exercise the top bits.
    // Packing (the inverse of get_scale_min_k4), for j in 0..4:
    //   byte j     = sc[j] | (sc[j+4] >> 4) << 6   -> 1|2<<6, 2|2<<6, 3|3<<6, 4|1<<6
    //   byte j + 4 = m[j]  | (m[j+4]  >> 4) << 6   -> 0|1<<6, 1|3<<6, 2|0<<6, 3|3<<6
    //   byte j + 8 = (sc[j+4] & 15) | (m[j+4] & 15) << 4 -> 1|4<<4, 8|2<<4, 15|5<<4, 1|15<<4
    let scales = [
        0x81, 0x82, 0xC3, 0x44, 0x40, 0xC1, 0x02, 0xC3, 0x41, 0x28, 0x5F, 0xF1,
    ];
    let sc = [1.0, 2.0, 3.0, 4.0, 33.0, 40.0, 63.0, 17.0];
    let m = [0.0, 1.0, 2.0, 3.0, 20.0, 50.0, 5.0, 63.0];
    // Nibble bytes: byte 32c + l (c = 0..4, l = 0..32) holds element 64c + l (low nibble,
    // sub-block 2c) and element 64c + 32 + l (high nibble, sub-block 2c + 1). Choose low
    // = l % 16 and high = 15 - l % 16.
    let mut block = F16_ONE.to_vec();
    block.extend(F16_HALF);
    block.extend(scales);
    block.extend((0..128).map(|i| {
        let l = (i % 16) as u8;
        l | (15 - l) << 4
    }));
    // y = (d * sc) * q - dmin * m, e.g. y[1] = 1*1 - 0 = 1; y[32] = 2*15 - 0.5 = 29.5;
    // y[128] = 33*0 - 10 = -10; y[133] = 33*5 - 10 = 155; y[224] = 17*15 - 31.5 = 223.5;
    // y[255] = 17*0 - 31.5 = -31.5.
    let mut want = vec![0.0; 256];
    for (i, w) in want.iter_mut().enumerate() {
        let sub = i / 32;
        let l = (i % 32 % 16) as f32;
        let q = if sub % 2 == 0 { l } else { 15.0 - l };
        *w = sc[sub] * q - 0.5 * m[sub];
    }
    let got = dequantize(GgmlType::Q4_K, &block).unwrap();
    assert_bits(&got, &want);
    assert_eq!(
        (got[1], got[32], got[128], got[133], got[224], got[255]),
        (1.0, 29.5, -10.0, 155.0, 223.5, -31.5)
    );
}

#[test]
fn q6_k_block() {
    // ql = 0x21 everywhere (low nibble 1, high nibble 2); qh = 0xE4 = 0b11_10_01_00 (bit pairs
    // 0, 1, 2, 3 from the bottom); scales sc[s] = s - 8 (s = 0..16, so -8..=7); d = 0.5.
    // Within each 128-element half, element l + 32k takes (k = 0) low nibble | pair 0 << 4 =
    // 1, (k = 1) low | pair 1 << 4 = 17, (k = 2) high | pair 2 << 4 = 34, (k = 3) high | pair
    // 3 << 4 = 50; minus 32: q = -31, -15, 2, 18. Its 16-element group is i / 16, so
    // y[i] = (0.5 * sc[i / 16]) * q[(i % 128) / 32]:
    // y[0] = -4 * -31 = 124; y[32] = -3 * -15 = 45; y[64] = -2 * 2 = -4; y[96] = -1 * 18 = -18;
    // y[128] = (0.5 * 0) * -31 = -0.0 (a negative zero); y[255] = 3.5 * 18 = 63.
    let mut block = vec![0x21; 128];
    block.extend([0xE4; 64]);
    block.extend((0..16).map(|s| (s as i8 - 8) as u8));
    block.extend(F16_HALF);
    let q = [-31.0, -15.0, 2.0, 18.0];
    let want: Vec<f32> = (0..256)
        .map(|i| (0.5 * (i / 16) as f32 - 4.0) * q[(i % 128) / 32])
        .collect();
    let got = dequantize(GgmlType::Q6_K, &block).unwrap();
    assert_bits(&got, &want);
    assert_bits(
        &[got[0], got[32], got[64], got[96], got[128], got[255]],
        &[124.0, 45.0, -4.0, -18.0, -0.0, 63.0],
    );
}

#[test]
fn blocks_are_laid_out_one_after_another() {
    // Two Q8_0 blocks: the second block's scale applies to elements 32..64 only.
    let mut bytes = F16_ONE.to_vec();
    bytes.extend([1; 32]);
    bytes.extend(F16_TWO);
    bytes.extend([3; 32]);
    let got = dequantize(GgmlType::Q8_0, &bytes).unwrap();
    assert_eq!(got.len(), 64);
    assert!(got[..32].iter().all(|&y| y == 1.0));
    assert!(got[32..].iter().all(|&y| y == 6.0));
}

#[test]
fn other_types_are_not_dequantized() {
    for ty in [
        GgmlType::Q5_K,
        GgmlType::Q2_K,
        GgmlType::IQ4_NL,
        GgmlType::I32,
    ] {
        assert_eq!(dequantize(ty, &vec![0; ty.type_size()]), None, "{ty}");
    }
}
