//! `taskhub plugin check`.

use std::process::Command;

use crate::support::COMPONENTS;

fn check(file: &std::path::Path) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_taskhub"))
        .args(["plugin", "check"])
        .arg(file)
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn check_prints_exports_of_valid_plugin() {
    let (ok, stdout, stderr) = check(&std::path::Path::new(COMPONENTS).join("flaky.wasm"));
    assert!(ok, "{stderr}");
    assert!(stdout.contains("plugin:       flaky"), "{stdout}");
    assert!(
        stdout.contains("taskhub:plugin/environment@0.1.0"),
        "{stdout}"
    );
    assert!(stdout.contains("taskhub:plugin/taskflow@0.1.0"), "{stdout}");
    assert!(stdout.contains("environments: checker"), "{stdout}");
    assert!(
        stdout.contains("examples.flaky.start (Check a text) start"),
        "{stdout}"
    );
}

#[test]
fn check_shows_groups_and_thread_modes() {
    let (ok, stdout, stderr) = check(&std::path::Path::new(COMPONENTS).join("teams.wasm"));
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains(r#"examples.teams.board (Team board) groups ["writers"]"#),
        "{stdout}"
    );
    assert!(
        stdout.contains(r#"examples.teams.board.start (Open the writers' board) start; environments []; next examples.teams.board.notes; threadMode "group""#),
        "{stdout}"
    );
}

#[test]
fn check_rejects_invalid_file() {
    let folder = tempfile::tempdir().unwrap();
    let file = folder.path().join("broken.wasm");
    std::fs::write(&file, b"\0asm\x0d\x00\x01\x00garbage").unwrap();
    let (ok, _, stderr) = check(&file);
    assert!(!ok);
    assert!(stderr.contains("broken.wasm cannot be loaded"), "{stderr}");
    assert!(stderr.contains("failed to compile"), "{stderr}");
}

#[test]
fn check_shows_grants_and_warns() {
    let folder = tempfile::tempdir().unwrap();
    let file = folder.path().join("llm-openai.wasm");
    std::fs::copy(
        std::path::Path::new(COMPONENTS).join("llm-openai.wasm"),
        &file,
    )
    .unwrap();

    let (ok, stdout, stderr) = check(&file);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("wasi:http/outgoing-handler"), "{stdout}");
    assert!(stdout.contains("manifest:     none"), "{stdout}");
    assert!(
        stdout
            .contains("warning: the component imports wasi:http, but its manifest allows no host"),
        "{stdout}"
    );

    std::fs::write(
        folder.path().join("llm-openai.toml"),
        "[http]\nallow = [\"api.example.com\"]\n[secrets]\nLLM_API_KEY = \"TASKHUB_UNSET_VARIABLE\"\n",
    )
    .unwrap();
    let (ok, stdout, _) = check(&file);
    assert!(ok);
    assert!(stdout.contains("http allow:   api.example.com"), "{stdout}");
    assert!(stdout.contains("secrets:      LLM_API_KEY"), "{stdout}");
    assert!(!stdout.contains("allows no host"), "{stdout}");
    assert!(
        stdout.contains(
            "warning: secret LLM_API_KEY names a hub environment variable that is not set"
        ),
        "{stdout}"
    );

    std::fs::write(folder.path().join("llm-openai.toml"), "[http]\nallow = 3\n").unwrap();
    let (ok, _, stderr) = check(&file);
    assert!(!ok);
    assert!(stderr.contains("invalid manifest"), "{stderr}");
}
