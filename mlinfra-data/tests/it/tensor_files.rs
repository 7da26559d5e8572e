//! GGUF and safetensors readers against files written by the formats' own Python packages
//! (`tests/it/tensor_files/fixtures/gen_gguf_fixture.py`, `tests/it/tensor_files/fixtures/gen_safetensors_fixture.py`), against hand-built
//! files, and against hostile input (`hostile`).

mod hostile;
pub(crate) mod writer;

use std::io::Write;
use std::path::Path;

use mlinfra_data::Error;
use mlinfra_data::tensor::{
    GgmlType, GgufArray, GgufFile, GgufValue, GgufValueType, SafetensorsDtype, SafetensorsFile,
    TensorFormat,
};
use tempfile::NamedTempFile;

use writer::Gguf;

const REFERENCE_GGUF: &[u8] = include_bytes!("tensor_files/fixtures/reference.gguf");
const REFERENCE_GGUF_F32: &[u8] = include_bytes!("tensor_files/fixtures/reference.gguf.f32");
const REFERENCE_ST: &[u8] = include_bytes!("tensor_files/fixtures/reference.safetensors");
const REFERENCE_ST_F32: &[u8] = include_bytes!("tensor_files/fixtures/reference.safetensors.f32");

/// Writes `bytes` to a fresh temporary file.
fn temp_file(bytes: &[u8]) -> NamedTempFile {
    let mut file = NamedTempFile::new().unwrap();
    file.write_all(bytes).unwrap();
    file.flush().unwrap();
    file
}

/// Opens `bytes` as a GGUF file. The mapping outlives the temporary file's name.
fn open_gguf(bytes: &[u8]) -> mlinfra_data::Result<GgufFile> {
    GgufFile::open(temp_file(bytes).path())
}

/// The `what` of the [`Error::TensorFile`] that opening `bytes` as `format` yields.
fn malformed(bytes: &[u8], format: TensorFormat) -> String {
    let file = temp_file(bytes);
    let result = match format {
        TensorFormat::Gguf => GgufFile::open(file.path()).map(drop),
        _ => SafetensorsFile::open(file.path()).map(drop),
    };
    match result {
        Err(Error::TensorFile {
            path,
            format: f,
            what,
        }) => {
            assert_eq!(&*path, file.path());
            assert_eq!(f, format);
            what.into()
        }
        other => panic!("expected a TensorFile error, got {other:?}"),
    }
}

fn little_endian_f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

/// Asserts `got` and `want` are bit-identical (NaNs included).
fn assert_bits(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.to_bits(), w.to_bits(), "{what}[{i}]: got {g}, want {w}");
    }
}

/// Asserts `inner` lies entirely inside `outer` (by address): a zero-copy view.
fn assert_within(inner: &[u8], outer: &[u8]) {
    let (start, end) = (
        inner.as_ptr() as usize,
        inner.as_ptr() as usize + inner.len(),
    );
    let (lo, hi) = (
        outer.as_ptr() as usize,
        outer.as_ptr() as usize + outer.len(),
    );
    assert!(
        lo <= start && end <= hi,
        "{start:#x}..{end:#x} outside {lo:#x}..{hi:#x}"
    );
}

// ---------------------------------------------------------------------------------------------
// GGUF: the file gguf-py wrote.

#[test]
fn reference_gguf_metadata_has_every_value_type() {
    let file = open_gguf(REFERENCE_GGUF).unwrap();
    assert_eq!(file.version(), 3);
    assert_eq!(file.alignment(), 64);

    let keys: Vec<&str> = file.metadata().iter().map(|(k, _)| &**k).collect();
    assert_eq!(
        keys,
        [
            "general.architecture",
            "general.alignment",
            "test.u8",
            "test.i8",
            "test.u16",
            "test.i16",
            "test.u32",
            "test.i32",
            "test.f32",
            "test.bool",
            "test.string",
            "test.u64",
            "test.i64",
            "test.f64",
            "test.array.i32",
            "test.array.str",
            "test.array.f32",
            "test.array.bool",
            "test.array.u8",
            "test.array.i64",
            "test.array.nested",
            "test.array.nested_str",
        ]
    );
    let get = |key: &str| file.get(key).unwrap().clone();
    assert_eq!(get("general.architecture").as_str(), Some("testarch"));
    assert_eq!(get("general.alignment"), GgufValue::U32(64));
    assert_eq!(get("test.u8"), GgufValue::U8(200));
    assert_eq!(get("test.i8"), GgufValue::I8(-100));
    assert_eq!(get("test.u16"), GgufValue::U16(60000));
    assert_eq!(get("test.i16"), GgufValue::I16(-30000));
    assert_eq!(get("test.u32"), GgufValue::U32(4_000_000_000));
    assert_eq!(get("test.i32"), GgufValue::I32(-2_000_000_000));
    assert_eq!(get("test.f32"), GgufValue::F32(0.1));
    assert_eq!(get("test.bool"), GgufValue::Bool(true));
    assert_eq!(get("test.string").as_str(), Some("héllo, wörld ✓"));
    assert_eq!(get("test.u64"), GgufValue::U64((1 << 63) + 5));
    assert_eq!(get("test.i64"), GgufValue::I64(-(1 << 62)));
    assert_eq!(get("test.f64"), GgufValue::F64(std::f64::consts::E));
    assert_eq!(get("test.u64").as_u64(), Some((1 << 63) + 5));
    assert_eq!(get("test.u64").as_i64(), None);

    let array = |key: &str| get(key).as_array().unwrap().clone();
    assert_eq!(array("test.array.i32"), GgufArray::I32(vec![1, -2, 3]));
    assert_eq!(
        array("test.array.str").as_strs().unwrap(),
        ["a".into(), "bc".into(), "".into()]
    );
    assert_eq!(array("test.array.f32"), GgufArray::F32(vec![0.5, -1.25]));
    assert_eq!(array("test.array.bool"), GgufArray::Bool(vec![true, false]));
    assert_eq!(array("test.array.u8"), GgufArray::U8(vec![1, 2, 255]));
    assert_eq!(array("test.array.i64"), GgufArray::I64(vec![-1, 1 << 40]));
    assert_eq!(
        array("test.array.nested"),
        GgufArray::Array(vec![GgufArray::I32(vec![1, 2]), GgufArray::I32(vec![3])])
    );
    let nested = array("test.array.nested_str");
    assert_eq!(nested.element_type(), GgufValueType::Array);
    assert_eq!(
        nested.as_arrays().unwrap()[1].as_strs().unwrap(),
        ["y".into(), "z".into()]
    );
    assert!(file.get("no.such.key").is_none());
}

#[test]
fn reference_gguf_tensor_infos() {
    let file = open_gguf(REFERENCE_GGUF).unwrap();
    let infos: Vec<(&str, &[u64], GgmlType)> = file
        .tensors()
        .iter()
        .map(|t| (t.name(), t.shape(), t.ggml_type()))
        .collect();
    // NumPy shapes (2, 8), (2, 32), (2, 256) come out reversed: ggml order.
    let want: [(&str, &[u64], GgmlType); 10] = [
        ("t.f32", &[16], GgmlType::F32),
        ("t.f16", &[8, 2], GgmlType::F16),
        ("t.bf16", &[16], GgmlType::BF16),
        ("t.q8_0", &[64], GgmlType::Q8_0),
        ("t.q4_0", &[64], GgmlType::Q4_0),
        ("t.q4_1", &[32, 2], GgmlType::Q4_1),
        ("t.q4_k", &[512], GgmlType::Q4_K),
        ("t.q6_k", &[256, 2], GgmlType::Q6_K),
        ("t.q5_0", &[32], GgmlType::Q5_0),
        ("t.i32", &[4], GgmlType::I32),
    ];
    assert_eq!(infos, want);
    for info in file.tensors() {
        let ty = info.ggml_type();
        assert_eq!(
            info.byte_len() as u64,
            info.n_elements() / ty.block_size() as u64 * ty.type_size() as u64
        );
        assert_eq!(info.offset() % 64, 0, "{} is aligned", info.name());
        assert!(info.offset() >= file.data_offset());
        assert_eq!(
            info.byte_range().end - info.byte_range().start,
            info.byte_len()
        );
    }
    assert_eq!(file.data_offset() % 64, 0);
    assert_eq!(file.tensor_info("t.q4_k").unwrap().byte_len(), 2 * 144);
}

/// The core numeric check: our dequantization of the file gguf-py wrote equals gguf-py's
/// `gguf.quants.dequantize` of it, bit for bit (see `tests/it/tensor_files/fixtures/gen_gguf_fixture.py`).
#[test]
fn reference_gguf_dequantizes_bit_exactly_like_gguf_py() {
    let file = open_gguf(REFERENCE_GGUF).unwrap();
    let expected = little_endian_f32s(REFERENCE_GGUF_F32);
    let mut at = 0;
    for info in &file.tensors()[..8] {
        let got = file.dequantize_f32(info.name()).unwrap();
        assert_eq!(got.len() as u64, info.n_elements());
        assert_bits(&got, &expected[at..at + got.len()], info.name());
        at += got.len();
    }
    assert_eq!(at, expected.len(), "every reference value was compared");

    // Spot checks, as printed by the script: (first, last) bits of each quantized tensor.
    let ends = |name: &str| {
        let v = file.dequantize_f32(name).unwrap();
        (v[0].to_bits(), v[v.len() - 1].to_bits())
    };
    assert_eq!(ends("t.bf16"), (0xbe580000, 0xbfbc0000));
    assert_eq!(ends("t.q8_0"), (0xbf49b580, 0x3ec1e000));
    assert_eq!(ends("t.q4_0"), (0xbe774000, 0x3fb4b000));
    assert_eq!(ends("t.q4_1"), (0xbf92b800, 0x3f270000));
    assert_eq!(ends("t.q4_k"), (0x400619c0, 0x3f7d9400));
    assert_eq!(ends("t.q6_k"), (0x42305500, 0x41f198e0));
    // The Q5_0 block (one, not in the .f32 file): every value as gguf-py's
    // `quants.dequantize` gives it (printed offline with the llama.cpp 0.3.36 sources' gguf-py).
    let q5_0: Vec<u32> = file
        .dequantize_f32("t.q5_0")
        .unwrap()
        .iter()
        .map(|v| v.to_bits())
        .collect();
    assert_eq!(
        q5_0,
        [
            0x3f9fe800, 0x0, 0x3f647000, 0xbf36c000, 0x3f9fe800, 0x3eb6c000, 0x0, 0xbf36c000,
            0xc036c000, 0x3eb6c000, 0x0, 0xbe36c000, 0xbeb6c000, 0x3ffb4800, 0x0, 0x0, 0x0,
            0xbf891000, 0xbf091000, 0xbeb6c000, 0x3eb6c000, 0x3f091000, 0xbf36c000, 0x3f891000,
            0xc0147c00, 0x3fb6c000, 0x3f36c000, 0x3f647000, 0x3e36c000, 0x3eb6c000, 0x3eb6c000,
            0xbeb6c000,
        ]
    );
    // The F32 tensor keeps its special values: -0, infinities, a quiet NaN, a subnormal.
    let f32s = file.dequantize_f32("t.f32").unwrap();
    assert_eq!(f32s[1].to_bits(), 0x8000_0000);
    assert_eq!((f32s[4], f32s[5]), (f32::INFINITY, f32::NEG_INFINITY));
    assert!(f32s[6].is_nan());
    assert_eq!(f32s[7].to_bits(), 1);
}

#[test]
fn gguf_tensor_bytes_are_borrowed_from_the_mapping() {
    let file = open_gguf(REFERENCE_GGUF).unwrap();
    let mapped = file.mapped_bytes();
    assert_eq!(mapped, REFERENCE_GGUF);
    for info in file.tensors() {
        let tensor = file.tensor(info.name()).unwrap();
        assert_within(tensor.bytes(), mapped);
        assert_eq!(
            tensor.bytes().as_ptr() as usize - mapped.as_ptr() as usize,
            info.offset(),
            "{} starts at its offset in the mapping",
            info.name()
        );
        assert_eq!(tensor.bytes(), &REFERENCE_GGUF[info.byte_range()]);
        assert_eq!(tensor.info(), info);
    }
}

#[test]
fn gguf_types_without_dequantization_are_still_readable_as_bytes() {
    let file = open_gguf(REFERENCE_GGUF).unwrap();
    let i32s: Vec<i32> = file
        .tensor("t.i32")
        .unwrap()
        .bytes()
        .chunks_exact(4)
        .map(|b| i32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert_eq!(i32s, [1, -2, 3, i32::MAX]);

    match file.tensor("t.i32").unwrap().dequantize_f32() {
        Err(Error::TensorFile { format, what, .. }) => {
            assert_eq!(format, TensorFormat::Gguf);
            assert_eq!(
                &*what,
                "tensor `t.i32` has type I32, which cannot be dequantized (supported: F32, \
                 F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q6_K)"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn unknown_tensor_names_are_a_caller_error() {
    let gguf = temp_file(REFERENCE_GGUF);
    let file = GgufFile::open(gguf.path()).unwrap();
    for result in [
        file.tensor("nope").map(drop),
        file.dequantize_f32("nope").map(drop),
    ] {
        match result {
            Err(Error::NoSuchTensor { path, name }) => {
                assert_eq!(&*path, gguf.path());
                assert_eq!(&*name, "nope");
            }
            other => panic!("{other:?}"),
        }
    }
    let st = temp_file(REFERENCE_ST);
    let file = SafetensorsFile::open(st.path()).unwrap();
    assert!(matches!(
        file.to_f32("nope"),
        Err(Error::NoSuchTensor { name, .. }) if &*name == "nope"
    ));
}

/// Opened files are shared across loader threads.
#[test]
fn readers_are_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<GgufFile>();
    assert_send_sync::<SafetensorsFile>();
    assert_send_sync::<mlinfra_data::tensor::GgufTensor<'_>>();
    assert_send_sync::<mlinfra_data::tensor::SafetensorsTensor<'_>>();
}

#[test]
fn missing_files_are_io_errors() {
    let path = Path::new("/nonexistent/model.gguf");
    match GgufFile::open(path) {
        Err(Error::Io { path: p, source }) => {
            assert_eq!(&*p, path);
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(SafetensorsFile::open(path), Err(Error::Io { .. })));
}

// ---------------------------------------------------------------------------------------------
// GGUF: hand-built files.

#[test]
fn gguf_v2_reads_like_v3() {
    // v2 and v3 share one layout (u64 counts and lengths; v1 had u32 ones); v3 only added
    // big-endian files, which this reader refuses.
    let mut gguf = Gguf::new(2);
    gguf.kv_str("general.architecture", "llama")
        .kv_u32("llama.context_length", 4096)
        .kv_raw(
            b"tokenizer.ggml.scores",
            writer::ARRAY,
            &writer::array(writer::F32, 2, &[0, 0, 128, 63, 0, 0, 0, 64]),
        )
        .kv_raw(b"u8", writer::U8, &[255])
        .kv_raw(b"i8", writer::I8, &[0x80])
        .kv_raw(b"u16", writer::U16, &65535u16.to_le_bytes())
        .kv_raw(b"i16", writer::I16, &(-2i16).to_le_bytes())
        .kv_raw(b"i32", writer::I32, &(-3i32).to_le_bytes())
        .kv_raw(b"f32", writer::F32, &1.5f32.to_le_bytes())
        .kv_raw(b"bool", writer::BOOL, &[0])
        .kv_raw(b"u64", writer::U64, &u64::MAX.to_le_bytes())
        .kv_raw(b"i64", writer::I64, &i64::MIN.to_le_bytes())
        .kv_raw(b"f64", writer::F64, &(-0.25f64).to_le_bytes());
    let f32s: Vec<u8> = [1.0f32, -2.0, 0.5, 8.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    // Two Q8_0 blocks: d = 1.0 with quants 1..=32, then d = 0.5 with quants -1.
    let mut q8 = 0x3C00u16.to_le_bytes().to_vec();
    q8.extend(1..=32u8);
    q8.extend(0x3800u16.to_le_bytes());
    q8.extend([0xFF; 32]);
    gguf.tensor("a", &[4], writer::GGML_F32, &f32s)
        .tensor("b", &[32, 2], writer::GGML_Q8_0, &q8);

    let file = open_gguf(&gguf.bytes()).unwrap();
    assert_eq!(file.version(), 2);
    assert_eq!(file.alignment(), mlinfra_data::tensor::DEFAULT_ALIGNMENT);
    assert_eq!(file.data_offset(), gguf.data_start());
    assert_eq!(
        file.get("general.architecture").unwrap().as_str(),
        Some("llama")
    );
    assert_eq!(
        file.get("llama.context_length").unwrap().as_u64(),
        Some(4096)
    );
    assert_eq!(
        file.get("tokenizer.ggml.scores").unwrap().as_array(),
        Some(&GgufArray::F32(vec![1.0, 2.0]))
    );
    let scalars: Vec<GgufValue> = file.metadata()[3..]
        .iter()
        .map(|(_, v)| v.clone())
        .collect();
    assert_eq!(
        scalars,
        [
            GgufValue::U8(255),
            GgufValue::I8(-128),
            GgufValue::U16(65535),
            GgufValue::I16(-2),
            GgufValue::I32(-3),
            GgufValue::F32(1.5),
            GgufValue::Bool(false),
            GgufValue::U64(u64::MAX),
            GgufValue::I64(i64::MIN),
            GgufValue::F64(-0.25),
        ]
    );
    assert_eq!(file.dequantize_f32("a").unwrap(), [1.0, -2.0, 0.5, 8.0]);
    let b = file.dequantize_f32("b").unwrap();
    let want: Vec<f32> = (1..=32).map(|q| q as f32).chain([-0.5; 32]).collect();
    assert_eq!(b, want);
    assert_eq!(
        file.tensor_info("b").unwrap().offset(),
        gguf.data_start() + 32
    );
}

#[test]
fn gguf_edge_cases_that_are_valid() {
    // No metadata and no tensors: the 24-byte minimum file.
    let file = open_gguf(&Gguf::new(3).bytes()).unwrap();
    assert!(file.metadata().is_empty() && file.tensors().is_empty());

    // An empty array, a scalar (no dimensions) and an empty tensor (a zero dimension).
    let mut gguf = Gguf::new(3);
    gguf.kv_raw(
        b"empty",
        writer::ARRAY,
        &writer::array(writer::STRING, 0, &[]),
    )
    .tensor("scalar", &[], writer::GGML_F32, &3.5f32.to_le_bytes())
    .tensor("empty", &[0, 7], writer::GGML_F32, &[]);
    let file = open_gguf(&gguf.bytes()).unwrap();
    assert!(file.get("empty").unwrap().as_array().unwrap().is_empty());
    assert_eq!(file.tensor_info("scalar").unwrap().n_elements(), 1);
    assert_eq!(file.dequantize_f32("scalar").unwrap(), [3.5]);
    assert_eq!(file.tensor_info("empty").unwrap().n_elements(), 0);
    assert!(file.dequantize_f32("empty").unwrap().is_empty());
}

// ---------------------------------------------------------------------------------------------
// safetensors: the file the `safetensors` package wrote.

#[test]
fn reference_safetensors_tensors_and_metadata() {
    let st = temp_file(REFERENCE_ST);
    let file = SafetensorsFile::open(st.path()).unwrap();
    let infos: Vec<(&str, SafetensorsDtype, &[usize])> = file
        .tensors()
        .iter()
        .map(|t| (t.name(), t.dtype(), t.shape()))
        .collect();
    // In data order, which the writer chose (by dtype, then name).
    let want: [(&str, SafetensorsDtype, &[usize]); 4] = [
        ("ids.i64", SafetensorsDtype::I64, &[2]),
        ("weight.f32", SafetensorsDtype::F32, &[2, 3]),
        ("weight.bf16", SafetensorsDtype::BF16, &[2, 2]),
        ("weight.f16", SafetensorsDtype::F16, &[4]),
    ];
    assert_eq!(infos, want);
    let metadata: Vec<(&str, &str)> = file.metadata().iter().map(|(k, v)| (&**k, &**v)).collect();
    assert_eq!(metadata, [("format", "np"), ("note", "héllo")]);

    let mapped = file.mapped_bytes();
    assert_eq!(mapped, REFERENCE_ST);
    for info in file.tensors() {
        let tensor = file.tensor(info.name()).unwrap();
        assert_within(tensor.bytes(), mapped);
        assert_eq!(
            tensor.bytes().as_ptr() as usize - mapped.as_ptr() as usize,
            info.byte_range().start
        );
    }
    let ids: Vec<i64> = file
        .tensor("ids.i64")
        .unwrap()
        .bytes()
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert_eq!(ids, [-1, 1 << 40]);
}

/// `to_f32` equals NumPy's widening of the same tensors, bit for bit (see
/// `tests/it/tensor_files/fixtures/gen_safetensors_fixture.py`).
#[test]
fn reference_safetensors_converts_like_numpy() {
    let st = temp_file(REFERENCE_ST);
    let file = SafetensorsFile::open(st.path()).unwrap();
    let expected = little_endian_f32s(REFERENCE_ST_F32);
    let got: Vec<f32> = ["weight.f32", "weight.f16", "weight.bf16"]
        .iter()
        .flat_map(|name| file.to_f32(name).unwrap())
        .collect();
    assert_bits(&got, &expected, "safetensors");
    assert_eq!(&got[..3], [1.0, -2.5, 0.1]);
    assert_eq!(got[9], 2f32.powi(-24)); // 6e-8 rounded to the smallest f16 subnormal
    assert_eq!(
        &got[10..],
        [1.0, -3.0, f32::from_bits(0x0001_0000), f32::INFINITY]
    );

    match file.to_f32("ids.i64") {
        Err(Error::TensorFile { format, what, .. }) => {
            assert_eq!(format, TensorFormat::Safetensors);
            assert_eq!(
                &*what,
                "tensor `ids.i64` has dtype I64; only F32, F16 and BF16 convert to f32"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn error_messages_name_the_format() {
    let gguf = temp_file(b"GGUF\x01\x00\x00\x00");
    let error = GgufFile::open(gguf.path()).unwrap_err().to_string();
    assert_eq!(
        error,
        format!(
            "invalid or unsupported GGUF file {}: GGUF version 1 at byte 4 is not supported (versions 2 \
             and 3 are)",
            gguf.path().display()
        )
    );
    let st = temp_file(b"");
    let error = SafetensorsFile::open(st.path()).unwrap_err().to_string();
    assert!(
        error.starts_with(&format!(
            "invalid or unsupported safetensors file {}: header",
            st.path().display()
        )),
        "{error}"
    );
}
