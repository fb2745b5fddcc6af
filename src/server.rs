//! Wiring: opens the database, starts the plugin host, loads the plugins
//! folder, resumes unfinished tasks, and serves HTTP.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::auth::{Auth, RateLimits};
use crate::engine::{Engine, Sweeps};
use crate::events::Events;
use crate::http::{self, AppState};
use crate::plugin::{ArtifactCache, Limits, PluginHost, PluginRegistry};
use crate::processors::ProcessorRegistry;
use crate::processors::client::{self, ClientConfig};
use crate::processors::parent::PluginBridge;
use crate::processors::session::SessionConfig;
use crate::reload::{Reloader, WatchGuard};
use crate::storage::Storage;

/// Everything `taskhub serve` needs to know.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Folder of plugin components, watched for changes.
    pub plugins: PathBuf,
    /// SQLite database file.
    pub db: PathBuf,
    /// Folder for compiled artifacts; must not be inside `plugins`.
    pub cache_dir: PathBuf,
    /// Limits for every plugin call.
    pub limits: Limits,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Settings of processor connections.
    pub sessions: SessionConfig,
    /// Background sweeps (the pending timeout).
    pub sweeps: Sweeps,
    /// A parent hub to serve this hub's plugin environments to.
    pub parent: Option<ParentConfig>,
    /// Rate limits on starts and updates, per user and per token.
    pub rate_limits: RateLimits,
}

/// Settings for registering with a parent hub.
#[derive(Debug, Clone)]
pub struct ParentConfig {
    /// The parent's processor endpoint, e.g. `ws://parent:8080/ws`.
    pub url: String,
    /// The processor id this hub registers as.
    pub id: String,
    /// The parent's processor token.
    pub token: Option<String>,
    /// Environments to offer; empty offers every environment this hub's
    /// plugins provide once the plugins folder has loaded.
    pub environments: Vec<String>,
}

/// A hub that is serving.
pub struct RunningHub {
    /// The address it listens on (with the real port when 0 was asked).
    pub address: SocketAddr,
    /// The task engine.
    pub engine: Arc<Engine>,
    /// The plugin registry.
    pub registry: Arc<PluginRegistry>,
    /// The event stream.
    pub events: Events,
    server: JoinHandle<std::io::Result<()>>,
    shutdown: tokio::sync::oneshot::Sender<()>,
    _watch: WatchGuard,
    _database_lock: std::fs::File,
}

impl RunningHub {
    /// Starts a hub: database, plugins, resume, HTTP.
    ///
    /// # Errors
    ///
    /// Fails when the database cannot be opened, the plugins folder cannot
    /// be watched, or the address cannot be bound.
    pub async fn start(config: HubConfig) -> anyhow::Result<Self> {
        if config.cache_dir.starts_with(&config.plugins) {
            anyhow::bail!(
                "the cache folder {} is inside the plugins folder {}; the watcher would reload \
                 its own writes, so choose a cache folder elsewhere",
                config.cache_dir.display(),
                config.plugins.display()
            );
        }
        // Bind first: a hub that cannot serve must not touch the database.
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("failed to listen on {}", config.listen))?;
        let address = listener.local_addr()?;
        let database_lock = lock_database(&config.db)?;
        let storage = Storage::open(&config.db).await?;
        let auth = Arc::new(Auth::new(storage.clone(), address, config.rate_limits).await?);
        let cache = ArtifactCache::new(&config.cache_dir).with_context(|| {
            format!(
                "failed to create the cache folder {}",
                config.cache_dir.display()
            )
        })?;
        let host = Arc::new(PluginHost::new(
            config.limits.clone(),
            Some(cache),
            Some(storage.clone()),
        )?);
        let registry = Arc::new(PluginRegistry::new());
        let events = Events::new();
        let engine = Engine::new(
            storage.clone(),
            registry.clone(),
            Arc::new(ProcessorRegistry::new()),
            host.clone(),
            events.clone(),
        );

        let reloader = Reloader::new(
            config.plugins.clone(),
            config.cache_dir.join("versions"),
            host.clone(),
            registry.clone(),
            storage,
            engine.clone(),
            events.clone(),
        );
        tokio::fs::create_dir_all(&config.plugins)
            .await
            .with_context(|| {
                format!(
                    "failed to create the plugins folder {}",
                    config.plugins.display()
                )
            })?;
        // Watch before the first scan, so a file added during the scan is
        // not missed. Pending tasks wait until the whole folder has loaded.
        let watch = reloader.watch()?;
        let loaded = reloader.load_all().await?;
        let resumed = engine
            .resume()
            .await
            .context("failed to resume unfinished tasks")?;
        reloader.start_dispatching();
        engine.start_sweeps(config.sweeps);
        if let Some(parent) = &config.parent {
            start_parent_link(parent, &registry, &host)?;
        }

        let metrics = crate::metrics::install();
        let upkeep = metrics.clone();
        tokio::spawn(async move {
            // Histogram samples wait in buffers until the next upkeep or
            // scrape; without scrapes they would pile up.
            let mut ticker = tokio::time::interval(Duration::from_secs(5));
            loop {
                ticker.tick().await;
                upkeep.run_upkeep();
            }
        });
        let app = http::router(
            AppState {
                engine: engine.clone(),
                registry: registry.clone(),
                sessions: Arc::new(config.sessions.clone()),
                metrics: metrics.clone(),
                openapi: Arc::default(),
                reloader: reloader.clone(),
                auth: auth.clone(),
            },
            config.max_body_bytes,
        );
        let (shutdown, stop) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            // Small messages (a dispatch, an update reply) must leave at
            // once; Nagle's algorithm would hold them for the peer's ACK.
            let listener = listener.tap_io(|stream| {
                if let Err(err) = stream.set_nodelay(true) {
                    tracing::debug!(error = %err, "failed to set TCP_NODELAY");
                }
            });
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(async {
                let _ = stop.await;
            })
            .await
        });

        tracing::info!(
            %address,
            plugins = %config.plugins.display(),
            database = %config.db.display(),
            cache = %config.cache_dir.display(),
            processor_token = config.sessions.token.is_some(),
            loaded,
            resumed,
            "hub listening"
        );
        Ok(Self {
            address,
            engine,
            registry,
            events,
            server,
            shutdown,
            _watch: watch,
            _database_lock: database_lock,
        })
    }

    /// Stops accepting requests and lets requests, plugin calls and
    /// processor sessions finish within `grace`, then closes the database.
    /// Work still running at the end is logged; tasks it held stay
    /// dispatched and run again after a restart.
    ///
    /// # Errors
    ///
    /// Fails when the server task failed.
    pub async fn stop(self, grace: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + grace;
        tracing::info!(grace_ms = grace.as_millis() as u64, "shutting down");

        // Stop accepting, close processor sessions, start nothing new.
        self.engine.begin_shutdown();
        let _ = self.shutdown.send(());
        drop(self._watch);
        match tokio::time::timeout_at(deadline, self.server).await {
            Ok(result) => result??,
            Err(_) => tracing::warn!(
                "shutdown cut short HTTP requests still running at the end of the grace period"
            ),
        }

        // Let plugin calls finish and sessions hand their tasks back.
        let cut_short = self.engine.wait_idle(deadline).await;
        for work in &cut_short {
            tracing::warn!(work = %work, "shutdown cut short; the task runs again after a restart");
        }
        self.engine.storage().close().await;
        tracing::info!(cut_short = cut_short.len(), "hub stopped");
        Ok(())
    }
}

/// Registers with the parent hub and serves it on a task of its own, with
/// reconnection.
fn start_parent_link(
    parent: &ParentConfig,
    registry: &Arc<PluginRegistry>,
    host: &Arc<PluginHost>,
) -> anyhow::Result<()> {
    let mut environments = parent.environments.clone();
    if environments.is_empty() {
        environments = registry.snapshot().providers.keys().cloned().collect();
        environments.sort();
    }
    if environments.is_empty() {
        anyhow::bail!(
            "--parent is set, but no loaded plugin provides an environment to offer the parent; \
             add environment adapter plugins or name them with --parent-environments"
        );
    }
    tracing::info!(
        parent = %parent.url,
        processor_id = %parent.id,
        environments = %environments.join(","),
        "registering with the parent hub"
    );
    let config = ClientConfig {
        url: parent.url.clone(),
        processor_id: parent.id.clone(),
        environments,
        token: parent.token.clone(),
        min_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_secs(10),
    };
    let bridge = Arc::new(PluginBridge {
        registry: registry.clone(),
        host: host.clone(),
    });
    tokio::spawn(async move {
        if let Err(err) = client::run(config, bridge).await {
            tracing::error!(error = %err, "the parent hub rejected this hub; stacking is off");
        }
    });
    Ok(())
}

/// Takes an exclusive lock on `DB.lock` beside the database, creating the
/// database's folder if needed, so two hubs never share one database.
fn lock_database(db: &std::path::Path) -> anyhow::Result<std::fs::File> {
    if let Some(folder) = db.parent().filter(|folder| !folder.as_os_str().is_empty()) {
        std::fs::create_dir_all(folder).with_context(|| {
            format!("failed to create the database folder {}", folder.display())
        })?;
    }
    let mut name = db.as_os_str().to_owned();
    name.push(".lock");
    let path = PathBuf::from(name);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("failed to open the lock file {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "another taskhub is using the database {}; stop it or choose another --db",
            db.display()
        ),
        Err(std::fs::TryLockError::Error(err)) => {
            Err(err).with_context(|| format!("failed to lock {}", path.display()))
        }
    }
}
