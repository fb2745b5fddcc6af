//! Users, groups and tokens: each user sees the start tasks their groups
//! allow and their own threads, groups share collaboration threads, and
//! credentials are checked, limited and never logged.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::{Hub, HubFiles, TestProcessor, cli, cli_ok, wait_until};

/// A user of the test hub and their API token.
struct User {
    token: String,
}

/// Adds `name` with a `name` profile field, puts them in `groups`, and
/// creates an API token.
fn add_user(files: &HubFiles, name: &'static str, groups: &[&str]) -> User {
    let profile = json!({"name": capitalised(name), "language": "en"}).to_string();
    cli_ok(files, &["user", "add", name, "--profile", &profile], "");
    for group in groups {
        cli_ok(files, &["group", "add", group], "");
        cli_ok(files, &["group", "add-member", group, name], "");
    }
    let token = cli_ok(files, &["token", "create", name, "--label", "tests"], "");
    User {
        token: token.trim().to_owned(),
    }
}

fn capitalised(name: &str) -> String {
    let mut chars = name.chars();
    chars
        .next()
        .map(|first| first.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

/// Starts a hub with `story`, `llm-mock` and `teams`, and users ada and
/// cara (writers) and bob (editors).
fn team_hub(extra: &[&str]) -> (HubFiles, Hub, [User; 3]) {
    let files = HubFiles::with_plugins(&["story", "llm-mock", "teams"]);
    let users = [
        add_user(&files, "ada", &["writers"]),
        add_user(&files, "bob", &["editors"]),
        add_user(&files, "cara", &["writers", "outsiders"]),
    ];
    let hub = Hub::start(&files, extra);
    (files, hub, users)
}

async fn get(hub: &Hub, user: &User, path: &str) -> (StatusCode, Value) {
    let (status, _, body) = hub.call(Method::GET, path, Some(&user.token), None).await;
    (status, body)
}

async fn post(hub: &Hub, user: &User, path: &str, body: Value) -> (StatusCode, Value) {
    let (status, _, body) = hub
        .call(Method::POST, path, Some(&user.token), Some(&body))
        .await;
    (status, body)
}

async fn start(hub: &Hub, user: &User, id: &str, input: Value) -> (StatusCode, Value) {
    let body = json!({"command": "start", "task": {"id": id, "input": input}});
    post(hub, user, "/api/tasks", body).await
}

/// Waits until the thread's last task waits for a person, as read by
/// `user`, and returns that task.
async fn waiting_step(hub: &Hub, user: &User, thread_id: &str) -> Value {
    let path = format!("/api/threads/{thread_id}");
    wait_until("a step waiting for a person", || async {
        let (status, thread) = get(hub, user, &path).await;
        let last = thread["tasks"].as_array()?.last()?.clone();
        (status == StatusCode::OK && last["status"] == "waiting").then_some(last)
    })
    .await
}

/// Collects the ids of every node of a `/api/taskflows` menu.
fn menu_ids(menu: &Value, ids: &mut Vec<String>) {
    for node in menu.as_array().into_iter().flatten() {
        ids.push(node["id"].as_str().unwrap().to_owned());
        menu_ids(&node["children"], ids);
    }
}

async fn menu(hub: &Hub, user: &User) -> Vec<String> {
    let (status, menu) = get(hub, user, "/api/taskflows").await;
    assert_eq!(status, StatusCode::OK, "{menu}");
    let mut ids = Vec::new();
    menu_ids(&menu, &mut ids);
    ids
}

#[tokio::test]
async fn users_see_only_their_menu_and_threads() {
    let (_files, hub, [ada, bob, _]) = team_hub(&[]);

    let ada_menu = menu(&hub, &ada).await;
    let bob_menu = menu(&hub, &bob).await;
    for ids in [&ada_menu, &bob_menu] {
        assert!(ids.contains(&"examples.story.start".to_owned()), "{ids:?}");
        assert!(
            ids.contains(&"examples.teams.scratch.start".to_owned()),
            "{ids:?}"
        );
        // The parent nodes needed to reach a start task come along.
        assert!(ids.contains(&"examples.teams".to_owned()), "{ids:?}");
    }
    assert!(ada_menu.contains(&"examples.teams.board.start".to_owned()));
    assert!(
        !ada_menu
            .iter()
            .any(|id| id.starts_with("examples.teams.review")),
        "{ada_menu:?}"
    );
    assert!(bob_menu.contains(&"examples.teams.review.start".to_owned()));
    assert!(
        !bob_menu
            .iter()
            .any(|id| id.starts_with("examples.teams.board")),
        "{bob_menu:?}"
    );

    // Starting what your groups do not allow looks like a missing task,
    // and so does its drawing.
    let (status, error) = start(&hub, &bob, "examples.teams.board.start", json!(null)).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{error}");
    let (status, _) = get(&hub, &bob, "/api/taskflows/examples.teams.board").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, graph) = get(&hub, &ada, "/api/taskflows/examples.teams.board").await;
    assert_eq!(status, StatusCode::OK, "{graph}");

    let (status, started) = start(
        &hub,
        &ada,
        "examples.story.start",
        json!({"topic": "a fox"}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{started}");
    assert_eq!(started["userId"], "ada");
    let thread_id = started["threadId"].as_str().unwrap();
    let instance_id = started["instanceId"].as_str().unwrap();

    // Bob gets 404 for every id of Ada's, the same as for ids that do not
    // exist, and each attempt is logged.
    let task_path = format!("/api/tasks/{instance_id}");
    let thread_path = format!("/api/threads/{thread_id}");
    let (status, error) = get(&hub, &bob, &task_path).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{error}");
    let (status, _) = get(&hub, &bob, &thread_path).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let events = format!("/api/events?threadId={thread_id}");
    let (status, _) = tokio::time::timeout(Duration::from_secs(30), get(&hub, &bob, &events))
        .await
        .expect("the event stream of another user's thread was opened");
    assert_eq!(status, StatusCode::NOT_FOUND);
    let update = json!({"command": "update", "task": {"version": 1, "state": {"done": true}}});
    let (status, _) = post(&hub, &bob, &task_path, update).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    hub.wait_for_log(&["access rejected", "user_id=bob", thread_id])
        .await;

    let (status, thread) = get(&hub, &ada, &thread_path).await;
    assert_eq!(status, StatusCode::OK, "{thread}");
    let (_, bobs) = get(&hub, &bob, "/api/threads").await;
    assert!(!bobs.to_string().contains(thread_id), "{bobs}");
    let (_, adas) = get(&hub, &ada, "/api/threads").await;
    assert!(adas.to_string().contains(thread_id), "{adas}");
}

#[tokio::test]
async fn user_mode_rejoins_and_fills_profile_fields() {
    let (_files, hub, [_, bob, _]) = team_hub(&[]);

    let input = json!({"title": "the draft"});
    let (status, first) = start(&hub, &bob, "examples.teams.review.start", input.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    let thread_id = first["threadId"].as_str().unwrap();
    let verdict = waiting_step(&hub, &bob, thread_id).await;
    assert_eq!(
        verdict["request"]["prompt"],
        "Bob, what is your verdict on the draft?"
    );

    // Starting it again returns to the open thread instead of a new one.
    let (status, again) = start(&hub, &bob, "examples.teams.review.start", input).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["threadId"], thread_id);
    let (_, threads) = get(&hub, &bob, "/api/threads").await;
    let count = threads["threads"].as_array().map_or(0, Vec::len);
    assert_eq!(count, 1, "{threads}");
}

#[tokio::test]
async fn group_members_share_one_thread_live() {
    let (_files, hub, [ada, bob, cara]) = team_hub(&[]);

    // A group the task does not allow cannot be chosen, even one of yours.
    let body = json!({"command": "start", "task": {
        "id": "examples.teams.board.start", "input": null, "groupId": "outsiders"
    }});
    let (status, error) = post(&hub, &cara, "/api/tasks", body).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{error}");
    let message = error["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("only for the groups writers, not `outsiders`"),
        "{message}"
    );

    let (status, opened) = start(&hub, &ada, "examples.teams.board.start", json!(null)).await;
    assert_eq!(status, StatusCode::CREATED, "{opened}");
    let thread_id = opened["threadId"].as_str().unwrap().to_owned();
    assert_eq!(opened["groupId"], "writers");
    let notes = waiting_step(&hub, &ada, &thread_id).await;
    assert_eq!(
        notes["request"]["prompt"],
        "Notes for the team (board opened by ada). Each update replaces the notes, so send the whole list; finish when done."
    );

    // Cara joins the same board, and watches it live.
    let (status, joined) = start(&hub, &cara, "examples.teams.board.start", json!(null)).await;
    assert_eq!(status, StatusCode::OK, "{joined}");
    assert_eq!(joined["threadId"], thread_id);
    let mut live = reqwest::Client::new()
        .get(format!("{}/api/events?threadId={thread_id}", hub.base))
        .bearer_auth(&cara.token)
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), StatusCode::OK);

    // Both write; each update builds on the other's version.
    let path = format!("/api/tasks/{}", notes["instanceId"].as_str().unwrap());
    let from_ada = json!({"command": "update", "task": {"version": 1, "response": {"notes": ["ada: outline"]}}});
    let (status, updated) = post(&hub, &ada, &path, from_ada).await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    let mut seen = String::new();
    while !seen.contains("ada: outline") {
        let chunk = tokio::time::timeout(Duration::from_secs(30), live.chunk())
            .await
            .expect("no live event within 30 s")
            .unwrap()
            .expect("the event stream ended");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }

    let from_cara = json!({"command": "update", "task": {
        "version": updated["version"],
        "response": {"notes": ["ada: outline", "cara: ending"]},
        "state": {"done": true}
    }});
    let (status, done) = post(&hub, &cara, &path, from_cara).await;
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(done["output"]["notes"][1], "cara: ending");

    // Bob is not a writer: the board stays hidden from him.
    let (status, _) = get(&hub, &bob, &format!("/api/threads/{thread_id}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = get(&hub, &bob, &path).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn wrong_expired_and_revoked_tokens_are_refused() {
    let files = HubFiles::with_plugins(&["story", "llm-mock"]);
    let ada = add_user(&files, "ada", &[]);
    let short = cli_ok(
        &files,
        &["token", "create", "ada", "--expires-in-days", "0.00002"],
        "",
    );
    let short = short.trim().to_owned();
    let guessed = cli_ok(&files, &["token", "create", "ada"], "")
        .trim()
        .to_owned();
    let other = cli_ok(&files, &["token", "create", "ada"], "")
        .trim()
        .to_owned();
    let hub = Hub::start(&files, &[]);

    let (status, headers, error) = hub.call(Method::GET, "/api/threads", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{error}");
    assert_eq!(headers["www-authenticate"], "Bearer");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Authorization: Bearer"),
        "{error}"
    );

    let id = ada.token.split('_').nth(1).unwrap();
    let wrong_secret = format!("thk_{id}_{}", "0".repeat(64));
    for token in ["nonsense", "thk_00_11", wrong_secret.as_str()] {
        let (status, _, _) = hub
            .call(Method::GET, "/api/threads", Some(token), None)
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{token}");
    }

    let (status, _, me) = hub
        .call(Method::GET, "/api/session", Some(&ada.token), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_eq!(me["userId"], "ada");
    assert_eq!(me["via"], "token");

    // The short token lives about two seconds.
    wait_until("the short token to expire", || async {
        let (status, _, _) = hub
            .call(Method::GET, "/api/threads", Some(&short), None)
            .await;
        (status == StatusCode::UNAUTHORIZED).then_some(())
    })
    .await;

    let revoked = cli_ok(&files, &["token", "revoke", &ada.token], "");
    assert!(
        revoked.contains(&format!("token {id} of ada revoked")),
        "{revoked}"
    );
    wait_until("the revoked token to be refused", || async {
        let (status, _, _) = hub
            .call(Method::GET, "/api/threads", Some(&ada.token), None)
            .await;
        (status == StatusCode::UNAUTHORIZED).then_some(())
    })
    .await;
    let listed = cli_ok(&files, &["token", "list", "ada"], "");
    assert!(
        listed.contains(&format!("{id}\tada\tapi\trevoked\t")) && listed.contains("\tnever\ttests"),
        "{listed}"
    );

    // Guessing a token's secret is slowed down: after ten wrong secrets a
    // minute, that id is rejected before any hashing, except for the real
    // token, which passed before. Other tokens are not affected.
    let (status, _, _) = hub
        .call(Method::GET, "/api/threads", Some(&guessed), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let guessed_id = guessed.split('_').nth(1).unwrap();
    let wrong = format!("thk_{guessed_id}_{}", "1".repeat(64));
    let mut refused = None;
    for _ in 0..12 {
        let (status, headers, error) = hub
            .call(Method::GET, "/api/threads", Some(&wrong), None)
            .await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            refused = Some((headers, error));
            break;
        }
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{error}");
    }
    let (headers, error) = refused.expect("twelve wrong secrets were never refused");
    assert!(headers.contains_key("retry-after"));
    assert_eq!(error["error"]["code"], "too_many_failures");
    for token in [&guessed, &other] {
        let (status, _, _) = hub
            .call(Method::GET, "/api/threads", Some(token), None)
            .await;
        assert_eq!(status, StatusCode::OK);
    }
    hub.wait_for_log(&["wrong secret for a token", guessed_id])
        .await;

    assert!(
        !hub.logs_contain(&ada.token[ada.token.len() - 20..]),
        "a token secret reached the log"
    );
    assert!(
        !hub.logs_contain(&short[short.len() - 20..]),
        "a token secret reached the log"
    );
}

#[tokio::test]
async fn login_and_logout_with_cookie() {
    let files = HubFiles::with_plugins(&["story", "llm-mock"]);
    let password = "correct horse battery staple";
    cli_ok(
        &files,
        &["user", "add", "ada", "--password-stdin"],
        &format!("{password}\n"),
    );
    let hub = Hub::start(&files, &[]);
    let client = reqwest::Client::new();
    let session = format!("{}/api/session", hub.base);

    let wrong = client
        .post(&session)
        .json(&json!({"userId": "ada", "password": "guess"}))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let unknown = client
        .post(&session)
        .json(&json!({"userId": "nobody", "password": "guess"}))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), StatusCode::UNAUTHORIZED);

    let login = client
        .post(&session)
        .json(&json!({"userId": "ada", "password": password}))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), StatusCode::OK);
    let set_cookie = login.headers()["set-cookie"].to_str().unwrap().to_owned();
    for attribute in ["HttpOnly", "SameSite=Strict", "Secure", "Path=/"] {
        assert!(set_cookie.contains(attribute), "{set_cookie}");
    }
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    let me: Value = login.json().await.unwrap();
    assert_eq!(me["userId"], "ada");
    assert_eq!(me["via"], "session");

    let with_cookie = |method: Method, path: &str| {
        client
            .request(method, format!("{}{path}", hub.base))
            .header("cookie", &cookie)
    };
    let threads = with_cookie(Method::GET, "/api/threads")
        .send()
        .await
        .unwrap();
    assert_eq!(threads.status(), StatusCode::OK);
    let started = with_cookie(Method::POST, "/api/tasks")
        .json(&json!({"command": "start", "task": {"id": "examples.story.start", "input": {"topic": "a fox"}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(started.status(), StatusCode::CREATED);

    let logout = with_cookie(Method::DELETE, "/api/session")
        .send()
        .await
        .unwrap();
    assert_eq!(logout.status(), StatusCode::NO_CONTENT);
    assert!(
        logout.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    let after = with_cookie(Method::GET, "/api/threads")
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), StatusCode::UNAUTHORIZED);

    // Guessing is slowed down: ten attempts a minute per name and address.
    let mut refused = None;
    for _ in 0..12 {
        let guess = client
            .post(&session)
            .json(&json!({"userId": "ada", "password": "guess"}))
            .send()
            .await
            .unwrap();
        if guess.status() == StatusCode::TOO_MANY_REQUESTS {
            refused = Some(guess);
            break;
        }
        assert_eq!(guess.status(), StatusCode::UNAUTHORIZED);
    }
    let refused = refused.expect("twelve wrong passwords were never refused");
    assert!(refused.headers().contains_key("retry-after"));
    let error: Value = refused.json().await.unwrap();
    assert_eq!(error["error"]["code"], "too_many_failures");

    hub.wait_for_log(&["login failed", "user_id=\"nobody\""])
        .await;
    assert!(!hub.logs_contain(password), "the password reached the log");
    assert!(!hub.logs_contain("guess"), "a password reached the log");
    let secret = cookie.rsplit('_').next().unwrap();
    assert!(
        !hub.logs_contain(secret),
        "the session secret reached the log"
    );
}

#[tokio::test]
async fn rate_limit_answers_429_then_recovers() {
    let files = HubFiles::with_plugins(&["story", "llm-mock"]);
    let ada = add_user(&files, "ada", &[]);
    let hub = Hub::start(
        &files,
        &["--rate-limit-per-sec", "1", "--rate-limit-burst", "3"],
    );
    let body = json!({"command": "start", "task": {"id": "examples.story.start", "input": {"topic": "a fox"}}});

    let mut limited = None;
    for _ in 0..10 {
        let (status, headers, error) = hub
            .call(Method::POST, "/api/tasks", Some(&ada.token), Some(&body))
            .await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            limited = Some((headers, error));
            break;
        }
        assert_eq!(status, StatusCode::CREATED, "{error}");
    }
    let (headers, error) = limited.expect("ten starts at once were never limited");
    assert_eq!(error["error"]["code"], "rate_limited");
    let retry_after: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    hub.wait_for_log(&["rate limit reached", "user_id=ada"])
        .await;

    // Reads are not limited, and the budget refills.
    let (status, _, _) = hub
        .call(Method::GET, "/api/threads", Some(&ada.token), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    wait_until("the rate budget to refill", || async {
        let (status, _, _) = hub
            .call(Method::POST, "/api/tasks", Some(&ada.token), Some(&body))
            .await;
        (status == StatusCode::CREATED).then_some(())
    })
    .await;
}

#[tokio::test]
async fn processors_need_a_processor_token_once_users_exist() {
    let files = HubFiles::with_plugins(&[]);
    let ada = add_user(&files, "ada", &[]);
    let processor_token = cli_ok(&files, &["token", "create", "ada", "--processor"], "");
    let hub = Hub::start(&files, &[]);

    for (token, name) in [(Value::Null, "none"), (json!(ada.token), "an API token")] {
        let mut processor = TestProcessor::connect(&hub).await;
        processor
            .send(json!({"command": "register", "processorId": "p1", "environments": ["echo"], "token": token}))
            .await;
        let reply = processor.recv().await;
        assert_eq!(reply["code"], "unauthorized", "{name}: {reply}");
    }

    let mut processor = TestProcessor::connect(&hub).await;
    processor
        .send(json!({"command": "register", "processorId": "p1", "environments": ["echo"], "token": processor_token.trim()}))
        .await;
    let reply = processor.recv().await;
    assert_eq!(reply["command"], "registered", "{reply}");
    // A processor token is not an API token.
    let (status, _, _) = hub
        .call(
            Method::GET,
            "/api/threads",
            Some(processor_token.trim()),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn user_processor_serves_only_its_owner() {
    let files = HubFiles::with_plugins(&["remote"]);
    let ada = add_user(&files, "ada", &[]);
    let bob = add_user(&files, "bob", &[]);
    let token = cli_ok(&files, &["token", "create", "ada", "--processor"], "");
    let token = token.trim();
    let hub = Hub::start(&files, &["--heartbeat-ms", "200"]);

    let mut processor = TestProcessor::connect(&hub).await;
    processor
        .send(json!({"command": "register", "processorId": "adas", "environments": ["echo"], "token": token}))
        .await;
    let reply = processor.recv().await;
    assert_eq!(reply["command"], "registered", "{reply}");

    // Bob's task waits for a processor that may serve him; Ada's goes to
    // hers, and is the first thing it is sent.
    let (status, bobs) = start(
        &hub,
        &bob,
        "examples.remote.start",
        json!({"text": "bob's secret"}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{bobs}");
    let (status, adas) = start(
        &hub,
        &ada,
        "examples.remote.start",
        json!({"text": "ada's words"}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{adas}");
    let task = processor.dispatched().await;
    assert_eq!(task["userId"], "ada", "{task}");
    assert_eq!(task["threadId"], adas["threadId"]);

    let (_, listed) = get(&hub, &ada, "/api/processors").await;
    assert_eq!(listed[0]["processorId"], "adas", "{listed}");
    assert_eq!(listed[0]["owner"], "ada");
    let (_, listed) = get(&hub, &bob, "/api/processors").await;
    assert_eq!(listed, json!([]));

    // Revoking the token drops the connection at its next heartbeat.
    cli_ok(&files, &["token", "revoke", token], "");
    let (error, close) = dropped(&mut processor).await;
    assert_eq!(error["code"], "unauthorized", "{error}");
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("revoked"), "{message}");
    assert_eq!(close, Some(1008));
    hub.wait_for_log(&["processor dropped", "registration no longer valid"])
        .await;
}

/// Reads until the hub closes the connection; returns the last error
/// message before the close and the close code.
async fn dropped(processor: &mut TestProcessor) -> (Value, Option<u16>) {
    let mut error = Value::Null;
    loop {
        match processor.next_text().await {
            Ok(message) if message["command"] == "error" => error = message,
            Ok(message) => assert_ne!(message["command"], "dispatch", "{message}"),
            Err(close) => return (error, close.map(|(code, _)| code)),
        }
    }
}

#[tokio::test]
async fn first_user_ends_dev_mode_while_running() {
    let files = HubFiles::with_plugins(&["story", "llm-mock"]);
    let hub = Hub::start(&files, &["--heartbeat-ms", "200"]);
    let (status, _, me) = hub.call(Method::GET, "/api/session", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(me["via"], "dev");
    assert_eq!(me["userId"], "local");
    // Opened in dev mode, without credentials: both end with it.
    let mut live = reqwest::Client::new()
        .get(format!("{}/api/events", hub.base))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), StatusCode::OK);
    let mut processor = TestProcessor::register(&hub, "anonymous", &["echo"]).await;

    let ada = add_user(&files, "ada", &[]);
    let (error, close) = dropped(&mut processor).await;
    assert_eq!(error["code"], "unauthorized", "{error}");
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("needs a token"), "{message}");
    assert_eq!(close, Some(1008));

    wait_until("dev mode to end", || async {
        let (status, _, _) = hub.call(Method::GET, "/api/threads", None, None).await;
        (status == StatusCode::UNAUTHORIZED).then_some(())
    })
    .await;
    hub.wait_for_log(&["dev mode ended"]).await;
    let (status, _, _) = hub
        .call(Method::GET, "/api/threads", Some(&ada.token), None)
        .await;
    assert_eq!(status, StatusCode::OK);

    let (status, started) = start(
        &hub,
        &ada,
        "examples.story.start",
        json!({"topic": "a fox"}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{started}");
    let mut seen = String::new();
    loop {
        let chunk = tokio::time::timeout(Duration::from_secs(30), live.chunk())
            .await
            .expect("the dev-mode stream neither ended nor sent anything within 30 s")
            .unwrap();
        match chunk {
            Some(chunk) => seen.push_str(&String::from_utf8_lossy(&chunk)),
            None => break,
        }
    }
    assert!(
        !seen.contains("a fox"),
        "the dev-mode stream saw ada's input: {seen}"
    );
}

#[tokio::test]
async fn other_addresses_need_a_user() {
    let files = HubFiles::with_plugins(&[]);
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_taskhub"))
        .args(["serve", "--listen", "0.0.0.0:0", "--plugins"])
        .arg(files.plugins())
        .arg("--db")
        .arg(files.db())
        .arg("--cache-dir")
        .arg(files.cache())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("not a loopback address, and no user exists"),
        "{stderr}"
    );
    assert!(stderr.contains("taskhub user add"), "{stderr}");

    add_user(&files, "ada", &[]);
    let hub = Hub::start(&files, &["--listen", "0.0.0.0:0"]);
    hub.wait_for_log(&["hub listening"]).await;
}

#[test]
fn cli_explains_bad_input() {
    let files = HubFiles::new();
    cli_ok(&files, &["user", "add", "ada"], "");
    let cases: &[(&[&str], &str)] = &[
        (&["user", "add", "ada"], "user ada already exists"),
        (&["user", "add", "a b"], "user name \"a b\" is not valid"),
        (
            &["user", "add", "eve", "--profile", "[1]"],
            "the profile must be a JSON object",
        ),
        (
            &["user", "add", "eve", "--profile", "{"],
            "--profile is not JSON",
        ),
        (
            &["group", "add-member", "writers", "ada"],
            "no group writers",
        ),
        (&["token", "create", "nobody"], "no user nobody"),
        (
            &["token", "create", "ada", "--expires-in-days", "-1"],
            "between one second",
        ),
        (
            &["token", "create", "ada", "--expires-in-days", "1e300"],
            "between one second",
        ),
        (&["user", "add", "local"], "reserved for dev mode"),
        (&["user", "profile", "nobody", "{}"], "no user nobody"),
        (&["token", "revoke", "feedface"], "no token feedface"),
    ];
    for (args, expected) in cases {
        let (ok, _, stderr) = cli(&files, args, "");
        assert!(!ok, "{args:?} succeeded");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    let (ok, _, stderr) = cli(
        &files,
        &["user", "add", "eve", "--password-stdin"],
        "short\n",
    );
    assert!(!ok);
    assert!(
        stderr.contains("the password has 5 characters; use at least 8"),
        "{stderr}"
    );

    cli_ok(&files, &["group", "add", "writers"], "");
    let again = cli_ok(&files, &["group", "add", "writers"], "");
    assert!(again.contains("exists already"), "{again}");
    cli_ok(&files, &["group", "add-member", "writers", "ada"], "");
    let users = cli_ok(&files, &["user", "list"], "");
    assert_eq!(users, "ada\twriters\n");

    let replaced = cli_ok(
        &files,
        &["user", "profile", "ada", r#"{"name": "Ada"}"#],
        "",
    );
    assert!(replaced.contains("profile of ada replaced"), "{replaced}");

    // `thk_<id>` as the README shows it revokes too.
    let token = cli_ok(&files, &["token", "create", "ada"], "");
    let id = token.trim().split('_').nth(1).unwrap();
    cli_ok(&files, &["token", "revoke", &format!("thk_{id}")], "");
    let listed = cli_ok(&files, &["token", "list"], "");
    assert!(
        listed.contains(&format!("{id}\tada\tapi\trevoked\t")),
        "{listed}"
    );

    let elsewhere = HubFiles::new();
    let (ok, _, stderr) = cli(&elsewhere, &["token", "list"], "");
    assert!(!ok);
    assert!(stderr.contains("no database at"), "{stderr}");
    assert!(!elsewhere.db().exists());
}
