//! A test fixture that misbehaves while the hub loads it, in the functions
//! the hub calls once per version: `definitions` and `environments`. The
//! build script builds it once per fault, chosen by the `LOAD_FAULT`
//! variable at compile time, and never copies it into `plugins/`.
//!
//! | `LOAD_FAULT` | behaviour |
//! | --- | --- |
//! | `trap-definitions` | `definitions` panics |
//! | `trap-environments` | `environments` panics |
//! | `loop` | `definitions` never returns |
//! | `alloc` | `definitions` allocates without end |
//! | `stack` | `definitions` recurses without end |
//! | anything else | behaves |

wit_bindgen::generate!({
    world: "plugin",
    path: "../../wit",
});

use std::hint::black_box;

use exports::taskhub::plugin::environment::Guest as Environment;
use exports::taskhub::plugin::taskflow::Guest as Taskflow;
use taskhub::plugin::types::{RunError, Task, TaskDefinition};

const FAULT: &str = match option_env!("LOAD_FAULT") {
    Some(fault) => fault,
    None => "none",
};

struct LoadFaults;

impl Taskflow for LoadFaults {
    fn definitions() -> Vec<TaskDefinition> {
        match FAULT {
            "trap-definitions" => panic!("load-faults traps in definitions"),
            "loop" => {
                let mut counter = 0u64;
                loop {
                    counter = black_box(counter.wrapping_add(1));
                }
            }
            "alloc" => {
                let mut blocks = Vec::new();
                loop {
                    blocks.push(black_box(vec![1u8; 1 << 20]));
                }
            }
            "stack" => vec![deep(black_box(0))],
            _ => vec![TaskDefinition {
                id: "testing.load.run".into(),
                label: "Loaded".into(),
                start: true,
                environments: Some(vec![]),
                config: None,
                next_task: None,
                error_task: None,
            }],
        }
    }
}

impl Environment for LoadFaults {
    fn environments() -> Vec<String> {
        if FAULT == "trap-environments" {
            panic!("load-faults traps in environments");
        }
        vec!["load-faults".into()]
    }

    fn run(task: Task) -> Result<Task, RunError> {
        Ok(task)
    }
}

/// Recurses until the stack runs out; the frame keeps a buffer alive so
/// the compiler cannot turn the recursion into a loop.
fn deep(depth: u64) -> TaskDefinition {
    let buffer = black_box([depth; 64]);
    let mut definition = deep(depth + 1);
    definition.label.push_str(&buffer[0].to_string());
    definition
}

export!(LoadFaults);
