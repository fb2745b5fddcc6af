//! A test fixture that misbehaves on purpose. The build script never
//! copies it into `plugins/`. It also declares tasks for the processor
//! tests: `testing.remote.*`, and `testing.faults.remote`, which asks for a
//! processor even though this plugin provides `faults`.
//!
//! The `faults` environment behaves as `input.mode` requests:
//!
//! | mode | behaviour |
//! | --- | --- |
//! | `ok` | finishes with `{"variant": "a"}` (`"b"` when built with `variant-b`) |
//! | `slow` | spins for `input.ms` milliseconds, then behaves like `ok` |
//! | `trap` | panics, which traps the instance |
//! | `loop` | never returns, so only the hub's deadline stops it |
//! | `alloc` | allocates until the hub's memory cap stops it |
//! | `fail` | returns a `failed` run error |
//! | `unfinished` | returns the task without marking it done |
//! | `bad-json` | returns an output that is not JSON |
//! | `bad-utf8` | returns an output that is not UTF-8 |
//! | `huge` | returns a 9 MiB output |
//! | `stack` | recurses until the stack runs out |

wit_bindgen::generate!({
    world: "plugin",
    path: "../../wit",
});

use std::hint::black_box;
use std::time::{Duration, Instant};

use exports::taskhub::plugin::environment::Guest as Environment;
use exports::taskhub::plugin::taskflow::Guest as Taskflow;
use serde_json::{Value, json};
use taskhub::plugin::types::{RunError, Task, TaskDefinition};

const VARIANT: &str = if cfg!(feature = "variant-b") {
    "b"
} else {
    "a"
};

struct Faults;

impl Taskflow for Faults {
    fn definitions() -> Vec<TaskDefinition> {
        vec![
            TaskDefinition {
                id: "testing.faults.run".into(),
                label: "Misbehave".into(),
                start: true,
                environments: Some(vec!["faults".into()]),
                config: None,
                next_task: None,
                error_task: None,
            },
            TaskDefinition {
                id: "testing.remote.run".into(),
                label: "Run on a processor".into(),
                start: true,
                environments: Some(vec!["remote".into()]),
                config: None,
                next_task: None,
                error_task: None,
            },
            TaskDefinition {
                id: "testing.remote.error".into(),
                label: "Record the remote failure".into(),
                start: false,
                environments: Some(vec![]),
                config: None,
                next_task: None,
                error_task: None,
            },
            TaskDefinition {
                id: "testing.faults.remote".into(),
                label: "Misbehave on a processor".into(),
                start: true,
                environments: Some(vec!["faults".into()]),
                config: Some(r#"{"provider": "processor"}"#.into()),
                next_task: None,
                error_task: None,
            },
            TaskDefinition {
                id: "testing.faults.error".into(),
                label: "Record the fault".into(),
                start: false,
                environments: Some(vec![]),
                config: None,
                next_task: None,
                error_task: None,
            },
        ]
    }
}

impl Environment for Faults {
    fn environments() -> Vec<String> {
        vec!["faults".into()]
    }

    fn run(mut task: Task) -> Result<Task, RunError> {
        let input: Value = serde_json::from_str(&task.input).unwrap_or(Value::Null);
        let mode = input.get("mode").and_then(Value::as_str).unwrap_or("ok");
        match mode {
            "ok" => {}
            "slow" => {
                let ms = input.get("ms").and_then(Value::as_u64).unwrap_or(500);
                let until = Instant::now() + Duration::from_millis(ms);
                while Instant::now() < until {
                    black_box(());
                }
            }
            "trap" => panic!("the faults plugin was asked to trap"),
            "loop" => {
                let mut counter = 0u64;
                loop {
                    counter = black_box(counter.wrapping_add(1));
                }
            }
            "alloc" => {
                let mut blocks = Vec::new();
                loop {
                    let block = vec![1u8; 1 << 20];
                    blocks.push(black_box(block));
                }
            }
            "fail" => {
                return Err(RunError::Failed(
                    "the faults plugin was asked to fail".into(),
                ));
            }
            "unfinished" => return Ok(task),
            "bad-utf8" => {
                // SAFETY: none; the bytes are invalid UTF-8 on purpose, to
                // see the host reject them when it lifts the string.
                #[allow(unsafe_code, reason = "builds an invalid string on purpose")]
                let invalid = unsafe { String::from_utf8_unchecked(vec![b'"', 0xff, 0xfe, b'"']) };
                task.output = invalid;
                task.state = json!({ "done": true }).to_string();
                return Ok(task);
            }
            "huge" => {
                task.output = format!("\"{}\"", "x".repeat(9 << 20));
                task.state = json!({ "done": true }).to_string();
                return Ok(task);
            }
            "stack" => {
                task.output = json!({ "depth": recurse(black_box(0)) }).to_string();
            }
            "bad-json" => {
                task.output = "{not json".into();
                task.state = json!({ "done": true }).to_string();
                return Ok(task);
            }
            other => {
                return Err(RunError::InvalidTask(format!(
                    "unknown `input.mode` {other:?}; use ok, slow, trap, loop, alloc, fail, \
                     unfinished, bad-json, bad-utf8, huge or stack"
                )));
            }
        }
        task.output = json!({ "variant": VARIANT }).to_string();
        task.state = json!({ "done": true }).to_string();
        Ok(task)
    }
}

/// Recurses until the stack runs out; the frame keeps a buffer alive so
/// the compiler cannot turn the recursion into a loop.
fn recurse(depth: u64) -> u64 {
    let buffer = black_box([depth; 64]);
    recurse(depth + 1) + buffer[0]
}

export!(Faults);
