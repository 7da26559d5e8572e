//! Text to token ids and back, for the tokenizers model files carry.
//!
//! A GGUF file holds its model's tokenizer in metadata (`tokenizer.ggml.*`: the vocabulary,
//! the BPE merges, token types, special ids, and the name of the pre-tokenizer). A Hugging
//! Face checkpoint holds it in `tokenizer.json`. [`Tokenizer`] builds the same Hugging Face
//! `tokenizers` pipeline from either, so a model loaded from GGUF tokenizes exactly as its
//! original does in `transformers`.
//!
//! ```no_run
//! use mlinfra_data::tensor::GgufFile;
//! use mlinfra_data::tokenizer::Tokenizer;
//!
//! let gguf = GgufFile::open("SmolLM2-135M-Instruct.Q4_1.gguf")?;
//! let tokenizer = Tokenizer::from_gguf(&gguf)?;
//! let ids = tokenizer.encode("The capital of France is")?;
//! assert_eq!(tokenizer.decode(&ids)?, "The capital of France is");
//! # Ok::<(), mlinfra_data::Error>(())
//! ```
//!
//! # What GGUF tokenizers are supported
//!
//! Byte-level BPE (`tokenizer.ggml.model = "gpt2"`), with the pre-tokenizers llama.cpp calls
//! `default`/`gpt2` (GPT-2's split), `smollm` (every digit on its own, then GPT-2's split)
//! and `llama-bpe` (Llama 3's split). SentencePiece vocabularies (`"llama"`) and other
//! pre-tokenizers are refused with [`Error::Tokenizer`] naming what was found, rather than
//! tokenized subtly wrong.
//!
//! # Costs
//!
//! Building from GGUF copies the vocabulary and merges into hash maps (about 10 ms for a
//! 49k-token vocabulary); encoding is linear in the text with BPE merges per word.

use std::path::Path;

use tokenizers::models::bpe::{BPE, Merges, Vocab};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior};

use crate::tensor::{GgufFile, GgufValue};
use crate::{Error, Result};

/// Llama 3's pre-tokenizer split (llama.cpp's `llama-bpe`), as in its `tokenizer.json`.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// GGUF token types (`tokenizer.ggml.token_type`), from llama.cpp's `llama_token_type`.
const TOKEN_TYPE_CONTROL: i32 = 3;
const TOKEN_TYPE_USER_DEFINED: i32 = 4;

/// Where one stream of generated tokens stands in [`Tokenizer::decode_step`]: the last few ids
/// and the text they decoded to. Start each stream from `DecodeState::default()`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DecodeState {
    ids: Vec<u32>,
    prefix: String,
    prefix_index: usize,
}

/// A tokenizer: text to ids and ids to text, with the model's special ids.
///
/// Special tokens written in the text (such as `<|im_start|>`) are recognised as their ids,
/// as `transformers` does.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos: Option<u32>,
    eos: Option<u32>,
    add_bos: bool,
    /// Where it came from, for error messages.
    origin: Box<str>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("origin", &self.origin)
            .field("vocab_size", &self.vocab_size())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("add_bos", &self.add_bos)
            .finish()
    }
}

impl Tokenizer {
    /// The tokenizer stored in a GGUF file's metadata.
    ///
    /// # Errors
    ///
    /// [`Error::Tokenizer`] when a `tokenizer.ggml.*` key is missing or malformed, or names a
    /// tokenizer model or pre-tokenizer that is not supported (see the [module
    /// docs](self)).
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        let origin: Box<str> = file.path().display().to_string().into();
        let fail = |what: String| Error::Tokenizer {
            origin: origin.clone(),
            what: what.into(),
        };
        let model = file
            .get("tokenizer.ggml.model")
            .and_then(GgufValue::as_str)
            .ok_or_else(|| fail("no string tokenizer.ggml.model".into()))?;
        if model != "gpt2" {
            return Err(fail(format!(
                "tokenizer.ggml.model is {}; only byte-level BPE (`gpt2`) is supported",
                crate::tensor::quoted(model)
            )));
        }
        let strings = |key: &str| {
            file.get(key)
                .and_then(GgufValue::as_array)
                .and_then(|array| array.as_strs())
                .ok_or_else(|| fail(format!("no string array {key}")))
        };
        let tokens = strings("tokenizer.ggml.tokens")?;
        let merges = strings("tokenizer.ggml.merges")?;
        let types = token_types(file, tokens.len()).map_err(fail)?;
        let id_of = |key: &str| -> Result<Option<u32>> {
            match file.get(key) {
                None => Ok(None),
                Some(value) => match value.as_u64().and_then(|id| u32::try_from(id).ok()) {
                    Some(id) if (id as usize) < tokens.len() => Ok(Some(id)),
                    _ => Err(fail(format!(
                        "{key} is {value:?}, not an id below the vocabulary size {}",
                        tokens.len()
                    ))),
                },
            }
        };
        let bos = id_of("tokenizer.ggml.bos_token_id")?;
        let eos = id_of("tokenizer.ggml.eos_token_id")?;
        let add_bos = file
            .get("tokenizer.ggml.add_bos_token")
            .and_then(GgufValue::as_bool)
            .unwrap_or(false);
        if add_bos && bos.is_none() {
            return Err(fail(
                "tokenizer.ggml.add_bos_token is true but there is no bos_token_id".into(),
            ));
        }
        let pre = file
            .get("tokenizer.ggml.pre")
            .and_then(GgufValue::as_str)
            .unwrap_or("default");
        let pre_tokenizer = pre_tokenizer(pre).map_err(fail)?;

        let vocab: Vocab = tokens
            .iter()
            .enumerate()
            .map(|(id, token)| (token.to_string(), id as u32))
            .collect();
        let merges: Merges = merges
            .iter()
            .enumerate()
            .map(|(rank, merge)| {
                // Byte-level tokens never hold a space (it is mapped to `Ġ`), so the first
                // space separates the pair.
                merge
                    .split_once(' ')
                    .map(|(left, right)| (left.to_owned(), right.to_owned()))
                    .ok_or_else(|| {
                        fail(format!(
                            "merge {rank} {} has no space",
                            crate::tensor::quoted(merge)
                        ))
                    })
            })
            .collect::<Result<_>>()?;
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| fail(format!("the BPE vocabulary and merges do not fit: {e}")))?;

        let mut inner = tokenizers::Tokenizer::new(bpe);
        inner
            .with_pre_tokenizer(Some(pre_tokenizer))
            .with_decoder(Some(ByteLevel::default()));
        // Control tokens (`<|im_start|>`, `<|endoftext|>`) are special; user-defined ones are
        // matched whole in text but decoded like any other token, as in llama.cpp.
        let added: Vec<AddedToken> = tokens
            .iter()
            .zip(&types)
            .filter_map(|(token, &kind)| match kind {
                TOKEN_TYPE_CONTROL => Some(AddedToken::from(token.to_string(), true)),
                TOKEN_TYPE_USER_DEFINED => Some(AddedToken::from(token.to_string(), false)),
                _ => None,
            })
            .collect();
        inner
            .add_special_tokens(added)
            .map_err(|e| fail(format!("adding the control tokens failed: {e}")))?;
        Ok(Tokenizer {
            inner,
            bos,
            eos,
            add_bos,
            origin,
        })
    }

    /// A Hugging Face `tokenizer.json`. It has no notion of BOS/EOS ids of its own:
    /// [`bos_id`](Self::bos_id) and [`eos_id`](Self::eos_id) are `None` and its
    /// post-processor, if any, adds what the model expects.
    ///
    /// # Errors
    ///
    /// [`Error::Tokenizer`] when the file cannot be read or parsed.
    pub fn from_json_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let origin: Box<str> = path.display().to_string().into();
        // Opened as every named file is (no FIFO, no device), and bounded: real ones are a few
        // megabytes.
        let bytes = crate::files::read_regular(path, 256 << 20).map_err(|e| Error::Tokenizer {
            origin: origin.clone(),
            what: format!("cannot read: {e}").into(),
        })?;
        let inner = tokenizers::Tokenizer::from_bytes(bytes).map_err(|e| Error::Tokenizer {
            origin: origin.clone(),
            what: e.to_string().into(),
        })?;
        Ok(Tokenizer {
            inner,
            bos: None,
            eos: None,
            add_bos: false,
            origin,
        })
    }

    /// The ids of `text`, with the BOS id first when the model asks for one
    /// (`tokenizer.ggml.add_bos_token`).
    ///
    /// # Errors
    ///
    /// [`Error::Tokenizer`] if the pipeline fails (it does not for byte-level BPE, which
    /// covers every byte).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode(text, true)
            .map_err(|e| self.error(format!("encoding failed: {e}")))?;
        let bos = self.bos.filter(|_| self.add_bos);
        Ok(bos
            .into_iter()
            .chain(encoding.get_ids().iter().copied())
            .collect())
    }

    /// The text of `ids`, special tokens included.
    ///
    /// # Errors
    ///
    /// [`Error::Tokenizer`] for an id outside the vocabulary.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        let size = self.vocab_size();
        if let Some(bad) = ids.iter().find(|&&id| id as usize >= size) {
            return Err(self.error(format!("id {bad} is outside the vocabulary of {size}")));
        }
        self.inner
            .decode(ids, false)
            .map_err(|e| self.error(format!("decoding failed: {e}")))
    }

    /// The text that generated token `id` adds to those already stepped through `state`, for
    /// streaming: `None` while the text so far ends inside a UTF-8 character (byte-level BPE
    /// spells rare characters over several tokens), and the whole character with the token
    /// that completes it. The pieces never split a character, and together they are
    /// [`Tokenizer::decode`] of all the ids (special tokens included).
    ///
    /// This is Hugging Face's `DecodeStream` (what TGI streams with), with its state in
    /// `state` rather than borrowed from the tokenizer, so that a server can keep one per
    /// request beside one shared tokenizer.
    ///
    /// # Errors
    ///
    /// [`Error::Tokenizer`] for an id outside the vocabulary.
    ///
    /// # Costs
    ///
    /// Two or three decodes of a window of the last few ids: constant in the length of the
    /// output, where decoding the whole output after every token is quadratic.
    pub fn decode_step(&self, state: &mut DecodeState, id: u32) -> Result<Option<String>> {
        let size = self.vocab_size();
        if id as usize >= size {
            return Err(self.error(format!("id {id} is outside the vocabulary of {size}")));
        }
        tokenizers::tokenizer::step_decode_stream(
            &self.inner,
            vec![id],
            false,
            &mut state.ids,
            &mut state.prefix,
            &mut state.prefix_index,
        )
        .map_err(|e| self.error(format!("streaming decode failed at id {id}: {e}")))
    }

    /// Whether [`Tokenizer::encode`] puts the BOS token first (`tokenizer.ggml.add_bos_token`).
    pub fn adds_bos(&self) -> bool {
        self.add_bos && self.bos.is_some()
    }

    /// The token string of `id` (byte-level BPE strings show a space as `Ġ`).
    pub fn token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The id of a token string.
    pub fn id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Ids in the vocabulary, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The beginning-of-sequence id, when the file names one.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    /// The end-of-sequence id, when the file names one: where generation stops.
    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    /// The `tokenizers` pipeline underneath, for what this type does not wrap (offsets,
    /// batch encoding, padding).
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    fn error(&self, what: String) -> Error {
        Error::Tokenizer {
            origin: self.origin.clone(),
            what: what.into(),
        }
    }
}

/// `tokenizer.ggml.token_type` as one value per token; all normal when the key is absent.
fn token_types(file: &GgufFile, tokens: usize) -> std::result::Result<Vec<i32>, String> {
    let Some(value) = file.get("tokenizer.ggml.token_type") else {
        return Ok(vec![1; tokens]);
    };
    let types: Vec<i32> = match value.as_array() {
        Some(crate::tensor::GgufArray::I32(types)) => types.clone(),
        Some(crate::tensor::GgufArray::U32(types)) => types.iter().map(|&t| t as i32).collect(),
        _ => return Err("tokenizer.ggml.token_type is not an integer array".into()),
    };
    if types.len() != tokens {
        return Err(format!(
            "tokenizer.ggml.token_type has {} entries for {tokens} tokens",
            types.len()
        ));
    }
    Ok(types)
}

/// The pre-tokenizer llama.cpp names `pre`, built as the original `tokenizer.json` has it.
fn pre_tokenizer(pre: &str) -> std::result::Result<PreTokenizerWrapper, String> {
    let gpt2 = || ByteLevel::new(false, true, true);
    Ok(match pre {
        "default" | "gpt2" => gpt2().into(),
        "smollm" => Sequence::new(vec![Digits::new(true).into(), gpt2().into()]).into(),
        "llama-bpe" | "llama3" => {
            let split = Split::new(
                SplitPattern::Regex(LLAMA3_SPLIT.into()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| format!("the llama-bpe split regex does not compile: {e}"))?;
            Sequence::new(vec![
                split.into(),
                ByteLevel::new(false, true, false).into(),
            ])
            .into()
        }
        other => {
            return Err(format!(
                "tokenizer.ggml.pre is {}; supported: default, gpt2, smollm, llama-bpe",
                crate::tensor::quoted(other)
            ));
        }
    })
}
