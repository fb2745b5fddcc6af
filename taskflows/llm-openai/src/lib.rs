//! An `llm` environment adapter that calls an OpenAI-compatible
//! chat-completions endpoint through `wasi:http`: OpenAI itself, or a local
//! model server that speaks the same API.
//!
//! It needs grants (a manifest `llm-openai.toml` beside the component):
//!
//! ```toml
//! [http]
//! allow = ["api.openai.com"]
//! [env]
//! LLM_ENDPOINT = "https://api.openai.com/v1/chat/completions"
//! LLM_MODEL = "gpt-4o-mini"
//! [secrets]
//! LLM_API_KEY = "OPENAI_API_KEY"     # read from the hub's environment
//! ```
//!
//! A task's `config.prompt` is the user message; `config.system`,
//! `config.temperature` and `config.maxTokens` are passed on when set. The
//! output is `{"text": ...}`, or with `config.format` set to `"json"` the
//! JSON object the model answered.
//!
//! The build script keeps it out of `plugins/`, because it needs a network
//! endpoint and a key; copy it there with a manifest to use it.

wit_bindgen::generate!({
    world: "environment-plugin",
    path: "../../wit",
});

use exports::taskhub::plugin::environment::Guest;
use serde_json::{Value, json};
use taskhub::plugin::host::{self, Level};
use taskhub::plugin::types::{RunError, Task};
use wasip2::http::outgoing_handler;
use wasip2::http::types::{ErrorCode, Fields, Method, OutgoingBody, OutgoingRequest, Scheme};
use wasip2::io::streams::StreamError;

struct LlmOpenAi;

impl Guest for LlmOpenAi {
    fn environments() -> Vec<String> {
        vec!["llm".into()]
    }

    fn run(mut task: Task) -> Result<Task, RunError> {
        let config: Value = if task.config.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&task.config).map_err(|err| {
                RunError::InvalidTask(format!("`config` is not valid JSON: {err}"))
            })?
        };
        let prompt = config
            .get("prompt")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                RunError::InvalidTask(format!(
                    "task {} has no string `config.prompt`; set one in its definition",
                    task.id
                ))
            })?;
        let endpoint = granted("LLM_ENDPOINT")?;
        let model = match config.get("model").and_then(Value::as_str) {
            Some(model) => model.to_owned(),
            None => granted("LLM_MODEL")?,
        };
        let json_output = config.get("format").and_then(Value::as_str) == Some("json");

        let mut messages = Vec::new();
        if let Some(system) = config.get("system").and_then(Value::as_str) {
            messages.push(json!({"role": "system", "content": system}));
        }
        messages.push(json!({"role": "user", "content": prompt}));
        let mut body = json!({"model": model, "messages": messages});
        if let Some(temperature) = config.get("temperature") {
            body["temperature"] = temperature.clone();
        }
        if let Some(max_tokens) = config.get("maxTokens") {
            body["max_tokens"] = max_tokens.clone();
        }
        if json_output {
            body["response_format"] = json!({"type": "json_object"});
        }

        let reply = complete(&endpoint, &body.to_string())?;
        let content = reply
            .pointer("/choices/0/message/content")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                RunError::Failed(format!(
                    "the reply from {endpoint} is not a chat completion: it has no \
                     `choices[0].message.content`"
                ))
            })?;
        let output = if json_output {
            serde_json::from_str::<Value>(content).map_err(|err| {
                RunError::Failed(format!(
                    "the model was asked for JSON but answered something else: {err}"
                ))
            })?
        } else {
            json!({ "text": content })
        };

        host::log(
            Level::Info,
            "chat completion",
            &[
                ("model".into(), model),
                ("promptChars".into(), prompt.chars().count().to_string()),
                (
                    "tokens".into(),
                    reply
                        .pointer("/usage/total_tokens")
                        .map(Value::to_string)
                        .unwrap_or_default(),
                ),
            ],
        );
        task.output = output.to_string();
        task.state = json!({ "done": true }).to_string();
        Ok(task)
    }
}

/// Reads a variable the manifest grants, or says how to grant it.
fn granted(name: &str) -> Result<String, RunError> {
    std::env::var(name).map_err(|_| {
        RunError::Failed(format!(
            "{name} is not set; grant it in the plugin's manifest (llm-openai.toml beside the component)"
        ))
    })
}

/// Sends the chat-completions request and returns the parsed reply.
///
/// The body is written and finished before the request is handed over, so
/// a refusal by the hub comes back as its own error code.
fn complete(endpoint: &str, body: &str) -> Result<Value, RunError> {
    let failed = |what: String| RunError::Failed(what);
    let (scheme, rest) = if let Some(rest) = endpoint.strip_prefix("https://") {
        (Scheme::Https, rest)
    } else if let Some(rest) = endpoint.strip_prefix("http://") {
        (Scheme::Http, rest)
    } else {
        return Err(failed(format!(
            "LLM_ENDPOINT {endpoint:?} must start with http:// or https://"
        )));
    };
    let (authority, path) = match rest.find('/') {
        Some(slash) => (&rest[..slash], &rest[slash..]),
        None => (rest, "/"),
    };

    let mut headers = vec![("content-type".to_owned(), b"application/json".to_vec())];
    if let Ok(key) = std::env::var("LLM_API_KEY") {
        headers.push((
            "authorization".to_owned(),
            format!("Bearer {key}").into_bytes(),
        ));
    }
    let headers = Fields::from_list(&headers)
        .map_err(|err| failed(format!("invalid request headers: {err:?}")))?;
    let request = OutgoingRequest::new(headers);
    let invalid = |part: &str| failed(format!("LLM_ENDPOINT {endpoint:?} has an invalid {part}"));
    request
        .set_method(&Method::Post)
        .map_err(|()| invalid("method"))?;
    request
        .set_scheme(Some(&scheme))
        .map_err(|()| invalid("scheme"))?;
    request
        .set_authority(Some(authority))
        .map_err(|()| invalid("host"))?;
    request
        .set_path_with_query(Some(path))
        .map_err(|()| invalid("path"))?;

    let outgoing = request
        .body()
        .map_err(|()| failed("the request body is unavailable".into()))?;
    {
        let stream = outgoing
            .write()
            .map_err(|()| failed("the request body stream is unavailable".into()))?;
        // The stream takes at most 4096 bytes per blocking write.
        for chunk in body.as_bytes().chunks(4096) {
            stream
                .blocking_write_and_flush(chunk)
                .map_err(|err| failed(format!("failed to write the request: {err:?}")))?;
        }
    }
    OutgoingBody::finish(outgoing, None).map_err(|code| sent_error(endpoint, &code))?;

    let pending =
        outgoing_handler::handle(request, None).map_err(|code| sent_error(endpoint, &code))?;
    pending.subscribe().block();
    let response = pending
        .get()
        .ok_or_else(|| failed(format!("no reply from {endpoint}")))?
        .map_err(|()| failed(format!("the reply from {endpoint} was already taken")))?
        .map_err(|code| sent_error(endpoint, &code))?;

    let status = response.status();
    let incoming = response
        .consume()
        .map_err(|()| failed("the reply body is unavailable".into()))?;
    let stream = incoming
        .stream()
        .map_err(|()| failed("the reply body stream is unavailable".into()))?;
    let mut bytes = Vec::new();
    loop {
        match stream.blocking_read(64 * 1024) {
            Ok(chunk) => bytes.extend_from_slice(&chunk),
            Err(StreamError::Closed) => break,
            Err(err) => {
                return Err(failed(format!(
                    "failed to read the reply from {endpoint}: {err:?}"
                )));
            }
        }
    }
    let text = String::from_utf8_lossy(&bytes);
    if !(200..300).contains(&status) {
        let excerpt: String = text.chars().take(300).collect();
        return Err(failed(format!("{endpoint} answered {status}: {excerpt}")));
    }
    serde_json::from_str(&text).map_err(|err| {
        failed(format!(
            "the reply from {endpoint} is not JSON ({err}); is the endpoint OpenAI-compatible?"
        ))
    })
}

/// Describes a failed request; a refusal by the hub names the manifest.
fn sent_error(endpoint: &str, code: &ErrorCode) -> RunError {
    RunError::Failed(match code {
        ErrorCode::HttpRequestDenied => format!(
            "the hub denied the request to {endpoint}: HTTP request denied; allow the host in \
             the plugin's manifest (`[http] allow`)"
        ),
        other => format!("the request to {endpoint} failed: {other:?}"),
    })
}

export!(LlmOpenAi);
