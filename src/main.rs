//! The `taskhub` command: `serve` runs the hub, `plugin check` validates a
//! component.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use taskhub::auth::{RateLimits, admin};
use taskhub::engine::Sweeps;
use taskhub::plugin::{Limits, PluginHost, content_hash, manifest};
use taskhub::processors::session::SessionConfig;
use taskhub::storage::Storage;
use taskhub::{HubConfig, ParentConfig, RunningHub};
use tracing_subscriber::EnvFilter;

/// A task hub: taskflows and environments as WebAssembly components, tasks
/// stored in SQLite. Without a subcommand it runs `serve`.
#[derive(Parser)]
#[command(name = "taskhub", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the hub: serve HTTP, load and watch the plugins folder.
    Serve(ServeArgs),
    /// Work with plugin components.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
    /// Add users. Once one exists, every request needs a token or a login.
    User {
        #[command(subcommand)]
        command: UserCommand,
        #[command(flatten)]
        db: DbArg,
    },
    /// Add groups and members.
    Group {
        #[command(subcommand)]
        command: GroupCommand,
        #[command(flatten)]
        db: DbArg,
    },
    /// Create, list and revoke API and processor tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
        #[command(flatten)]
        db: DbArg,
    },
}

#[derive(Args)]
struct DbArg {
    /// SQLite database file of the hub.
    #[arg(long, env = "TASKHUB_DB", default_value = "taskhub.db", global = true)]
    db: PathBuf,
}

#[derive(Subcommand)]
enum UserCommand {
    /// Add a user.
    Add {
        /// The user name (letters, digits, '.', '_', '-', '@').
        name: String,
        /// Read a password for browser login from the first line of stdin.
        #[arg(long)]
        password_stdin: bool,
        /// Profile fields as a JSON object, for `{{user.FIELD}}` templates.
        #[arg(long, default_value = "{}")]
        profile: String,
    },
    /// Replace a user's profile fields.
    Profile {
        /// The user.
        name: String,
        /// The profile fields as a JSON object, e.g. '{"name": "Ada"}'.
        profile: String,
    },
    /// List users and their groups.
    List,
}

#[derive(Subcommand)]
enum GroupCommand {
    /// Add a group. Members of `admin` may roll plugins back.
    Add {
        /// The group name.
        name: String,
    },
    /// Add a user to a group.
    AddMember {
        /// The group.
        group: String,
        /// The user.
        user: String,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a token for USER and print it; it is shown only once.
    Create {
        /// The user the token acts for.
        user: String,
        /// A processor token, for `register` on /ws, instead of an API token.
        #[arg(long)]
        processor: bool,
        /// A note on what the token is for.
        #[arg(long)]
        label: Option<String>,
        /// Days until the token expires; without it, it never does.
        #[arg(long, allow_negative_numbers = true)]
        expires_in_days: Option<f64>,
    },
    /// List tokens (not their secrets), of one user or of everyone.
    List {
        /// Only this user's tokens.
        user: Option<String>,
    },
    /// Revoke a token by its id or the whole token. A running hub stops
    /// accepting it within 5 seconds.
    Revoke {
        /// The token id (`thk_<id>_...`) or the whole token.
        token: String,
    },
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Check that FILE is a component the hub can load, and print what it
    /// exports and imports.
    Check {
        /// The `.wasm` component.
        file: PathBuf,
    },
    /// Switch a running hub's plugin back to the version its serving
    /// version replaced.
    Rollback {
        /// The plugin's name.
        name: String,
        /// The running hub's address.
        #[arg(long, env = "TASKHUB_URL", default_value = "http://127.0.0.1:8080")]
        hub: String,
        /// An API token of a member of the `admin` group (not needed in dev
        /// mode).
        #[arg(long, env = "TASKHUB_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
}

#[derive(Args, Clone)]
struct ServeArgs {
    /// Address and port to listen on.
    #[arg(long, env = "TASKHUB_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Folder of plugin components (`*.wasm`), watched for changes.
    #[arg(long, env = "TASKHUB_PLUGINS", default_value = "plugins")]
    plugins: PathBuf,
    /// SQLite database file, created if missing.
    #[arg(long, env = "TASKHUB_DB", default_value = "taskhub.db")]
    db: PathBuf,
    /// Folder for compiled plugin artifacts; must be outside the plugins folder.
    #[arg(long, env = "TASKHUB_CACHE_DIR", default_value = ".taskhub/cache")]
    cache_dir: PathBuf,
    /// Wall-clock time one plugin call may run, in milliseconds.
    #[arg(long, env = "TASKHUB_PLUGIN_DEADLINE_MS", default_value_t = 10_000)]
    plugin_deadline_ms: u64,
    /// Linear memory one plugin instance may use, in MiB.
    #[arg(long, env = "TASKHUB_PLUGIN_MEMORY_MIB", default_value_t = 128,
          value_parser = clap::value_parser!(u32).range(1..=4096))]
    plugin_memory_mib: u32,
    /// Plugin calls that may run at once; more wait for a free slot.
    #[arg(long, env = "TASKHUB_MAX_CONCURRENT_CALLS", default_value_t = 64)]
    max_concurrent_calls: usize,
    /// Largest request body and processor message accepted, in bytes.
    #[arg(long, env = "TASKHUB_MAX_BODY_BYTES", default_value_t = 1 << 20)]
    max_body_bytes: usize,
    /// Secret processors must send to register; without it any processor may.
    #[arg(long, env = "TASKHUB_PROCESSOR_TOKEN", hide_env_values = true)]
    processor_token: Option<String>,
    /// Interval of pings to processors, in milliseconds; a processor silent
    /// for three intervals is dropped.
    #[arg(long, env = "TASKHUB_HEARTBEAT_MS", default_value_t = 10_000)]
    heartbeat_ms: u64,
    /// Messages per second one processor may send on average (twice as many
    /// in a burst); past it the processor is disconnected.
    #[arg(
        long,
        env = "TASKHUB_PROCESSOR_MESSAGES_PER_SEC",
        default_value_t = 1000
    )]
    processor_messages_per_sec: u32,
    /// Seconds a task may wait for a plugin or processor that provides its
    /// environment before it fails into its error task; 0 waits forever.
    #[arg(long, env = "TASKHUB_PENDING_TIMEOUT_SECS", default_value_t = 86_400.0)]
    pending_timeout_secs: f64,
    /// Seconds that requests, plugin calls and processor sessions get to
    /// finish after SIGTERM or Ctrl-C before the hub exits anyway.
    #[arg(long, env = "TASKHUB_SHUTDOWN_GRACE_SECS", default_value_t = 10.0)]
    shutdown_grace_secs: f64,
    /// A parent hub's processor endpoint (e.g. `ws://parent:8080/ws`) to
    /// register with and serve this hub's plugin environments to.
    #[arg(long, env = "TASKHUB_PARENT")]
    parent: Option<String>,
    /// The processor id this hub registers with at the parent.
    #[arg(long, env = "TASKHUB_PARENT_ID", default_value = "child-hub")]
    parent_id: String,
    /// The parent's processor token.
    #[arg(long, env = "TASKHUB_PARENT_TOKEN", hide_env_values = true)]
    parent_token: Option<String>,
    /// Environments to offer the parent, comma-separated; by default every
    /// environment this hub's plugins provide.
    #[arg(long, env = "TASKHUB_PARENT_ENVIRONMENTS", value_delimiter = ',')]
    parent_environments: Vec<String>,
    /// Starts and updates one user or token may make per second, on
    /// average, once users exist. Past it the hub returns 429.
    #[arg(long, env = "TASKHUB_RATE_LIMIT_PER_SEC", default_value_t = 20)]
    rate_limit_per_sec: u32,
    /// Starts and updates one user or token may make at once.
    #[arg(long, env = "TASKHUB_RATE_LIMIT_BURST", default_value_t = 100)]
    rate_limit_burst: u32,
    /// Failed logins from one address or for one user name, and wrong
    /// secrets for one token id, allowed per minute before 429s.
    #[arg(long, env = "TASKHUB_AUTH_FAILURES_PER_MIN", default_value_t = 10)]
    auth_failures_per_min: u32,
}

impl ServeArgs {
    fn limits(&self) -> Limits {
        Limits {
            deadline: Duration::from_millis(self.plugin_deadline_ms),
            memory_bytes: (self.plugin_memory_mib as usize) << 20,
            max_concurrent_calls: self.max_concurrent_calls.max(1),
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Serve(args)) => serve(args).await,
        None => serve(cli.serve).await,
        Some(Command::Plugin {
            command: PluginCommand::Check { file },
        }) => check(&file).await,
        Some(Command::Plugin {
            command: PluginCommand::Rollback { name, hub, token },
        }) => rollback(&name, &hub, token.as_deref()).await,
        Some(Command::User { command, db }) => users(command, &db.db).await,
        Some(Command::Group { command, db }) => groups(command, &db.db).await,
        Some(Command::Token { command, db }) => tokens(command, &db.db).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let stop = shutdown_signal()?;
    let hub = RunningHub::start(HubConfig {
        listen: args.listen,
        plugins: args.plugins.clone(),
        db: args.db.clone(),
        cache_dir: args.cache_dir.clone(),
        limits: args.limits(),
        max_body_bytes: args.max_body_bytes,
        sessions: SessionConfig {
            token: args
                .processor_token
                .clone()
                .filter(|token| !token.is_empty()),
            heartbeat: Duration::from_millis(args.heartbeat_ms.max(10)),
            max_message_bytes: args.max_body_bytes,
            messages_per_second: args.processor_messages_per_sec,
            ..SessionConfig::default()
        },
        parent: args.parent.clone().map(|url| ParentConfig {
            url,
            id: args.parent_id.clone(),
            token: args.parent_token.clone(),
            environments: args.parent_environments.clone(),
        }),
        rate_limits: RateLimits {
            per_second: args.rate_limit_per_sec,
            burst: args.rate_limit_burst,
            failures_per_minute: args.auth_failures_per_min,
        },
        sweeps: Sweeps {
            pending_timeout: (args.pending_timeout_secs > 0.0)
                .then(|| Duration::from_secs_f64(args.pending_timeout_secs)),
        },
    })
    .await?;
    stop.await;
    hub.stop(Duration::from_secs_f64(args.shutdown_grace_secs.max(0.0)))
        .await
}

/// Returns a future that resolves on SIGTERM or Ctrl-C. The handlers are
/// installed when this is called, so a signal that arrives while the hub
/// starts is not lost (nor does it kill the process the default way).
fn shutdown_signal() -> anyhow::Result<impl Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut terminate = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        Ok(async move {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = interrupt.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}

async fn check(file: &std::path::Path) -> anyhow::Result<()> {
    let bytes = std::fs::read(file)
        .map_err(|err| anyhow::anyhow!("failed to read {}: {err}", file.display()))?;
    let name = taskhub::reload::plugin_name(file).ok_or_else(|| {
        anyhow::anyhow!(
            "{} is not a valid plugin file name: use NAME.wasm with letters, digits, `_`, `-` and `.`",
            file.display()
        )
    })?;
    let host = PluginHost::new(Limits::default(), None, None)?;
    let hash = content_hash(&bytes);
    let grants =
        manifest::load_grants(file, host.limits(), |variable| std::env::var(variable).ok())
            .map_err(|message| anyhow::anyhow!("{message}"))?;
    let plugin = host
        .load(&name, Arc::new(bytes), hash, grants)
        .await
        .map_err(|err| anyhow::anyhow!("{} cannot be loaded: {err}", file.display()))?;

    println!("plugin:       {}", plugin.name);
    println!("version:      {}", plugin.hash);
    println!("size:         {} bytes", plugin.size);
    println!("wit package:  {}", taskhub::plugin::WIT_PACKAGE);
    println!("exports:      {}", plugin.exports.interfaces.join(", "));
    println!("imports:      {}", plugin.imports.join(", "));
    print_grants(file, &plugin);
    if !plugin.exports.environments.is_empty() {
        println!("environments: {}", plugin.exports.environments.join(", "));
    }
    if !plugin.definitions.is_empty() {
        println!("tasks:");
        for definition in &plugin.definitions {
            let mut notes = Vec::new();
            if definition.start {
                notes.push("start".to_owned());
            }
            if let Some(environments) = &definition.environments {
                notes.push(format!("environments [{}]", environments.join(", ")));
            }
            if let Some(next) = &definition.next_task {
                notes.push(format!("next {next}"));
            }
            // Who may start it and how threads are shared; `groups` set
            // on a node is inherited by the tasks below it.
            let config = definition.config.as_ref();
            if let Some(groups) = config.and_then(|config| config.get("groups")) {
                notes.push(format!("groups {groups}"));
            }
            if let Some(mode) = config.and_then(|config| config.get("threadMode")) {
                notes.push(format!("threadMode {mode}"));
            }
            println!(
                "  {} ({}) {}",
                definition.id,
                definition.label,
                notes.join("; ")
            );
        }
    }
    Ok(())
}

/// Prints what the plugin's manifest grants, and warns about imports that
/// the grants leave unusable.
fn print_grants(file: &std::path::Path, plugin: &taskhub::plugin::LoadedPlugin) {
    let grants = plugin.grants.summary();
    let manifest = manifest::manifest_path(file);
    if grants.manifest {
        println!("manifest:     {}", manifest.display());
    } else {
        println!(
            "manifest:     none (no {} beside it): no grants",
            manifest.display()
        );
    }
    println!(
        "limits:       deadline {} ms, memory {} MiB, concurrent calls {}",
        grants.deadline_ms,
        grants.memory_mib,
        grants
            .max_concurrent_calls
            .map_or("unlimited".to_owned(), |calls| calls.to_string())
    );
    let hosts: Vec<String> = grants
        .http_allow
        .iter()
        .map(|allowed| match allowed.port {
            Some(port) => format!("{}:{port}", allowed.host),
            None => allowed.host.clone(),
        })
        .collect();
    println!(
        "http allow:   {}",
        if hosts.is_empty() {
            "none".to_owned()
        } else {
            hosts.join(", ")
        }
    );
    println!(
        "env:          {}",
        if grants.env.is_empty() {
            "none".to_owned()
        } else {
            grants.env.join(", ")
        }
    );
    println!(
        "secrets:      {}",
        if grants.secrets.is_empty() {
            "none".to_owned()
        } else {
            grants.secrets.join(", ")
        }
    );

    let uses_http = plugin
        .imports
        .iter()
        .any(|name| name.starts_with("wasi:http/"));
    if uses_http && hosts.is_empty() {
        println!(
            "warning: the component imports wasi:http, but its manifest allows no host; \
             every request it makes will be denied"
        );
    }
    for secret in &grants.missing_secrets {
        println!("warning: secret {secret} names a hub environment variable that is not set");
    }
}

async fn rollback(name: &str, hub: &str, token: Option<&str>) -> anyhow::Result<()> {
    let url = format!("{}/api/plugins/{name}/rollback", hub.trim_end_matches('/'));
    let mut request = reqwest::Client::new().post(&url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request
        .send()
        .await
        .map_err(|err| anyhow::anyhow!("failed to reach the hub at {hub}: {err}"))?;
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    if !status.is_success() {
        let message = body["error"]["message"].as_str().unwrap_or("no message");
        anyhow::bail!("the hub refused the rollback ({status}): {message}");
    }
    println!(
        "plugin {} rolled back: now {} (was {})",
        body["name"].as_str().unwrap_or(name),
        body["version"].as_str().unwrap_or(""),
        body["replaced"].as_str().unwrap_or("")
    );
    Ok(())
}

async fn users(command: UserCommand, db: &std::path::Path) -> anyhow::Result<()> {
    let storage = open(db, matches!(command, UserCommand::Add { .. })).await?;
    let result = match command {
        UserCommand::Add {
            name,
            password_stdin,
            profile,
        } => {
            let profile: serde_json::Value = serde_json::from_str(&profile)
                .map_err(|err| anyhow::anyhow!("--profile is not JSON: {err}"))?;
            let password = if password_stdin {
                let mut line = String::new();
                std::io::stdin().read_line(&mut line)?;
                Some(line.trim_end_matches(['\r', '\n']).to_owned())
            } else {
                None
            };
            admin::add_user(&storage, &name, password.as_deref(), profile)
                .await
                .map(|()| {
                    println!("user {name} added");
                    if password.is_none() {
                        println!(
                            "create a token with `taskhub token create {name} --db {}`",
                            db.display()
                        );
                    }
                })
        }
        UserCommand::Profile { name, profile } => match serde_json::from_str(&profile) {
            Ok(profile) => admin::set_profile(&storage, &name, profile)
                .await
                .map(|()| println!("profile of {name} replaced")),
            Err(err) => Err(anyhow::anyhow!("the profile is not JSON: {err}")),
        },
        UserCommand::List => list_users(&storage).await,
    };
    storage.close().await;
    result
}

async fn list_users(storage: &Storage) -> anyhow::Result<()> {
    for user in storage.users().await? {
        let groups = storage.groups_of(&user).await?;
        println!("{user}\t{}", groups.join(","));
    }
    Ok(())
}

async fn groups(command: GroupCommand, db: &std::path::Path) -> anyhow::Result<()> {
    let storage = open(db, matches!(command, GroupCommand::Add { .. })).await?;
    let result = match command {
        GroupCommand::Add { name } => admin::add_group(&storage, &name).await.map(|new| {
            if new {
                println!("group {name} added");
            } else {
                println!("group {name} exists already; nothing changed");
            }
        }),
        GroupCommand::AddMember { group, user } => admin::add_member(&storage, &group, &user)
            .await
            .map(|()| println!("user {user} is a member of {group}")),
    };
    storage.close().await;
    result
}

async fn tokens(command: TokenCommand, db: &std::path::Path) -> anyhow::Result<()> {
    let storage = open(db, false).await?;
    let result = match command {
        TokenCommand::Create {
            user,
            processor,
            label,
            expires_in_days,
        } => admin::create_token(&storage, &user, processor, label, expires_in_days)
            .await
            .map(|token| println!("{token}")),
        TokenCommand::List { user } => list_tokens(&storage, user.as_deref()).await,
        TokenCommand::Revoke { token } => admin::revoke_token(&storage, &token)
            .await
            .map(|record| println!("token {} of {} revoked", record.token_id, record.user_id)),
    };
    storage.close().await;
    result
}

async fn list_tokens(storage: &Storage, user: Option<&str>) -> anyhow::Result<()> {
    let now = taskhub::engine::task::now_millis();
    println!("ID\tUSER\tKIND\tSTATE\tCREATED\tEXPIRES\tLABEL");
    for token in storage.tokens(user).await? {
        let state = match (token.revoked_at, token.expires_at) {
            (Some(_), _) => "revoked",
            (None, Some(at)) if at <= now => "expired",
            _ => "active",
        };
        let label = token.label.as_deref().unwrap_or("");
        let expires = token.expires_at.map_or_else(|| "never".to_owned(), time);
        println!(
            "{}\t{}\t{}\t{state}\t{}\t{expires}\t{label}",
            token.token_id,
            token.user_id,
            token.kind,
            time(token.created_at)
        );
    }
    Ok(())
}

/// Formats Unix milliseconds as an RFC 3339 time in UTC.
fn time(millis: i64) -> String {
    chrono::DateTime::from_timestamp_millis(millis).map_or_else(
        || millis.to_string(),
        |time| time.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
    )
}

/// Opens the hub's database for the user, group and token commands;
/// only commands that add something may create it.
async fn open(db: &std::path::Path, create: bool) -> anyhow::Result<Storage> {
    if !db.exists() && !create {
        anyhow::bail!(
            "no database at {}; pass the hub's --db (or set TASKHUB_DB)",
            db.display()
        );
    }
    if !db.exists() {
        eprintln!(
            "note: no database at {}, creating it; pass the hub's --db if that is not what you meant",
            db.display()
        );
    }
    Ok(Storage::open(db).await?)
}
