//! Tokenizers from GGUF metadata, on hand-built files: merges applied in rank order, the
//! pre-tokenizer the file names, control tokens matched whole, BOS when asked for, and typed
//! errors for what is missing or unsupported. (The real thing, SmolLM2's 49k vocabulary
//! against transformers, is tested in mlinfra-train's Llama tests.)

use std::io::Write;

use mlinfra_data::Error;
use mlinfra_data::tensor::GgufFile;
use mlinfra_data::tokenizer::Tokenizer;
use tempfile::NamedTempFile;

use crate::tensor_files::writer::{self, Gguf};

/// Byte-level symbols: `Ġ` is the space.
const TOKENS: [&str; 15] = [
    "<|endoftext|>", // 0, control
    "t",
    "h",
    "e",
    "Ġ",
    "c",
    "a", // 1..=6
    "th",
    "the",
    "Ġc",
    "Ġca",
    "Ġcat", // 7..=11
    "1",
    "2",
    "12", // 12..=14
];
const MERGES: [&str; 6] = ["t h", "th e", "Ġ c", "Ġc a", "Ġca t", "1 2"];

fn strings(items: &[&str]) -> Vec<u8> {
    let elements: Vec<u8> = items
        .iter()
        .flat_map(|s| writer::string(s.as_bytes()))
        .collect();
    writer::array(writer::STRING, items.len() as u64, &elements)
}

/// A GGUF with the tokenizer keys; `extra` appends more (keys not set here).
fn tokenizer_file(pre: &str, extra: impl FnOnce(&mut Gguf)) -> NamedTempFile {
    let mut gguf = Gguf::new(3);
    gguf.kv_str("tokenizer.ggml.model", "gpt2")
        .kv_str("tokenizer.ggml.pre", pre)
        .kv_raw(b"tokenizer.ggml.tokens", writer::ARRAY, &strings(&TOKENS))
        .kv_raw(b"tokenizer.ggml.merges", writer::ARRAY, &strings(&MERGES));
    let types: Vec<u8> = (0..TOKENS.len())
        .flat_map(|i| if i == 0 { 3i32 } else { 1 }.to_le_bytes())
        .collect();
    gguf.kv_raw(
        b"tokenizer.ggml.token_type",
        writer::ARRAY,
        &writer::array(writer::I32, TOKENS.len() as u64, &types),
    )
    .kv_u32("tokenizer.ggml.eos_token_id", 0);
    extra(&mut gguf);
    let mut file = NamedTempFile::new().unwrap();
    file.write_all(&gguf.bytes()).unwrap();
    file
}

fn open(file: &NamedTempFile) -> mlinfra_data::Result<Tokenizer> {
    Tokenizer::from_gguf(&GgufFile::open(file.path()).unwrap())
}

#[test]
fn merges_apply_in_rank_order_and_decode_round_trips() {
    let tokenizer = open(&tokenizer_file("gpt2", |_| {})).unwrap();
    assert_eq!(tokenizer.vocab_size(), TOKENS.len());
    assert_eq!(tokenizer.encode("the cat").unwrap(), [8, 11]);
    assert_eq!(tokenizer.encode("tac").unwrap(), [1, 6, 5]);
    assert_eq!(tokenizer.decode(&[8, 11]).unwrap(), "the cat");
    // The control token is matched whole inside text, and decoded back.
    assert_eq!(tokenizer.encode("the<|endoftext|>").unwrap(), [8, 0]);
    assert_eq!(tokenizer.decode(&[8, 0]).unwrap(), "the<|endoftext|>");
    assert_eq!(tokenizer.eos_id(), Some(0));
    assert_eq!(tokenizer.bos_id(), None);
    assert_eq!(tokenizer.token(11).as_deref(), Some("Ġcat"));
    assert_eq!(tokenizer.id("Ġcat"), Some(11));
}

/// `smollm` splits every digit off before BPE (so "12" never merges); `gpt2` does not.
#[test]
fn the_pre_tokenizer_is_the_one_the_file_names() {
    let gpt2 = open(&tokenizer_file("gpt2", |_| {})).unwrap();
    let smollm = open(&tokenizer_file("smollm", |_| {})).unwrap();
    assert_eq!(gpt2.encode("12").unwrap(), [14]);
    assert_eq!(smollm.encode("12").unwrap(), [12, 13]);
}

#[test]
fn bos_is_prepended_when_the_file_asks() {
    let file = tokenizer_file("gpt2", |g| {
        g.kv_u32("tokenizer.ggml.bos_token_id", 0).kv_raw(
            b"tokenizer.ggml.add_bos_token",
            writer::BOOL,
            &[1],
        );
    });
    let tokenizer = open(&file).unwrap();
    assert_eq!(tokenizer.encode("the").unwrap(), [0, 8]);
}

fn error_of(pre: &str, extra: impl FnOnce(&mut Gguf)) -> String {
    let error = open(&tokenizer_file(pre, extra)).unwrap_err();
    assert!(matches!(error, Error::Tokenizer { .. }), "{error:?}");
    error.to_string()
}

#[test]
fn unsupported_or_malformed_tokenizers_are_typed_errors() {
    let text = error_of("qwen2", |_| {});
    assert!(text.contains("tokenizer.ggml.pre is `qwen2`"), "{text}");
    let text = error_of("gpt2", |g| {
        g.kv_raw(b"tokenizer.ggml.add_bos_token", writer::BOOL, &[1]);
    });
    assert!(text.contains("no bos_token_id"), "{text}");
    let text = error_of("gpt2", |g| {
        g.kv_u32("tokenizer.ggml.bos_token_id", 99);
    });
    assert!(
        text.contains("bos_token_id") && text.contains("vocabulary size 15"),
        "{text}"
    );

    // A SentencePiece vocabulary, and files missing the arrays or with broken merges.
    let mut gguf = Gguf::new(3);
    gguf.kv_str("tokenizer.ggml.model", "llama");
    let text = from_bytes(&gguf);
    assert!(
        text.contains("`llama`") && text.contains("byte-level BPE"),
        "{text}"
    );
    let mut gguf = Gguf::new(3);
    gguf.kv_str("tokenizer.ggml.model", "gpt2").kv_raw(
        b"tokenizer.ggml.tokens",
        writer::ARRAY,
        &strings(&TOKENS),
    );
    assert!(from_bytes(&gguf).contains("no string array tokenizer.ggml.merges"));
    let mut gguf = Gguf::new(3);
    gguf.kv_str("tokenizer.ggml.model", "gpt2")
        .kv_raw(b"tokenizer.ggml.tokens", writer::ARRAY, &strings(&TOKENS))
        .kv_raw(
            b"tokenizer.ggml.merges",
            writer::ARRAY,
            &strings(&["t h", "theend"]),
        );
    let text = from_bytes(&gguf);
    assert!(text.contains("merge 1 `theend` has no space"), "{text}");
    let mut gguf = Gguf::new(3);
    gguf.kv_str("tokenizer.ggml.model", "gpt2")
        .kv_raw(b"tokenizer.ggml.tokens", writer::ARRAY, &strings(&TOKENS))
        .kv_raw(b"tokenizer.ggml.merges", writer::ARRAY, &strings(&["t x"]));
    let text = from_bytes(&gguf);
    assert!(text.contains("do not fit"), "{text}");
}

#[test]
fn decoding_an_id_outside_the_vocabulary_is_an_error() {
    let tokenizer = open(&tokenizer_file("gpt2", |_| {})).unwrap();
    let error = tokenizer.decode(&[8, 15]).unwrap_err();
    assert!(
        error
            .to_string()
            .contains("id 15 is outside the vocabulary of 15"),
        "{error}"
    );
}

fn from_bytes(gguf: &Gguf) -> String {
    let mut file = NamedTempFile::new().unwrap();
    file.write_all(&gguf.bytes()).unwrap();
    let error = open(&file).unwrap_err();
    assert!(matches!(error, Error::Tokenizer { .. }), "{error:?}");
    error.to_string()
}

/// Streaming detokenization on SmolLM2's 49k vocabulary: characters that byte-level BPE
/// spells over several tokens (an emoji, CJK) come out whole with the token that completes
/// them, never as U+FFFD; the pieces add up to the text of all the ids; leading spaces and
/// special tokens survive; and a bad id is a typed error, not a panic.
#[test]
fn streamed_pieces_never_split_a_character_and_add_up_to_the_text() {
    let Some(path) = mlinfra_test_utils::model("SmolLM2-135M-Instruct.Q4_1.gguf") else {
        return;
    };
    let tokenizer = Tokenizer::from_gguf(&GgufFile::open(&path).unwrap()).unwrap();
    let text = " Crabs 🦀 live in 東京, naïvely.<|im_end|>\n";
    let ids = tokenizer.encode(text).unwrap();
    let mut state = mlinfra_data::tokenizer::DecodeState::default();
    let mut streamed = String::new();
    let mut held = 0;
    for &id in &ids {
        match tokenizer.decode_step(&mut state, id).unwrap() {
            Some(piece) => {
                assert!(!piece.contains('\u{fffd}'), "a split character: {piece:?}");
                streamed.push_str(&piece);
            }
            None => held += 1,
        }
    }
    assert_eq!(streamed, tokenizer.decode(&ids).unwrap());
    assert_eq!(streamed, text);
    assert!(
        held > 0,
        "the text must hold a character spelled over several tokens: {ids:?}"
    );
    let error = tokenizer
        .decode_step(&mut state, tokenizer.vocab_size() as u32)
        .unwrap_err();
    assert!(
        error.to_string().contains("outside the vocabulary"),
        "{error}"
    );
}
