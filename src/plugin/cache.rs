//! The compiled-artifact cache: compiled components on disk, keyed by the
//! component's content hash and the engine's settings, so a restart or a
//! re-added file does not compile again.
//!
//! The folder must lie outside the plugins folder: the watcher would
//! otherwise see the cache's own writes.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

use wasmtime::Engine;
use wasmtime::component::Component;

/// A folder of compiled components.
#[derive(Debug, Clone)]
pub struct ArtifactCache {
    dir: PathBuf,
}

impl ArtifactCache {
    /// Uses (and creates) `dir` for compiled artifacts.
    ///
    /// # Errors
    ///
    /// Fails when the folder cannot be created.
    pub fn new(dir: impl Into<PathBuf>) -> std::io::Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        Ok(Self { dir })
    }

    /// Returns the folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Returns the cached compilation of the component with `hash`, if
    /// there is one that this engine can run.
    pub fn get(&self, engine: &Engine, hash: &str) -> Option<Component> {
        let path = self.path(engine, hash);
        if !path.exists() {
            return None;
        }
        match deserialize(engine, &path) {
            Ok(component) => Some(component),
            Err(err) => {
                tracing::warn!(path = %path.display(), error = %err, "ignoring an unreadable cached artifact");
                let _ = std::fs::remove_file(&path);
                None
            }
        }
    }

    /// Stores the compilation of the component with `hash`. The file is
    /// written under a temporary name and renamed, so a reader never sees
    /// half of it.
    ///
    /// # Errors
    ///
    /// Fails when serializing or writing fails.
    pub fn put(&self, hash: &str, component: &Component) -> anyhow::Result<()> {
        let bytes = component.serialize()?;
        let path = self.path(component.engine(), hash);
        let mut temporary = tempfile_in(&self.dir)?;
        temporary.1.write_all(&bytes)?;
        temporary.1.sync_all()?;
        std::fs::rename(&temporary.0, &path)?;
        Ok(())
    }

    fn path(&self, engine: &Engine, hash: &str) -> PathBuf {
        let mut hasher = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        self.dir
            .join(format!("{hash}-{:016x}.cwasm", hasher.finish()))
    }
}

fn tempfile_in(dir: &Path) -> std::io::Result<(PathBuf, std::fs::File)> {
    let path = dir.join(format!(".{}.tmp", uuid::Uuid::now_v7()));
    let file = std::fs::File::create(&path)?;
    Ok((path, file))
}

#[expect(
    unsafe_code,
    reason = "wasmtime requires unsafe to load precompiled code"
)]
fn deserialize(engine: &Engine, path: &Path) -> anyhow::Result<Component> {
    // SAFETY: `Component::deserialize_file` trusts the file to be an
    // artifact that wasmtime wrote. Only `ArtifactCache::put` writes into
    // this folder, under a name derived from the engine's compatibility
    // hash, and it renames complete files into place. wasmtime itself
    // rejects artifacts from another version or with other settings.
    Ok(unsafe { Component::deserialize_file(engine, path)? })
}
