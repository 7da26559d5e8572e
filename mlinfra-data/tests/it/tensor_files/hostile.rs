//! Hostile input: every malformation is a typed error naming the field and its byte offset,
//! and no input (truncated, bit-flipped) panics.

use super::writer::{self, Gguf, array, string};
use super::{REFERENCE_GGUF, REFERENCE_ST, malformed};
use mlinfra_data::Error;
use mlinfra_data::tensor::{GgufFile, SafetensorsFile, TensorFormat};

fn what(gguf: &Gguf) -> String {
    malformed(&gguf.bytes(), TensorFormat::Gguf)
}

/// A file with one metadata entry `k` of type `value_type`; the value starts at byte 37
/// (24-byte preamble, 8 + 1 bytes of key, 4 bytes of type).
fn one_kv(value_type: u32, value: &[u8]) -> Gguf {
    let mut gguf = Gguf::new(3);
    gguf.kv_raw(b"k", value_type, value);
    gguf
}

const VALUE_AT: usize = 37;

/// A file with one tensor info `t`, no data. Returns it and the info's offset.
fn one_info(dims: &[u64], ggml_type: u32, offset: u64) -> (Gguf, usize) {
    let mut gguf = Gguf::new(3);
    gguf.info(b"t", dims, ggml_type, offset);
    let at = gguf.infos_start();
    (gguf, at)
}

#[test]
fn not_a_gguf_file() {
    assert_eq!(
        malformed(b"", TensorFormat::Gguf),
        "magic at byte 0 runs past the end of the file (0 bytes)"
    );
    assert_eq!(
        malformed(b"GGML\x03\0\0\0", TensorFormat::Gguf),
        "magic at byte 0 is [47, 47, 4d, 4c], not \"GGUF\" (47 47 55 46): not a GGUF file"
    );
}

#[test]
fn unsupported_versions_are_named() {
    let with_version = |bytes: [u8; 4]| {
        let mut file = b"GGUF".to_vec();
        file.extend(bytes);
        file.extend([0; 16]);
        malformed(&file, TensorFormat::Gguf)
    };
    assert_eq!(
        with_version(1u32.to_le_bytes()),
        "GGUF version 1 at byte 4 is not supported (versions 2 and 3 are)"
    );
    assert_eq!(
        with_version(3u32.to_be_bytes()),
        "version at byte 4 reads as 0x03000000, a byte-swapped 3: big-endian GGUF files are \
         not supported"
    );
    assert_eq!(
        with_version(0u32.to_le_bytes()),
        "GGUF version 0 at byte 4 is not supported (versions 2 and 3 are)"
    );
    assert_eq!(
        with_version(4u32.to_le_bytes()),
        "GGUF version 4 at byte 4 is not supported (versions 2 and 3 are)"
    );
}

#[test]
fn huge_counts_are_refused_before_any_work() {
    let mut gguf = Gguf::new(3);
    gguf.n_tensors = 1 << 60;
    assert_eq!(
        what(&gguf),
        "tensor count 1152921504606846976 at byte 8 cannot fit in the file: each takes at \
         least 24 bytes and only 8 remain"
    );
    let mut gguf = Gguf::new(3);
    gguf.n_kv = u64::MAX;
    assert_eq!(
        what(&gguf),
        "metadata key-value count 18446744073709551615 at byte 16 cannot fit in the file: each \
         takes at least 13 bytes and only 0 remain"
    );
}

#[test]
fn a_huge_string_length_names_the_key_and_offset() {
    let mut gguf = Gguf::new(3);
    gguf.kv_str("general.architecture", "llama");
    // The value of key 1 starts after key 0, 8 + 12 bytes of key and 4 of type.
    let at = Gguf::KV_START + gguf.kv.len() + 8 + 12 + 4;
    let mut value = i64::MAX.to_le_bytes().to_vec();
    value.push(b'x');
    gguf.kv_raw(b"general.name", writer::STRING, &value);
    let len = gguf.bytes().len();
    assert_eq!(
        what(&gguf),
        format!(
            "metadata key 1 (`general.name`): string length 9223372036854775807 at byte {at} \
             runs past the end of the file ({len} bytes)"
        )
    );
    assert_eq!((at, len), (93, 102));
}

#[test]
fn a_huge_key_length_is_refused() {
    let mut gguf = Gguf::new(3);
    gguf.n_kv = 1;
    gguf.kv = u64::MAX.to_le_bytes().to_vec();
    gguf.kv.extend([0; 8]);
    assert_eq!(
        what(&gguf),
        "metadata key 0: key length 18446744073709551615 at byte 24 runs past the end of the \
         file (40 bytes)"
    );
}

#[test]
fn invalid_utf8_is_refused_in_keys_values_and_names() {
    let mut gguf = Gguf::new(3);
    gguf.kv_raw(b"gen\xFFeral", writer::U8, &[1]);
    assert_eq!(
        what(&gguf),
        "metadata key 0: key at byte 32 is not valid UTF-8 (bad byte at 35)"
    );
    // A truncated two-byte sequence at the end of the string.
    assert_eq!(
        what(&one_kv(writer::STRING, &string(b"ok\xC3"))),
        "metadata key 0 (`k`): string at byte 45 is not valid UTF-8 (bad byte at 47)"
    );
    let mut gguf = Gguf::new(3);
    gguf.info(b"\xFF", &[1], writer::GGML_F32, 0);
    assert_eq!(
        what(&gguf),
        "tensor 0: name at byte 32 is not valid UTF-8 (bad byte at 32)"
    );
}

#[test]
fn unknown_value_types_are_refused() {
    assert_eq!(
        what(&one_kv(13, &[0; 8])),
        "metadata key 0 (`k`): unknown value type 13 at byte 33"
    );
    assert_eq!(
        what(&one_kv(writer::ARRAY, &array(99, 1, &[0; 8]))),
        format!("metadata key 0 (`k`): unknown array element type 99 at byte {VALUE_AT}")
    );
}

#[test]
fn huge_array_lengths_are_refused_before_allocating() {
    assert_eq!(
        what(&one_kv(writer::ARRAY, &array(writer::U32, 1 << 62, &[]))),
        "metadata key 0 (`k`): UINT32 array length 4611686018427387904 at byte 41 cannot fit \
         in the file: each takes at least 4 bytes and only 0 remain"
    );
    // Nested: the inner array's length is checked against what is left, too.
    let inner = array(writer::STRING, u64::MAX, &[]);
    let error = what(&one_kv(writer::ARRAY, &array(writer::ARRAY, 1, &inner)));
    assert_eq!(
        error,
        "metadata key 0 (`k`): array element 0: STRING array length 18446744073709551615 at \
         byte 53 cannot fit in the file: each takes at least 8 bytes and only 0 remain"
    );
}

#[test]
fn an_array_nesting_bomb_is_refused() {
    // 10,000 nested one-element array headers: recursion would go 10,000 frames deep.
    let header = array(writer::ARRAY, 1, &[]);
    let error = what(&one_kv(writer::ARRAY, &header.repeat(10_000)));
    // Depth 9 starts after eight 12-byte headers.
    assert!(
        error.starts_with("metadata key 0 (`k`): array element 0: array element 0:"),
        "{error}"
    );
    assert!(
        error.ends_with(&format!(
            "array at byte {} is nested more than 8 levels deep",
            VALUE_AT + 8 * 12
        )),
        "{error}"
    );
}

#[test]
fn bools_must_be_0_or_1() {
    assert_eq!(
        what(&one_kv(writer::BOOL, &[2])),
        "metadata key 0 (`k`): BOOL value 2 at byte 37 is neither 0 nor 1"
    );
    assert_eq!(
        what(&one_kv(writer::ARRAY, &array(writer::BOOL, 2, &[1, 7]))),
        "metadata key 0 (`k`): BOOL value 7 at byte 50 is neither 0 nor 1"
    );
}

#[test]
fn more_than_four_dimensions_are_refused() {
    let (gguf, at) = one_info(&[1; 5], writer::GGML_F32, 0);
    assert_eq!(
        what(&gguf),
        format!(
            "tensor 0 (`t`): dimension count 5 at byte {} is over ggml's maximum of 4",
            at + 9
        )
    );
}

#[test]
fn dimensions_whose_product_overflows_are_refused() {
    let (gguf, at) = one_info(&[1 << 32; 3], writer::GGML_F32, 0);
    assert_eq!(
        what(&gguf),
        format!(
            "tensor 0 (`t`): shape [4294967296, 4294967296, 4294967296] at byte {} has more \
             elements than fit in an i64",
            at + 13
        )
    );
    // A zero dimension does not excuse an overflow among the others.
    let (gguf, _) = one_info(&[0, 1 << 40, 1 << 40], writer::GGML_F32, 0);
    assert!(what(&gguf).contains("has more elements than fit in an i64"));
    let (gguf, at) = one_info(&[1 << 63], writer::GGML_F32, 0);
    assert_eq!(
        what(&gguf),
        format!(
            "tensor 0 (`t`): dimension 0 = 9223372036854775808 at byte {} is over i64::MAX",
            at + 13
        )
    );
}

#[test]
fn unknown_ggml_types_are_refused() {
    // 4 (Q4_2) is retired; 1000 never existed.
    for id in [4, 1000] {
        let (gguf, at) = one_info(&[1], id, 0);
        assert_eq!(
            what(&gguf),
            format!(
                "tensor 0 (`t`): unknown ggml type id {id} at byte {}",
                at + 21
            )
        );
    }
}

#[test]
fn partial_blocks_are_refused() {
    let (gguf, at) = one_info(&[33], writer::GGML_Q4_0, 0);
    assert_eq!(
        what(&gguf),
        format!(
            "tensor 0 (`t`): first dimension 33 at byte {} is not a multiple of the Q4_0 \
             block size (32)",
            at + 13
        )
    );
}

#[test]
fn tensor_data_past_the_end_is_refused() {
    let mut gguf = Gguf::new(3);
    // 8 f32s need 32 bytes; the file has 16.
    gguf.tensor("t", &[8], writer::GGML_F32, &[0; 16]);
    let (at, start, len) = (
        gguf.infos_start() + 25,
        gguf.data_start(),
        gguf.bytes().len(),
    );
    assert_eq!(
        what(&gguf),
        format!(
            "tensor 0 (`t`): data (offset 0 at byte {at}, 32 bytes of F32) runs past the end of \
             the file ({len} bytes; data section starts at byte {start})"
        )
    );
    // An offset near 2^64 (-32 read as an i64) that overflows when added to the data
    // section's start.
    let (gguf, at) = one_info(&[1], writer::GGML_F32, !31);
    assert_eq!(
        what(&gguf),
        format!(
            "tensor 0 (`t`): data offset 18446744073709551584 at byte {} puts the data past \
             any possible file size",
            at + 25
        )
    );
}

#[test]
fn misaligned_offsets_are_refused() {
    let (mut gguf, at) = one_info(&[1], writer::GGML_F32, 4);
    gguf.data = vec![0; 64];
    assert_eq!(
        what(&gguf),
        format!(
            "tensor 0 (`t`): data offset 4 at byte {} is not a multiple of the alignment (32)",
            at + 25
        )
    );
}

#[test]
fn overlapping_tensors_are_refused() {
    let mut gguf = Gguf::new(3);
    gguf.info(b"a", &[16], writer::GGML_F32, 0)
        .info(b"b", &[16], writer::GGML_F32, 32);
    gguf.data = vec![0; 96];
    assert_eq!(
        what(&gguf),
        format!(
            "tensor `b` (data bytes 32..96) overlaps tensor `a` (data bytes 0..64), offsets \
             relative to the data section at byte {}",
            gguf.data_start()
        )
    );
}

#[test]
fn duplicate_keys_and_names_are_refused() {
    let mut gguf = Gguf::new(3);
    gguf.kv_u32("k", 1).kv_u32("k", 2);
    assert_eq!(
        what(&gguf),
        "metadata key 1 (`k`): key at byte 41 is used by an earlier entry too"
    );
    let mut gguf = Gguf::new(3);
    gguf.tensor("t", &[1], writer::GGML_F32, &[0; 4]);
    let at = gguf.infos_start() + gguf.infos.len();
    gguf.tensor("t", &[1], writer::GGML_F32, &[0; 4]);
    assert_eq!(
        what(&gguf),
        format!("tensor 1: name `t` at byte {at} is used by an earlier tensor too")
    );
}

#[test]
fn alignment_must_be_a_u32_power_of_two() {
    for bad in [0, 48] {
        let mut gguf = Gguf::new(3);
        gguf.kv_u32("general.alignment", bad);
        assert_eq!(
            what(&gguf),
            format!("metadata key 0 (`general.alignment`): {bad} is not a nonzero power of two")
        );
    }
    let mut gguf = Gguf::new(3);
    gguf.kv_raw(b"general.alignment", writer::U64, &32u64.to_le_bytes());
    assert_eq!(
        what(&gguf),
        "metadata key 0 (`general.alignment`): has type UINT64, expected UINT32"
    );
}

#[test]
fn long_names_are_cut_in_messages() {
    let name = "n".repeat(100_000);
    let mut gguf = Gguf::new(3);
    gguf.kv_raw(name.as_bytes(), writer::BOOL, &[9]);
    let error = what(&gguf);
    assert!(error.len() < 200, "{} bytes", error.len());
    assert!(error.contains(&format!("`{}…`", &name[..64])), "{error}");
}

// ---------------------------------------------------------------------------------------------
// Properties over mangled copies of the reference files.

/// splitmix64: a tiny seeded generator, enough to pick bytes to flip reproducibly.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Opens `bytes` (written to `path`) as `format` and, when that succeeds, reads every tensor
/// and checks the invariants readers rely on. Returns whether it opened.
fn open_and_exercise(path: &std::path::Path, bytes: &[u8], format: TensorFormat) -> bool {
    std::fs::write(path, bytes).unwrap();
    match format {
        TensorFormat::Gguf => match GgufFile::open(path) {
            Ok(file) => {
                for info in file.tensors() {
                    let tensor = file.tensor(info.name()).unwrap();
                    assert_eq!(tensor.bytes(), &bytes[info.byte_range()]);
                    if let Ok(values) = tensor.dequantize_f32() {
                        assert_eq!(values.len() as u64, info.n_elements());
                    }
                }
                for (key, value) in file.metadata() {
                    assert_eq!(file.get(key), Some(value));
                }
                true
            }
            Err(Error::TensorFile { .. }) => false,
            Err(other) => panic!("unexpected error kind: {other:?}"),
        },
        _ => match SafetensorsFile::open(path) {
            Ok(file) => {
                for info in file.tensors() {
                    let tensor = file.tensor(info.name()).unwrap();
                    assert_eq!(tensor.bytes(), &bytes[info.byte_range()]);
                    if let Ok(values) = tensor.to_f32() {
                        assert_eq!(values.len(), info.shape().iter().product::<usize>());
                    }
                }
                true
            }
            Err(Error::TensorFile { .. }) => false,
            Err(other) => panic!("unexpected error kind: {other:?}"),
        },
    }
}

#[test]
fn every_truncation_of_a_valid_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("truncated");
    for (bytes, format) in [
        (REFERENCE_GGUF, TensorFormat::Gguf),
        (REFERENCE_ST, TensorFormat::Safetensors),
    ] {
        assert!(
            open_and_exercise(&path, bytes, format),
            "the whole file opens"
        );
        // gguf-py (like llama.cpp) pads the data section after the last tensor too. Cutting
        // only that padding leaves every tensor intact, and the file valid; any shorter
        // prefix must be refused.
        let needed = match format {
            TensorFormat::Gguf => {
                let file = GgufFile::open(super::temp_file(bytes).path()).unwrap();
                let end = file.tensors().iter().map(|t| t.byte_range().end).max();
                end.unwrap()
            }
            _ => bytes.len(),
        };
        assert!(
            bytes.len() - needed < 64,
            "only alignment padding follows the data"
        );
        for len in 0..bytes.len() {
            assert_eq!(
                open_and_exercise(&path, &bytes[..len], format),
                len >= needed,
                "{format} truncated to {len} of {} bytes",
                bytes.len()
            );
        }
    }
}

#[test]
fn flipped_bytes_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flipped");
    let mut rng = SplitMix64(0x5EED);
    for (bytes, format, rounds) in [
        (REFERENCE_GGUF, TensorFormat::Gguf, 3000),
        (REFERENCE_ST, TensorFormat::Safetensors, 1000),
    ] {
        let mut opened = 0;
        for _ in 0..rounds {
            let mut mangled = bytes.to_vec();
            for _ in 0..1 + rng.below(3) {
                let i = rng.below(mangled.len());
                mangled[i] ^= 1 + rng.below(255) as u8;
            }
            opened += usize::from(open_and_exercise(&path, &mangled, format));
        }
        // Flips in tensor data leave a valid file: both outcomes must have been exercised.
        assert!(
            0 < opened && opened < rounds,
            "{format}: {opened} of {rounds} opened"
        );
    }
}

#[test]
fn malformed_safetensors_headers_are_typed_errors() {
    let header = |json: &str, data: usize| {
        let mut bytes = (json.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(json.as_bytes());
        bytes.extend(vec![0; data]);
        malformed(&bytes, TensorFormat::Safetensors)
    };
    // A header length past the end of the file.
    let mut bytes = u64::MAX.to_le_bytes().to_vec();
    bytes.extend(b"{}");
    assert!(malformed(&bytes, TensorFormat::Safetensors).starts_with("header: "));
    assert!(header("{not json", 0).starts_with("header: invalid JSON"));
    // Data offsets past the end of the data.
    let json = r#"{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#;
    assert!(header(json, 8).starts_with("header: "));
    // Shape and offsets disagree.
    let json = r#"{"w":{"dtype":"F32","shape":[3],"data_offsets":[0,16]}}"#;
    assert!(header(json, 16).starts_with("header: "));
    // Shape product overflows.
    let json = r#"{"w":{"dtype":"F32","shape":[4294967296,4294967296,4],"data_offsets":[0,16]}}"#;
    assert!(header(json, 16).starts_with("header: "));
    // A well-formed header opens.
    let st = super::temp_file(&{
        let json = r#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
        let mut bytes = (json.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(json.as_bytes());
        bytes.extend(1f32.to_le_bytes());
        bytes.extend(2f32.to_le_bytes());
        bytes
    });
    let file = SafetensorsFile::open(st.path()).unwrap();
    assert_eq!(file.to_f32("w").unwrap(), [1.0, 2.0]);
    assert!(file.metadata().is_empty());
}
