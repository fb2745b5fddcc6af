//! Stacking: this hub registers with a parent hub as a processor and runs
//! the tasks the parent sends on its own environment adapter plugins.
//!
//! To the parent this is an ordinary processor; nothing in the protocol tells
//! the two apart. Each dispatched task runs as one plugin call, and the
//! result goes back as one final update. The task's thread lives in the
//! parent, so the `output` host function finds nothing here.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde_json::{Map, Value, json};

use super::client::{Handler, TaskHandle};
use crate::engine::task::Task;
use crate::plugin::{PluginHost, PluginRegistry, RunError, apply_wit_task};

/// Runs a parent hub's tasks on this hub's plugins.
pub struct PluginBridge {
    /// This hub's plugins.
    pub registry: Arc<PluginRegistry>,
    /// This hub's plugin host.
    pub host: Arc<PluginHost>,
}

impl Handler for PluginBridge {
    fn run(&self, mut handle: TaskHandle) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let registry = self.registry.clone();
        let host = self.host.clone();
        Box::pin(async move {
            let fields = run_on_plugin(&registry, &host, handle.task()).await;
            let instance_id = handle.task()["instanceId"]
                .as_str()
                .unwrap_or("")
                .to_owned();
            if let Err(err) = handle.update(fields).await {
                tracing::warn!(%instance_id, error = %err, "the parent hub did not accept a result");
            }
        })
    }
}

/// Runs one task from the parent and returns the update to send back.
async fn run_on_plugin(
    registry: &PluginRegistry,
    host: &PluginHost,
    task: &Value,
) -> Map<String, Value> {
    let failure = |message: String| -> Map<String, Value> {
        let mut fields = Map::new();
        fields.insert("error".into(), json!(message));
        fields
    };
    let task: Task = match serde_json::from_value(task.clone()) {
        Ok(task) => task,
        Err(err) => return failure(format!("the child hub could not read the task: {err}")),
    };
    let environment = task.environment.clone().unwrap_or_default();
    let Some(plugin) = registry.snapshot().provider(&environment).cloned() else {
        return failure(format!(
            "the child hub has no plugin for environment `{environment}` any more"
        ));
    };
    tracing::info!(
        instance_id = %task.instance_id,
        task_id = %task.id,
        plugin = %plugin.name,
        "running a task for the parent hub"
    );

    let returned = match host.run(&plugin, &task).await {
        Ok(Ok(returned)) => returned,
        Ok(Err(RunError::InvalidTask(message))) => {
            return failure(format!(
                "plugin `{}` rejected the task as invalid: {message}",
                plugin.name
            ));
        }
        Ok(Err(RunError::Failed(message))) => {
            return failure(format!("plugin `{}` failed: {message}", plugin.name));
        }
        Err(err) => return failure(err.to_string()),
    };
    let updated = match apply_wit_task(&task, returned) {
        Ok(updated) => updated,
        Err(err) => {
            return failure(format!(
                "plugin `{}` returned an invalid task: {err}",
                plugin.name
            ));
        }
    };
    if updated.error.is_none() && !updated.is_done() {
        return failure(format!(
            "plugin `{}` returned the task unfinished; a child hub sends back finished tasks only",
            plugin.name
        ));
    }

    let mut fields = Map::new();
    for (name, value) in [
        ("state", &updated.state),
        ("output", &updated.output),
        ("request", &updated.request),
        ("response", &updated.response),
        ("commandArgs", &updated.command_args),
    ] {
        fields.insert(name.into(), value.clone());
    }
    fields.insert("error".into(), json!(updated.error));
    fields.insert("command".into(), json!(updated.command));
    if updated.next_task != task.next_task {
        fields.insert("nextTask".into(), json!(updated.next_task));
    }
    fields
}
