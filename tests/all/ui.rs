//! The browser UI in a real headless Chromium: the start menu, live thread
//! views, `user` steps and version conflicts, the operator page, and
//! archived threads.

use serde_json::json;

use crate::browser::Browser;
use crate::support::{Hub, HubFiles, TestProcessor, cli_ok};

const EXAMPLES: &[&str] = &["story", "llm-mock", "interview", "flaky"];

#[tokio::test]
async fn story_runs_from_menu() {
    let files = HubFiles::with_plugins(EXAMPLES);
    let hub = Hub::start(&files, &[]);
    let browser = Browser::start(1200, 1000).await;

    browser.open(&format!("{}/", hub.base)).await;
    browser
        .click(r#"button[data-task="examples.story.start"]"#)
        .await;
    browser
        .type_into("#start-input", r#"{"topic": "a browser"}"#)
        .await;
    browser.click("#start-submit").await;

    // The thread view follows the thread live until it is done.
    browser.find("h1 .badge.status-done").await;
    browser
        .find(r#"g.node[data-task="examples.story.structure"][data-status="done"]"#)
        .await;
    browser
        .find(r#"g.node[data-task="examples.story.summarize"][data-status="done"]"#)
        .await;
    let tasks = browser
        .client
        .find_all(fantoccini::Locator::Css("li.task"))
        .await
        .unwrap();
    assert_eq!(tasks.len(), 3);
    let url = browser.client.current_url().await.unwrap();
    assert!(url.fragment().unwrap().starts_with("/thread/"), "{url}");
    browser.wait_for_text("examples.story.structure").await;
    let path = browser.screenshot("story-thread").await;
    assert!(std::fs::metadata(&path).unwrap().len() > 10_000);
    browser.close().await;
}

#[tokio::test]
async fn user_step_is_answered_in_form() {
    let files = HubFiles::with_plugins(EXAMPLES);
    let hub = Hub::start(&files, &[]);
    let started = hub
        .start_task("examples.interview.start", json!(null))
        .await;
    let thread_id = started["threadId"].as_str().unwrap();
    hub.wait_last_task(thread_id, "waiting").await;

    let browser = Browser::start(1200, 1000).await;
    browser
        .open(&format!("{}/#/thread/{thread_id}", hub.base))
        .await;
    browser
        .wait_for_text("What should the poem be about?")
        .await;
    browser.find("#live.on").await;
    browser.type_into("#answer-form #field-0", "the moon").await;
    browser.click("#answer-form button[type=submit]").await;

    browser.find("h1 .badge.status-done").await;
    browser
        .find(r#"g.node[data-task="examples.interview.poem"][data-status="done"]"#)
        .await;
    let thread = hub.wait_thread_end(thread_id).await;
    assert_eq!(thread["tasks"][1]["output"], json!({"answer": "the moon"}));
    browser.close().await;
}

#[tokio::test]
async fn stale_answer_is_reported() {
    let files = HubFiles::with_plugins(EXAMPLES);
    let hub = Hub::start(&files, &[]);
    let started = hub
        .start_task("examples.interview.start", json!(null))
        .await;
    let thread_id = started["threadId"].as_str().unwrap();
    let ask = hub.wait_last_task(thread_id, "waiting").await;

    let browser = Browser::start(1200, 1000).await;
    browser
        .open(&format!("{}/#/thread/{thread_id}", hub.base))
        .await;
    browser.find(r#"#answer-form[data-version="1"]"#).await;
    // The page reads the thread again when its event stream opens; wait
    // for that, so no later render replaces what this test types into.
    browser.find("#live.on").await;

    // Someone else changes the task while this page shows version 1; the
    // page stops listening first, so it cannot catch up on its own.
    browser
        .client
        .execute("stream.close()", vec![])
        .await
        .unwrap();
    let path = format!("/api/tasks/{}", ask["instanceId"].as_str().unwrap());
    let (status, _) = hub
        .post(
            &path,
            &json!({"command": "update", "task": {"version": 1, "response": {"draft": "x"}}}),
        )
        .await;
    assert_eq!(status, 200);

    browser.type_into("#answer-form #field-0", "too late").await;
    browser.click("#answer-form button[type=submit]").await;
    browser
        .wait_for_text("Someone else changed this task")
        .await;
    let form = browser.find(r#"#answer-form[data-version="2"]"#).await;
    assert!(form.is_displayed().await.unwrap());
    let (_, task) = hub.get(&path).await;
    assert_eq!(
        task["status"], "waiting",
        "the stale answer must not finish the task"
    );
    browser.close().await;
}

#[tokio::test]
async fn operator_page_shows_reloads_live() {
    let files = HubFiles::with_plugins(&["story"]);
    let hub = Hub::start(&files, &[]);
    let _processor = TestProcessor::register(&hub, "gpu-1", &["remote"]).await;

    let browser = Browser::start(1200, 1000).await;
    browser.open(&format!("{}/#/operator", hub.base)).await;
    browser.find(r#"tr[data-plugin="story"]"#).await;
    browser.find(r#"tr[data-processor="gpu-1"]"#).await;

    files.install("llm-mock", "llm-mock");
    let row = browser.find(r#"tr[data-plugin="llm-mock"]"#).await;
    assert!(row.text().await.unwrap().contains("environments: llm"));
    files.write_plugin("story", b"broken");
    browser.wait_for_text("not a WebAssembly binary").await;
    browser.screenshot("operator").await;
    browser.close().await;
}

#[tokio::test]
async fn archived_thread_opens_from_list() {
    let files = HubFiles::with_plugins(EXAMPLES);
    let hub = Hub::start(&files, &[]);
    let started = hub
        .start_task("examples.flaky.start", json!({"text": "this will fail"}))
        .await;
    let thread_id = started["threadId"].as_str().unwrap();
    hub.wait_thread_end(thread_id).await;

    let browser = Browser::start(1200, 1000).await;
    browser.open(&format!("{}/#/threads", hub.base)).await;
    browser
        .click(&format!(r##"#threads a[href="#/thread/{thread_id}"]"##))
        .await;
    browser.find("h1 .badge.status-failed").await;
    browser
        .find(r#"g.node[data-task="examples.flaky.check"][data-status="failed"]"#)
        .await;
    browser
        .find(r#"g.node[data-task="examples.flaky.recover"][data-status="done"]"#)
        .await;
    browser.wait_for_text("the checker rejects any text").await;
    // Every task's input and output can be opened.
    let outputs = browser
        .client
        .find_all(fantoccini::Locator::Css("li.task details summary"))
        .await
        .unwrap();
    assert!(outputs.len() >= 6, "{} details", outputs.len());
    browser.close().await;
}

#[tokio::test]
async fn keyboard_and_narrow_screen() {
    let files = HubFiles::with_plugins(EXAMPLES);
    let hub = Hub::start(&files, &[]);
    let browser = Browser::start(390, 844).await;
    browser.open(&format!("{}/", hub.base)).await;

    // Menu entries are buttons, so Enter opens the start form.
    let button = browser
        .find(r#"button[data-task="examples.interview.start"]"#)
        .await;
    button.send_keys("\u{E007}").await.unwrap();
    let input = browser.find("#start-input").await;
    let focused = browser
        .client
        .execute("return document.activeElement.id", vec![])
        .await
        .unwrap();
    assert_eq!(focused, json!("start-input"));
    input.send_keys("\u{E007}").await.unwrap();

    // Nothing scrolls sideways on a phone-sized screen.
    let overflow = browser
        .client
        .execute(
            "return document.documentElement.scrollWidth - window.innerWidth",
            vec![],
        )
        .await
        .unwrap();
    assert!(
        overflow.as_f64().unwrap() <= 0.0,
        "the page is {overflow} px too wide"
    );
    browser.screenshot("start-narrow").await;
    browser.close().await;
}

#[tokio::test]
async fn sign_in_shows_own_menu_and_signs_out() {
    let files = HubFiles::with_plugins(&["story", "llm-mock", "teams"]);
    let password = "a long browser password";
    let profile = json!({"name": "Ada"}).to_string();
    cli_ok(
        &files,
        &[
            "user",
            "add",
            "ada",
            "--password-stdin",
            "--profile",
            &profile,
        ],
        &format!("{password}\n"),
    );
    cli_ok(&files, &["group", "add", "writers"], "");
    cli_ok(&files, &["group", "add-member", "writers", "ada"], "");
    let hub = Hub::start(&files, &[]);
    let browser = Browser::start(1200, 1000).await;

    browser.open(&format!("{}/", hub.base)).await;
    browser.wait_for_text("Sign in").await;
    browser.type_into("#login-user", "ada").await;
    browser.type_into("#login-password", "not it").await;
    browser.click("form.login button[type=submit]").await;
    browser.wait_for_text("wrong user name or password").await;
    browser.screenshot("sign-in").await;

    browser.find("#login-password").await.clear().await.unwrap();
    browser.type_into("#login-password", password).await;
    browser.click("form.login button[type=submit]").await;
    // The cookie was kept: it is HttpOnly, so only the hub's responses
    // show it.
    browser
        .click(r#"button[data-task="examples.teams.board.start"]"#)
        .await;
    browser.find("#who").await;
    browser.wait_for_text("Sign out").await;
    assert!(
        browser
            .client
            .find(fantoccini::Locator::Css(
                r#"button[data-task="examples.teams.review.start"]"#
            ))
            .await
            .is_err(),
        "ada is not an editor"
    );
    browser.click("#start-submit").await;
    browser.wait_for_text("board opened by ada").await;
    browser.screenshot("signed-in-board").await;

    browser.click("#who button").await;
    browser.wait_for_text("Sign in").await;
    browser.open(&format!("{}/#/threads", hub.base)).await;
    browser.find("form.login").await;
    browser.close().await;
}
