// The taskhub browser UI: a start menu, live thread views with forms for
// `user` steps and a drawing of the taskflow, a list of threads, and an
// operator page. It talks only to the hub's HTTP API and its event stream
// (`/api/events`), and needs nothing from the network.
"use strict";

const view = document.getElementById("view");
const liveStatus = document.getElementById("live");
const who = document.getElementById("who");

// The event stream of the current page, closed when the page changes.
let stream = null;

// ---------------------------------------------------------------- helpers

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** Calls the API and returns the parsed JSON, or throws an ApiError. */
async function api(method, path, body) {
  const options = { method, headers: {} };
  if (body !== undefined) {
    options.headers["content-type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, options);
  } catch (err) {
    throw new ApiError(0, "network", "the hub did not answer: " + err.message);
  }
  const data = await response.json().catch(() => null);
  if (!response.ok) {
    const error = (data && data.error) || {};
    throw new ApiError(response.status, error.code || "http_" + response.status,
      error.message || response.statusText);
  }
  return data;
}

/** Creates an element with attributes and children (strings or nodes). */
function el(tag, attributes, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name === "text") node.textContent = value;
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svg(tag, attributes, ...children) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [name, value] of Object.entries(attributes || {})) {
    node.setAttribute(name, value);
  }
  for (const child of children.flat()) {
    if (child) node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function json(value) {
  return JSON.stringify(value, null, 2);
}

function when(timestamp) {
  if (!timestamp) return "";
  const date = new Date(timestamp);
  return isNaN(date) ? timestamp : date.toLocaleString();
}

function badge(status) {
  return el("span", { class: "badge status-" + status, text: status });
}

function notice(kind, text) {
  return el("p", { class: "notice " + kind, role: kind === "error" ? "alert" : "status", text });
}

/** Replaces the page's content and moves focus to its heading. */
function show(...nodes) {
  view.replaceChildren(...nodes.filter((node) => node !== null && node !== undefined && node !== false));
  const heading = view.querySelector("h1");
  if (heading) {
    heading.setAttribute("tabindex", "-1");
    heading.focus({ preventScroll: true });
  }
}

/** Subscribes to the hub's events; `onEvent(kind, data)` runs for each. */
function listen(query, onEvent) {
  if (stream) stream.close();
  stream = new EventSource("/api/events" + query);
  const kinds = ["taskChanged", "threadEnded", "pluginLoaded", "pluginRejected",
    "pluginUnloaded", "processorJoined", "processorLeft", "resync"];
  for (const kind of kinds) {
    stream.addEventListener(kind, (event) => {
      let data = null;
      try { data = JSON.parse(event.data); } catch (_) { /* keep null */ }
      onEvent(kind, data);
    });
  }
  // Whatever happened before (or while) the stream connected is read again
  // once it is open, so no change falls between the first read and the
  // first event.
  stream.onopen = () => {
    liveStatus.textContent = "live";
    liveStatus.className = "live on";
    onEvent("open", null);
  };
  stream.onerror = () => { liveStatus.textContent = "reconnecting"; liveStatus.className = "live off"; };
}

/** Returns `run` wrapped so that calls within `ms` of each other run once. */
function debounce(run, ms) {
  let timer = null;
  return () => {
    clearTimeout(timer);
    timer = setTimeout(run, ms);
  };
}

// ------------------------------------------------------------------ menu

async function startPage() {
  const menu = await api("GET", "/api/taskflows");
  const form = el("section", { id: "start-form", class: "panel", hidden: true });
  const tree = el("ul", { class: "menu" }, menu.map((node) => menuNode(node, form)));
  show(
    el("h1", { text: "Start a task" }),
    menu.length === 0
      ? notice("info", "No taskflow is loaded. Copy a plugin component into the plugins folder.")
      : tree,
    form,
  );
}

function menuNode(node, form) {
  const children = node.children.length
    ? el("ul", {}, node.children.map((child) => menuNode(child, form)))
    : null;
  const label = node.start
    ? el("button", {
        class: "start", "data-task": node.id,
        onclick: () => startForm(form, node),
      }, node.label)
    : el("span", { class: "group" }, node.label);
  return el("li", {}, label, children);
}

function startForm(form, node) {
  const input = el("textarea", {
    id: "start-input", rows: 4, spellcheck: "false",
    placeholder: '{"topic": "a lighthouse"}',
  });
  const message = el("div", { "aria-live": "polite" });
  const submit = async (event) => {
    event.preventDefault();
    let value = null;
    const text = input.value.trim();
    if (text) {
      try { value = JSON.parse(text); } catch (err) {
        message.replaceChildren(notice("error", "The input is not valid JSON: " + err.message));
        input.focus();
        return;
      }
    }
    try {
      const task = await api("POST", "/api/tasks", {
        command: "start", task: { id: node.id, input: value },
      });
      location.hash = "#/thread/" + task.threadId;
    } catch (err) {
      message.replaceChildren(notice("error", err.message));
    }
  };
  form.replaceChildren(
    el("h2", { text: node.label }),
    el("p", { class: "muted", text: node.id }),
    el("form", { onsubmit: submit },
      el("label", { for: "start-input", text: "Input (JSON, optional)" }),
      input,
      el("button", { type: "submit", class: "primary", id: "start-submit" }, "Start"),
    ),
    message,
  );
  form.hidden = false;
  input.focus();
}

// ---------------------------------------------------------------- thread

async function threadPage(threadId) {
  const render = async (note) => {
    let thread;
    try {
      thread = await api("GET", "/api/threads/" + encodeURIComponent(threadId));
    } catch (err) {
      show(el("h1", { text: "Thread" }), notice("error", err.message));
      return;
    }
    const taskflowId = thread.startTaskId.split(".").slice(0, -1).join(".");
    const graph = taskflowId
      ? await api("GET", "/api/taskflows/" + encodeURIComponent(taskflowId)).catch(() => null)
      : null;
    const current = thread.tasks[thread.tasks.length - 1];
    const typed = keepTyped();
    show(
      el("h1", {}, "Thread ", badge(thread.status)),
      el("p", { class: "muted" },
        thread.startTaskId, " · started ", when(thread.createdAt),
        thread.userId ? " by " + thread.userId : "",
        thread.mode === "group" && thread.groupId ? " · shared with group " + thread.groupId : "", " · ",
        el("code", { text: thread.threadId })),
      note || null,
      thread.error ? notice("error", thread.error) : null,
      current && current.status === "waiting" && current.environment === "user"
        ? answerForm(current, render)
        : null,
      graph ? drawGraph(graph, thread) : null,
      thread.status !== "running" && current ? result(current) : null,
      el("h2", { text: "Tasks" }),
      el("ol", { class: "tasks" }, thread.tasks.map(taskItem)),
    );
    restoreTyped(typed);
  };
  const refresh = debounce(() => render(), 100);
  listen("?threadId=" + encodeURIComponent(threadId), () => refresh());
  await render();
}

/** Shows what the thread ended with: its last task's output. */
function result(task) {
  return el("section", { class: "panel result", id: "result" },
    el("h2", { text: "Result" }),
    el("p", { class: "muted", text: task.id }),
    el("pre", { text: json(task.output) }));
}

function taskItem(task) {
  const details = (label, value) =>
    value === null || value === undefined
      ? null
      : el("details", {}, el("summary", { text: label }), el("pre", { text: json(value) }));
  return el("li", { class: "task", "data-task": task.id, "data-status": task.status },
    el("div", { class: "task-head" },
      el("strong", { text: task.id }), " ", badge(task.status),
      task.environment ? el("span", { class: "muted", text: " in " + task.environment }) : null),
    task.error ? notice("error", task.error) : null,
    details("Input", task.input),
    details("Output", task.output),
    details("Config", task.config),
    details("Request", task.request),
    details("Response", task.response),
  );
}

/** Returns what the person typed into the answer form so far, so a live
 * re-render does not throw it away. */
function keepTyped() {
  const form = document.getElementById("answer-form");
  if (!form) return null;
  const values = {};
  for (const input of form.querySelectorAll("[name]")) values[input.name] = input.value;
  const focused = document.activeElement && form.contains(document.activeElement)
    ? document.activeElement.name : null;
  return { instance: form.dataset.instance, values, focused };
}

/** Puts typed values back when the same task still waits for an answer. */
function restoreTyped(typed) {
  const form = document.getElementById("answer-form");
  if (!typed || !form || form.dataset.instance !== typed.instance) return;
  for (const input of form.querySelectorAll("[name]")) {
    if (input.name in typed.values) input.value = typed.values[input.name];
  }
  if (typed.focused) {
    const input = form.querySelector(`[name="${CSS.escape(typed.focused)}"]`);
    if (input) input.focus();
  }
}

/** Builds the form for a task that waits for a person. */
function answerForm(task, rerender) {
  const request = task.request || {};
  const fields = Array.isArray(request.fields) && request.fields.length
    ? request.fields
    : [{ name: "answer", label: "Answer", type: "textarea", required: true }];
  const inputs = fields.map((field, index) => {
    const id = "field-" + index;
    const common = { id, name: field.name, required: field.required ? true : undefined };
    let input;
    if (field.type === "textarea") input = el("textarea", { ...common, rows: 3 });
    else if (Array.isArray(field.options)) {
      input = el("select", common, field.options.map((option) => el("option", { value: option }, option)));
    } else {
      input = el("input", { ...common, type: field.type === "number" ? "number" : "text" });
    }
    return { field, input, row: el("div", { class: "field" }, el("label", { for: id, text: field.label || field.name }), input) };
  });
  const message = el("div", { "aria-live": "polite" });
  const submit = async (event) => {
    event.preventDefault();
    const response = {};
    for (const { field, input } of inputs) {
      response[field.name] = field.type === "number" && input.value !== "" ? Number(input.value) : input.value;
    }
    try {
      await api("POST", "/api/tasks/" + encodeURIComponent(task.instanceId), {
        command: "update",
        task: { version: task.version, response, state: { done: true } },
      });
      message.replaceChildren(notice("info", "Sent."));
    } catch (err) {
      if (err.status === 409) {
        await rerender(notice("error",
          "Someone else changed this task before you sent your answer. It has been reloaded: check it and answer again."));
      } else {
        message.replaceChildren(notice("error", err.message));
      }
    }
  };
  return el("section", { class: "panel answer" },
    el("h2", { text: "Your answer is needed" }),
    el("p", { class: "prompt", text: request.prompt || "This step waits for you." }),
    el("form", { id: "answer-form", onsubmit: submit, "data-version": task.version, "data-instance": task.instanceId },
      inputs.map((entry) => entry.row),
      el("button", { type: "submit", class: "primary" }, "Send")),
    message,
  );
}

// ----------------------------------------------------------------- graph

/** Draws a taskflow's tasks and edges, coloured by the thread's progress. */
function drawGraph(graph, thread) {
  const status = {};
  for (const task of thread.tasks) status[task.id] = task.status;

  // Rows follow the `next` chain from the start tasks; error targets sit in
  // a second column beside the first task that leads to them.
  const errorTargets = new Set(graph.edges.filter((e) => e.kind === "error").map((e) => e.to));
  const next = {};
  for (const edge of graph.edges) if (edge.kind === "next") next[edge.from] = edge.to;
  const place = {};
  let row = 0;
  const starts = graph.tasks.filter((t) => t.start).map((t) => t.id);
  const visit = (id) => {
    while (id && !(id in place) && !errorTargets.has(id)) {
      place[id] = { row: row++, column: 0 };
      id = next[id];
    }
  };
  starts.forEach(visit);
  graph.tasks.forEach((task) => { if (!errorTargets.has(task.id)) visit(task.id); });
  let errorRow = 0;
  for (const task of graph.tasks) {
    if (task.id in place) continue;
    const source = graph.edges.find((e) => e.to === task.id && e.from in place);
    errorRow = Math.max(errorRow, source ? place[source.from].row : row);
    place[task.id] = { row: errorRow++, column: 1 };
  }

  const width = 220, height = 48, gapX = 60, gapY = 34, pad = 12;
  const x = (p) => pad + p.column * (width + gapX);
  const y = (p) => pad + p.row * (height + gapY);
  const rows = Math.max(1, ...Object.values(place).map((p) => p.row + 1));
  const columns = Object.values(place).some((p) => p.column === 1) ? 2 : 1;
  const total = { w: pad * 2 + columns * width + (columns - 1) * gapX, h: pad * 2 + rows * height + (rows - 1) * gapY };

  const defs = svg("defs", {},
    svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" },
      svg("path", { d: "M0,0 L10,5 L0,10 z", class: "arrow" })),
    svg("marker", { id: "arrow-error", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" },
      svg("path", { d: "M0,0 L10,5 L0,10 z", class: "arrow-error" })));
  const edges = graph.edges.filter((e) => e.from in place && e.to in place).map((edge) => {
    const a = place[edge.from], b = place[edge.to];
    let d;
    if (edge.kind === "next" && a.column === b.column) {
      d = `M${x(a) + width / 2},${y(a) + height} L${x(b) + width / 2},${y(b)}`;
    } else {
      const fromX = x(a) + (b.column >= a.column ? width : 0);
      const toX = x(b) + (b.column >= a.column ? 0 : width);
      const midX = (fromX + toX) / 2;
      d = `M${fromX},${y(a) + height / 2} C${midX},${y(a) + height / 2} ${midX},${y(b) + height / 2} ${toX},${y(b) + height / 2}`;
    }
    return svg("path", {
      d, class: "edge edge-" + edge.kind,
      "marker-end": edge.kind === "error" ? "url(#arrow-error)" : "url(#arrow)",
    });
  });
  const nodes = graph.tasks.filter((t) => t.id in place).map((task) => {
    const p = place[task.id];
    const state = status[task.id] || "none";
    return svg("g", { class: "node status-" + state, "data-task": task.id, "data-status": state },
      svg("title", {}, `${task.id}: ${state}`),
      svg("rect", { x: x(p), y: y(p), width, height, rx: 8 }),
      svg("text", { x: x(p) + 10, y: y(p) + 20, class: "node-label" }, truncate(task.label, 26)),
      svg("text", { x: x(p) + 10, y: y(p) + 38, class: "node-state" },
        state === "none" ? (task.environments.join(", ") || "no environment") : state));
  });
  const summary = graph.tasks.map((t) => `${t.label}: ${status[t.id] || "not reached"}`).join("; ");
  return el("figure", { class: "graph" },
    svg("svg", { viewBox: `0 0 ${total.w} ${total.h}`, width: total.w, role: "img", "aria-label": "Taskflow " + graph.label + ". " + summary },
      defs, edges, nodes),
    el("figcaption", {}, graph.label, " — solid arrows lead to the next task, dashed ones to the error task."));
}

function truncate(text, length) {
  return text.length > length ? text.slice(0, length - 1) + "…" : text;
}

// --------------------------------------------------------------- threads

async function threadsPage(before) {
  const query = "?limit=20" + (before ? "&before=" + encodeURIComponent(before) : "");
  const page = await api("GET", "/api/threads" + query);
  const rows = page.threads.map((thread) => el("tr", {},
    el("td", {}, el("a", { href: "#/thread/" + thread.threadId }, when(thread.createdAt))),
    el("td", { text: thread.startTaskId }),
    el("td", {}, badge(thread.status)),
    el("td", { class: "number", text: thread.taskCount })));
  show(
    el("h1", { text: "Threads" }),
    page.threads.length === 0 ? notice("info", "No threads yet.") : el("div", { class: "scroll" },
      el("table", { id: "threads" },
        el("thead", {}, el("tr", {}, ["Started", "Start task", "Status", "Tasks"].map((h) => el("th", { scope: "col", text: h })))),
        el("tbody", {}, rows))),
    el("p", {},
      before ? el("a", { href: "#/threads", class: "button" }, "Newest") : null, " ",
      page.next ? el("a", { href: "#/threads/" + page.next, class: "button" }, "Older") : null),
  );
}

// -------------------------------------------------------------- operator

async function operatorPage() {
  const render = async () => {
    const [plugins, processors] = await Promise.all([
      api("GET", "/api/plugins"), api("GET", "/api/processors"),
    ]);
    show(
      el("h1", { text: "Operator" }),
      el("h2", { text: "Plugins" }),
      plugins.length === 0 ? notice("info", "No plugin files in the plugins folder.") : el("div", { class: "scroll" },
        el("table", { id: "plugins" },
          el("thead", {}, el("tr", {}, ["Name", "Status", "Version", "Exports", "Loaded", "Last error"].map((h) => el("th", { scope: "col", text: h })))),
          el("tbody", {}, plugins.map((plugin) => el("tr", { "data-plugin": plugin.name },
            el("td", {}, el("strong", { text: plugin.name })),
            el("td", {}, badge(plugin.status)),
            el("td", {}, plugin.version ? el("code", { title: plugin.version, text: plugin.version.slice(0, 12) }) : "—"),
            el("td", {}, exportsOf(plugin)),
            el("td", { text: when(plugin.loadedAt) }),
            el("td", {}, plugin.lastError ? el("span", { class: "error-text", text: plugin.lastError.message }) : "—")))))),
      el("h2", { text: "Processors" }),
      processors.length === 0 ? notice("info", "No processor is connected.") : el("div", { class: "scroll" },
        el("table", { id: "processors" },
          el("thead", {}, el("tr", {}, ["Id", "Environments", "Connected", "Last heartbeat", "Tasks"].map((h) => el("th", { scope: "col", text: h })))),
          el("tbody", {}, processors.map((p) => el("tr", { "data-processor": p.processorId },
            el("td", {}, el("strong", { text: p.processorId })),
            el("td", { text: p.environments.join(", ") }),
            el("td", { text: when(p.connectedAt) }),
            el("td", { text: when(p.lastHeartbeat) }),
            el("td", { class: "number", text: p.inFlight })))))),
    );
  };
  const refresh = debounce(() => render(), 100);
  listen("", (kind) => { if (!kind.startsWith("task") && kind !== "threadEnded") refresh(); });
  await render();
}

function exportsOf(plugin) {
  if (!plugin.exports) return "—";
  const parts = [];
  const starts = plugin.exports.taskflows.length;
  if (starts) parts.push(starts + " task definitions");
  if (plugin.exports.environments.length) parts.push("environments: " + plugin.exports.environments.join(", "));
  return parts.join("; ") || "—";
}

// ---------------------------------------------------------------- session

/** Shows who is signed in, with a way to sign out. */
async function showWho() {
  let me;
  try {
    me = await api("GET", "/api/session");
  } catch (err) {
    who.replaceChildren();
    if (err.status === 401) return false;
    throw err;
  }
  const name = (me.profile && me.profile.name) || me.userId;
  if (me.via === "dev") {
    who.replaceChildren(el("span", { title: "No users exist yet, so every request acts as this user" },
      name + " (dev mode)"));
  } else {
    who.replaceChildren(
      el("span", { title: me.groups.length ? "Groups: " + me.groups.join(", ") : "No groups" }, name),
      " ",
      me.via === "session" ? el("button", { type: "button", class: "link", onclick: logout }, "Sign out") : null);
  }
  return true;
}

async function logout() {
  await api("DELETE", "/api/session").catch(() => null);
  who.replaceChildren();
  loginPage();
}

/** Shows the sign-in form; on success it shows the requested page. */
function loginPage(message) {
  if (stream) { stream.close(); stream = null; liveStatus.textContent = ""; }
  const status = el("div");
  const user = el("input", { id: "login-user", name: "username", autocomplete: "username", required: true });
  const password = el("input", { id: "login-password", name: "password", type: "password",
    autocomplete: "current-password", required: true });
  const form = el("form", { class: "login", onsubmit: async (event) => {
    event.preventDefault();
    const button = form.querySelector("button");
    button.disabled = true;
    try {
      await api("POST", "/api/session", { userId: user.value, password: password.value });
      password.value = "";
      await showWho();
      await route();
    } catch (err) {
      status.replaceChildren(notice("error", err.message));
      password.select();
    } finally {
      button.disabled = false;
    }
  } },
  el("label", { for: "login-user" }, "User name"), user,
  el("label", { for: "login-password" }, "Password"), password,
  el("button", { type: "submit" }, "Sign in"));
  show(el("h1", { text: "Sign in" }), message ? notice("error", message) : null, form, status);
  user.focus();
}

// ---------------------------------------------------------------- router

async function route() {
  if (stream) { stream.close(); stream = null; liveStatus.textContent = ""; }
  const hash = location.hash.replace(/^#\/?/, "");
  const [page, argument] = hash.split("/");
  for (const link of document.querySelectorAll("nav a")) {
    const active = link.dataset.nav === (page === "thread" ? "threads" : page || "start");
    if (active) link.setAttribute("aria-current", "page"); else link.removeAttribute("aria-current");
  }
  try {
    if (page === "thread" && argument) await threadPage(decodeURIComponent(argument));
    else if (page === "threads") await threadsPage(argument ? decodeURIComponent(argument) : null);
    else if (page === "operator") await operatorPage();
    else await startPage();
  } catch (err) {
    if (err.status === 401) {
      const ended = who.childElementCount > 0;
      who.replaceChildren();
      loginPage(ended ? "Your session has ended; sign in again." : null);
    }
    else show(el("h1", { text: "Something went wrong" }), notice("error", err.message));
  }
}

window.addEventListener("hashchange", route);
showWho().catch(() => false).finally(route);
