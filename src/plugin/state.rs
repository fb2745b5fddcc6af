//! The state one plugin call owns: its WASI context, memory limiter, captured
//! stderr, and the ids the host functions need.

use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

use super::bindings::{Level, taskhub};
use super::manifest::{AllowedHost, Grants};
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
    http: WasiHttpCtx,
    gate: HttpGate,
    table: ResourceTable,
    stderr: MemoryOutputPipe,
    context: CallContext,
    log_lines: u32,
    pub limiter: MemoryLimiter,
    pub deadline_hit: bool,
}

impl CallState {
    pub fn new(context: CallContext, grants: &Grants) -> Self {
        let stderr = MemoryOutputPipe::new(STDERR_CAPACITY);
        // No preopened directories, no arguments, no sockets (denied by
        // default), no stdin; environment variables only as granted.
        let mut builder = WasiCtx::builder();
        builder.stderr(stderr.clone());
        for (name, value) in &grants.env {
            builder.env(name, value);
        }
        let gate = HttpGate {
            allow: grants.http_allow.clone(),
            plugin: context.plugin.clone(),
            version: context.version.clone(),
        };
        Self {
            wasi: builder.build(),
            http: WasiHttpCtx::new(),
            gate,
            table: ResourceTable::new(),
            stderr,
            context,
            log_lines: 0,
            limiter: MemoryLimiter {
                cap: grants.memory_bytes,
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

impl WasiHttpView for CallState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.gate,
        }
    }
}

/// Lets outgoing HTTP requests through only to the hosts the plugin's
/// manifest allows; every other request fails inside the plugin with
/// `HTTP request denied` and a log line.
struct HttpGate {
    allow: Vec<AllowedHost>,
    plugin: String,
    version: String,
}

type Sent = wasmtime_wasi_http::Result<(
    http::Response<wasmtime_wasi_http::WasiBody>,
    Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
)>;

impl WasiHttpHooks for HttpGate {
    fn send_request(
        &mut self,
        request: http::Request<wasmtime_wasi_http::WasiBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        response_done: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
    ) -> Box<dyn Future<Output = Sent> + Send> {
        drop(response_done);
        let uri = request.uri();
        let host = uri.host().unwrap_or("").to_owned();
        let port = uri
            .port_u16()
            .unwrap_or(if uri.scheme_str() == Some("http") {
                80
            } else {
                443
            });
        if !self.allow.iter().any(|allowed| allowed.allows(&host, port)) {
            tracing::warn!(
                plugin = %self.plugin,
                version = %self.version,
                host = %host,
                port,
                "denied an HTTP request the plugin's manifest does not allow"
            );
            return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
        }
        tracing::debug!(plugin = %self.plugin, host = %host, port, "plugin HTTP request");
        Box::new(async move {
            use http_body_util::BodyExt;
            let (response, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            Ok((
                response.map(BodyExt::boxed_unsync),
                Box::new(io) as Box<dyn Future<Output = _> + Send>,
            ))
        })
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
