//! Templates in task config.
//!
//! Any string in a definition's config may contain `{{ path }}`
//! placeholders, filled when the task instance starts:
//!
//! - `{{input.topic}}`: a value from the instance's input;
//! - `{{user.name}}`: a field of the profile of the user who started the
//!   thread (`user.id` is the user name);
//! - `{{outputs.examples.story.summarize.text}}`: a value from the latest
//!   output of an earlier task in the same thread. The task id is the
//!   longest prefix of the path that names a task with an output, so dotted
//!   ids need no quoting.
//!
//! A string that is exactly one placeholder takes the referenced JSON value
//! as it is (a number stays a number). Inside a longer string, strings are
//! inserted as they are and other values as compact JSON. `\{{` writes a
//! literal `{{`. A placeholder that refers to nothing is an error: the task
//! fails with a message that names the placeholder and where it is.

use std::collections::HashMap;

use serde_json::Value;

/// The values placeholders may refer to.
pub struct TemplateContext<'a> {
    /// The instance's input.
    pub input: &'a Value,
    /// Latest output of each task id in the thread.
    pub outputs: &'a HashMap<String, Value>,
    /// Profile of the user who started the thread (`null` when unknown).
    pub user: &'a Value,
}

/// The reason a template could not be filled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// A `{{` without its `}}`.
    #[error(
        "unterminated `{{{{` in config{location}; close it with `}}}}` or write `\\{{{{` for a literal"
    )]
    Unterminated {
        /// The location in the config, e.g. `.prompt`.
        location: String,
    },
    /// A placeholder refers to nothing.
    #[error("template `{{{{{expression}}}}}` in config{location}: {reason}")]
    Unresolved {
        /// The placeholder's path.
        expression: String,
        /// The location in the config.
        location: String,
        /// The missing value.
        reason: String,
    },
}

/// Returns whether `value` contains any placeholder, so callers can skip loading
/// the thread's outputs for configs without templates.
pub fn has_templates(value: &Value) -> bool {
    match value {
        Value::String(text) => text.contains("{{"),
        Value::Array(items) => items.iter().any(has_templates),
        Value::Object(fields) => fields.values().any(has_templates),
        _ => false,
    }
}

/// Returns `config` with every placeholder filled.
///
/// # Errors
///
/// Returns the first placeholder that is unterminated or refers to nothing.
pub fn fill(config: &Value, context: &TemplateContext<'_>) -> Result<Value, TemplateError> {
    fill_at(config, context, &mut String::new())
}

fn fill_at(
    value: &Value,
    context: &TemplateContext<'_>,
    location: &mut String,
) -> Result<Value, TemplateError> {
    match value {
        Value::String(text) => fill_string(text, context, location),
        Value::Array(items) => {
            let mut filled = Vec::with_capacity(items.len());
            for (index, item) in items.iter().enumerate() {
                let length = location.len();
                location.push_str(&format!("[{index}]"));
                filled.push(fill_at(item, context, location)?);
                location.truncate(length);
            }
            Ok(Value::Array(filled))
        }
        Value::Object(fields) => {
            let mut filled = serde_json::Map::with_capacity(fields.len());
            for (key, item) in fields {
                let length = location.len();
                location.push('.');
                location.push_str(key);
                filled.insert(key.clone(), fill_at(item, context, location)?);
                location.truncate(length);
            }
            Ok(Value::Object(filled))
        }
        other => Ok(other.clone()),
    }
}

fn fill_string(
    text: &str,
    context: &TemplateContext<'_>,
    location: &str,
) -> Result<Value, TemplateError> {
    if !text.contains("{{") {
        return Ok(Value::String(text.to_owned()));
    }

    // A string that is one placeholder keeps the value's JSON type.
    let trimmed = text.trim();
    if let Some(inner) = trimmed
        .strip_prefix("{{")
        .and_then(|rest| rest.strip_suffix("}}"))
        && !inner.contains("{{")
        && !inner.contains("}}")
    {
        return resolve(inner.trim(), context, location).cloned();
    }

    let mut filled = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        // `\{{` is a literal `{{`.
        if rest[..start].ends_with('\\') {
            filled.push_str(&rest[..start - 1]);
            filled.push_str("{{");
            rest = &rest[start + 2..];
            continue;
        }
        filled.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            return Err(TemplateError::Unterminated {
                location: location.to_owned(),
            });
        };
        match resolve(after[..end].trim(), context, location)? {
            Value::String(value) => filled.push_str(value),
            value => filled.push_str(&value.to_string()),
        }
        rest = &after[end + 2..];
    }
    filled.push_str(rest);
    Ok(Value::String(filled))
}

fn resolve<'a>(
    expression: &str,
    context: &'a TemplateContext<'_>,
    location: &str,
) -> Result<&'a Value, TemplateError> {
    let unresolved = |reason: String| TemplateError::Unresolved {
        expression: expression.to_owned(),
        location: location.to_owned(),
        reason,
    };
    let (root, path) = expression.split_once('.').unwrap_or((expression, ""));
    match root {
        "input" => walk(context.input, path)
            .ok_or_else(|| unresolved(format!("the task's input has no value at `{path}`"))),
        "outputs" => {
            let (task_id, rest) =
                longest_output_prefix(path, context.outputs).ok_or_else(|| {
                    unresolved(format!(
                        "no earlier task in this thread has an output named by `{path}`"
                    ))
                })?;
            walk(&context.outputs[task_id], rest).ok_or_else(|| {
                unresolved(format!(
                    "the output of `{task_id}` has no value at `{rest}`"
                ))
            })
        }
        "user" => walk(context.user, path).ok_or_else(|| {
            unresolved(format!(
                "the user's profile has no value at `{path}`; set it with `taskhub user profile NAME JSON`"
            ))
        }),
        _ => Err(unresolved(format!(
            "unknown root `{root}`; templates start with `input.`, `outputs.` or `user.`"
        ))),
    }
}

/// Splits `path` into the longest task id with an output and the rest.
fn longest_output_prefix<'p>(
    path: &'p str,
    outputs: &HashMap<String, Value>,
) -> Option<(&'p str, &'p str)> {
    if outputs.contains_key(path) {
        return Some((path, ""));
    }
    let mut end = path.len();
    while let Some(dot) = path[..end].rfind('.') {
        if outputs.contains_key(&path[..dot]) {
            return Some((&path[..dot], &path[dot + 1..]));
        }
        end = dot;
    }
    None
}

/// Follows a dotted path through objects (by key) and arrays (by index).
fn walk<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    if path.is_empty() {
        return Some(value);
    }
    path.split('.')
        .try_fold(value, |value, segment| match value {
            Value::Object(fields) => fields.get(segment),
            Value::Array(items) => items.get(segment.parse::<usize>().ok()?),
            _ => None,
        })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn outputs() -> HashMap<String, Value> {
        HashMap::from([
            (
                "examples.story.summarize".to_owned(),
                json!({"text": "A tale.", "words": 2}),
            ),
            (
                "examples.story".to_owned(),
                json!({"text": "shadowed by the longer id"}),
            ),
            ("examples.list".to_owned(), json!({"items": ["a", "b"]})),
        ])
    }

    fn fill_with(config: Value) -> Result<Value, TemplateError> {
        let input = json!({"topic": "a lighthouse", "count": 3, "nested": {"ok": true}});
        let outputs = outputs();
        fill(
            &config,
            &TemplateContext {
                input: &input,
                outputs: &outputs,
                user: &json!({"id": "ada", "name": "Ada", "language": "en"}),
            },
        )
    }

    #[test]
    fn input_value_is_interpolated() {
        let filled = fill_with(json!({"prompt": "A story about {{input.topic}}."})).unwrap();
        assert_eq!(filled, json!({"prompt": "A story about a lighthouse."}));
    }

    #[test]
    fn whole_placeholder_keeps_json_type() {
        let filled = fill_with(json!({"n": "{{ input.count }}", "o": "{{input.nested}}"})).unwrap();
        assert_eq!(filled, json!({"n": 3, "o": {"ok": true}}));
    }

    #[test]
    fn non_string_in_text_is_json() {
        let filled = fill_with(json!("n={{input.count}} o={{input.nested}}")).unwrap();
        assert_eq!(filled, json!("n=3 o={\"ok\":true}"));
    }

    #[test]
    fn output_uses_longest_task_id() {
        let filled = fill_with(json!("{{outputs.examples.story.summarize.text}}")).unwrap();
        assert_eq!(filled, json!("A tale."));
    }

    #[test]
    fn output_path_indexes_arrays() {
        let filled = fill_with(json!("{{outputs.examples.list.items.1}}")).unwrap();
        assert_eq!(filled, json!("b"));
    }

    #[test]
    fn whole_output_is_returned() {
        let filled = fill_with(json!("{{outputs.examples.list}}")).unwrap();
        assert_eq!(filled, json!({"items": ["a", "b"]}));
    }

    #[test]
    fn nested_arrays_and_objects_are_filled() {
        let filled = fill_with(json!({"a": [{"b": "{{input.topic}}"}, 1, null]})).unwrap();
        assert_eq!(filled, json!({"a": [{"b": "a lighthouse"}, 1, null]}));
    }

    #[test]
    fn escaped_braces_stay_literal() {
        let filled = fill_with(json!("keep \\{{input.topic}} and {{input.count}}")).unwrap();
        assert_eq!(filled, json!("keep {{input.topic}} and 3"));
    }

    #[test]
    fn missing_output_names_placeholder_and_location() {
        let error = fill_with(json!({"p": ["x", "{{outputs.examples.other.text}}"]})).unwrap_err();
        let message = error.to_string();
        assert!(
            message.contains("{{outputs.examples.other.text}}"),
            "{message}"
        );
        assert!(message.contains("config.p[1]"), "{message}");
    }

    #[test]
    fn missing_input_key_is_error() {
        let error = fill_with(json!("{{input.nope}}")).unwrap_err();
        assert!(matches!(error, TemplateError::Unresolved { .. }));
        assert!(error.to_string().contains("input has no value at `nope`"));
    }

    #[test]
    fn missing_key_in_output_is_error() {
        let error = fill_with(json!("{{outputs.examples.story.summarize.title}}")).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("`examples.story.summarize` has no value at `title`")
        );
    }

    #[test]
    fn unknown_root_is_error() {
        let error = fill_with(json!("{{group.name}}")).unwrap_err();
        assert!(error.to_string().contains("unknown root `group`"));
    }

    #[test]
    fn user_profile_fields_fill() {
        let filled = fill_with(json!("Hello {{user.name}} ({{user.language}})")).unwrap();
        assert_eq!(filled, json!("Hello Ada (en)"));
        let error = fill_with(json!("{{user.phone}}")).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("profile has no value at `phone`")
        );
    }

    #[test]
    fn unterminated_placeholder_is_error() {
        let error = fill_with(json!({"p": "x {{input.topic"})).unwrap_err();
        assert_eq!(
            error,
            TemplateError::Unterminated {
                location: ".p".into()
            }
        );
    }

    #[test]
    fn text_without_placeholders_is_unchanged() {
        let config = json!({"a": "plain } { text", "b": 1.5, "c": [true]});
        assert_eq!(fill_with(config.clone()).unwrap(), config);
        assert!(!has_templates(&config));
        assert!(has_templates(&json!({"a": ["{{input.x}}"]})));
    }
}
