//! The registry of loaded plugins: which version of each plugin serves, the
//! catalog built from their definitions, and which plugin provides each
//! environment. All three change together, in one atomic swap.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use serde::Serialize;

use super::{Exports, LoadedPlugin, WIT_PACKAGE};
use crate::engine::catalog::{Catalog, CatalogError};
use crate::engine::task::rfc3339;

/// A consistent view of the loaded plugins. A caller keeps the `Arc` it
/// took for as long as it needs a stable view.
#[derive(Default)]
pub struct Snapshot {
    /// Current version of each plugin, by name.
    pub plugins: BTreeMap<String, Arc<LoadedPlugin>>,
    /// Definitions of all loaded taskflow plugins.
    pub catalog: Catalog,
    /// The plugin that serves each environment: when several provide one,
    /// the first by name.
    pub providers: HashMap<String, Arc<LoadedPlugin>>,
}

impl Snapshot {
    /// Returns the plugin that serves `environment`, if any.
    pub fn provider(&self, environment: &str) -> Option<&Arc<LoadedPlugin>> {
        self.providers.get(environment)
    }
}

/// A load failure as `/api/plugins` shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LoadFailure {
    /// The problem and the fix.
    pub message: String,
    /// sha256 of the rejected file, when it could be read.
    pub version: Option<String>,
    /// RFC 3339 time of the failure.
    pub at: String,
}

/// One plugin as `/api/plugins` shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PluginStatus {
    /// Plugin name (the file name without `.wasm`).
    pub name: String,
    /// The file it was loaded from.
    pub file: String,
    /// `loaded` when a version serves, `failed` when none does.
    pub status: &'static str,
    /// sha256 of the serving version.
    pub version: Option<String>,
    /// WIT package the hub checked it against.
    pub wit_package: &'static str,
    /// Size of the serving version in bytes.
    pub size: Option<u64>,
    /// RFC 3339 time the serving version was loaded.
    pub loaded_at: Option<String>,
    /// Whether its compiled code came from the artifact cache.
    pub from_cache: Option<bool>,
    /// Milliseconds spent compiling (or reading the cache) and checking.
    pub load_ms: Option<u64>,
    /// The serving version's exports.
    pub exports: Option<Exports>,
    /// Interfaces the serving version imports.
    pub imports: Option<Vec<String>>,
    /// What the serving version's manifest grants (names only, never
    /// secret values).
    pub grants: Option<super::GrantSummary>,
    /// The latest failed attempt to load this file, kept until a version
    /// loads successfully.
    pub last_error: Option<LoadFailure>,
}

/// Current plugin versions and their load history.
#[derive(Default)]
pub struct PluginRegistry {
    current: ArcSwap<Snapshot>,
    statuses: Mutex<BTreeMap<String, PluginStatus>>,
    swap: Mutex<()>,
}

impl PluginRegistry {
    /// Returns an empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Returns the current view.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Returns the serving version of plugin `name`.
    pub fn get(&self, name: &str) -> Option<Arc<LoadedPlugin>> {
        self.current.load().plugins.get(name).cloned()
    }

    /// Makes `plugin` the serving version of its name, replacing any
    /// earlier one, and returns the version it replaced.
    ///
    /// # Errors
    ///
    /// Fails, changing nothing, when its definitions conflict with another
    /// plugin's.
    pub fn install(
        &self,
        plugin: LoadedPlugin,
        file: &str,
    ) -> Result<Option<Arc<LoadedPlugin>>, CatalogError> {
        let _guard = self.swap.lock().expect("registry lock poisoned");
        let plugin = Arc::new(plugin);
        let mut plugins = self.current.load().plugins.clone();
        let replaced = plugins.insert(plugin.name.clone(), plugin.clone());
        // The plugins already serving keep their ids: the new version is
        // checked against them, whatever the names' order.
        Catalog::build(
            plugins
                .iter()
                .filter(|(name, _)| **name != plugin.name)
                .chain(std::iter::once((&plugin.name, &plugin)))
                .map(|(name, plugin)| (name.as_str(), plugin.definitions.as_slice())),
        )?;
        let snapshot = build_snapshot(plugins)?;
        self.current.store(Arc::new(snapshot));

        let status = PluginStatus {
            name: plugin.name.clone(),
            file: file.to_owned(),
            status: "loaded",
            version: Some(plugin.hash.clone()),
            wit_package: WIT_PACKAGE,
            size: Some(plugin.size),
            loaded_at: Some(rfc3339(plugin.loaded_at)),
            from_cache: Some(plugin.from_cache),
            load_ms: Some(plugin.load_ms),
            exports: Some(plugin.exports.clone()),
            imports: Some(plugin.imports.clone()),
            grants: Some(plugin.grants.summary()),
            last_error: None,
        };
        self.statuses
            .lock()
            .expect("status lock poisoned")
            .insert(plugin.name.clone(), status);
        Ok(replaced)
    }

    /// Unloads plugin `name` and returns the version that served.
    pub fn remove(&self, name: &str) -> Option<Arc<LoadedPlugin>> {
        let _guard = self.swap.lock().expect("registry lock poisoned");
        let mut plugins = self.current.load().plugins.clone();
        let removed = plugins.remove(name);
        if removed.is_some() {
            // Removing a plugin cannot create a conflict.
            let snapshot = build_snapshot(plugins).unwrap_or_default();
            self.current.store(Arc::new(snapshot));
        }
        self.statuses
            .lock()
            .expect("status lock poisoned")
            .remove(name);
        removed
    }

    /// Records a failed load of `file`. A version that serves keeps
    /// serving; the failure shows beside it until a load succeeds.
    pub fn record_failure(&self, name: &str, file: &str, version: Option<String>, message: String) {
        let failure = LoadFailure {
            message,
            version,
            at: rfc3339(crate::engine::task::now_millis()),
        };
        let mut statuses = self.statuses.lock().expect("status lock poisoned");
        let status = statuses
            .entry(name.to_owned())
            .or_insert_with(|| PluginStatus {
                name: name.to_owned(),
                file: file.to_owned(),
                status: "failed",
                version: None,
                wit_package: WIT_PACKAGE,
                size: None,
                loaded_at: None,
                from_cache: None,
                load_ms: None,
                exports: None,
                imports: None,
                grants: None,
                last_error: None,
            });
        status.last_error = Some(failure);
    }

    /// Forgets the last failure of plugin `name`, once its serving version
    /// is back in place.
    pub fn clear_failure(&self, name: &str) {
        if let Some(status) = self
            .statuses
            .lock()
            .expect("status lock poisoned")
            .get_mut(name)
        {
            status.last_error = None;
        }
    }

    /// Returns the files that failed to load and have no serving version.
    pub fn failed_files(&self) -> Vec<String> {
        self.statuses
            .lock()
            .expect("status lock poisoned")
            .values()
            .filter(|status| status.version.is_none())
            .map(|status| status.file.clone())
            .collect()
    }

    /// Returns every plugin the hub has seen a file for, by name.
    pub fn statuses(&self) -> Vec<PluginStatus> {
        self.statuses
            .lock()
            .expect("status lock poisoned")
            .values()
            .cloned()
            .collect()
    }
}

fn build_snapshot(plugins: BTreeMap<String, Arc<LoadedPlugin>>) -> Result<Snapshot, CatalogError> {
    let catalog = Catalog::build(
        plugins
            .iter()
            .map(|(name, plugin)| (name.as_str(), plugin.definitions.as_slice())),
    )?;
    let mut providers = HashMap::new();
    for plugin in plugins.values() {
        for environment in &plugin.exports.environments {
            providers
                .entry(environment.clone())
                .or_insert_with(|| plugin.clone());
        }
    }
    Ok(Snapshot {
        plugins,
        catalog,
        providers,
    })
}
