//! The plugin host: compiles WebAssembly components, checks them against the
//! WIT worlds, and calls them in a sandbox.
//!
//! One wasmtime [`Engine`] serves the whole process, with epoch
//! interruption (a background thread ticks the epoch every
//! [`EPOCH_TICK`]) and the pooling allocator. A loaded plugin version is an
//! immutable [`LoadedPlugin`]: its compiled component, pre-instantiated
//! against the host's imports, and what it exports. Every call gets a fresh
//! [`wasmtime::Store`] with a deadline and a memory cap, so a trap, a loop
//! or a leak in one call cannot touch the next.
//!
//! A plugin gets no files, network, environment variables or arguments.
//! Its stderr is captured, and the tail is quoted when a call traps (a Rust
//! panic message, say).

mod bindings;
mod cache;
pub mod manifest;
mod registry;
mod state;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use wasmtime::component::{Component, HasSelf, InstancePre, Linker};
use wasmtime::{Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store};

pub use bindings::{
    ENVIRONMENT_EXPORT, RunError, TASKFLOW_EXPORT, WIT_PACKAGE, WitTask, apply_wit_task,
    to_wit_task,
};
use bindings::{Plugin, environment, taskflow};
pub use cache::ArtifactCache;
pub use manifest::{GrantSummary, Grants};
pub use registry::{PluginRegistry, PluginStatus, Snapshot};
use state::{CallContext, CallState};

use crate::engine::catalog::{Definition, check_definitions};
use crate::engine::task::now_millis;
use crate::storage::Storage;

/// Interval of the epoch ticker; deadlines are measured in these ticks.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Limits applied to every plugin call.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Wall-clock time one call may run.
    pub deadline: Duration,
    /// Bytes of linear memory one instance may grow to.
    pub memory_bytes: usize,
    /// Calls that may run at once across all plugins; further calls wait.
    pub max_concurrent_calls: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            deadline: Duration::from_secs(10),
            memory_bytes: 128 << 20,
            max_concurrent_calls: 64,
        }
    }
}

/// The reason a component could not be loaded; the message tells the
/// author what to change.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The bytes are not a WebAssembly component.
    #[error("{0}")]
    NotAComponent(String),
    /// Compilation failed.
    #[error("failed to compile the component: {0}")]
    Compile(String),
    /// The component does not fit the hub's WIT worlds.
    #[error("{0}")]
    WorldMismatch(String),
    /// Instantiating it, or calling its definition functions, failed.
    #[error("the trial run failed: {0}")]
    Trial(String),
    /// Its task definitions are invalid.
    #[error("invalid task definitions: {0}")]
    Definitions(String),
}

/// The reason a call into a plugin did not return a result.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// The call ran past its deadline and was stopped.
    #[error("plugin `{plugin}` ran past its deadline of {deadline_ms} ms and was stopped")]
    Deadline {
        /// Plugin name.
        plugin: String,
        /// The deadline.
        deadline_ms: u128,
    },
    /// The instance tried to grow its memory past the cap.
    #[error("plugin `{plugin}` tried to use more than its memory cap of {cap_mib} MiB")]
    Memory {
        /// Plugin name.
        plugin: String,
        /// The cap.
        cap_mib: usize,
    },
    /// The instance trapped (a panic, an unreachable, a bad access).
    #[error("plugin `{plugin}` trapped: {message}")]
    Trap {
        /// Plugin name.
        plugin: String,
        /// The trap and the tail of the plugin's stderr.
        message: String,
    },
    /// The plugin does not export the function the hub needed.
    #[error("plugin `{plugin}` does not export the `{interface}` interface")]
    NotExported {
        /// Plugin name.
        plugin: String,
        /// `taskflow` or `environment`.
        interface: &'static str,
    },
}

/// The exports of a plugin version, as shown by `/api/plugins`.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Exports {
    /// Ids of the task definitions it declares.
    pub taskflows: Vec<String>,
    /// Environments it provides.
    pub environments: Vec<String>,
    /// Interface names it exports.
    pub interfaces: Vec<String>,
}

/// One compiled, checked version of a plugin. Immutable: a replaced version
/// stays alive until the last call that started on it ends.
pub struct LoadedPlugin {
    /// Plugin name, from the file name.
    pub name: String,
    /// sha256 of the component bytes, hex; this is the version.
    pub hash: String,
    /// Size of the component in bytes.
    pub size: u64,
    /// Unix milliseconds.
    pub loaded_at: i64,
    /// Whether the compiled code came from the artifact cache.
    pub from_cache: bool,
    /// Time spent compiling or reading the cache, and checking.
    pub load_ms: u64,
    /// Task definitions it declares.
    pub definitions: Vec<Definition>,
    /// Its exports.
    pub exports: Exports,
    /// Interface names the component imports.
    pub imports: Vec<String>,
    /// What its manifest grants.
    pub grants: Grants,
    /// Limits the plugin's concurrent calls when its grants do.
    calls: Option<Arc<Semaphore>>,
    pre: InstancePre<CallState>,
    taskflow: Option<taskflow::GuestIndices>,
    environment: Option<environment::GuestIndices>,
}

impl std::fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("name", &self.name)
            .field("hash", &self.hash)
            .finish_non_exhaustive()
    }
}

impl LoadedPlugin {
    /// Returns the version as shown in logs: the first 12 hex digits.
    pub fn short_hash(&self) -> &str {
        &self.hash[..12]
    }

    /// Returns whether the plugin provides `environment`.
    pub fn provides(&self, environment: &str) -> bool {
        self.exports
            .environments
            .iter()
            .any(|name| name == environment)
    }
}

/// The engine, the linker and the limits shared by every plugin.
pub struct PluginHost {
    engine: Engine,
    linker: Linker<CallState>,
    limits: Limits,
    cache: Option<ArtifactCache>,
    calls: Arc<Semaphore>,
    storage: Option<Storage>,
    ticker_stop: Arc<AtomicBool>,
}

impl Drop for PluginHost {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

impl PluginHost {
    /// Creates the engine and linker and starts the epoch ticker.
    ///
    /// `cache` is where compiled artifacts are kept (none: always compile);
    /// `storage` serves the `output` host function (none: it returns
    /// nothing).
    ///
    /// # Errors
    ///
    /// Fails when the engine cannot be configured.
    pub fn new(
        limits: Limits,
        cache: Option<ArtifactCache>,
        storage: Option<Storage>,
    ) -> anyhow::Result<Self> {
        let engine = build_engine(&limits)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
        Plugin::add_to_linker::<_, HasSelf<CallState>>(&mut linker, |state| state)?;

        let ticker_stop = Arc::new(AtomicBool::new(false));
        let ticker_engine = engine.clone();
        let stop = ticker_stop.clone();
        std::thread::Builder::new()
            .name("taskhub-epoch".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    ticker_engine.increment_epoch();
                }
            })?;

        Ok(Self {
            calls: Arc::new(Semaphore::new(limits.max_concurrent_calls)),
            engine,
            linker,
            limits,
            cache,
            storage,
            ticker_stop,
        })
    }

    /// Returns the limits every call gets.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Compiles (or reads from the cache), checks and trial-runs the
    /// component in `bytes`, whose [`content_hash`] is `hash`, and returns
    /// the loaded version.
    ///
    /// Compilation runs on the blocking thread pool, so the hub keeps
    /// serving while a large component compiles.
    ///
    /// # Errors
    ///
    /// Returns a [`LoadError`] that explains what is wrong with the
    /// component.
    pub async fn load(
        &self,
        name: &str,
        bytes: Arc<Vec<u8>>,
        hash: String,
        grants: Grants,
    ) -> Result<LoadedPlugin, LoadError> {
        let started = Instant::now();
        check_header(&bytes)?;
        let (component, from_cache) = self.compile(&hash, bytes.clone()).await?;

        let imports = interface_names(&self.engine, &component, Direction::Imports);
        let interfaces = interface_names(&self.engine, &component, Direction::Exports);
        check_package_version(imports.iter().chain(&interfaces))?;
        let pre = self.linker.instantiate_pre(&component).map_err(|err| {
            LoadError::WorldMismatch(format!(
                "{err:#}; a plugin may import only WASI 0.2 and {WIT_PACKAGE}"
            ))
        })?;
        let taskflow = taskflow::GuestIndices::new(&pre).ok();
        let environment = environment::GuestIndices::new(&pre).ok();
        if taskflow.is_none() && environment.is_none() {
            return Err(LoadError::WorldMismatch(missing_exports_message(
                &interfaces,
            )));
        }

        let mut plugin = LoadedPlugin {
            name: name.to_owned(),
            hash,
            size: bytes.len() as u64,
            loaded_at: now_millis(),
            from_cache,
            load_ms: 0,
            definitions: Vec::new(),
            exports: Exports {
                taskflows: Vec::new(),
                environments: Vec::new(),
                interfaces,
            },
            imports,
            calls: grants
                .max_concurrent_calls
                .map(|calls| Arc::new(Semaphore::new(calls))),
            grants,
            pre,
            taskflow,
            environment,
        };
        self.trial_run(&mut plugin).await?;
        plugin.load_ms = started.elapsed().as_millis() as u64;
        Ok(plugin)
    }

    /// Runs `task` on the plugin's environment export.
    ///
    /// # Errors
    ///
    /// A [`CallError`] when the call did not return (trap, deadline, memory
    /// cap); the inner `Err` is the plugin's own [`RunError`].
    pub async fn run(
        &self,
        plugin: &LoadedPlugin,
        task: &crate::engine::task::Task,
    ) -> Result<Result<WitTask, RunError>, CallError> {
        let Some(indices) = &plugin.environment else {
            return Err(CallError::NotExported {
                plugin: plugin.name.clone(),
                interface: "environment",
            });
        };
        let _plugin_permit = match &plugin.calls {
            Some(calls) => Some(
                calls
                    .acquire()
                    .await
                    .expect("the call semaphore is never closed"),
            ),
            None => None,
        };
        let _permit = self
            .calls
            .acquire()
            .await
            .expect("the call semaphore is never closed");
        let context = CallContext {
            plugin: plugin.name.clone(),
            version: plugin.short_hash().to_owned(),
            thread_id: Some(task.thread_id.clone()),
            instance_id: Some(task.instance_id.clone()),
            storage: self.storage.clone(),
        };
        let mut store = self.new_store(context, &plugin.grants);
        let wit_task = to_wit_task(task);
        let started = Instant::now();
        // The epoch deadline stops a plugin that computes; this timeout
        // also stops one that waits on a host call, such as an HTTP request.
        let call = async {
            let instance = plugin.pre.instantiate_async(&mut store).await?;
            let guest = indices.load(&mut store, &instance)?;
            guest.call_run(&mut store, &wit_task).await
        };
        let result = match tokio::time::timeout(plugin.grants.deadline, call).await {
            Ok(result) => result.map_err(|err| self.call_error(plugin, &store, err)),
            Err(_) => Err(CallError::Deadline {
                plugin: plugin.name.clone(),
                deadline_ms: plugin.grants.deadline.as_millis(),
            }),
        };
        let trap = match &result {
            Err(CallError::Deadline { .. }) => Some("deadline"),
            Err(CallError::Memory { .. }) => Some("memory"),
            Err(_) => Some("trap"),
            Ok(_) => None,
        };
        crate::metrics::plugin_call(&plugin.name, plugin.short_hash(), started.elapsed(), trap);
        result
    }

    async fn compile(
        &self,
        hash: &str,
        bytes: Arc<Vec<u8>>,
    ) -> Result<(Component, bool), LoadError> {
        if let Some(cache) = &self.cache
            && let Some(component) = cache.get(&self.engine, hash)
        {
            return Ok((component, true));
        }
        let engine = self.engine.clone();
        let component =
            tokio::task::spawn_blocking(move || Component::from_binary(&engine, &bytes))
                .await
                .map_err(|err| LoadError::Compile(format!("the compile task failed: {err}")))?
                .map_err(|err| LoadError::Compile(format!("{err:#}")))?;
        if let Some(cache) = &self.cache
            && let Err(err) = cache.put(hash, &component)
        {
            tracing::warn!(error = %err, hash, "failed to write a compiled artifact to the cache");
        }
        Ok((component, false))
    }

    /// Instantiates the component once and reads its definitions and
    /// environments, which also checks every export's signature.
    async fn trial_run(&self, plugin: &mut LoadedPlugin) -> Result<(), LoadError> {
        let context = CallContext {
            plugin: plugin.name.clone(),
            version: plugin.short_hash().to_owned(),
            thread_id: None,
            instance_id: None,
            storage: None,
        };
        let mut store = self.new_store(context, &plugin.grants);
        let instance = plugin
            .pre
            .instantiate_async(&mut store)
            .await
            .map_err(|err| LoadError::Trial(self.call_error(plugin, &store, err).to_string()))?;

        if let Some(indices) = &plugin.taskflow {
            let guest = indices
                .load(&mut store, &instance)
                .map_err(|err| LoadError::WorldMismatch(format!("{TASKFLOW_EXPORT}: {err:#}")))?;
            let definitions = guest.call_definitions(&mut store).await.map_err(|err| {
                LoadError::Trial(self.call_error(plugin, &store, err).to_string())
            })?;
            let definitions = definitions
                .into_iter()
                .map(bindings::to_definition)
                .collect::<Result<Vec<_>, _>>()
                .map_err(LoadError::Definitions)?;
            check_definitions(&definitions)
                .map_err(|err| LoadError::Definitions(err.to_string()))?;
            plugin.exports.taskflows = definitions.iter().map(|d| d.id.clone()).collect();
            plugin.definitions = definitions;
        }

        if let Some(indices) = &plugin.environment {
            let guest = indices.load(&mut store, &instance).map_err(|err| {
                LoadError::WorldMismatch(format!("{ENVIRONMENT_EXPORT}: {err:#}"))
            })?;
            let environments = guest.call_environments(&mut store).await.map_err(|err| {
                LoadError::Trial(self.call_error(plugin, &store, err).to_string())
            })?;
            if let Some(bad) = environments.iter().find(|name| !is_valid_environment(name)) {
                return Err(LoadError::Definitions(format!(
                    "environment name {bad:?} is invalid; use letters, digits, `.`, `_` and `-`"
                )));
            }
            if environments.iter().any(|name| name == "user") {
                return Err(LoadError::Definitions(
                    "the `user` environment is served by the hub itself; a plugin cannot provide it".into(),
                ));
            }
            plugin.exports.environments = environments;
        }
        Ok(())
    }

    fn new_store(&self, context: CallContext, grants: &Grants) -> Store<CallState> {
        let state = CallState::new(context, grants);
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.limiter);

        // Yield to tokio at every tick so a busy plugin never blocks a worker
        // thread, and stop the call once the deadline has passed.
        let deadline = grants.deadline;
        let started = Instant::now();
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |mut context| {
            if started.elapsed() >= deadline {
                context.data_mut().deadline_hit = true;
                wasmtime::bail!("deadline exceeded");
            }
            Ok(wasmtime::UpdateDeadline::YieldCustom(
                1,
                Box::pin(tokio::task::yield_now()),
            ))
        });
        store
    }

    /// Classifies an error returned by a call.
    fn call_error(
        &self,
        plugin: &LoadedPlugin,
        store: &Store<CallState>,
        err: wasmtime::Error,
    ) -> CallError {
        let state = store.data();
        let name = plugin.name.clone();
        if state.deadline_hit {
            return CallError::Deadline {
                plugin: name,
                deadline_ms: plugin.grants.deadline.as_millis(),
            };
        }
        if state.limiter.exceeded {
            return CallError::Memory {
                plugin: name,
                cap_mib: plugin.grants.memory_bytes >> 20,
            };
        }
        // The root cause names the trap; wasmtime's full chain adds a
        // backtrace that is noise in a task's error.
        let mut message = err.root_cause().to_string();
        if let Some(tail) = state.stderr_tail() {
            message.push_str("; stderr: ");
            message.push_str(&tail);
        }
        CallError::Trap {
            plugin: name,
            message,
        }
    }
}

/// Returns the version of a component: the sha256 of its bytes, in hex.
pub fn content_hash(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

fn build_engine(limits: &Limits) -> anyhow::Result<Engine> {
    let mut config = wasmtime::Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(true);

    // The pooling allocator keeps instance slots ready, which makes a fresh
    // instance per call cheap. Each call uses one component instance; a
    // Rust component has a handful of core instances, memories and tables.
    let slots = limits.max_concurrent_calls as u32 + 8;
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(slots)
        .total_core_instances(slots * 8)
        .total_memories(slots * 2)
        .total_tables(slots * 8)
        .total_stacks(slots);
    let mut pooled = config.clone();
    pooled.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    match Engine::new(&pooled) {
        Ok(engine) => Ok(engine),
        Err(err) => {
            // A tight virtual-memory limit (`ulimit -v`) can refuse the
            // pool's reservation; allocating on demand still works.
            tracing::warn!(error = %err, "pooling allocator unavailable, allocating instances on demand");
            Ok(Engine::new(&config)?)
        }
    }
}

fn check_header(bytes: &[u8]) -> Result<(), LoadError> {
    const MAGIC: &[u8] = b"\0asm";
    if bytes.len() < 8 || &bytes[..4] != MAGIC {
        return Err(LoadError::NotAComponent(format!(
            "not a WebAssembly binary ({} bytes, no `\\0asm` header); the file may be incomplete",
            bytes.len()
        )));
    }
    // Bytes 4..8 hold the version and layer: 1, 0 is a core module.
    if bytes[4..8] == [1, 0, 0, 0] {
        return Err(LoadError::NotAComponent(
            "a core WebAssembly module, not a component; build with `--target wasm32-wasip2` \
             or wrap it with `wasm-tools component new`"
                .into(),
        ));
    }
    Ok(())
}

#[derive(Clone, Copy)]
enum Direction {
    Imports,
    Exports,
}

/// Returns the names of the interfaces a component imports or exports.
fn interface_names(engine: &Engine, component: &Component, direction: Direction) -> Vec<String> {
    let ty = component.component_type();
    let mut names: Vec<String> = match direction {
        Direction::Imports => ty
            .imports(engine)
            .map(|(name, _)| name.to_owned())
            .collect(),
        Direction::Exports => ty
            .exports(engine)
            .map(|(name, _)| name.to_owned())
            .collect(),
    };
    names.sort();
    names
}

/// Rejects a component that uses another, incompatible version of the
/// hub's WIT package, naming both versions. Versions are compatible as in
/// semver: the same major version, and for 0.x the same minor version.
fn check_package_version<'a>(names: impl Iterator<Item = &'a String>) -> Result<(), LoadError> {
    let ours = WIT_PACKAGE
        .rsplit_once('@')
        .map_or("", |(_, version)| version);
    for name in names {
        let Some(rest) = name.strip_prefix("taskhub:plugin/") else {
            continue;
        };
        let theirs = rest.rsplit_once('@').map_or("", |(_, version)| version);
        if !compatible(ours, theirs) {
            return Err(LoadError::WorldMismatch(format!(
                "the component was built against taskhub:plugin@{theirs} (it uses `{name}`), \
                 but this hub implements {WIT_PACKAGE}; rebuild it against the hub's `wit/` folder"
            )));
        }
    }
    Ok(())
}

fn compatible(ours: &str, theirs: &str) -> bool {
    let parse = |version: &str| -> Option<(u64, u64)> {
        let mut parts = version.split('.');
        Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
    };
    match (parse(ours), parse(theirs)) {
        (Some((0, our_minor)), Some((0, their_minor))) => our_minor == their_minor,
        (Some((our_major, _)), Some((their_major, _))) => our_major == their_major,
        _ => false,
    }
}

/// Explains why neither hub interface was found, naming the versions.
fn missing_exports_message(exports: &[String]) -> String {
    let other_versions: Vec<&str> = exports
        .iter()
        .filter(|name| name.starts_with("taskhub:plugin/"))
        .map(String::as_str)
        .collect();
    if other_versions.is_empty() {
        format!(
            "the component exports neither `{TASKFLOW_EXPORT}` nor `{ENVIRONMENT_EXPORT}` \
             (it exports: {}); build it against the `taskflow-plugin`, `environment-plugin` \
             or `plugin` world of {WIT_PACKAGE}",
            if exports.is_empty() {
                "nothing".to_owned()
            } else {
                exports.join(", ")
            }
        )
    } else {
        format!(
            "the component was built against another version of the WIT package: it exports {}, \
             but this hub implements {WIT_PACKAGE}; rebuild it against the hub's `wit/` folder",
            other_versions.join(", ")
        )
    }
}

/// Returns whether `name` is a valid environment name.
pub fn is_valid_environment(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_versions_follow_semver() {
        assert!(compatible("0.1.0", "0.1.0"));
        assert!(compatible("0.1.0", "0.1.7"));
        assert!(!compatible("0.1.0", "0.2.0"));
        assert!(!compatible("0.1.0", "0.0.9"));
        assert!(compatible("1.2.0", "1.0.0"));
        assert!(!compatible("1.2.0", "2.0.0"));
        assert!(!compatible("0.1.0", ""));
    }

    #[test]
    fn other_package_version_names_both() {
        let names = [
            "wasi:cli/stdout@0.2.6".to_owned(),
            "taskhub:plugin/host@0.2.0".to_owned(),
        ];
        let error = check_package_version(names.iter()).unwrap_err().to_string();
        assert!(error.contains("taskhub:plugin@0.2.0"), "{error}");
        assert!(error.contains("taskhub:plugin@0.1.0"), "{error}");
    }
}
