//! Chat templates: a conversation to the exact text (and token ids) its model was trained on.
//!
//! A chat model ships a Jinja template (GGUF `tokenizer.chat_template`, Hugging Face
//! `tokenizer_config.json`'s `chat_template`) that turns a list of messages into its prompt
//! format (SmolLM2's ChatML: `<|im_start|>user\n...<|im_end|>\n`). [`ChatTemplate`] renders
//! it with [minijinja], configured as Hugging Face transformers configures jinja2 for
//! `apply_chat_template` (`trim_blocks`, `lstrip_blocks`, loop controls, `tojson`, Python
//! string methods, `raise_exception`), so the text matches what transformers produces.
//! llama.cpp and mistral.rs also render templates with a Jinja engine rather than formatting
//! strings by hand: a hand-written formatter is a second, diverging copy of every model's
//! format.
//!
//! For supervised fine-tuning, [`ChatTemplate::tokenize`] also says which tokens the assistant
//! wrote, the mask TRL's `assistant_only_loss` trains on.
//!
//! ```no_run
//! use mlinfra_data::chat::{ChatTemplate, Message};
//! use mlinfra_data::tensor::GgufFile;
//! use mlinfra_data::tokenizer::Tokenizer;
//!
//! let file = GgufFile::open("SmolLM2-135M-Instruct.Q4_1.gguf")?;
//! let template = ChatTemplate::from_gguf(&file)?;
//! let messages = [Message::new("user", "What is 2 + 3?"), Message::new("assistant", "5")];
//! let text = template.render(&messages, false)?;
//! assert!(text.ends_with("<|im_start|>assistant\n5<|im_end|>\n"));
//! let tokens = template.tokenize(&Tokenizer::from_gguf(&file)?, &messages)?;
//! assert_eq!(tokens.ids.len(), tokens.assistant_mask.len());
//! # Ok::<(), mlinfra_data::Error>(())
//! ```
//!
//! # Hostile templates
//!
//! A template is code from a model file. Rendering runs with a fuel limit (minijinja's
//! instruction budget) and a recursion limit, so a template that loops or recurses without
//! end fails with [`Error::ChatTemplate`] instead of hanging the process.
//!
//! [minijinja]: https://docs.rs/minijinja

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanBuilder, Int32Builder, ListBuilder, RecordBatch,
};
use arrow::datatypes::{DataType, Field, Schema};
use minijinja::syntax::SyntaxConfig;
use minijinja::value::Serde;
use minijinja::{Environment, ErrorKind, Value, context};
use parquet::arrow::ArrowWriter;
use serde::{Deserialize, Serialize};

use crate::dataset::Dataset;
use crate::files;
use crate::tensor::{GgufFile, GgufValue};
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};

/// The GGUF metadata key of the chat template.
pub const GGUF_CHAT_TEMPLATE_KEY: &str = "tokenizer.chat_template";

/// Instructions one render may execute: far beyond any real chat template on any real
/// conversation (SmolLM2's uses about 20 per message), finite for a hostile one.
const FUEL: u64 = 50_000_000;
/// Nesting depth one render may reach (macros, includes, recursive loops).
const RECURSION_LIMIT: usize = 64;

/// One message of a conversation, in the OpenAI / Hugging Face shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user`, `assistant` (or whatever roles the template knows).
    pub role: String,
    /// The text.
    pub content: String,
}

impl Message {
    /// A message of `role` saying `content`.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A conversation's token ids and which of them the assistant wrote.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ChatTokens {
    /// The ids of the whole rendered conversation.
    pub ids: Vec<u32>,
    /// True on the tokens of assistant turns (their content and the template's end-of-turn
    /// text after it), false on everything the model is given rather than asked to produce.
    pub assistant_mask: Vec<bool>,
}

/// A compiled chat template; see the [module docs](self).
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
    origin: Box<str>,
}

/// The name the template is registered under in its environment.
const NAME: &str = "chat";

impl ChatTemplate {
    /// Compiles `source`, a Hugging Face chat template. `bos_token` and `eos_token` are the
    /// strings the template sees under those names (empty here; see
    /// [`ChatTemplate::with_special_tokens`]).
    ///
    /// # Errors
    ///
    /// [`Error::ChatTemplate`] with minijinja's description (and line) of a syntax error.
    pub fn new(source: impl Into<String>) -> Result<Self> {
        Self::compile(source.into(), "the given template".into())
    }

    /// The template a GGUF file carries (`tokenizer.chat_template`), with its BOS and EOS
    /// token strings.
    ///
    /// # Errors
    ///
    /// [`Error::ChatTemplate`] when the file has no template, or it does not compile.
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        let origin = file.path().display().to_string();
        let source = match file.get(GGUF_CHAT_TEMPLATE_KEY) {
            Some(value) => match value.as_str() {
                Some(source) => source.to_owned(),
                None => {
                    return Err(template_error(
                        &origin,
                        format!(
                            "{GGUF_CHAT_TEMPLATE_KEY} is a {}, not a string",
                            value.value_type().name()
                        ),
                    ));
                }
            },
            None => {
                return Err(template_error(
                    &origin,
                    format!("no {GGUF_CHAT_TEMPLATE_KEY} in the metadata"),
                ));
            }
        };
        // The special tokens' strings, when the metadata has them (templates that do not use
        // them render the same without).
        let tokens = file
            .get("tokenizer.ggml.tokens")
            .and_then(GgufValue::as_array)
            .and_then(|array| array.as_strs());
        let token = |key: &str| -> String {
            file.get(key)
                .and_then(GgufValue::as_u64)
                .and_then(|id| tokens?.get(usize::try_from(id).ok()?))
                .map(|token| token.to_string())
                .unwrap_or_default()
        };
        let (bos, eos) = (
            token("tokenizer.ggml.bos_token_id"),
            token("tokenizer.ggml.eos_token_id"),
        );
        Ok(Self::compile(source, origin.into())?.with_special_tokens(bos, eos))
    }

    /// This template with `bos_token` and `eos_token` set to these strings.
    #[must_use]
    pub fn with_special_tokens(
        mut self,
        bos_token: impl Into<String>,
        eos_token: impl Into<String>,
    ) -> Self {
        self.bos_token = bos_token.into();
        self.eos_token = eos_token.into();
        self
    }

    fn compile(source: String, origin: Box<str>) -> Result<Self> {
        let mut env = Environment::new();
        // transformers' ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).
        let syntax = SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| template_error(&origin, e.to_string()))?;
        env.set_syntax(syntax);
        env.set_fuel(Some(FUEL));
        env.set_recursion_limit(RECURSION_LIMIT);
        // `message.content.strip()`, `.startswith(...)`, `.items()`: Python methods that
        // templates written for jinja2 call.
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |message: String| -> Result<Value, minijinja::Error> {
                Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
            },
        );
        env.add_template_owned(NAME, source)
            .map_err(|e| template_error(&origin, describe(&e)))?;
        Ok(ChatTemplate {
            env,
            bos_token: String::new(),
            eos_token: String::new(),
            origin,
        })
    }

    /// The text of `messages`; with `add_generation_prompt`, followed by the opening of an
    /// assistant turn (what a model then continues).
    ///
    /// # Errors
    ///
    /// [`Error::ChatTemplate`] when rendering fails: the template raises (a role it does not
    /// accept, say), uses something undefined in a way that cannot render, or runs out of
    /// fuel.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        self.render_context(Serde(messages), None, add_generation_prompt)
    }

    /// [`ChatTemplate::render`] for messages in OpenAI's full JSON shape (assistant
    /// `tool_calls`, `tool` messages with a `tool_call_id`, `content` that may be null) and
    /// with tool definitions: `tools` (OpenAI's `[{"type": "function", "function": {...}}]`)
    /// reach the template under that name, as `transformers`' `apply_chat_template(...,
    /// tools=...)` passes them, so each template lays them out its own way. No tools pass
    /// `none`, as transformers does.
    ///
    /// # Errors
    ///
    /// As [`ChatTemplate::render`].
    pub fn render_with_tools(
        &self,
        messages: &[serde_json::Value],
        tools: &[serde_json::Value],
        add_generation_prompt: bool,
    ) -> Result<String> {
        let tools = (!tools.is_empty()).then(|| Value::from(Serde(tools)));
        self.render_context(Serde(messages), tools, add_generation_prompt)
    }

    fn render_context<M: Serialize>(
        &self,
        messages: Serde<M>,
        tools: Option<Value>,
        add_generation_prompt: bool,
    ) -> Result<String> {
        let template = self
            .env
            .get_template(NAME)
            .map_err(|e| template_error(&self.origin, describe(&e)))?;
        template
            .render(context! {
                messages => messages,
                tools => tools,
                add_generation_prompt => add_generation_prompt,
                bos_token => &self.bos_token,
                eos_token => &self.eos_token,
            })
            .map_err(|e| template_error(&self.origin, describe(&e)))
    }

    /// The token ids of `messages` rendered whole, and which of them the assistant wrote.
    ///
    /// An assistant turn `i` is located the way TRL's completion-only training locates it
    /// without template markup: its text is what rendering `messages[..=i]` adds to rendering
    /// `messages[..i]` with a generation prompt. Each piece of the full text is then tokenized
    /// on its own and the ids joined, so no token straddles a turn boundary (as TRL does for
    /// prompt-completion pairs). For templates that put special tokens at turn boundaries
    /// (ChatML and most others) this is the tokenization of the whole text.
    ///
    /// # Errors
    ///
    /// [`Error::ChatTemplate`] when rendering fails, or when the template is not
    /// prefix-stable (rendering more messages changes the text of earlier ones, so turns
    /// cannot be located); [`Error::Tokenizer`] from the tokenizer.
    ///
    /// # Costs
    ///
    /// Two renders per assistant turn besides the whole one (quadratic in the number of turns,
    /// which is small for chat data), and one tokenizer call per piece.
    pub fn tokenize(&self, tokenizer: &Tokenizer, messages: &[Message]) -> Result<ChatTokens> {
        let full = self.render(messages, false)?;
        // Byte ranges of `full` that assistant turns wrote, in order.
        let mut spans = Vec::new();
        for (i, message) in messages.iter().enumerate() {
            if message.role != "assistant" {
                continue;
            }
            let before = self.render(&messages[..i], true)?;
            let through = self.render(&messages[..=i], false)?;
            let stable = through.starts_with(&before) && full.starts_with(&through);
            if !stable {
                return Err(template_error(
                    &self.origin,
                    format!(
                        "the template is not prefix-stable at message {i} (rendering later \
                         messages changes the text before it), so its assistant turn cannot \
                         be located"
                    ),
                ));
            }
            spans.push(before.len()..through.len());
        }
        let mut out = ChatTokens::default();
        let mut at = 0;
        let push = |text: &str, assistant: bool, out: &mut ChatTokens| -> Result<()> {
            if text.is_empty() {
                return Ok(());
            }
            // Only the first piece gets the BOS a tokenizer adds, as the whole text would.
            let mut ids = tokenizer.encode(text)?;
            if !out.ids.is_empty() && tokenizer.adds_bos() && !ids.is_empty() {
                ids.remove(0);
            }
            out.assistant_mask
                .extend(std::iter::repeat_n(assistant, ids.len()));
            out.ids.extend(ids);
            Ok(())
        };
        for span in spans {
            push(&full[at..span.start], false, &mut out)?;
            push(&full[span.clone()], true, &mut out)?;
            at = span.end;
        }
        push(&full[at..], false, &mut out)?;
        Ok(out)
    }
}

/// The column names [`ChatTemplate::tokenize_batch`] writes: TRL's.
pub const INPUT_IDS: &str = "input_ids";
/// See [`INPUT_IDS`].
pub const ASSISTANT_MASKS: &str = "assistant_masks";

impl ChatTemplate {
    /// Tokenizes the conversations in the column `column` of `batch` (a list of
    /// `{role, content}` structs per row, the `messages` column of Hugging Face chat datasets)
    /// into TRL's columns: `input_ids` (list of int32) and `assistant_masks` (list of bool).
    ///
    /// # Errors
    ///
    /// [`Error::ChatTemplate`] naming the row for a column that is missing or not a list of
    /// `{role, content}` strings, a null, or a conversation the template refuses; what
    /// [`ChatTemplate::tokenize`] returns otherwise.
    pub fn tokenize_batch(
        &self,
        tokenizer: &Tokenizer,
        batch: &RecordBatch,
        column: &str,
    ) -> Result<RecordBatch> {
        let conversations =
            conversations(batch, column).map_err(|e| template_error(&self.origin, e))?;
        let mut ids = ListBuilder::new(Int32Builder::new());
        let mut masks = ListBuilder::new(BooleanBuilder::new());
        for (row, messages) in conversations.iter().enumerate() {
            let tokens = self.tokenize(tokenizer, messages).map_err(|e| match e {
                Error::ChatTemplate { origin, what } => Error::ChatTemplate {
                    origin,
                    what: format!("row {row}: {what}").into(),
                },
                other => other,
            })?;
            for &id in &tokens.ids {
                let id = i32::try_from(id).map_err(|_| {
                    template_error(
                        &self.origin,
                        format!("row {row}: token id {id} overflows int32"),
                    )
                })?;
                ids.values().append_value(id);
            }
            ids.append(true);
            masks.values().append_slice(&tokens.assistant_mask);
            masks.append(true);
        }
        let ids: ArrayRef = Arc::new(ids.finish());
        let masks: ArrayRef = Arc::new(masks.finish());
        RecordBatch::try_from_iter([(INPUT_IDS, ids), (ASSISTANT_MASKS, masks)])
            .map_err(|e| template_error(&self.origin, format!("building the batch: {e}")))
    }

    /// Tokenizes every conversation of `dataset`'s column `column` (see
    /// [`ChatTemplate::tokenize_batch`]) into a Parquet file at `output`, written atomically
    /// (a temporary file renamed over `output` when complete). Returns the rows written.
    ///
    /// # Errors
    ///
    /// As [`ChatTemplate::tokenize_batch`]; scan errors; [`Error::Io`] writing `output`.
    pub fn tokenize_dataset(
        &self,
        tokenizer: &Tokenizer,
        dataset: &Dataset,
        column: &str,
        output: &Path,
    ) -> Result<u64> {
        let schema = Arc::new(Schema::new(vec![
            Field::new(
                INPUT_IDS,
                DataType::List(Arc::new(Field::new("item", DataType::Int32, true))),
                true,
            ),
            Field::new(
                ASSISTANT_MASKS,
                DataType::List(Arc::new(Field::new("item", DataType::Boolean, true))),
                true,
            ),
        ]));
        let scan = dataset.project(&[column])?.scan().build();
        // A typed error from inside the writer's closure, which can only return io::Error.
        let mut failure = None;
        let written = files::write_atomic_with(
            output,
            |temp| {
                let file = File::create(temp)?;
                let mut writer = ArrowWriter::try_new(file, schema.clone(), None)
                    .map_err(std::io::Error::other)?;
                let mut rows = 0u64;
                for batch in scan {
                    let tokenized = batch.and_then(|b| self.tokenize_batch(tokenizer, &b, column));
                    let tokenized = match tokenized {
                        Ok(tokenized) => tokenized,
                        Err(error) => {
                            failure = Some(error);
                            return Err(std::io::Error::other("tokenizing failed"));
                        }
                    };
                    rows += tokenized.num_rows() as u64;
                    writer.write(&tokenized).map_err(std::io::Error::other)?;
                }
                Ok((writer.into_inner().map_err(std::io::Error::other)?, rows))
            },
            || {},
        );
        match (written, failure) {
            (_, Some(error)) => Err(error),
            (Ok(rows), None) => Ok(rows),
            (Err(error), None) => Err(Error::io(output, error)),
        }
    }
}

/// The conversations of `batch`'s column `column`.
fn conversations(
    batch: &RecordBatch,
    column: &str,
) -> std::result::Result<Vec<Vec<Message>>, String> {
    let array = batch
        .column_by_name(column)
        .ok_or_else(|| format!("no column `{column}` in the chat records"))?;
    let wrong = || {
        format!(
            "column `{column}` is {}, not a list of {{role, content}} structs",
            array.data_type()
        )
    };
    let list = array.as_list_opt::<i32>().ok_or_else(wrong)?;
    let structs = list.values().as_struct_opt().ok_or_else(wrong)?;
    let field = |name: &str| -> std::result::Result<&ArrayRef, String> {
        structs
            .column_by_name(name)
            .filter(|c| c.data_type() == &DataType::Utf8)
            .ok_or_else(|| format!("column `{column}`: its structs need a string field `{name}`"))
    };
    let roles = field("role")?.as_string::<i32>();
    let contents = field("content")?.as_string::<i32>();
    let mut out = Vec::with_capacity(list.len());
    for row in 0..list.len() {
        if list.is_null(row) {
            return Err(format!("row {row}: `{column}` is null"));
        }
        let offsets = list.value_offsets();
        let messages = (offsets[row] as usize..offsets[row + 1] as usize)
            .map(|i| {
                if structs.is_null(i) || roles.is_null(i) || contents.is_null(i) {
                    return Err(format!(
                        "row {row}: message {} has a null role or content",
                        i - offsets[row] as usize
                    ));
                }
                Ok(Message::new(roles.value(i), contents.value(i)))
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        out.push(messages);
    }
    Ok(out)
}

/// minijinja's error with its detail and line, on one line.
fn describe(error: &minijinja::Error) -> String {
    let mut text = error.to_string();
    if let Some(detail) = error.detail()
        && !text.contains(detail)
    {
        text = format!("{text}: {detail}");
    }
    text
}

fn template_error(origin: &str, what: String) -> Error {
    Error::ChatTemplate {
        origin: origin.into(),
        what: what.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SmolLM2-135M-Instruct's template, as its GGUF carries it.
    pub(crate) const SMOLLM2: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn chatml_renders_as_transformers_does() {
        let template = ChatTemplate::new(SMOLLM2).unwrap();
        let messages = [
            Message::new("user", "Hi"),
            Message::new("assistant", "Hello!"),
        ];
        // transformers 5.23 apply_chat_template(tokenize=False) on the same template.
        assert_eq!(
            template.render(&messages, false).unwrap(),
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by \
             Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n\
             Hello!<|im_end|>\n"
        );
        assert!(
            template
                .render(&messages[..1], true)
                .unwrap()
                .ends_with("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
        );
    }

    #[test]
    fn jinja2_habits_of_real_templates_work() {
        // Python string methods, loop controls, tojson, trim_blocks / lstrip_blocks,
        // bos_token, raise_exception.
        let source = "{{ bos_token }}{% for m in messages %}\n  {% if m.role == 'system' %}{% continue %}{% endif %}\n{{ m.role.upper() }}: {{ m.content.strip() }}|{{ m.content | tojson }}\n{% endfor %}{% if messages[-1].role == 'tool' %}{{ raise_exception('no tools here') }}{% endif %}";
        let template = ChatTemplate::new(source)
            .unwrap()
            .with_special_tokens("<s>", "</s>");
        let text = template
            .render(
                &[Message::new("system", "x"), Message::new("user", "  hi  ")],
                false,
            )
            .unwrap();
        assert_eq!(text, "<s>USER: hi|\"  hi  \"\n");
        let error = template
            .render(&[Message::new("tool", "x")], false)
            .unwrap_err()
            .to_string();
        assert!(error.contains("no tools here"), "{error}");
    }

    #[test]
    fn broken_and_endless_templates_are_errors_not_hangs() {
        let error = ChatTemplate::new("{% for m in messages %}")
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("chat template from the given template"),
            "{error}"
        );
        let endless = ChatTemplate::new(
            "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
        )
        .unwrap();
        let error = endless.render(&[], false).unwrap_err().to_string();
        assert!(error.contains("fuel"), "{error}");
        let recursive =
            ChatTemplate::new("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}").unwrap();
        let error = recursive.render(&[], false).unwrap_err().to_string();
        assert!(error.contains("recursion"), "{error}");
    }

    /// Tool definitions and tool calls reach the template in OpenAI's shape, laid out the way
    /// a Hermes/Qwen-style template does; without tools the template sees `none`.
    #[test]
    fn tools_and_tool_calls_render_the_way_the_template_lays_them_out() {
        let source = "{% if tools %}<tools>{% for t in tools %}{{ t.function.name }}:{{ t.function.parameters | tojson }};{% endfor %}</tools>\n{% else %}no tools\n{% endif %}{% for m in messages %}<{{ m.role }}>{% if m.tool_calls %}{% for c in m.tool_calls %}<call>{{ c.function.name }}({{ c.function.arguments }})</call>{% endfor %}{% elif m.role == 'tool' %}[{{ m.tool_call_id }}] {{ m.content }}{% else %}{{ m.content }}{% endif %}\n{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}";
        let template = ChatTemplate::new(source).unwrap();
        let tools = [serde_json::json!({"type": "function", "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}
        }})];
        let messages = [
            serde_json::json!({"role": "user", "content": "Weather in Paris?"}),
            serde_json::json!({"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}
            ]}),
            serde_json::json!({"role": "tool", "tool_call_id": "call_1", "content": "18 C"}),
        ];
        let text = template.render_with_tools(&messages, &tools, true).unwrap();
        // transformers' `tojson` (json.dumps spacing) and trim_blocks (no newline after a
        // block tag), as the environment is configured.
        assert_eq!(
            text,
            "<tools>get_weather:{\"properties\": {\"city\": {\"type\": \"string\"}}, \"type\": \"object\"};</tools>\n\
             <user>Weather in Paris?<assistant><call>get_weather({\"city\": \"Paris\"})</call>\
             <tool>[call_1] 18 C<assistant>"
        );
        let plain = template
            .render_with_tools(&messages[..1], &[], false)
            .unwrap();
        assert_eq!(plain, "no tools\n<user>Weather in Paris?");
    }
}
