//! Structured outputs (feature `guidance`): token masks from JSON schemas and grammars, by
//! constrained decoding with [llguidance](https://github.com/guidance-ai/llguidance), the
//! engine llama.cpp, vLLM and SGLang use. We do not compile JSON schemas ourselves: that is
//! llguidance's product (Earley parsing over a lexer, masks in tens of microseconds).
//!
//! [`Grammars`] is built once per tokenizer (a trie of every token's bytes); each request then
//! gets a [`GrammarConstraint`], the engine's [`TokenConstraint`] for it.

use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};
use llguidance::{JsonCompileOptions, Matcher, ParserFactory};
use mlinfra_data::tokenizer::Tokenizer;
use serde_json::Value;

use crate::engine::TokenConstraint;
use crate::{Error, Result};

/// The grammar compiler for one tokenizer's vocabulary.
pub struct Grammars {
    factory: ParserFactory,
    eos: u32,
}

impl std::fmt::Debug for Grammars {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grammars")
            .field("eos", &self.eos)
            .finish_non_exhaustive()
    }
}

impl Grammars {
    /// Compiles grammars over `tokenizer`'s vocabulary; `eos` is the token that ends a
    /// complete output (the model's end of turn, one of its stop tokens).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] when the vocabulary's bytes cannot be recovered (neither
    /// byte-level BPE nor byte fallback) or llguidance refuses it.
    pub fn new(tokenizer: Arc<Tokenizer>, eos: u32) -> Result<Self> {
        let bytes = token_bytes(&tokenizer)?;
        let info = TokRxInfo::new(bytes.len() as u32, eos);
        let trie = TokTrie::from(&info, &bytes);
        let env: TokEnv = Arc::new(VocabEnv { trie, tokenizer });
        let factory = ParserFactory::new_simple(&env).map_err(|error| Error::InvalidConfig {
            reason: format!("llguidance refused the vocabulary: {error}").into(),
        })?;
        Ok(Grammars { factory, eos })
    }

    /// Output that is one JSON value valid under `schema` (OpenAI's `json_schema` format;
    /// `$ref`/`$defs` included, as pydantic writes them).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidSampling`] for a schema llguidance cannot compile, with its reason.
    ///
    /// The layout is fixed, as Python's `json.dumps` writes it (`", "` between items, `": "`
    /// after keys, no other whitespace): left free, whitespace is where a small model
    /// wanders off. A schema's own `x-guidance` options take precedence.
    pub fn json_schema(&self, schema: &Value) -> Result<GrammarConstraint> {
        let mut schema = schema.clone();
        if schema.is_object() && schema.get("x-guidance").is_none() {
            JsonCompileOptions {
                item_separator: ", ".into(),
                key_separator: ": ".into(),
                whitespace_flexible: false,
                ..JsonCompileOptions::default()
            }
            .apply_to(&mut schema);
        }
        self.constraint(TopLevelGrammar::from_json_schema(schema))
    }

    /// Output that is any JSON object (OpenAI's `json_object` format).
    ///
    /// # Errors
    ///
    /// As [`json_schema`](Self::json_schema).
    pub fn json_object(&self) -> Result<GrammarConstraint> {
        self.json_schema(&serde_json::json!({"type": "object"}))
    }

    fn constraint(&self, grammar: TopLevelGrammar) -> Result<GrammarConstraint> {
        let parser =
            self.factory
                .create_parser(grammar)
                .map_err(|error| Error::InvalidSampling {
                    reason: format!("the output grammar does not compile: {error}").into(),
                })?;
        Ok(GrammarConstraint {
            matcher: Matcher::new(Ok(parser)),
            eos: self.eos,
        })
    }
}

/// One request's grammar state. A clone starts where the original is (each choice of a
/// request gets one, compiled once).
#[derive(Clone)]
pub struct GrammarConstraint {
    matcher: Matcher,
    eos: u32,
}

impl std::fmt::Debug for GrammarConstraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrammarConstraint")
            .field("stopped", &self.matcher.is_stopped())
            .finish_non_exhaustive()
    }
}

impl TokenConstraint for GrammarConstraint {
    fn mask(&mut self, logits: &mut [f32]) {
        match self.matcher.compute_mask_or_eos() {
            Ok(allowed) => {
                for (token, logit) in logits.iter_mut().enumerate() {
                    // Ids past the tokenizer's vocabulary (padded embedding rows) never are.
                    if token >= allowed.len() || !allowed.is_allowed(token as TokenId) {
                        *logit = f32::NEG_INFINITY;
                    }
                }
            }
            Err(_) => {
                // A failed matcher allows nothing more: the output ends.
                for (token, logit) in logits.iter_mut().enumerate() {
                    if token != self.eos as usize {
                        *logit = f32::NEG_INFINITY;
                    }
                }
            }
        }
    }

    fn advance(&mut self, token: u32) {
        // A refused token puts the matcher in its error state: the next mask ends the output.
        let _ = self.matcher.consume_token(token);
    }
}

/// llguidance's view of the tokenizer: the trie, and our tokenizer for strings it must
/// tokenize itself (forced text).
struct VocabEnv {
    trie: TokTrie,
    tokenizer: Arc<Tokenizer>,
}

impl TokenizerEnv for VocabEnv {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, bytes: &[u8]) -> Vec<TokenId> {
        self.trie.tokenize_with_greedy_fallback(bytes, |text| {
            self.tokenizer
                .inner()
                .encode(text, false)
                .map(|encoding| encoding.get_ids().to_vec())
                .unwrap_or_default()
        })
    }
}

/// The bytes each token id stands for, with special tokens marked as llguidance wants them
/// (a 0xFF prefix). Byte-level BPE (GPT-2's alphabet, most current models) and byte-fallback
/// SentencePiece (`<0xAB>` tokens, `▁` for spaces) are recovered; other vocabularies are an
/// error rather than a guess.
fn token_bytes(tokenizer: &Tokenizer) -> Result<Vec<Vec<u8>>> {
    let inner = tokenizer.inner();
    let refuse = |reason: String| Error::InvalidConfig {
        reason: format!("structured outputs: {reason}").into(),
    };
    let decoder = serde_json::to_value(inner.get_decoder())
        .map_err(|error| refuse(format!("the tokenizer's decoder: {error}")))?;
    let mut kinds = Vec::new();
    collect_decoders(&decoder, &mut kinds);
    let byte_level = kinds.iter().any(|(kind, _)| kind == "ByteLevel");
    let byte_fallback = kinds.iter().any(|(kind, _)| kind == "ByteFallback");
    let space = kinds
        .iter()
        .find_map(|(kind, replaced)| (kind == "Replace").then_some(replaced.clone()).flatten())
        .unwrap_or_else(|| " ".into());
    if !byte_level && !byte_fallback {
        return Err(refuse(format!(
            "cannot recover token bytes from a {} decoder",
            decoder["type"]
        )));
    }
    let size = tokenizer.vocab_size();
    let mut bytes = vec![Vec::new(); size];
    for (id, added) in inner.get_added_tokens_decoder() {
        let Some(slot) = bytes.get_mut(id as usize) else {
            continue;
        };
        if added.special {
            slot.push(TokTrie::SPECIAL_TOKEN_MARKER);
        }
        slot.extend_from_slice(added.content.as_bytes());
    }
    let alphabet = byte_level.then(gpt2_byte_decoder);
    for (text, id) in inner.get_vocab(false) {
        let Some(slot) = bytes.get_mut(id as usize).filter(|slot| slot.is_empty()) else {
            continue;
        };
        *slot = match &alphabet {
            Some(alphabet) => text
                .chars()
                .map(|c| alphabet.get(&c).copied())
                .collect::<Option<Vec<u8>>>()
                .ok_or_else(|| refuse(format!("token {id} ({text:?}) is not byte-level")))?,
            None => match fallback_byte(&text) {
                Some(byte) => vec![byte],
                None => text.replace(space.as_str(), " ").into_bytes(),
            },
        };
    }
    Ok(bytes)
}

/// The kind of every decoder in a (possibly nested) sequence, with the text a `Replace`
/// decoder turns into a space.
fn collect_decoders(decoder: &Value, out: &mut Vec<(String, Option<String>)>) {
    let kind = decoder["type"].as_str().unwrap_or_default().to_owned();
    if let Some(inner) = decoder["decoders"].as_array() {
        for decoder in inner {
            collect_decoders(decoder, out);
        }
    }
    let replaced = (decoder["content"].as_str() == Some(" "))
        .then(|| decoder["pattern"]["String"].as_str().map(str::to_owned))
        .flatten();
    out.push((kind, replaced));
}

/// `<0xAB>` → 0xAB.
fn fallback_byte(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    (hex.len() == 2).then(|| u8::from_str_radix(hex, 16).ok())?
}

/// GPT-2's byte-to-character alphabet, inverted: printable Latin-1 bytes stand for
/// themselves, the rest for the code points from U+0100 up, in byte order.
fn gpt2_byte_decoder() -> std::collections::HashMap<char, u8> {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut next = 0x100u32;
    (0..=255u8)
        .map(|byte| {
            if printable(byte) {
                (char::from(byte), byte)
            } else {
                let c = char::from_u32(next).expect("U+0100..U+0143 are chars");
                next += 1;
                (c, byte)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gpt2_alphabet_covers_every_byte_once() {
        let alphabet = gpt2_byte_decoder();
        assert_eq!(alphabet.len(), 256);
        assert_eq!(alphabet[&'Ġ'], b' ');
        assert_eq!(alphabet[&'Ċ'], b'\n');
        assert_eq!(alphabet[&'a'], b'a');
        let mut bytes: Vec<u8> = alphabet.values().copied().collect();
        bytes.sort_unstable();
        assert_eq!(bytes, (0..=255).collect::<Vec<u8>>());
    }

    #[test]
    fn fallback_bytes_are_two_hex_digits() {
        assert_eq!(fallback_byte("<0x0A>"), Some(b'\n'));
        assert_eq!(fallback_byte("<0xZZ>"), None);
        assert_eq!(fallback_byte("<0x0AB>"), None);
        assert_eq!(fallback_byte("hello"), None);
    }
}
