//! Capability grants: the manifest an operator puts beside a plugin
//! (`NAME.toml` next to `NAME.wasm`). A plugin without one gets nothing
//! beyond the hub's defaults: no network, no environment variables, the
//! default deadline and memory cap.
//!
//! ```toml
//! [limits]
//! deadline-ms = 30000          # per call
//! memory-mib = 256             # linear memory per instance
//! max-concurrent-calls = 4     # calls of this plugin at once
//!
//! [http]
//! allow = ["api.openai.com", "127.0.0.1:11434"]   # outbound wasi:http
//!
//! [env]                        # plain values, as environment variables
//! LLM_MODEL = "gpt-4o-mini"
//!
//! [secrets]                    # variable the plugin sees = hub variable
//! LLM_API_KEY = "OPENAI_API_KEY"
//! ```
//!
//! Secret values are read from the hub's environment when the plugin loads.
//! They reach only this plugin and are never logged or shown.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Limits;

/// Largest memory cap a manifest may grant, in MiB: wasm32 memories end at
/// 4 GiB.
const MAX_MEMORY_MIB: u32 = 4096;

/// A manifest as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    #[serde(default)]
    limits: LimitGrants,
    #[serde(default)]
    http: HttpGrants,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    secrets: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct LimitGrants {
    deadline_ms: Option<u64>,
    memory_mib: Option<u32>,
    max_concurrent_calls: Option<usize>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpGrants {
    #[serde(default)]
    allow: Vec<String>,
}

/// A host a plugin may send HTTP requests to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct AllowedHost {
    /// Host name or IP address, lowercase.
    pub host: String,
    /// The port; `None` allows the scheme's default port (80 or 443).
    pub port: Option<u16>,
}

impl AllowedHost {
    /// Whether a request to `host` on `port` (of the scheme, if absent)
    /// is allowed.
    pub fn allows(&self, host: &str, port: u16) -> bool {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        self.host.eq_ignore_ascii_case(host)
            && match self.port {
                Some(allowed) => allowed == port,
                None => port == 80 || port == 443,
            }
    }
}

/// What a plugin is granted, resolved from its manifest and the hub's
/// defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct Grants {
    /// Wall-clock time one call may run.
    pub deadline: Duration,
    /// Bytes of linear memory one instance may grow to.
    pub memory_bytes: usize,
    /// Calls of this plugin that may run at once, if limited.
    pub max_concurrent_calls: Option<usize>,
    /// Hosts it may send HTTP requests to.
    pub http_allow: Vec<AllowedHost>,
    /// Environment variables it sees, plain values and secrets.
    pub env: Vec<(String, String)>,
    /// Names of the variables that hold secrets.
    pub secret_names: Vec<String>,
    /// Secrets whose hub variable is not set; the plugin loads without them.
    pub missing_secrets: Vec<String>,
    /// Whether a manifest was found.
    pub from_manifest: bool,
}

impl Grants {
    /// Returns the hub's defaults: no network, no variables.
    pub fn defaults(limits: &Limits) -> Self {
        Self {
            deadline: limits.deadline,
            memory_bytes: limits.memory_bytes,
            max_concurrent_calls: None,
            http_allow: Vec::new(),
            env: Vec::new(),
            secret_names: Vec::new(),
            missing_secrets: Vec::new(),
            from_manifest: false,
        }
    }

    /// Returns the grants as `/api/plugins` and `plugin check` show them:
    /// the names of variables, never their values.
    pub fn summary(&self) -> GrantSummary {
        GrantSummary {
            manifest: self.from_manifest,
            deadline_ms: self.deadline.as_millis() as u64,
            memory_mib: (self.memory_bytes >> 20) as u64,
            max_concurrent_calls: self.max_concurrent_calls,
            http_allow: self.http_allow.clone(),
            env: self
                .env
                .iter()
                .map(|(name, _)| name.clone())
                .filter(|name| !self.secret_names.contains(name))
                .collect(),
            secrets: self.secret_names.clone(),
            missing_secrets: self.missing_secrets.clone(),
        }
    }
}

/// Grants without secret values, for display.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct GrantSummary {
    /// Whether a manifest gave them; otherwise they are the defaults.
    pub manifest: bool,
    /// Deadline of one call.
    pub deadline_ms: u64,
    /// Memory cap of one instance.
    pub memory_mib: u64,
    /// Calls of the plugin at once, if limited.
    pub max_concurrent_calls: Option<usize>,
    /// Hosts it may call over HTTP.
    pub http_allow: Vec<AllowedHost>,
    /// Names of plain environment variables it sees.
    pub env: Vec<String>,
    /// Names of secret environment variables it sees.
    pub secrets: Vec<String>,
    /// Secrets whose hub variable was not set when it loaded.
    pub missing_secrets: Vec<String>,
}

/// Returns the manifest path for a plugin file: `NAME.toml` beside
/// `NAME.wasm`.
pub fn manifest_path(plugin_file: &Path) -> std::path::PathBuf {
    plugin_file.with_extension("toml")
}

/// Reads the grants for `plugin_file` from its manifest, if it has one.
/// `lookup` reads the hub's environment (a parameter so tests need not
/// change the process environment).
///
/// # Errors
///
/// A message naming the manifest, the line and what to change, when it
/// cannot be read or is invalid.
pub fn load_grants(
    plugin_file: &Path,
    defaults: &Limits,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<Grants, String> {
    let path = manifest_path(plugin_file);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Grants::defaults(defaults));
        }
        Err(err) => {
            return Err(format!(
                "failed to read the manifest {}: {err}",
                path.display()
            ));
        }
    };
    let manifest: Manifest = toml::from_str(&text)
        .map_err(|err| format!("invalid manifest {}: {err}", path.display()))?;
    resolve(manifest, defaults, lookup)
        .map_err(|err| format!("invalid manifest {}: {err}", path.display()))
}

fn resolve(
    manifest: Manifest,
    defaults: &Limits,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<Grants, String> {
    let mut grants = Grants::defaults(defaults);
    grants.from_manifest = true;

    if let Some(deadline_ms) = manifest.limits.deadline_ms {
        if deadline_ms == 0 {
            return Err("`limits.deadline-ms` must be at least 1".into());
        }
        grants.deadline = Duration::from_millis(deadline_ms);
    }
    if let Some(memory_mib) = manifest.limits.memory_mib {
        if !(1..=MAX_MEMORY_MIB).contains(&memory_mib) {
            return Err(format!(
                "`limits.memory-mib` must be between 1 and {MAX_MEMORY_MIB}"
            ));
        }
        grants.memory_bytes = (memory_mib as usize) << 20;
    }
    if let Some(calls) = manifest.limits.max_concurrent_calls {
        if calls == 0 {
            return Err("`limits.max-concurrent-calls` must be at least 1".into());
        }
        grants.max_concurrent_calls = Some(calls);
    }

    for entry in &manifest.http.allow {
        grants.http_allow.push(parse_host(entry)?);
    }

    for (name, value) in &manifest.env {
        check_variable_name(name, "env")?;
        grants.env.push((name.clone(), value.clone()));
    }
    for (name, hub_variable) in &manifest.secrets {
        check_variable_name(name, "secrets")?;
        if manifest.env.contains_key(name) {
            return Err(format!(
                "`{name}` is both in `env` and in `secrets`; keep one"
            ));
        }
        grants.secret_names.push(name.clone());
        match lookup(hub_variable) {
            Some(value) => grants.env.push((name.clone(), value)),
            None => grants.missing_secrets.push(name.clone()),
        }
    }
    Ok(grants)
}

/// Parses `host` or `host:port` (`[v6]:port` for IPv6).
fn parse_host(entry: &str) -> Result<AllowedHost, String> {
    let invalid = || {
        format!(
            "`http.allow` entry {entry:?} is invalid; write a host (`api.example.com`) or a host \
             and port (`127.0.0.1:8080`), without a scheme or path"
        )
    };
    if entry.is_empty() || entry.contains('/') || entry.contains('*') || entry.contains("://") {
        return Err(invalid());
    }
    let (host, port) = if let Some(rest) = entry.strip_prefix('[') {
        let (host, rest) = rest.split_once(']').ok_or_else(invalid)?;
        let port = match rest.strip_prefix(':') {
            Some(port) => Some(port.parse().map_err(|_| invalid())?),
            None if rest.is_empty() => None,
            None => return Err(invalid()),
        };
        (host.to_owned(), port)
    } else {
        match entry.rsplit_once(':') {
            Some((host, port)) => (host.to_owned(), Some(port.parse().map_err(|_| invalid())?)),
            None => (entry.to_owned(), None),
        }
    };
    let host_ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':'));
    if !host_ok {
        return Err(invalid());
    }
    Ok(AllowedHost {
        host: host.to_ascii_lowercase(),
        port,
    })
}

fn check_variable_name(name: &str, table: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit());
    if valid {
        Ok(())
    } else {
        Err(format!(
            "`{table}` variable name {name:?} is invalid; use letters, digits and `_`, not starting with a digit"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Grants, String> {
        let manifest: Manifest = toml::from_str(text).map_err(|err| err.to_string())?;
        resolve(manifest, &Limits::default(), |name| {
            (name == "HUB_KEY").then(|| "s3cret".to_owned())
        })
    }

    #[test]
    fn full_manifest_resolves() {
        let grants = parse(
            r#"
            [limits]
            deadline-ms = 500
            memory-mib = 64
            max-concurrent-calls = 2
            [http]
            allow = ["api.example.com", "127.0.0.1:8080", "[::1]:9000"]
            [env]
            MODEL = "m"
            [secrets]
            KEY = "HUB_KEY"
            ABSENT = "NOT_SET"
            "#,
        )
        .unwrap();
        assert_eq!(grants.deadline, Duration::from_millis(500));
        assert_eq!(grants.memory_bytes, 64 << 20);
        assert_eq!(grants.max_concurrent_calls, Some(2));
        assert!(grants.http_allow[0].allows("API.example.com", 443));
        assert!(!grants.http_allow[0].allows("api.example.com", 8443));
        assert!(grants.http_allow[1].allows("127.0.0.1", 8080));
        assert!(!grants.http_allow[1].allows("127.0.0.1", 8081));
        assert!(grants.http_allow[2].allows("[::1]", 9000));
        assert!(grants.env.contains(&("KEY".into(), "s3cret".into())));
        assert_eq!(grants.missing_secrets, ["ABSENT"]);
        let summary = grants.summary();
        assert_eq!(summary.env, ["MODEL"]);
        assert_eq!(summary.secrets, ["ABSENT", "KEY"]);
        assert!(!format!("{summary:?}").contains("s3cret"));
    }

    #[test]
    fn bad_manifests_say_what_to_fix() {
        let cases = [
            ("[limits]\ndeadline = 5", "unknown field"),
            ("[limits]\nmemory-mib = 0", "between 1 and"),
            ("[http]\nallow = [\"https://x.com\"]", "without a scheme"),
            ("[http]\nallow = [\"*\"]", "is invalid"),
            ("[env]\n\"1X\" = \"v\"", "not starting with a digit"),
            (
                "[env]\nK = \"v\"\n[secrets]\nK = \"HUB_KEY\"",
                "both in `env` and in `secrets`",
            ),
            ("[network]\nallow = true", "unknown field"),
        ];
        for (text, expected) in cases {
            let error = parse(text).unwrap_err();
            assert!(error.contains(expected), "{text}: {error}");
        }
    }

    #[test]
    fn no_manifest_means_defaults() {
        let grants = load_grants(
            Path::new("/nonexistent/plugin.wasm"),
            &Limits::default(),
            |_| None,
        )
        .unwrap();
        assert_eq!(grants, Grants::defaults(&Limits::default()));
    }
}
