// Invariant's ops dashboard. Everything it shows comes from GET /admin/v1/dashboard with the
// API key the operator signs in with (kept in this tab's sessionStorage only); every change
// goes through the server's audited APIs after a confirmation. Data is written with
// textContent only: nothing the server returns is parsed as HTML.
"use strict";

const KEY = "invariant.dashboard.key";
const POLL_MS = 2000;
const PRIORITIES = ["P0", "P1", "P2", "P3", "P4", "P5"];
const $ = (id) => document.getElementById(id);
let timer = null;
let pending = null; // the action awaiting confirmation
// A refresh never replaces the page under a pressed pointer (the click would be lost).
let holdUntil = 0;
document.addEventListener("pointerdown", () => { holdUntil = Date.now() + 1500; }, true);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k.startsWith("data-")) node.setAttribute(k, v);
    else if (k === "text") node.textContent = v;
    else node[k] = v;
  }
  for (const c of children) node.append(c);
  return node;
}

async function api(path, options) {
  const headers = { "authorization": "Bearer " + (sessionStorage.getItem(KEY) || "") };
  const init = Object.assign({ headers, cache: "no-store" }, options || {});
  if (init.body !== undefined) headers["content-type"] = "application/json";
  const response = await fetch(path, init);
  const text = await response.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch (_) { body = { error: text }; }
  if (!response.ok) {
    const why = (body && (body.error || body.detail)) || response.statusText;
    const error = new Error(response.status + ": " + why);
    error.status = response.status;
    throw error;
  }
  return body;
}

function fmt(x, digits) {
  return typeof x === "number" && isFinite(x) ? x.toFixed(digits) : "–";
}

function sparkline(points, series) {
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", "0 0 100 40");
  svg.setAttribute("preserveAspectRatio", "none");
  const values = series.flatMap((s) => points.map(s.value));
  const top = Math.max(s_max(values), 1e-9);
  series.forEach((s, i) => {
    const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
    const step = points.length > 1 ? 100 / (points.length - 1) : 100;
    const coords = points.map((p, j) => (j * step).toFixed(2) + "," + (38 - (s.value(p) / top) * 36).toFixed(2));
    line.setAttribute("points", coords.join(" "));
    line.setAttribute("class", "s" + (i + 1));
    svg.append(line);
  });
  return svg;
}

function s_max(values) {
  return values.reduce((m, v) => (v > m ? v : m), 0);
}

function chart(caption, points, series) {
  return el("figure", { class: "chart", "data-chart": caption }, sparkline(points, series), el("figcaption", { text: caption }));
}

function facts(rows) {
  const dl = el("dl", { class: "facts" });
  for (const [label, field, value] of rows) {
    dl.append(el("dt", { text: label }), el("dd", { "data-field": field, text: value }));
  }
  return dl;
}

function confirmAction(title, text, options, run) {
  pending = run;
  $("confirm-title").textContent = title;
  $("confirm-text").textContent = text;
  $("confirm-decision").hidden = !options.decision;
  $("confirm-reason-label").textContent = options.decision ? "Note (recorded with the decision)" : "Reason (recorded in the audit log)";
  $("confirm-reason").value = "";
  $("confirm").hidden = false;
  $("confirm-reason").focus();
}

function governance(op, scope) {
  return (reason) => api("/admin/v1/governance", { method: "POST", body: JSON.stringify({ op, scope, reason }) });
}

function resolveItem(corridor, item, me) {
  return async (note, decision) => {
    const base = "/v1/corridors/" + encodeURIComponent(corridor) + "/review/items/" + encodeURIComponent(item.id);
    if (item.claimed_by !== me) await api(base + "/claim", { method: "POST", body: "{}" });
    await api(base + "/resolve", { method: "POST", body: JSON.stringify({ decision, note }) });
  };
}

function corridorCard(c, me, governed, stepSeconds) {
  const h = c.health;
  const g = h.governance || null;
  const card = el("article", { class: "card corridor", "data-corridor": c.corridor });
  const state = h.ready ? el("span", { class: "badge", "data-field": "ready", text: "ready" })
    : el("span", { class: "badge bad", "data-field": "ready", text: "not ready" });
  card.append(el("h2", {}, el("span", { text: c.corridor }), state));
  // The last complete step of the series (the newest one is still filling).
  const step = c.series.length > 1 ? c.series[c.series.length - 2] : null;
  const perSecond = step ? step.requests / stepSeconds : 0;
  const breakers = g ? Object.entries(g.breakers).map(([m, s]) => m + ": " + s).join(", ") : "";
  const hit = h.recent.requests ? h.recent.cache_hits / h.recent.requests : 0;
  card.append(facts([
    ["Degradation level", "level", g ? g.level + " (" + g.level_name + ")" : "governance off"],
    ["Kill switch", "killed", g ? (g.killed ? "killed: " + g.killed : "off") : "–"],
    ["Freeze", "frozen", g ? (g.frozen ? "frozen: " + g.frozen : "off") : "–"],
    ["Breakers open", "breakers", breakers || "none"],
    ["Rate limit", "rate", g && g.rate_limit ? fmt(perSecond, 1) + " of " + g.rate_limit + " req/s" : fmt(perSecond, 1) + " req/s, no limit"],
    ["Requests (1 min)", "requests", String(h.recent.requests)],
    ["p50 / p99", "latency", fmt(h.recent.p50_ms, 2) + " / " + fmt(h.recent.p99_ms, 2) + " ms"],
    ["Cache hit ratio", "hit-ratio", fmt(hit * 100, 1) + " %"],
    ["Error rate", "error-rate", fmt(h.recent.error_rate * 100, 2) + " %"],
    ["Not ready", "not-ready", h.not_ready.join("; ") || "–"],
  ]));
  card.append(el("div", { class: "charts" },
    chart("p50 / p99 ms, 5 min", c.series, [{ value: (p) => p.p50_ms }, { value: (p) => p.p99_ms }]),
    chart("cache hit ratio", c.series, [{ value: (p) => (p.requests ? p.cache_hits / p.requests : 0) }]),
    chart("requests / " + stepSeconds + " s", c.series, [{ value: (p) => p.requests }])));
  const traffic = el("table", { class: "traffic" }, el("tr", {}, el("th", { text: "Model" }), el("th", { text: "Traffic split" })));
  for (const m of c.models) {
    const split = Object.entries(m.traffic).map(([v, p]) => v + " " + fmt(p, 0) + "%").join(", ");
    traffic.append(el("tr", { "data-model": m.name }, el("td", { text: m.name }), el("td", { "data-field": "split", text: split || "none" })));
  }
  card.append(traffic);
  const review = h.review;
  if (review) {
    const head = el("tr", {}, el("th", { text: "" }));
    const depth = el("tr", {}, el("th", { text: "open" }));
    const near = el("tr", {}, el("th", { text: "near SLA" }));
    for (const p of PRIORITIES) {
      head.append(el("th", { text: p }));
      depth.append(el("td", { "data-field": "depth-" + p, text: String(review.depth[p] || 0) }));
      near.append(el("td", { "data-field": "near-" + p, text: String(review.near_breach[p] || 0) }));
    }
    card.append(el("h3", { text: "Review queue" }), el("table", { class: "depth" }, head, depth, near));
    for (const s of review.signals) {
      card.append(el("p", { class: "error", "data-field": "signal", text: s.kind + " (" + s.priority + "): " + s.suggestion }));
    }
    const list = el("ul", { class: "items" });
    for (const item of c.review_items) {
      const cls = item.breached ? "breached" : item.near_breach ? "near-breach" : "";
      const button = el("button", { type: "button", "data-action": "resolve", text: "Resolve…" });
      button.addEventListener("click", () => confirmAction(
        "Resolve " + item.id, item.priority + " " + item.subject + " (" + item.reason_codes.join(", ") + ")",
        { decision: true }, resolveItem(c.corridor, item, me)));
      list.append(el("li", { class: cls, "data-item": item.id },
        el("strong", { text: item.priority }), el("span", { class: "subject", text: item.subject }),
        el("span", { class: "muted", text: Math.round(item.seconds_left / 60) + " min left" }), button));
    }
    card.append(list);
  }
  if (c.admin && governed) {
    const actions = el("div", { class: "actions" });
    const scope = "corridor:" + c.corridor;
    const killed = g && g.killed;
    const kill = el("button", { type: "button", class: "danger", "data-action": killed ? "revive" : "kill", text: killed ? "Revive" : "Kill switch" });
    kill.addEventListener("click", () => confirmAction(
      (killed ? "Revive " : "Kill ") + c.corridor,
      killed ? "Inference in " + c.corridor + " serves again." : "Every inference in " + c.corridor + " answers 503 until revived.",
      {}, governance(killed ? "revive" : "kill", scope)));
    const frozen = g && g.frozen;
    const freeze = el("button", { type: "button", "data-action": frozen ? "unfreeze" : "freeze", text: frozen ? "Unfreeze" : "Freeze" });
    freeze.addEventListener("click", () => confirmAction(
      (frozen ? "Unfreeze " : "Freeze ") + c.corridor,
      frozen ? "Changes in " + c.corridor + " are allowed again." : "Feature writes and new review intake in " + c.corridor + " stop until unfrozen.",
      {}, governance(frozen ? "unfreeze" : "freeze", scope)));
    actions.append(kill, freeze);
    card.append(actions);
  }
  return card;
}

function renderModels(data) {
  const body = $("models").tBodies[0];
  body.replaceChildren();
  for (const m of data.models) {
    for (const v of m.versions) {
      let traffic = "";
      if (m.active === v.version) traffic = "active";
      if (m.canary && m.canary.version === v.version) traffic = "canary " + m.canary.percent + "%";
      body.append(el("tr", { "data-model": m.name, "data-version": v.version },
        el("td", { text: m.name }), el("td", { text: v.version }), el("td", { "data-field": "lifecycle", text: v.lifecycle }),
        el("td", { "data-field": "state", text: v.state + (v.error ? ": " + v.error : "") }), el("td", { text: traffic })));
    }
  }
  const pipes = $("pipelines").tBodies[0];
  pipes.replaceChildren();
  for (const p of data.pipelines) {
    const models = (p.models || []).map((m) => m.model + " " + m.version).join(", ");
    pipes.append(el("tr", { "data-pipeline": p.name, "data-version": p.version },
      el("td", { text: p.name }), el("td", { text: p.version }), el("td", { "data-field": "lifecycle", text: p.lifecycle }),
      el("td", { "data-field": "state", text: p.state + (p.error ? ": " + p.error : "") }), el("td", { text: models })));
  }
}

function render(data) {
  $("who").textContent = "signed in as " + data.caller;
  const s = data.server;
  $("server").textContent = (s.ready ? "Server ready" : "Server not ready: " + s.not_ready.join("; ")) +
    " · " + s.versions_ready + " versions verified, " + s.versions_failed + " refused";
  $("server").setAttribute("data-ready", String(s.ready));
  const cards = data.corridors.map((c) => corridorCard(c, data.caller, data.governance_enabled, data.series_step_seconds));
  $("corridors").replaceChildren(...cards);
  renderModels(data);
  $("status").textContent = "updated " + new Date().toLocaleTimeString();
  document.body.setAttribute("data-loaded", "true");
}

async function refresh() {
  try {
    const data = await api("/admin/v1/dashboard");
    if (Date.now() < holdUntil || !$("confirm").hidden) return;
    render(data);
  } catch (e) {
    if (e.status === 401 || e.status === 403) {
      signOut(e.message);
      return;
    }
    $("status").textContent = "refresh failed: " + e.message;
  }
}

function signOut(why) {
  clearInterval(timer);
  timer = null;
  sessionStorage.removeItem(KEY);
  document.body.removeAttribute("data-loaded");
  $("app").hidden = true;
  $("logout").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = why || "";
}

async function signIn(key) {
  sessionStorage.setItem(KEY, key);
  try {
    render(await api("/admin/v1/dashboard"));
  } catch (e) {
    signOut(e.message);
    return;
  }
  $("login").hidden = true;
  $("app").hidden = false;
  $("logout").hidden = false;
  timer = setInterval(refresh, POLL_MS);
}

$("login-form").addEventListener("submit", (event) => {
  event.preventDefault();
  signIn($("login-key").value.trim());
});
$("logout").addEventListener("click", () => signOut(""));
$("confirm-cancel").addEventListener("click", () => { pending = null; $("confirm").hidden = true; });
$("confirm-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const run = pending;
  pending = null;
  $("confirm").hidden = true;
  if (!run) return;
  const decision = document.querySelector("input[name=decision]:checked").value;
  try {
    await run($("confirm-reason").value, decision);
    $("action-error").textContent = "";
  } catch (e) {
    $("action-error").textContent = e.message;
  }
  await refresh();
});

if (sessionStorage.getItem(KEY) !== null) signIn(sessionStorage.getItem(KEY));
