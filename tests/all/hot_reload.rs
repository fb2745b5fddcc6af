//! The plugins folder while the hub runs: add, replace, delete, and files
//! that must not replace the serving version.

use std::io::Write;

use serde_json::json;

use crate::support::{Hub, HubFiles, component, plugin, wait_until};

#[tokio::test]
async fn added_plugin_is_served() {
    let files = HubFiles::new();
    let hub = Hub::start(&files, &[]);
    let (_, menu) = hub.get("/api/taskflows").await;
    assert_eq!(menu, json!([]));

    files.install("story", "story");
    files.install("llm-mock", "llm-mock");
    let plugins = hub
        .wait_plugins(|plugins| {
            plugin(plugins, "story").is_some() && plugin(plugins, "llm-mock").is_some()
        })
        .await;
    let story = plugin(&plugins, "story").unwrap();
    assert_eq!(story["status"], "loaded");
    assert_eq!(story["version"].as_str().unwrap().len(), 64);
    assert!(story["loadedAt"].is_string());
    assert!(
        story["exports"]["taskflows"]
            .as_array()
            .unwrap()
            .contains(&json!("examples.story.start"))
    );
    assert_eq!(
        plugin(&plugins, "llm-mock").unwrap()["exports"]["environments"],
        json!(["llm"])
    );

    let (_, menu) = hub.get("/api/taskflows").await;
    assert_eq!(
        menu[0]["children"][0]["children"][0]["id"],
        "examples.story.start"
    );
    let started = hub
        .start_task("examples.story.start", json!({"topic": "hot reload"}))
        .await;
    let thread = hub
        .wait_thread_end(started["threadId"].as_str().unwrap())
        .await;
    assert_eq!(thread["status"], "done");
    hub.wait_for_log(&["plugin loaded", "plugin=story"]).await;
}

#[tokio::test]
async fn replaced_plugin_swaps_and_running_task_keeps_version() {
    let files = HubFiles::with_plugins(&["faults"]);
    let hub = Hub::start(&files, &["--plugin-deadline-ms", "10000"]);
    let plugins = hub
        .wait_plugins(|plugins| plugin(plugins, "faults").is_some())
        .await;
    let first_version = plugin(&plugins, "faults").unwrap()["version"].clone();

    // A call that is still running when the file is replaced.
    let slow = hub
        .start_task("testing.faults.run", json!({"mode": "slow", "ms": 1500}))
        .await;
    files.install("faults-b", "faults");
    let plugins = hub
        .wait_plugins(|plugins| {
            plugin(plugins, "faults").is_some_and(|p| p["version"] != first_version)
        })
        .await;
    assert_eq!(plugin(&plugins, "faults").unwrap()["status"], "loaded");

    let fresh = hub
        .start_task("testing.faults.run", json!({"mode": "ok"}))
        .await;
    let fresh = hub
        .wait_thread_end(fresh["threadId"].as_str().unwrap())
        .await;
    assert_eq!(fresh["tasks"][0]["output"], json!({"variant": "b"}));

    let slow = hub
        .wait_thread_end(slow["threadId"].as_str().unwrap())
        .await;
    assert_eq!(slow["status"], "done", "{slow}");
    assert_eq!(slow["tasks"][0]["output"], json!({"variant": "a"}));
}

#[tokio::test]
async fn deleted_plugin_is_unloaded() {
    let files = HubFiles::with_plugins(&["story", "llm-mock"]);
    let hub = Hub::start(&files, &[]);
    hub.wait_plugins(|plugins| plugins.len() == 2).await;

    std::fs::remove_file(files.plugin_path("story")).unwrap();
    let plugins = hub
        .wait_plugins(|plugins| plugin(plugins, "story").is_none())
        .await;
    assert_eq!(plugins.len(), 1);
    let (_, menu) = hub.get("/api/taskflows").await;
    assert_eq!(menu, json!([]));

    let (status, error) = hub
        .post(
            "/api/tasks",
            &json!({"command": "start", "task": {"id": "examples.story.start"}}),
        )
        .await;
    assert_eq!(status, 404);
    assert_eq!(error["error"]["code"], "unknown_task");
    hub.wait_for_log(&["plugin unloaded", "plugin=story"]).await;
}

#[tokio::test]
async fn broken_file_keeps_previous_version() {
    let files = HubFiles::with_plugins(&["faults"]);
    let hub = Hub::start(&files, &[]);
    let plugins = hub
        .wait_plugins(|plugins| plugin(plugins, "faults").is_some())
        .await;
    let serving = plugin(&plugins, "faults").unwrap()["version"].clone();

    files.write_plugin("faults", b"this is not WebAssembly");
    let plugins = hub
        .wait_plugins(|plugins| {
            plugin(plugins, "faults").is_some_and(|p| !p["lastError"].is_null())
        })
        .await;
    let faults = plugin(&plugins, "faults").unwrap();
    assert_eq!(faults["status"], "loaded");
    assert_eq!(faults["version"], serving);
    let message = faults["lastError"]["message"].as_str().unwrap();
    assert!(message.contains("not a WebAssembly binary"), "{message}");
    hub.wait_for_log(&[
        "plugin rejected",
        "plugin=faults",
        "not a WebAssembly binary",
    ])
    .await;

    // The old version still runs tasks.
    let started = hub
        .start_task("testing.faults.run", json!({"mode": "ok"}))
        .await;
    let thread = hub
        .wait_thread_end(started["threadId"].as_str().unwrap())
        .await;
    assert_eq!(thread["tasks"][0]["output"], json!({"variant": "a"}));

    // A good file clears the error.
    files.install("faults-b", "faults");
    let plugins = hub
        .wait_plugins(|plugins| plugin(plugins, "faults").is_some_and(|p| p["version"] != serving))
        .await;
    assert!(plugin(&plugins, "faults").unwrap()["lastError"].is_null());
}

#[tokio::test]
async fn wrong_world_and_core_module_are_rejected() {
    let files = HubFiles::new();
    let hub = Hub::start(&files, &[]);

    let empty_component = wat::parse_str("(component)").unwrap();
    files.write_plugin("empty", &empty_component);
    let core_module = wat::parse_str("(module)").unwrap();
    files.write_plugin("core", &core_module);

    let plugins = hub
        .wait_plugins(|plugins| {
            ["empty", "core"]
                .iter()
                .all(|name| plugin(plugins, name).is_some_and(|p| !p["lastError"].is_null()))
        })
        .await;
    let empty = plugin(&plugins, "empty").unwrap();
    assert_eq!(empty["status"], "failed");
    assert!(empty["version"].is_null());
    let message = empty["lastError"]["message"].as_str().unwrap();
    assert!(
        message.contains("exports neither `taskhub:plugin/taskflow@0.1.0`"),
        "{message}"
    );

    let core = plugin(&plugins, "core").unwrap();
    let message = core["lastError"]["message"].as_str().unwrap();
    assert!(
        message.contains("core WebAssembly module, not a component"),
        "{message}"
    );

    let (_, menu) = hub.get("/api/taskflows").await;
    assert_eq!(menu, json!([]));
}

#[tokio::test]
async fn half_written_file_never_replaces_version() {
    let files = HubFiles::with_plugins(&["faults"]);
    let hub = Hub::start(&files, &[]);
    let plugins = hub
        .wait_plugins(|plugins| plugin(plugins, "faults").is_some())
        .await;
    let serving = plugin(&plugins, "faults").unwrap()["version"].clone();

    // Write half of the new version in place, as a slow copy would, and
    // let the hub see it before the rest arrives.
    let replacement = component("faults-b");
    let half = replacement.len() / 2;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(files.plugin_path("faults"))
        .unwrap();
    file.write_all(&replacement[..half]).unwrap();
    file.flush().unwrap();
    hub.wait_plugins(|plugins| {
        plugin(plugins, "faults").is_some_and(|p| !p["lastError"].is_null())
    })
    .await;

    // Whatever the hub made of the half file, the old version serves.
    let started = hub
        .start_task("testing.faults.run", json!({"mode": "ok"}))
        .await;
    let thread = hub
        .wait_thread_end(started["threadId"].as_str().unwrap())
        .await;
    assert_eq!(thread["tasks"][0]["output"], json!({"variant": "a"}));
    let (_, plugins) = hub.get("/api/plugins").await;
    assert_eq!(
        plugin(plugins.as_array().unwrap(), "faults").unwrap()["version"],
        serving
    );

    // The rest of the file arrives; the complete version loads.
    file.write_all(&replacement[half..]).unwrap();
    file.sync_all().unwrap();
    drop(file);
    hub.wait_plugins(|plugins| plugin(plugins, "faults").is_some_and(|p| p["version"] != serving))
        .await;
    wait_until("the new version to serve", || async {
        let started = hub
            .start_task("testing.faults.run", json!({"mode": "ok"}))
            .await;
        let thread = hub
            .wait_thread_end(started["threadId"].as_str().unwrap())
            .await;
        (thread["tasks"][0]["output"] == json!({"variant": "b"})).then_some(())
    })
    .await;
}

#[tokio::test]
async fn conflicting_task_ids_are_rejected() {
    let files = HubFiles::with_plugins(&["story"]);
    let hub = Hub::start(&files, &[]);
    hub.wait_plugins(|plugins| plugin(plugins, "story").is_some())
        .await;

    // The same component under a second name declares the same ids.
    files.install("story", "story-copy");
    let plugins = hub
        .wait_plugins(|plugins| {
            plugin(plugins, "story-copy").is_some_and(|p| !p["lastError"].is_null())
        })
        .await;
    let copy = plugin(&plugins, "story-copy").unwrap();
    assert_eq!(copy["status"], "failed");
    let message = copy["lastError"]["message"].as_str().unwrap();
    assert!(
        message.contains("already declared by plugin `story`"),
        "{message}"
    );
}

#[tokio::test]
async fn replaced_plugins_folder_is_watched_again() {
    let files = HubFiles::with_plugins(&["story"]);
    let hub = Hub::start(&files, &[]);
    hub.wait_plugins(|plugins| plugin(plugins, "story").is_some())
        .await;

    std::fs::remove_dir_all(files.plugins()).unwrap();
    std::fs::create_dir(files.plugins()).unwrap();
    hub.wait_plugins(|plugins| plugin(plugins, "story").is_none())
        .await;
    files.install("llm-mock", "llm-mock");
    hub.wait_plugins(|plugins| plugin(plugins, "llm-mock").is_some())
        .await;
    hub.wait_for_log(&["the plugins folder was replaced"]).await;
}

#[tokio::test]
async fn conflict_names_owner_and_retries_after_unload() {
    let files = HubFiles::with_plugins(&["story"]);
    let hub = Hub::start(&files, &[]);
    hub.wait_plugins(|plugins| plugin(plugins, "story").is_some())
        .await;

    // `astory` sorts before `story`, yet `story` serves and keeps its ids.
    files.install("story", "astory");
    let plugins = hub
        .wait_plugins(|plugins| {
            plugin(plugins, "astory").is_some_and(|p| !p["lastError"].is_null())
        })
        .await;
    let message = plugin(&plugins, "astory").unwrap()["lastError"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        message.contains("already declared by plugin `story`"),
        "{message}"
    );

    // Once `story` is gone, the copy loads in its place.
    std::fs::remove_file(files.plugin_path("story")).unwrap();
    let plugins = hub
        .wait_plugins(|plugins| plugin(plugins, "astory").is_some_and(|p| p["status"] == "loaded"))
        .await;
    assert!(plugin(&plugins, "story").is_none());
    let (_, menu) = hub.get("/api/taskflows").await;
    assert_eq!(
        menu[0]["children"][0]["children"][0]["id"],
        "examples.story.start"
    );
}

#[tokio::test]
async fn restored_file_clears_load_error() {
    let files = HubFiles::with_plugins(&["faults"]);
    let hub = Hub::start(&files, &[]);
    hub.wait_plugins(|plugins| plugin(plugins, "faults").is_some())
        .await;

    files.write_plugin("faults", b"");
    hub.wait_plugins(|plugins| {
        plugin(plugins, "faults").is_some_and(|p| !p["lastError"].is_null())
    })
    .await;
    files.install("faults", "faults");
    hub.wait_plugins(|plugins| plugin(plugins, "faults").is_some_and(|p| p["lastError"].is_null()))
        .await;
}

#[tokio::test]
async fn missing_plugins_folder_is_created() {
    let files = HubFiles::new();
    std::fs::remove_dir(files.plugins()).unwrap();
    let hub = Hub::start(&files, &[]);
    assert!(files.plugins().is_dir());
    files.install("story", "story");
    hub.wait_plugins(|plugins| plugin(plugins, "story").is_some())
        .await;
}

#[tokio::test]
async fn rollback_restores_previous_version() {
    let files = HubFiles::with_plugins(&["faults"]);
    let hub = Hub::start(&files, &[]);
    let plugins = hub
        .wait_plugins(|plugins| plugin(plugins, "faults").is_some())
        .await;
    let first = plugin(&plugins, "faults").unwrap()["version"]
        .as_str()
        .unwrap()
        .to_owned();

    // Nothing to go back to yet.
    let (status, body) = hub.post("/api/plugins/faults/rollback", &json!(null)).await;
    assert_eq!(status, 409, "{body}");
    let (status, _) = hub
        .post("/api/plugins/nothing/rollback", &json!(null))
        .await;
    assert_eq!(status, 404);

    files.install("faults-b", "faults");
    let plugins = hub
        .wait_plugins(|plugins| {
            plugin(plugins, "faults").is_some_and(|p| p["version"] != first.as_str())
        })
        .await;
    let second = plugin(&plugins, "faults").unwrap()["version"]
        .as_str()
        .unwrap()
        .to_owned();

    // The command-line client asks the running hub.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_taskhub"))
        .args(["plugin", "rollback", "faults", "--hub", &hub.base])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains(&format!("now {first}")), "{stdout}");

    let (_, plugins) = hub.get("/api/plugins").await;
    assert_eq!(
        plugin(plugins.as_array().unwrap(), "faults").unwrap()["version"],
        first.as_str()
    );
    assert_eq!(
        std::fs::read(files.plugin_path("faults")).unwrap(),
        crate::support::component("faults")
    );
    let started = hub
        .start_task("testing.faults.run", json!({"mode": "ok"}))
        .await;
    let thread = hub
        .wait_thread_end(started["threadId"].as_str().unwrap())
        .await;
    assert_eq!(thread["tasks"][0]["output"], json!({"variant": "a"}));

    // The history names who replaced whom.
    let (status, versions) = hub.get("/api/plugins/faults/versions").await;
    assert_eq!(status, 200);
    let versions = versions.as_array().unwrap();
    let record = |hash: &str| versions.iter().find(|v| v["hash"] == hash).unwrap().clone();
    assert_eq!(record(&first)["status"], "loaded");
    assert_eq!(record(&second)["status"], "replaced");
    assert_eq!(record(&second)["replacedBy"], first.as_str());
}

#[tokio::test]
async fn slow_copy_loads_once() {
    let files = HubFiles::new();
    let hub = Hub::start(&files, &[]);

    // Write the component in small pieces over about half a second, as a
    // slow copy or an editor would, then close the file.
    let bytes = crate::support::component("faults");
    let mut file = std::fs::File::create(files.plugin_path("faults")).unwrap();
    for chunk in bytes.chunks(bytes.len() / 25 + 1) {
        file.write_all(chunk).unwrap();
        file.flush().unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    drop(file);

    hub.wait_plugins(|plugins| plugin(plugins, "faults").is_some_and(|p| p["status"] == "loaded"))
        .await;
    let started = hub
        .start_task("testing.faults.run", json!({"mode": "ok"}))
        .await;
    hub.wait_thread_end(started["threadId"].as_str().unwrap())
        .await;
    let (_, plugins) = hub.get("/api/plugins").await;
    let faults = plugin(plugins.as_array().unwrap(), "faults").unwrap();
    assert!(
        faults["lastError"].is_null(),
        "a partial file was loaded: {faults}"
    );
    assert!(
        !hub.logs_contain("plugin rejected"),
        "a partial file was read"
    );
    let (_, versions) = hub.get("/api/plugins/faults/versions").await;
    assert_eq!(versions.as_array().unwrap().len(), 1, "{versions}");
}
