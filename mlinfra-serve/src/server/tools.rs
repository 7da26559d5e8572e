//! Tool calls: the grammar that forces one (`tool_choice` `required` or a named function),
//! and the parser that turns generated text into OpenAI `tool_calls`, streamed as deltas.
//!
//! How a call is written, by `tool_choice`:
//! - a named function: the output is its arguments object, constrained by its `parameters`
//!   schema (vLLM's approach);
//! - `required`: the output is `{"name": ..., "arguments": {...}}`, constrained to the tools'
//!   names and each one's parameters;
//! - `auto`: the model writes freely; calls are the `<tool_call>{"name": ..., "arguments":
//!   ...}</tool_call>` blocks of the Hermes format (Qwen, Hermes, SmolLM3 and others), and
//!   the text around them is content.

use serde_json::{Value, json};

use super::error::ApiError;

/// What `tool_choice` asked for, resolved against `tools`.
#[derive(Debug, Clone)]
pub(super) enum ToolMode {
    /// Exactly one call of this function.
    Named(String),
    /// Exactly one call of one of the tools.
    Required,
    /// Calls when the model writes them.
    Auto,
}

impl ToolMode {
    /// `tool_choice` against `tools`; `None` for no tools or `tool_choice: "none"`.
    pub(super) fn resolve(
        tools: &[Value],
        choice: Option<&Value>,
    ) -> Result<Option<Self>, ApiError> {
        let names: Vec<&str> = tools.iter().filter_map(function_name).collect();
        if names.len() != tools.len() {
            return Err(ApiError::invalid(
                Some("tools"),
                "every tool must be {\"type\": \"function\", \"function\": {\"name\": ...}}",
            ));
        }
        let mode = match choice {
            None if tools.is_empty() => None,
            None => Some(ToolMode::Auto),
            Some(Value::String(choice)) => match choice.as_str() {
                "none" => None,
                "auto" => Some(ToolMode::Auto),
                "required" => Some(ToolMode::Required),
                other => {
                    return Err(ApiError::invalid(
                        Some("tool_choice"),
                        format!("`tool_choice` {other:?}: expected none, auto or required"),
                    ));
                }
            },
            Some(named) => {
                let name = named["function"]["name"].as_str().ok_or_else(|| {
                    ApiError::invalid(
                        Some("tool_choice"),
                        "`tool_choice` must be a string or {\"type\": \"function\", \
                         \"function\": {\"name\": ...}}",
                    )
                })?;
                Some(ToolMode::Named(name.to_owned()))
            }
        };
        if mode.is_some() && tools.is_empty() {
            return Err(ApiError::invalid(
                Some("tool_choice"),
                "`tool_choice` needs `tools`",
            ));
        }
        if let Some(ToolMode::Named(name)) = &mode
            && !names.contains(&name.as_str())
        {
            return Err(ApiError::invalid(
                Some("tool_choice"),
                format!("`tool_choice` names {name:?}, which is not among the tools"),
            ));
        }
        Ok(mode)
    }

    /// The JSON schema the output must follow, if this mode forces a call.
    pub(super) fn schema(&self, tools: &[Value]) -> Option<Value> {
        let parameters = |tool: &Value| {
            let schema = &tool["function"]["parameters"];
            if schema.is_object() {
                schema.clone()
            } else {
                json!({"type": "object", "properties": {}})
            }
        };
        match self {
            ToolMode::Auto => None,
            ToolMode::Named(name) => tools
                .iter()
                .find(|tool| function_name(tool) == Some(name.as_str()))
                .map(parameters),
            ToolMode::Required => Some(json!({
                "anyOf": tools.iter().map(|tool| json!({
                    "type": "object",
                    "properties": {
                        "name": {"const": function_name(tool)},
                        "arguments": parameters(tool),
                    },
                    "required": ["name", "arguments"],
                    "additionalProperties": false,
                })).collect::<Vec<_>>(),
            })),
        }
    }
}

fn function_name(tool: &Value) -> Option<&str> {
    (tool["type"] == "function")
        .then(|| tool["function"]["name"].as_str())
        .flatten()
}

/// A finished call.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct ToolCall {
    pub id: String,
    pub name: String,
    pub arguments: String,
}

/// What a piece of generated text turned into.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Piece {
    /// Assistant text.
    Content(String),
    /// A call starts: its id and name (arguments follow).
    Start {
        index: usize,
        id: String,
        name: String,
    },
    /// More of a call's arguments (JSON text).
    Arguments { index: usize, delta: String },
}

const OPEN: &str = "<tool_call>";
const CLOSE: &str = "</tool_call>";

/// Turns a choice's generated text, piece by piece, into content and tool calls.
#[derive(Debug)]
pub(super) struct ToolParser {
    mode: ToolMode,
    id_prefix: String,
    /// Text not yet turned into pieces.
    held: String,
    /// Inside a call (Hermes block, or the forced call after its name).
    in_call: bool,
    calls: Vec<ToolCall>,
}

impl ToolParser {
    /// A parser for one choice; call ids are `{id_prefix}{n}`.
    pub(super) fn new(mode: ToolMode, id_prefix: String) -> Self {
        ToolParser {
            mode,
            id_prefix,
            held: String::new(),
            in_call: false,
            calls: Vec::new(),
        }
    }

    /// The calls so far.
    pub(super) fn calls(&self) -> &[ToolCall] {
        &self.calls
    }

    fn start(&mut self, name: String, out: &mut Vec<Piece>) {
        let index = self.calls.len();
        let id = format!("{}{index}", self.id_prefix);
        self.calls.push(ToolCall {
            id: id.clone(),
            name: name.clone(),
            arguments: String::new(),
        });
        out.push(Piece::Start { index, id, name });
    }

    fn arguments(&mut self, delta: String, out: &mut Vec<Piece>) {
        if delta.is_empty() {
            return;
        }
        let index = self.calls.len() - 1;
        self.calls[index].arguments.push_str(&delta);
        out.push(Piece::Arguments { index, delta });
    }

    /// The pieces `text` completes.
    pub(super) fn push(&mut self, text: &str) -> Vec<Piece> {
        self.held.push_str(text);
        let mut out = Vec::new();
        match self.mode.clone() {
            ToolMode::Named(name) => {
                if self.calls.is_empty() {
                    self.start(name, &mut out);
                }
                let delta = std::mem::take(&mut self.held);
                self.arguments(delta, &mut out);
            }
            ToolMode::Required => self.push_required(&mut out),
            ToolMode::Auto => self.push_auto(&mut out),
        }
        out
    }

    /// `{"name": "...", "arguments": ...}`: the name once its string closes, then the
    /// arguments' text, holding back a final `}` (and spaces) that may close the object.
    fn push_required(&mut self, out: &mut Vec<Piece>) {
        if !self.in_call {
            let Some((name, rest)) = split_name_and_arguments(&self.held) else {
                return;
            };
            self.held = rest;
            self.in_call = true;
            self.start(name, out);
        }
        if self
            .calls
            .last()
            .is_some_and(|call| call.arguments.is_empty())
        {
            // Spaces between `"arguments":` and the value are not part of the value.
            let start = self.held.len() - self.held.trim_start().len();
            self.held.drain(..start);
        }
        let keep = closing_brace_len(&self.held);
        let delta: String = self.held.drain(..self.held.len() - keep).collect();
        self.arguments(delta, out);
    }

    fn push_auto(&mut self, out: &mut Vec<Piece>) {
        loop {
            if self.in_call {
                let Some(end) = self.held.find(CLOSE) else {
                    return;
                };
                let block: String = self.held.drain(..end + CLOSE.len()).collect();
                self.in_call = false;
                let body = &block[..end];
                match parse_call(body) {
                    Some((name, arguments)) => {
                        self.start(name, out);
                        self.arguments(arguments, out);
                    }
                    // Not a call after all: it stays text.
                    None => out.push(Piece::Content(format!("{OPEN}{block}"))),
                }
            } else if let Some(start) = self.held.find(OPEN) {
                let before: String = self.held.drain(..start + OPEN.len()).collect();
                let text = &before[..start];
                if !text.is_empty() {
                    out.push(Piece::Content(text.to_owned()));
                }
                self.in_call = true;
            } else {
                // Release all but what could begin `<tool_call>`.
                let keep = (1..OPEN.len().min(self.held.len() + 1))
                    .rev()
                    .find(|&n| {
                        self.held.is_char_boundary(self.held.len() - n)
                            && OPEN.starts_with(&self.held[self.held.len() - n..])
                    })
                    .unwrap_or(0);
                let text: String = self.held.drain(..self.held.len() - keep).collect();
                if !text.is_empty() {
                    out.push(Piece::Content(text));
                }
                return;
            }
        }
    }

    /// The pieces left when the output ends.
    pub(super) fn finish(&mut self) -> Vec<Piece> {
        let mut out = Vec::new();
        let held = std::mem::take(&mut self.held);
        match self.mode {
            // What a forced call held back is the object's closing brace.
            ToolMode::Named(_) | ToolMode::Required => {}
            ToolMode::Auto if self.in_call => out.push(Piece::Content(format!("{OPEN}{held}"))),
            ToolMode::Auto if !held.is_empty() => out.push(Piece::Content(held)),
            ToolMode::Auto => {}
        }
        out
    }
}

/// `{"name": "f", "arguments": REST` → (`f`, `REST`), once that much has been written.
fn split_name_and_arguments(text: &str) -> Option<(String, String)> {
    let rest = text.trim_start().strip_prefix('{')?.trim_start();
    let rest = rest
        .strip_prefix("\"name\"")?
        .trim_start()
        .strip_prefix(':')?
        .trim_start();
    let mut chars = serde_json::Deserializer::from_str(rest).into_iter::<String>();
    let name = chars.next()?.ok()?;
    let rest = &rest[chars.byte_offset()..];
    let rest = rest.trim_start().strip_prefix(',')?.trim_start();
    let rest = rest
        .strip_prefix("\"arguments\"")?
        .trim_start()
        .strip_prefix(':')?;
    Some((name, rest.trim_start().to_owned()))
}

/// Bytes of a trailing `}` followed by whitespace (0 when the text does not end so).
fn closing_brace_len(text: &str) -> usize {
    let trimmed = text.trim_end();
    if trimmed.ends_with('}') {
        text.len() - trimmed.len() + 1
    } else {
        0
    }
}

/// A Hermes block's `{"name": ..., "arguments": {...}}` (arguments re-serialized compactly).
fn parse_call(body: &str) -> Option<(String, String)> {
    let call: Value = serde_json::from_str(body.trim()).ok()?;
    let name = call["name"].as_str()?.to_owned();
    let arguments = match &call["arguments"] {
        Value::String(text) => text.clone(),
        Value::Null => "{}".into(),
        other => other.to_string(),
    };
    Some((name, arguments))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(mode: ToolMode, pieces: &[&str]) -> (String, Vec<ToolCall>, Vec<Piece>) {
        let mut parser = ToolParser::new(mode, "call_".into());
        let mut all = Vec::new();
        for piece in pieces {
            all.extend(parser.push(piece));
        }
        all.extend(parser.finish());
        let content = all
            .iter()
            .filter_map(|p| match p {
                Piece::Content(text) => Some(text.as_str()),
                _ => None,
            })
            .collect();
        (content, parser.calls().to_vec(), all)
    }

    #[test]
    fn a_required_call_streams_its_arguments_without_the_closing_brace() {
        let text = r#"{"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}"#;
        // Every split into two pieces gives the same call.
        for cut in (0..text.len()).filter(|&i| text.is_char_boundary(i)) {
            let (content, calls, pieces) = run(ToolMode::Required, &[&text[..cut], &text[cut..]]);
            assert_eq!(content, "");
            assert_eq!(calls.len(), 1, "cut {cut}");
            assert_eq!(calls[0].name, "get_weather");
            assert_eq!(
                calls[0].arguments, r#"{"city": "Paris", "days": 2}"#,
                "cut {cut}"
            );
            assert!(matches!(&pieces[0], Piece::Start { index: 0, .. }));
        }
    }

    #[test]
    fn a_named_call_is_the_whole_output() {
        let (content, calls, _) = run(ToolMode::Named("f".into()), &["{\"a\"", ": 1}"]);
        assert_eq!(content, "");
        assert_eq!(calls[0].arguments, "{\"a\": 1}");
        assert_eq!(calls[0].id, "call_0");
    }

    #[test]
    fn auto_finds_hermes_blocks_split_anywhere_and_keeps_other_text() {
        let text =
            "Let me check.<tool_call>\n{\"name\": \"f\", \"arguments\": {\"x\": 1}}\n</tool_call>";
        for cut in (0..text.len()).filter(|&i| text.is_char_boundary(i)) {
            let (content, calls, _) = run(ToolMode::Auto, &[&text[..cut], &text[cut..]]);
            assert_eq!(content, "Let me check.", "cut {cut}");
            assert_eq!(calls.len(), 1, "cut {cut}");
            assert_eq!(calls[0].arguments, "{\"x\":1}");
        }
        let (content, calls, _) = run(ToolMode::Auto, &["a <tool", "bar> b"]);
        assert_eq!(content, "a <toolbar> b");
        assert!(calls.is_empty());
        let (content, calls, _) = run(ToolMode::Auto, &["<tool_call>not json</tool_call>"]);
        assert_eq!(content, "<tool_call>not json</tool_call>");
        assert!(calls.is_empty());
    }

    #[test]
    fn tool_choice_is_checked_against_the_tools() {
        let tools = [
            json!({"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}),
        ];
        assert!(matches!(
            ToolMode::resolve(&tools, None),
            Ok(Some(ToolMode::Auto))
        ));
        assert!(
            ToolMode::resolve(&tools, Some(&json!("none")))
                .unwrap()
                .is_none()
        );
        let named = json!({"type": "function", "function": {"name": "g"}});
        assert!(ToolMode::resolve(&tools, Some(&named)).is_err());
        assert!(ToolMode::resolve(&[], Some(&json!("required"))).is_err());
        assert!(ToolMode::resolve(&[json!({"type": "function"})], None).is_err());
        let schema = ToolMode::Required.schema(&tools).unwrap();
        assert_eq!(schema["anyOf"][0]["properties"]["name"]["const"], "f");
    }
}
