//! The state one plugin call owns: its WASI context, memory limiter, captured
//! stderr, and the ids the host functions need.

use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::{Level, taskhub};
use crate::storage::Storage;

/// Bytes of a plugin's stderr kept per call.
const STDERR_CAPACITY: usize = 16 * 1024;

/// Characters of stderr quoted in a trap message.
const STDERR_TAIL: usize = 600;

/// Log lines one call may write before the rest are dropped.
const MAX_LOG_LINES: u32 = 200;

/// Characters of one log message kept.
const MAX_LOG_MESSAGE: usize = 4096;

/// The plugin being called and the task it runs for.
pub(super) struct CallContext {
    pub plugin: String,
    pub version: String,
    pub thread_id: Option<String>,
    pub instance_id: Option<String>,
    pub storage: Option<Storage>,
}

/// The store data of one call.
pub(super) struct CallState {
    wasi: WasiCtx,
    table: ResourceTable,
    stderr: MemoryOutputPipe,
    context: CallContext,
    log_lines: u32,
    pub limiter: MemoryLimiter,
    pub deadline_hit: bool,
}

impl CallState {
    pub fn new(context: CallContext, memory_bytes: usize) -> Self {
        let stderr = MemoryOutputPipe::new(STDERR_CAPACITY);
        // Nothing is granted: no preopened directories, no environment
        // variables, no arguments, no sockets (denied by default), no stdin.
        let wasi = WasiCtx::builder().stderr(stderr.clone()).build();
        Self {
            wasi,
            table: ResourceTable::new(),
            stderr,
            context,
            log_lines: 0,
            limiter: MemoryLimiter {
                cap: memory_bytes,
                exceeded: false,
            },
            deadline_hit: false,
        }
    }

    /// Returns the last characters the plugin wrote to stderr, if any.
    pub fn stderr_tail(&self) -> Option<String> {
        let contents = self.stderr.contents();
        let text = String::from_utf8_lossy(&contents);
        let text = text.trim();
        if text.is_empty() {
            return None;
        }
        let skip = text.chars().count().saturating_sub(STDERR_TAIL);
        Some(
            text.chars()
                .skip(skip)
                .collect::<String>()
                .replace('\n', " | "),
        )
    }
}

impl WasiView for CallState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Caps linear memory and records whether the cap was hit, so the error
/// names the cap instead of quoting an opaque trap.
pub(super) struct MemoryLimiter {
    cap: usize,
    pub exceeded: bool,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.cap {
            self.exceeded = true;
            wasmtime::bail!("memory cap of {} bytes exceeded", self.cap);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Tables hold function references; 100k entries is far beyond what
        // a real plugin needs and bounds the host memory they take.
        Ok(desired <= 100_000)
    }
}

impl taskhub::plugin::types::Host for CallState {}

impl taskhub::plugin::host::Host for CallState {
    async fn log(&mut self, level: Level, message: String, fields: Vec<(String, String)>) {
        self.log_lines += 1;
        if self.log_lines > MAX_LOG_LINES {
            if self.log_lines == MAX_LOG_LINES + 1 {
                tracing::warn!(
                    plugin = %self.context.plugin,
                    limit = MAX_LOG_LINES,
                    "plugin log lines past the per-call limit are dropped"
                );
            }
            return;
        }
        let message: String = message.chars().take(MAX_LOG_MESSAGE).collect();
        let fields = fields
            .iter()
            .map(|(key, value)| format!("{key}={value}"))
            .collect::<Vec<_>>()
            .join(" ");
        let context = &self.context;
        let instance_id = context.instance_id.as_deref().unwrap_or("");
        let thread_id = context.thread_id.as_deref().unwrap_or("");
        macro_rules! emit {
            ($level:ident) => {
                tracing::$level!(
                    target: "taskhub::plugin_log",
                    plugin = %context.plugin,
                    version = %context.version,
                    instance_id,
                    thread_id,
                    fields,
                    "{message}"
                )
            };
        }
        match level {
            Level::Trace => emit!(trace),
            Level::Debug => emit!(debug),
            Level::Info => emit!(info),
            Level::Warn => emit!(warn),
            Level::Error => emit!(error),
        }
    }

    async fn output(&mut self, task_id: String) -> Option<String> {
        let (Some(storage), Some(thread_id)) = (&self.context.storage, &self.context.thread_id)
        else {
            return None;
        };
        match storage.output(thread_id, &task_id).await {
            Ok(output) => output,
            Err(err) => {
                tracing::error!(
                    plugin = %self.context.plugin,
                    thread_id,
                    task_id,
                    error = %err,
                    "failed to read an output for a plugin"
                );
                None
            }
        }
    }
}
