//! Runs the real `taskhub` binary on an ephemeral port with its own
//! temporary database, cache and plugins folder, and talks to it over HTTP.
//! The benchmarks include this file too, so some helpers are unused there.
#![allow(dead_code, reason = "shared with the benchmarks, which use a subset")]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

/// Folder of the components `build.rs` built: the example plugins and the
/// `faults` fixture in two variants.
pub const COMPONENTS: &str = env!("TASKHUB_TEST_COMPONENTS");

/// How long a test waits for a condition before it fails.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Returns the bytes of a built component, e.g. `story` or `faults-b`.
pub fn component(name: &str) -> Vec<u8> {
    let path = Path::new(COMPONENTS).join(format!("{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|err| panic!("failed to read {}: {err}", path.display()))
}

/// The files of one hub: they outlive a hub process, so a restarted hub
/// finds the same database.
pub struct HubFiles {
    root: tempfile::TempDir,
}

impl HubFiles {
    /// Creates an empty plugins folder, database path and cache folder.
    pub fn new() -> Self {
        let root = tempfile::tempdir().expect("failed to create a temporary folder");
        std::fs::create_dir(root.path().join("plugins")).unwrap();
        Self { root }
    }

    /// Creates the folder with the given built components as plugins.
    pub fn with_plugins(names: &[&str]) -> Self {
        let files = Self::new();
        for name in names {
            files.install(name, name);
        }
        files
    }

    pub fn plugins(&self) -> PathBuf {
        self.root.path().join("plugins")
    }

    pub fn db(&self) -> PathBuf {
        self.root.path().join("hub.db")
    }

    pub fn cache(&self) -> PathBuf {
        self.root.path().join("cache")
    }

    /// Copies component `component` to `plugins/{plugin}.wasm` the way a
    /// careful author does: write elsewhere, then rename into place.
    pub fn install(&self, component_name: &str, plugin: &str) {
        self.write_plugin(plugin, &component(component_name));
    }

    /// Writes `bytes` as `plugins/{plugin}.wasm` atomically.
    pub fn write_plugin(&self, plugin: &str, bytes: &[u8]) {
        let staging = self.root.path().join(format!("{plugin}.staging"));
        std::fs::write(&staging, bytes).unwrap();
        std::fs::rename(&staging, self.plugins().join(format!("{plugin}.wasm"))).unwrap();
    }

    /// Returns the path of `plugins/{plugin}.wasm`.
    pub fn plugin_path(&self, plugin: &str) -> PathBuf {
        self.plugins().join(format!("{plugin}.wasm"))
    }
}

/// A running hub process.
pub struct Hub {
    child: Child,
    pub base: String,
    logs: Arc<Mutex<Vec<String>>>,
    client: reqwest::Client,
}

impl Hub {
    /// Starts `taskhub serve` on the files with `extra` arguments (a 1 s
    /// plugin deadline and a 32 MiB memory cap unless `extra` sets them),
    /// and waits until it listens.
    pub fn start(files: &HubFiles, extra: &[&str]) -> Self {
        Self::start_with_log(files, extra, "info")
    }

    /// Starts the hub like [`Hub::start`] with `log` as its `RUST_LOG`
    /// filter; the filter must keep the `hub listening` line.
    pub fn start_with_log(files: &HubFiles, extra: &[&str], log: &str) -> Self {
        Self::start_full(files, extra, log, &[])
    }

    /// Starts the hub like [`Hub::start`] with extra environment variables.
    pub fn start_with_env(files: &HubFiles, extra: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_full(files, extra, "info", env)
    }

    fn start_full(files: &HubFiles, extra: &[&str], log: &str, env: &[(&str, &str)]) -> Self {
        let listen: &[&str] = if extra.contains(&"--listen") {
            &[]
        } else {
            &["--listen", "127.0.0.1:0"]
        };
        let mut defaults = Vec::new();
        for (flag, value) in [
            ("--plugin-deadline-ms", "1000"),
            ("--plugin-memory-mib", "32"),
        ] {
            if !extra.contains(&flag) {
                defaults.extend([flag, value]);
            }
        }
        let mut child = Command::new(env!("CARGO_BIN_EXE_taskhub"))
            .arg("serve")
            .args(listen)
            .arg("--plugins")
            .arg(files.plugins())
            .arg("--db")
            .arg(files.db())
            .arg("--cache-dir")
            .arg(files.cache())
            .args(defaults)
            .args(extra)
            .env("RUST_LOG", log)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("failed to start the taskhub binary");

        let logs = Arc::new(Mutex::new(Vec::new()));
        let (address_sender, address) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("hub: {line}");
                if line.contains("hub listening")
                    && let Some(address) = field(&line, "address")
                {
                    let _ = address_sender.send(address);
                }
                sink.lock().unwrap().push(line);
            }
        });

        let address = match address.recv_timeout(Duration::from_secs(60)) {
            Ok(address) => address,
            Err(_) => {
                let _ = child.kill();
                panic!("the hub did not start listening within 60 s");
            }
        };
        Self {
            child,
            base: format!("http://{address}"),
            logs,
            client: reqwest::Client::new(),
        }
    }

    /// Returns the hub's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits up to `limit` for the process to exit;
    /// returns whether it exited successfully and how long it took.
    pub fn terminate(mut self, limit: Duration) -> (bool, Duration) {
        let started = Instant::now();
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "failed to send SIGTERM");
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status.success(), started.elapsed());
            }
            assert!(
                started.elapsed() < limit,
                "the hub did not exit within {limit:?} of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills the process at once (SIGKILL), as a crash would.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Returns the shared log buffer, which outlives the hub process.
    pub fn log_handle(&self) -> Arc<Mutex<Vec<String>>> {
        self.logs.clone()
    }

    /// Whether any log line so far contains `text`.
    pub fn logs_contain(&self, text: &str) -> bool {
        self.logs
            .lock()
            .unwrap()
            .iter()
            .any(|line| line.contains(text))
    }

    /// Waits until a log line contains every one of `parts`.
    pub async fn wait_for_log(&self, parts: &[&str]) -> String {
        let logs = self.logs.clone();
        let parts: Vec<String> = parts.iter().map(|part| part.to_string()).collect();
        wait_until("a log line", || {
            let logs = logs.clone();
            let parts = parts.clone();
            async move {
                logs.lock()
                    .unwrap()
                    .iter()
                    .find(|line| parts.iter().all(|part| line.contains(part.as_str())))
                    .cloned()
            }
        })
        .await
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn post(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        self.post_raw(path, "application/json", body.to_string())
            .await
    }

    pub async fn post_raw(
        &self,
        path: &str,
        content_type: &str,
        body: String,
    ) -> (StatusCode, Value) {
        let response = self
            .client
            .post(format!("{}{path}", self.base))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Sends a request with an optional bearer token and JSON body, and
    /// returns the status, the headers and the JSON body (`null` if none).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        (
            status,
            headers,
            response.json().await.unwrap_or(Value::Null),
        )
    }

    /// Starts task `id` and returns the created task; fails unless 201.
    pub async fn start_task(&self, id: &str, input: Value) -> Value {
        let (status, task) = self
            .post(
                "/api/tasks",
                &json!({"command": "start", "task": {"id": id, "input": input}}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "starting {id}: {task}");
        task
    }

    /// Waits until the thread has ended and returns it.
    pub async fn wait_thread_end(&self, thread_id: &str) -> Value {
        self.wait_thread(thread_id, |thread| thread["status"] != "running")
            .await
    }

    /// Waits until the thread satisfies `check` and returns it.
    pub async fn wait_thread(&self, thread_id: &str, check: impl Fn(&Value) -> bool) -> Value {
        let path = format!("/api/threads/{thread_id}");
        wait_until(&format!("thread {thread_id}"), || async {
            let (status, thread) = self.get(&path).await;
            (status == StatusCode::OK && check(&thread)).then_some(thread)
        })
        .await
    }

    /// Waits until the thread's last task has `status` and returns it.
    pub async fn wait_last_task(&self, thread_id: &str, status: &str) -> Value {
        let thread = self
            .wait_thread(thread_id, |thread| {
                thread["tasks"]
                    .as_array()
                    .and_then(|tasks| tasks.last())
                    .map(|task| &task["status"])
                    == Some(&json!(status))
            })
            .await;
        thread["tasks"].as_array().unwrap().last().unwrap().clone()
    }

    /// Waits until `/api/plugins` satisfies `check` and returns the list.
    pub async fn wait_plugins(&self, check: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        wait_until("the plugin list", || async {
            let (_, plugins) = self.get("/api/plugins").await;
            let plugins = plugins.as_array().cloned().unwrap_or_default();
            check(&plugins).then_some(plugins)
        })
        .await
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Returns the plugin named `name` from a `/api/plugins` list.
pub fn plugin<'a>(plugins: &'a [Value], name: &str) -> Option<&'a Value> {
    plugins.iter().find(|plugin| plugin["name"] == name)
}

/// Returns the ids of the tasks of a thread, in order.
pub fn task_ids(thread: &Value) -> Vec<String> {
    thread["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|task| task["id"].as_str().unwrap().to_owned())
        .collect()
}

/// Polls `probe` every 20 ms until it returns a value; fails after
/// [`PATIENCE`].
pub async fn wait_until<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(started.elapsed() < PATIENCE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs `taskhub ARGS --db DB` on the files' database, with `stdin` as
/// its input, and returns (success, stdout, stderr).
pub fn cli(files: &HubFiles, args: &[&str], stdin: &str) -> (bool, String, String) {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_taskhub"))
        .args(args)
        .arg("--db")
        .arg(files.db())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("failed to run the taskhub binary");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Runs a `taskhub` command that must succeed and returns its stdout.
pub fn cli_ok(files: &HubFiles, args: &[&str], stdin: &str) -> String {
    let (ok, stdout, stderr) = cli(files, args, stdin);
    assert!(ok, "taskhub {args:?} failed: {stderr}");
    stdout
}

/// Returns the value of `name=value` in a log line.
fn field(line: &str, name: &str) -> Option<String> {
    let start = line.find(&format!("{name}="))? + name.len() + 1;
    let value = line[start..].split_whitespace().next()?;
    Some(value.trim_matches('"').to_owned())
}

/// A processor played by the test: a real WebSocket client.
pub struct TestProcessor {
    socket: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
}

impl TestProcessor {
    /// Opens a WebSocket to the hub without registering.
    pub async fn connect(hub: &Hub) -> Self {
        let url = format!("{}/ws", hub.base.replace("http://", "ws://"));
        let (socket, _) = tokio_tungstenite::connect_async_with_config(url.as_str(), None, true)
            .await
            .expect("failed to open a WebSocket to the hub");
        Self { socket }
    }

    /// Connects and registers `id` for `environments`; fails unless the hub
    /// answers `registered`.
    pub async fn register(hub: &Hub, id: &str, environments: &[&str]) -> Self {
        let mut processor = Self::connect(hub).await;
        processor
            .send(json!({"command": "register", "processorId": id, "environments": environments}))
            .await;
        let reply = processor.recv().await;
        assert_eq!(reply["command"], "registered", "{reply}");
        processor
    }

    /// Sends one JSON text message.
    pub async fn send(&mut self, message: Value) {
        self.send_text(message.to_string()).await;
    }

    /// Sends one text message as it is.
    pub async fn send_text(&mut self, text: String) {
        use futures::SinkExt;
        self.socket
            .send(tokio_tungstenite::tungstenite::Message::Text(text.into()))
            .await
            .expect("failed to send to the hub");
    }

    /// Returns the next text message as JSON; fails on a close or after
    /// [`PATIENCE`].
    pub async fn recv(&mut self) -> Value {
        match self.next_text().await {
            Ok(message) => message,
            Err(close) => panic!("the hub closed the connection: {close:?}"),
        }
    }

    /// Returns the next text message, or the close frame's code and reason
    /// if the hub closes first.
    pub async fn next_text(&mut self) -> Result<Value, Option<(u16, String)>> {
        use futures::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        loop {
            let frame = tokio::time::timeout(PATIENCE, self.socket.next())
                .await
                .expect("timed out waiting for a message from the hub");
            match frame {
                Some(Ok(Message::Text(text))) => return Ok(serde_json::from_str(&text).unwrap()),
                Some(Ok(Message::Close(frame))) => {
                    return Err(
                        frame.map(|frame| (u16::from(frame.code), frame.reason.to_string()))
                    );
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Err(None),
            }
        }
    }

    /// Waits for the next `dispatch` and returns its task.
    pub async fn dispatched(&mut self) -> Value {
        let message = self.recv().await;
        assert_eq!(message["command"], "dispatch", "{message}");
        message["task"].clone()
    }

    /// Sends an update and returns the hub's reply.
    pub async fn update(&mut self, task: Value) -> Value {
        self.send(json!({"command": "update", "task": task})).await;
        self.recv().await
    }

    /// Finishes `task` with `output` and checks the hub accepted it.
    pub async fn finish(&mut self, task: &Value, output: Value) {
        let reply = self
            .update(json!({
                "instanceId": task["instanceId"],
                "version": task["version"],
                "output": output,
                "state": {"done": true},
            }))
            .await;
        assert_eq!(reply["command"], "updated", "{reply}");
        assert_eq!(reply["status"], "done", "{reply}");
    }

    /// Returns the WebSocket, for callers that read it themselves.
    pub fn into_socket(
        self,
    ) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>
    {
        self.socket
    }

    /// Drops the connection without a close handshake, as a crash would.
    pub fn crash(self) {
        drop(self);
    }
}
