//! A benchmark fixture: the smallest useful environment adapter, and a
//! one-step taskflow that uses it. It serves `echo` by finishing every task
//! with its input as its output, without parsing anything, so a benchmark
//! measures the cost of the call itself. The build script never copies it
//! into `plugins/`.

wit_bindgen::generate!({
    world: "plugin",
    path: "../../wit",
});

use exports::taskhub::plugin::environment::Guest as Environment;
use exports::taskhub::plugin::taskflow::Guest as Taskflow;
use taskhub::plugin::types::{RunError, Task, TaskDefinition};

struct Echo;

impl Taskflow for Echo {
    fn definitions() -> Vec<TaskDefinition> {
        vec![TaskDefinition {
            id: "bench.echo".into(),
            label: "Echo once".into(),
            start: true,
            environments: Some(vec!["echo".into()]),
            config: None,
            next_task: None,
            error_task: None,
        }]
    }
}

impl Environment for Echo {
    fn environments() -> Vec<String> {
        vec!["echo".into()]
    }

    fn run(mut task: Task) -> Result<Task, RunError> {
        task.output = std::mem::take(&mut task.input);
        task.state = r#"{"done":true}"#.into();
        Ok(task)
    }
}

export!(Echo);
