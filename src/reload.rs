//! Hot reload: keeps the plugin registry in step with the plugins folder.
//!
//! The pipeline for each `*.wasm` file starts with a watch event and a quiet
//! period with no further events. Then two looks at the file's size and
//! modification time must agree, so a copy still in progress is not read.
//! A file closed after writing, or renamed into place, is known to be whole
//! and skips the looks: it loads 10 ms after its last event.
//! The file is read and hashed, and skipped if the serving version has the
//! same hash. Otherwise it is compiled (or read from the cache), checked
//! against the WIT worlds and trial-run, then swapped in, recorded in the
//! database and announced as an event. A failure at any step keeps the
//! serving version and records the error beside it. A removed file
//! unloads its plugin.
//!
//! Calls that started on a replaced version hold an `Arc` to it and finish
//! on it; new calls use the new version.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::engine::Engine;
use crate::engine::task::now_millis;
use crate::events::{Event, Events};
use crate::plugin::{PluginHost, PluginRegistry, content_hash, manifest};
use crate::storage::{Storage, Transaction, Write};

/// Time without events on a file before it is looked at.
const QUIET: Duration = Duration::from_millis(100);

/// Time between the two looks that must agree.
const SETTLE: Duration = Duration::from_millis(50);

/// Time without events on a file that was closed after writing or renamed
/// into place before it is loaded; it only merges the events of one copy.
const COMPLETE_QUIET: Duration = Duration::from_millis(10);

/// Interval of the check that the watched folder is still the one on disk.
const FOLDER_CHECK: Duration = Duration::from_secs(1);

/// Keeps the registry in step with one plugins folder.
pub struct Reloader {
    dir: PathBuf,
    /// Copies of every version that loaded, by hash, for rollbacks.
    versions: PathBuf,
    host: Arc<PluginHost>,
    registry: Arc<PluginRegistry>,
    storage: Storage,
    engine: Arc<Engine>,
    events: Events,
    /// Serializes file syncs, so a watch event and a scan never load one
    /// file twice at once.
    syncing: tokio::sync::Mutex<()>,
    /// Whether a newly loaded plugin gets the pending tasks at once. Off
    /// during the first scan: the engine resumes after the whole folder
    /// has loaded, so a thread never moves on before its next task's
    /// plugin is there.
    dispatching: AtomicBool,
}

/// Keeps the folder watch alive; dropping it stops hot reload.
pub struct WatchGuard {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Reloader {
    /// Creates a reloader for the plugins folder `dir`.
    pub fn new(
        dir: PathBuf,
        versions: PathBuf,
        host: Arc<PluginHost>,
        registry: Arc<PluginRegistry>,
        storage: Storage,
        engine: Arc<Engine>,
        events: Events,
    ) -> Arc<Self> {
        Arc::new(Self {
            dir,
            versions,
            host,
            registry,
            storage,
            engine,
            events,
            syncing: tokio::sync::Mutex::new(()),
            dispatching: AtomicBool::new(false),
        })
    }

    /// Loads every plugin file in the folder, creating the folder if it is
    /// missing, and unloads plugins whose file is gone. Returns how many
    /// plugins serve.
    ///
    /// # Errors
    ///
    /// Fails when the folder cannot be created or listed.
    pub async fn load_all(&self) -> anyhow::Result<usize> {
        tokio::fs::create_dir_all(&self.dir)
            .await
            .with_context(|| {
                format!("failed to create the plugins folder {}", self.dir.display())
            })?;
        let mut paths = Vec::new();
        let mut entries = tokio::fs::read_dir(&self.dir)
            .await
            .with_context(|| format!("failed to list the plugins folder {}", self.dir.display()))?;
        while let Some(entry) = entries.next_entry().await? {
            paths.push(entry.path());
        }
        paths.sort();
        for path in &paths {
            self.sync_file(path).await;
        }

        // Plugins whose file disappeared while nobody watched.
        let present: HashSet<String> = paths.iter().filter_map(|path| plugin_name(path)).collect();
        let loaded: Vec<String> = self.registry.snapshot().plugins.keys().cloned().collect();
        for name in loaded {
            if !present.contains(&name) {
                self.sync_file(&self.dir.join(format!("{name}.wasm"))).await;
            }
        }
        Ok(self.registry.snapshot().plugins.len())
    }

    /// Makes every later load hand pending tasks to the new plugin. Call
    /// once the engine has resumed.
    pub fn start_dispatching(&self) {
        self.dispatching.store(true, Ordering::Release);
    }

    /// Starts watching the folder. Changes are applied until the returned
    /// guard is dropped. When the folder is removed or replaced, the watch
    /// follows the new folder once it exists again.
    ///
    /// # Errors
    ///
    /// Fails when the operating system refuses the watch.
    pub fn watch(self: &Arc<Self>) -> anyhow::Result<WatchGuard> {
        let (sender, receiver) = mpsc::unbounded_channel::<Change>();
        let watcher = self.new_watcher(sender.clone())?;
        let task = tokio::spawn(self.clone().debounce(receiver, sender, watcher));
        Ok(WatchGuard { task })
    }

    fn new_watcher(
        &self,
        sender: mpsc::UnboundedSender<Change>,
    ) -> anyhow::Result<notify::RecommendedWatcher> {
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
                Ok(event) => {
                    for (path, complete) in changes_of(event) {
                        let _ = sender.send(Change { path, complete });
                    }
                }
                Err(err) => tracing::warn!(error = %err, "plugin folder watch error"),
            })
            .context("failed to create the plugin folder watcher")?;
        watcher
            .watch(&self.dir, RecursiveMode::NonRecursive)
            .with_context(|| {
                format!("failed to watch the plugins folder {}", self.dir.display())
            })?;
        Ok(watcher)
    }

    /// Waits until each changed file has settled, then syncs it. Also
    /// checks now and then that the watched folder is still the one on
    /// disk, and watches the new one when it was replaced.
    async fn debounce(
        self: Arc<Self>,
        mut changes: mpsc::UnboundedReceiver<Change>,
        sender: mpsc::UnboundedSender<Change>,
        mut _watcher: notify::RecommendedWatcher,
    ) {
        // For each file: when to look next, what the last look saw, and
        // whether the last event said the file is complete.
        let mut pending: HashMap<PathBuf, (Instant, Option<Look>, bool)> = HashMap::new();
        let mut folder = folder_identity(&self.dir).await;
        let mut folder_check = tokio::time::interval(FOLDER_CHECK);
        loop {
            let next = pending.values().map(|(due, _, _)| *due).min();
            tokio::select! {
                change = changes.recv() => {
                    let Some(Change { path, complete }) = change else { return };
                    if path == self.dir {
                        // The folder itself was removed or moved; the next
                        // check compares it afresh, even if a new folder
                        // reuses the inode.
                        folder = None;
                        continue;
                    }
                    // A manifest change reloads its plugin with the new grants.
                    let path = if path.extension().is_some_and(|extension| extension == "toml") {
                        path.with_extension("wasm")
                    } else {
                        path
                    };
                    if path.extension().is_some_and(|extension| extension == "wasm") {
                        // A file closed after writing or renamed into place
                        // is whole; anything else may be a copy in progress.
                        let wait = if complete { COMPLETE_QUIET } else { QUIET };
                        pending.insert(path, (Instant::now() + wait, None, complete));
                    }
                }
                () = sleep_until(next) => {
                    let now = Instant::now();
                    let due: Vec<PathBuf> = pending
                        .iter()
                        .filter(|(_, (at, _, _))| *at <= now)
                        .map(|(path, _)| path.clone())
                        .collect();
                    for path in due {
                        let look = look(&path).await;
                        let (at, last, complete) = pending.get_mut(&path).expect("due paths are pending");
                        if !*complete && look.is_some() && *last != look {
                            *last = look;
                            *at = now + SETTLE;
                            continue;
                        }
                        pending.remove(&path);
                        self.sync_file(&path).await;
                    }
                }
                _ = folder_check.tick() => {
                    let current = folder_identity(&self.dir).await;
                    if current == folder {
                        continue;
                    }
                    folder = current;
                    let Some(_) = current else {
                        tracing::warn!(folder = %self.dir.display(), "the plugins folder is gone; its plugins keep serving until it returns");
                        continue;
                    };
                    tracing::warn!(folder = %self.dir.display(), "the plugins folder was replaced; watching the new one");
                    match self.new_watcher(sender.clone()) {
                        Ok(new_watcher) => _watcher = new_watcher,
                        Err(err) => tracing::error!(error = %err, "failed to watch the new plugins folder"),
                    }
                    if let Err(err) = self.load_all().await {
                        tracing::error!(error = %err, "failed to scan the new plugins folder");
                    }
                }
            }
        }
    }

    /// Brings the registry in line with one file: load, replace or unload.
    pub async fn sync_file(&self, path: &Path) {
        let _syncing = self.syncing.lock().await;
        self.sync_locked(path).await;
    }

    async fn sync_locked(&self, path: &Path) {
        let Some(name) = plugin_name(path) else {
            if path
                .extension()
                .is_some_and(|extension| extension == "wasm")
            {
                tracing::warn!(
                    file = %path.display(),
                    "ignoring a plugin file whose name is not letters, digits, `_`, `-` and `.` before `.wasm`"
                );
            }
            return;
        };
        let file = path.display().to_string();
        let bytes = match tokio::fs::read(path).await {
            Ok(bytes) => Arc::new(bytes),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                self.unload(&name).await;
                return;
            }
            Err(err) => {
                self.reject(
                    &name,
                    &file,
                    None,
                    format!("failed to read the file: {err}"),
                )
                .await;
                return;
            }
        };
        let hash = content_hash(&bytes);
        let grants = match manifest::load_grants(path, self.host.limits(), |variable| {
            std::env::var(variable).ok()
        }) {
            Ok(grants) => grants,
            Err(message) => {
                self.reject(&name, &file, Some(hash), message).await;
                return;
            }
        };
        if self
            .registry
            .get(&name)
            .is_some_and(|serving| serving.hash == hash && serving.grants == grants)
        {
            // The serving version is back in place after a rejected file.
            self.registry.clear_failure(&name);
            return;
        }
        for secret in &grants.missing_secrets {
            tracing::warn!(
                plugin = %name,
                secret = %secret,
                "a secret in the plugin's manifest names a hub environment variable that is not set"
            );
        }

        let bytes_kept = bytes.clone();
        let plugin = match self.host.load(&name, bytes, hash.clone(), grants).await {
            Ok(plugin) => plugin,
            Err(err) => {
                self.reject(&name, &file, Some(hash), err.to_string()).await;
                return;
            }
        };
        self.keep_version(&hash, &bytes_kept).await;
        let exports = serde_json::to_string(&plugin.exports).ok();
        let (from_cache, load_ms) = (plugin.from_cache, plugin.load_ms);
        let replaced = match self.registry.install(plugin, &file) {
            Ok(replaced) => replaced,
            Err(err) => {
                self.reject(&name, &file, Some(hash), err.to_string()).await;
                return;
            }
        };

        let now = now_millis();
        let mut transaction = Transaction::new();
        if let Some(old) = &replaced {
            transaction.push(Write::PluginEnded {
                name: name.clone(),
                hash: old.hash.clone(),
                replaced_by: Some(hash.clone()),
                at: now,
            });
        }
        transaction.push(Write::PluginVersion {
            name: name.clone(),
            hash: hash.clone(),
            status: "loaded".into(),
            error: None,
            exports,
            at: now,
        });
        self.record(transaction).await;

        tracing::info!(
            plugin = %name,
            version = &hash[..12],
            replaced = replaced.as_ref().map(|old| &old.hash[..12]).unwrap_or(""),
            from_cache,
            load_ms,
            "plugin loaded"
        );
        crate::metrics::plugin_loaded(&name);
        self.events.publish(Event::PluginLoaded {
            name,
            version: hash,
        });
        if self.dispatching.load(Ordering::Acquire)
            && let Err(err) = self.engine.dispatch_pending().await
        {
            tracing::error!(error = %err, "failed to dispatch pending tasks to a new plugin");
        }
    }

    /// Keeps a copy of a version that loaded, so a rollback can restore
    /// it after its file was replaced.
    async fn keep_version(&self, hash: &str, bytes: &[u8]) {
        let path = self.versions.join(format!("{hash}.wasm"));
        if tokio::fs::try_exists(&path).await.unwrap_or(false) {
            return;
        }
        let temporary = self.versions.join(format!(".{hash}.partial"));
        let written = async {
            tokio::fs::create_dir_all(&self.versions).await?;
            tokio::fs::write(&temporary, bytes).await?;
            tokio::fs::rename(&temporary, &path).await
        }
        .await;
        if let Err(err) = written {
            tracing::warn!(hash, error = %err, "failed to keep a copy of a plugin version; it cannot be rolled back to");
        }
    }

    /// Switches plugin `name` back to the version its serving version
    /// replaced, by writing that version's bytes to its file, and returns
    /// the version it switched to.
    ///
    /// # Errors
    ///
    /// A message saying why there is nothing to roll back to.
    pub async fn rollback(&self, name: &str) -> Result<RolledBack, RollbackError> {
        let serving = self
            .registry
            .get(name)
            .ok_or_else(|| RollbackError::NotLoaded(name.to_owned()))?;
        let history = self
            .storage
            .plugin_versions(name)
            .await
            .map_err(|err| RollbackError::Failed(err.to_string()))?;
        let previous = history
            .iter()
            .filter(|version| version.replaced_by.as_deref() == Some(serving.hash.as_str()))
            .filter(|version| version.hash != serving.hash)
            .max_by_key(|version| version.ended_at)
            .ok_or_else(|| RollbackError::NoEarlier(name.to_owned()))?;
        let kept = self.versions.join(format!("{}.wasm", previous.hash));
        let bytes = tokio::fs::read(&kept)
            .await
            .map_err(|_| RollbackError::Missing(previous.hash.clone()))?;

        // Write the file, as an operator would, so the folder stays the
        // source of truth after a restart; then load it now.
        let path = self.dir.join(format!("{name}.wasm"));
        let temporary = self.dir.join(format!(".{name}.rollback"));
        let written = async {
            tokio::fs::write(&temporary, &bytes).await?;
            tokio::fs::rename(&temporary, &path).await
        }
        .await;
        written.map_err(|err| {
            RollbackError::Failed(format!("failed to write {}: {err}", path.display()))
        })?;
        self.sync_file(&path).await;

        match self.registry.get(name) {
            Some(now) if now.hash == previous.hash => {
                tracing::info!(plugin = %name, from = serving.short_hash(), to = &previous.hash[..12], "plugin rolled back");
                Ok(RolledBack {
                    name: name.to_owned(),
                    version: previous.hash.clone(),
                    replaced: serving.hash.clone(),
                })
            }
            _ => Err(RollbackError::Failed(format!(
                "version {} did not load again; GET /api/plugins shows why",
                &previous.hash[..12]
            ))),
        }
    }

    async fn unload(&self, name: &str) {
        let Some(old) = self.registry.remove(name) else {
            return;
        };
        let mut transaction = Transaction::new();
        transaction.push(Write::PluginEnded {
            name: name.to_owned(),
            hash: old.hash.clone(),
            replaced_by: None,
            at: now_millis(),
        });
        self.record(transaction).await;
        tracing::info!(plugin = %name, version = old.short_hash(), "plugin unloaded");
        self.events.publish(Event::PluginUnloaded {
            name: name.to_owned(),
        });

        // A file rejected because this plugin declared the same ids may
        // load now.
        for failed in self.registry.failed_files() {
            Box::pin(self.sync_locked(Path::new(&failed))).await;
        }
    }

    async fn reject(&self, name: &str, file: &str, hash: Option<String>, message: String) {
        let serving = self.registry.get(name);
        tracing::warn!(
            plugin = %name,
            file,
            version = hash.as_deref().map(|hash| &hash[..12]).unwrap_or(""),
            serving = serving.as_ref().map(|plugin| plugin.short_hash()).unwrap_or("none"),
            reason = %message,
            "plugin rejected"
        );
        if let Some(hash) = &hash {
            let mut transaction = Transaction::new();
            transaction.push(Write::PluginVersion {
                name: name.to_owned(),
                hash: hash.clone(),
                status: "rejected".into(),
                error: Some(message.clone()),
                exports: None,
                at: now_millis(),
            });
            self.record(transaction).await;
        }
        crate::metrics::plugin_load_failed(name);
        self.registry
            .record_failure(name, file, hash, message.clone());
        self.events.publish(Event::PluginRejected {
            name: name.to_owned(),
            error: message,
        });
    }

    async fn record(&self, transaction: Transaction) {
        if let Err(err) = self.storage.commit(transaction).await {
            tracing::error!(error = %err, "failed to record a plugin version");
        }
    }
}

/// The outcome of a rollback.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolledBack {
    /// The plugin.
    pub name: String,
    /// The version serving now.
    pub version: String,
    /// The version it replaced.
    pub replaced: String,
}

/// Why a rollback did not happen.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RollbackError {
    /// No version of the plugin serves.
    #[error("plugin `{0}` is not loaded")]
    NotLoaded(String),
    /// The serving version replaced none.
    #[error("plugin `{0}` has no earlier version to roll back to")]
    NoEarlier(String),
    /// The earlier version's bytes are gone from the versions folder.
    #[error(
        "the copy of version {0} is missing from the versions folder; copy that file into the plugins folder by hand"
    )]
    Missing(String),
    /// Reading or writing failed.
    #[error("the rollback failed: {0}")]
    Failed(String),
}

/// A path in the plugins folder that changed.
struct Change {
    path: PathBuf,
    /// Whether the event says the file is whole: closed after writing, or
    /// renamed into place.
    complete: bool,
}

/// Returns the paths an event touches, each with whether the event says
/// the file is whole now.
fn changes_of(event: notify::Event) -> Vec<(PathBuf, bool)> {
    use notify::event::{AccessKind, AccessMode, ModifyKind, RenameMode};
    match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => {
            event.paths.into_iter().map(|path| (path, true)).collect()
        }
        // The first path is the old name, which is gone; the second the new.
        EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => event
            .paths
            .into_iter()
            .enumerate()
            .map(|(index, path)| (path, index == 1))
            .collect(),
        EventKind::Modify(ModifyKind::Name(RenameMode::To)) => {
            event.paths.into_iter().map(|path| (path, true)).collect()
        }
        EventKind::Access(_) => Vec::new(),
        _ => event.paths.into_iter().map(|path| (path, false)).collect(),
    }
}

/// The size and modification time one look at a file saw.
type Look = (u64, SystemTime);

/// The device and inode of the plugins folder, or `None` when it is gone.
async fn folder_identity(dir: &Path) -> Option<(u64, u64)> {
    let metadata = tokio::fs::metadata(dir).await.ok()?;
    if !metadata.is_dir() {
        return None;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        Some((metadata.dev(), metadata.ino()))
    }
    #[cfg(not(unix))]
    Some((0, 0))
}

async fn look(path: &Path) -> Option<Look> {
    let metadata = tokio::fs::metadata(path).await.ok()?;
    Some((metadata.len(), metadata.modified().ok()?))
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Returns the plugin name for a path: the stem of a `*.wasm` file whose
/// name is letters, digits, `_`, `-` and `.`, not hidden.
pub fn plugin_name(path: &Path) -> Option<String> {
    if path.extension()? != "wasm" {
        return None;
    }
    let stem = path.file_stem()?.to_str()?;
    let valid = !stem.is_empty()
        && !stem.starts_with('.')
        && stem
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    valid.then(|| stem.to_owned())
}
