//! Chat templates on SmolLM2-135M-Instruct's GGUF (issue 22, item 5): the template from the
//! file's metadata renders as transformers' `apply_chat_template` does, the ids are the ids of
//! the whole text, and the assistant mask covers exactly the assistant turns.

use arrow::array::AsArray;
use mlinfra_data::chat::{ChatTemplate, Message};
use mlinfra_data::tensor::GgufFile;
use mlinfra_data::tokenizer::Tokenizer;

fn conversation() -> Vec<Message> {
    vec![
        Message::new("system", "You answer briefly."),
        Message::new("user", "Name a red fruit."),
        Message::new("assistant", "A cherry."),
        Message::new("user", "And a yellow one?"),
        Message::new("assistant", "A lemon, or a banana."),
    ]
}

#[test]
fn smollm2_chats_render_and_tokenize_as_transformers_does() {
    let Some(path) = mlinfra_test_utils::model("SmolLM2-135M-Instruct.Q4_1.gguf") else {
        return;
    };
    let file = GgufFile::open(&path).unwrap();
    let template = ChatTemplate::from_gguf(&file).unwrap();
    let tokenizer = Tokenizer::from_gguf(&file).unwrap();
    let messages = conversation();
    // transformers 5.23, apply_chat_template(messages, tokenize=False) and tokenize=True.
    let text = template.render(&messages, false).unwrap();
    assert_eq!(
        text,
        "<|im_start|>system\nYou answer briefly.<|im_end|>\n<|im_start|>user\nName a red \
         fruit.<|im_end|>\n<|im_start|>assistant\nA cherry.<|im_end|>\n<|im_start|>user\nAnd a \
         yellow one?<|im_end|>\n<|im_start|>assistant\nA lemon, or a banana.<|im_end|>\n"
    );
    let want: Vec<u32> = vec![
        1, 9690, 198, 2683, 2988, 13099, 30, 2, 198, 1, 4093, 198, 5820, 253, 2382, 4354, 30, 2,
        198, 1, 520, 9531, 198, 49, 23636, 30, 2, 198, 1, 4093, 198, 3528, 253, 5724, 582, 47, 2,
        198, 1, 520, 9531, 198, 49, 11499, 28, 355, 253, 21285, 30, 2, 198,
    ];
    let tokens = template.tokenize(&tokenizer, &messages).unwrap();
    assert_eq!(tokens.ids, want);
    // The masked tokens decode to the assistant turns and their end-of-turn text, nothing else.
    let mut turns = Vec::new();
    let mut current: Vec<u32> = Vec::new();
    for (&id, &assistant) in tokens.ids.iter().zip(&tokens.assistant_mask) {
        if assistant {
            current.push(id);
        } else if !current.is_empty() {
            turns.push(tokenizer.decode(&std::mem::take(&mut current)).unwrap());
        }
    }
    if !current.is_empty() {
        turns.push(tokenizer.decode(&current).unwrap());
    }
    assert_eq!(
        turns,
        ["A cherry.<|im_end|>\n", "A lemon, or a banana.<|im_end|>\n"]
    );
    // Numbers too (SmolLM2 splits every digit): piecewise ids are the whole text's.
    let arithmetic = [
        Message::new("user", "What is 487 + 25?"),
        Message::new("assistant", "512"),
    ];
    let tokens = template.tokenize(&tokenizer, &arithmetic).unwrap();
    let whole = tokenizer
        .encode(&template.render(&arithmetic, false).unwrap())
        .unwrap();
    assert_eq!(tokens.ids, whole);
    assert_eq!(tokens.assistant_mask.iter().filter(|&&m| m).count(), 3 + 2);
}

/// Chat records as JSON lines, converted to Parquet by mlinfra-data, tokenized into TRL's
/// `input_ids` / `assistant_masks` columns; a malformed conversation is refused naming its row.
#[test]
fn chat_records_in_parquet_become_token_ids_and_assistant_masks() {
    let Some(path) = mlinfra_test_utils::model("SmolLM2-135M-Instruct.Q4_1.gguf") else {
        return;
    };
    let file = GgufFile::open(&path).unwrap();
    let template = ChatTemplate::from_gguf(&file).unwrap();
    let tokenizer = Tokenizer::from_gguf(&file).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let conversations: Vec<Vec<Message>> = (0..5)
        .map(|i| {
            vec![
                Message::new("user", format!("What is {i} + {i}?")),
                Message::new("assistant", format!("{}", 2 * i)),
            ]
        })
        .chain(std::iter::once(conversation()))
        .collect();
    let lines: String = conversations
        .iter()
        .map(|messages| format!("{}\n", serde_json::json!({ "messages": messages })))
        .collect();
    std::fs::write(dir.path().join("chats.jsonl"), lines).unwrap();
    mlinfra_data::convert::Conversion::json_lines(dir.path().join("chats.jsonl"))
        .write(dir.path().join("chats.parquet"))
        .unwrap();
    let dataset =
        mlinfra_data::Dataset::open(dir.path().join("chats.parquet").to_str().unwrap()).unwrap();
    let output = dir.path().join("tokens.parquet");
    let rows = template
        .tokenize_dataset(&tokenizer, &dataset, "messages", &output)
        .unwrap();
    assert_eq!(rows, conversations.len() as u64);
    let tokenized = mlinfra_data::Dataset::open(output.to_str().unwrap()).unwrap();
    let batches: Vec<_> = tokenized.scan().build().map(Result::unwrap).collect();
    let batch = arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap();
    let ids = batch.column_by_name("input_ids").unwrap().as_list::<i32>();
    let masks = batch
        .column_by_name("assistant_masks")
        .unwrap()
        .as_list::<i32>();
    for (row, messages) in conversations.iter().enumerate() {
        let want = template.tokenize(&tokenizer, messages).unwrap();
        let got: Vec<u32> = ids
            .value(row)
            .as_primitive::<arrow::datatypes::Int32Type>()
            .values()
            .iter()
            .map(|&id| id as u32)
            .collect();
        let mask: Vec<bool> = masks
            .value(row)
            .as_boolean()
            .iter()
            .map(Option::unwrap)
            .collect();
        assert_eq!((got, mask), (want.ids, want.assistant_mask), "row {row}");
    }

    // A message without a role, in row 1.
    std::fs::write(
        dir.path().join("bad.jsonl"),
        "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}\n\
         {\"messages\": [{\"content\": \"no role\"}]}\n",
    )
    .unwrap();
    mlinfra_data::convert::Conversion::json_lines(dir.path().join("bad.jsonl"))
        .write(dir.path().join("bad.parquet"))
        .unwrap();
    let bad =
        mlinfra_data::Dataset::open(dir.path().join("bad.parquet").to_str().unwrap()).unwrap();
    let error = template
        .tokenize_dataset(
            &tokenizer,
            &bad,
            "messages",
            &dir.path().join("out.parquet"),
        )
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("row 1: message 0 has a null role"),
        "{error}"
    );
    assert!(
        !dir.path().join("out.parquet").exists(),
        "nothing left behind"
    );
}
