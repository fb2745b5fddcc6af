//! Filling arbitrary templates must never panic, and a config without
//! `{{` must come back unchanged. The input is a config and an input as
//! JSON, separated by a zero byte.
#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};
use taskhub_fuzz::engine::template::{TemplateContext, fill, has_templates};

fuzz_target!(|data: &[u8]| {
    let (config, input) = match data.iter().position(|&byte| byte == 0) {
        Some(split) => (&data[..split], &data[split + 1..]),
        None => (data, &b"null"[..]),
    };
    let Ok(config) = serde_json::from_slice::<Value>(config) else {
        return;
    };
    let input = serde_json::from_slice::<Value>(input).unwrap_or(Value::Null);
    let outputs = HashMap::from([
        ("examples.story.summarize".to_owned(), json!({"text": "A tale.", "n": [1, 2]})),
        ("examples.story".to_owned(), json!("short")),
    ]);
    let user = json!({"id": "ada", "name": "Ada", "groups": ["writers"]});
    let context = TemplateContext {
        input: &input,
        outputs: &outputs,
        user: &user,
    };
    let filled = fill(&config, &context);
    if !has_templates(&config) {
        assert_eq!(filled.unwrap(), config);
    }
});
