// The console's loop: sign in, poll the admin API, render, and degrade clearly when the
// gateway cannot be reached (banner, last-known data greyed, retries with growing waits).

import { $, h, replace } from "./dom.js";
import { api, session, Unauthorized, Unreachable } from "./api.js";
import { setupActions } from "./actions.js";
import { eventRow, modelRows, routeSection, runRows, spendRows } from "./views.js";
import * as f from "./format.js";

const POLL_MS = 5000;
const SHADOW_MS = 30000;
const SPEND_MS = 30000;
const MODELS_MS = 15000;
const BACKOFF_S = [2, 4, 8, 16, 30];
const EVENTS = 200;

const state = {
  status: null,
  events: [],
  series: { samples: [], window: {}, capacity: 180, interval_seconds: 5 },
  shadow: {},            // route -> {report, pairs, at}
  spend: null,           // {report, at}: GET /v1/usage this month, by team, route and day
  models: null,          // {models, runs, at}: GET /admin/models and, with the flywheel on, GET /admin/flywheel
  lastOk: null,          // when the gateway last answered (ms)
  down: null,            // {since, failures, retryAt, reason} while unreachable
  timer: null,
  openKeys: new Set(),   // <details> the operator opened (or closed), kept across re-renders
  rendered: new Map(),   // section key -> the JSON it was rendered from
};

// --- connection state -------------------------------------------------------------------------

function setConn(kind, text) {
  const pill = $("#conn");
  pill.dataset.state = kind;
  pill.textContent = text;
}

function showLogin(message) {
  clearTimeout(state.timer);
  $("#login").hidden = false;
  $("#signout").hidden = true;
  $("#login-error").hidden = !message;
  $("#login-error").textContent = message || "";
  setConn("idle", "signed out");
  $("#login-token").focus();
}

function markDown(err) {
  const now = Date.now();
  const down = state.down || { since: now, failures: 0 };
  down.failures += 1;
  down.reason = err.message;
  const wait = BACKOFF_S[Math.min(down.failures - 1, BACKOFF_S.length - 1)];
  down.retryAt = now + wait * 1000;
  state.down = down;
  document.body.classList.add("stale");
  setConn("down", "unreachable");
  $("#banner").hidden = false;
  updateBanner();
  return wait * 1000;
}

function updateBanner() {
  const down = state.down;
  if (!down) return;
  const inS = Math.max(0, Math.ceil((down.retryAt - Date.now()) / 1000));
  const seen = state.lastOk ? `Showing what it last said at ${f.time(state.lastOk / 1000)} (greyed).` : "No data yet.";
  $("#banner-text").textContent = `since ${f.time(down.since / 1000)} (${down.reason}). ${seen} `
    + (inS > 0 ? `Retrying in ${inS} s (attempt ${down.failures + 1}).` : "Retrying…");
}

function markUp() {
  state.lastOk = Date.now();
  if (state.down) {
    state.down = null;
    document.body.classList.remove("stale");
    $("#banner").hidden = true;
  }
  setConn("live", "live");
  $("#updated").textContent = `updated ${f.time(state.lastOk / 1000)}`;
}

// --- fetching -------------------------------------------------------------------------------------

async function fetchShadow(force) {
  const routes = Object.entries(state.status?.routes || {}).filter(([, r]) => r.shadow && r.shadow.length);
  await Promise.all(routes.map(async ([name]) => {
    const known = state.shadow[name];
    if (!force && known && Date.now() - known.at < SHADOW_MS) return;
    const [report, pairs] = await Promise.all([
      api.get(`/admin/shadow/report?route=${encodeURIComponent(name)}&since=86400`),
      api.get(`/admin/console/shadow/pairs?route=${encodeURIComponent(name)}&limit=5`),
    ]);
    state.shadow[name] = { report, pairs: pairs.pairs, at: Date.now() };
  }));
}

async function fetchSpend(force) {
  if (!state.status?.usage) { state.spend = null; return; }
  if (!force && state.spend && Date.now() - state.spend.at < SPEND_MS) return;
  const to = new Date().toISOString().slice(0, 10); // usage is counted per UTC day
  const report = await api.get(`/v1/usage?from=${to.slice(0, 8)}01&to=${to}&group_by=team,route,day`);
  state.spend = { report, at: Date.now() };
}

async function fetchModels(force) {
  if (!force && state.models && Date.now() - state.models.at < MODELS_MS) return;
  const [registry, flywheel] = await Promise.all([
    api.get("/admin/models"),
    state.status?.flywheel ? api.get("/admin/flywheel") : null,
  ]);
  state.models = { models: registry.models, runs: flywheel?.runs ?? null, at: Date.now() };
}

function mergeSeries(fresh) {
  const samples = state.series.samples.concat(fresh.samples || []);
  const newest = samples.length ? samples[samples.length - 1].t : 0;
  const oldest = newest - fresh.interval_seconds * fresh.capacity;
  state.series = { ...fresh, samples: samples.filter((s) => s.t > oldest) };
}

async function refresh({ forceShadow = false } = {}) {
  const lastT = state.series.samples.length ? state.series.samples[state.series.samples.length - 1].t : 0;
  const [status, events, series] = await Promise.all([
    api.get("/admin/status"),
    api.get(`/admin/events?limit=${EVENTS}`),
    api.get(`/admin/console/series?after=${lastT}`),
  ]);
  state.status = status;
  state.events = events.events || [];
  if (series.samples?.length && lastT && series.samples[0].t < lastT) state.series.samples = []; // restarted
  mergeSeries(series);
  await fetchShadow(forceShadow).catch((err) => {
    if (err instanceof Unreachable || err instanceof Unauthorized) throw err;
    console.warn("shadow report:", err.message); // one panel's problem; the rest still renders
  });
  await fetchSpend(forceShadow).catch((err) => {
    if (err instanceof Unreachable || err instanceof Unauthorized) throw err;
    console.warn("spend:", err.message);
  });
  await fetchModels(forceShadow).catch((err) => {
    if (err instanceof Unreachable || err instanceof Unauthorized) throw err;
    console.warn("models:", err.message);
  });
  markUp();
  render();
}

async function tick() {
  clearTimeout(state.timer);
  let wait = POLL_MS;
  try {
    await refresh();
  } catch (err) {
    if (err instanceof Unauthorized) {
      session.signOut();
      showLogin(`The gateway refused the token: ${err.message}`);
      return;
    }
    if (err instanceof Unreachable) {
      wait = markDown(err);
    } else {
      wait = markDown(new Error(err.message || String(err)));
    }
  }
  if (!document.hidden) state.timer = setTimeout(tick, wait);
}

// --- rendering ------------------------------------------------------------------------------------

function renderMeta(status) {
  const store = status.state_store || {};
  const ar = status.auto_rollback;
  const sh = status.shadow;
  const bits = [`store ${store.engine || "?"}${store.degraded ? ` (DEGRADED: ${store.degraded})` : ""}`];
  if (ar) bits.push(`auto-rollback ${ar.leader ? "leader" : "follower"}`);
  if (sh) bits.push(`shadow ${sh.in_flight} in flight · ${sh.queued} queued · ${sh.dropped} dropped`);
  $("#meta").textContent = bits.join(" · ");
  $("#meta").classList.toggle("alarm", Boolean(store.degraded));
}

function render() {
  const status = state.status;
  if (!status) return;
  $("#login").hidden = true;
  $("#signout").hidden = false;
  $("#history").hidden = false;
  renderMeta(status);
  const names = Object.keys(status.routes).sort();
  const toc = $("#toc");
  toc.hidden = names.length < 2;
  replace(toc, names.map((n) => h("a", { href: `#route-${n}` }, n)));

  // Re-render a route only when what it shows changed: open menus and focus survive a quiet poll.
  const container = $("#routes");
  const keep = new Set();
  for (const name of names) {
    const inputs = JSON.stringify([status.routes[name], status.rollout?.routes?.[name],
      status.auto_rollback?.evaluations?.[name], status.auto_rollback?.schedules?.[name],
      state.series.window?.[name], state.series.samples.length && state.series.samples[state.series.samples.length - 1].t,
      state.shadow[name]?.at]);
    keep.add(`route-${name}`);
    const existing = document.getElementById(`route-${name}`);
    if (existing && state.rendered.get(name) === inputs) continue;
    const section = routeSection(name, status, state.series, state.shadow[name], state.openKeys);
    if (existing) existing.replaceWith(section); else container.append(section);
    state.rendered.set(name, inputs);
  }
  for (const child of [...container.children]) if (!keep.has(child.id)) child.remove();
  renderSpend();
  renderModels();
  renderHistory(names);
}

function renderModels() {
  const key = JSON.stringify([state.models?.at]);
  if (state.rendered.get("#models") === key) return;
  state.rendered.set("#models", key);
  $("#models").hidden = false;
  const known = state.models;
  $("#models-period").textContent = known ? `run-time registry · updated ${f.time(known.at / 1000)}` : "loading…";
  replace($("#models-rows"), known ? modelRows(known.models) : []);
  $("#flywheel").hidden = !known?.runs;
  if (known?.runs) replace($("#flywheel-rows"), runRows(known.runs));
}

function renderSpend() {
  const usage = state.status.usage;
  const key = JSON.stringify([Boolean(usage), state.spend?.at]);
  if (state.rendered.get("#spend") === key) return;
  state.rendered.set("#spend", key);
  $("#spend").hidden = false;
  const report = state.spend?.report;
  $("#spend-period").textContent = !usage ? "the usage plugin is off (plugins.usage.enabled)"
    : report ? `today ${report.to} and this month, UTC · updated ${f.time(state.spend.at / 1000)}` : "loading…";
  replace($("#spend-rows"), report ? spendRows(report) : []);
}

function renderHistory(names) {
  const routeSelect = $("#history-route");
  const chosen = routeSelect.value;
  const options = ["", ...names];
  if ([...routeSelect.options].map((o) => o.value).join() !== options.join()) {
    replace(routeSelect, options.map((n) => h("option", { value: n }, n || "all")));
    routeSelect.value = options.includes(chosen) ? chosen : "";
  }
  const kind = $("#history-kind").value;
  const shown = state.events.filter((e) => (!routeSelect.value || e.route === routeSelect.value) && (!kind || e.kind === kind));
  const key = JSON.stringify([shown.map((e) => e.id), routeSelect.value, kind]);
  if (state.rendered.get("#history") === key) return;
  state.rendered.set("#history", key);
  replace($("#history-rows"), shown.length ? shown.map((e) => eventRow(e, state.openKeys))
    : h("tr", {}, h("td", { colspan: 7, class: "muted" }, "No events yet.")));
}

// --- start ------------------------------------------------------------------------------------------

function start() {
  $("#login").addEventListener("submit", async (e) => {
    e.preventDefault();
    const token = $("#login-token").value.trim();
    if (!token) return;
    session.signIn(token, $("#login-name").value.trim());
    $("#login-token").value = "";
    $("#login-submit").disabled = true;
    setConn("idle", "connecting…");
    await tick();
    $("#login-submit").disabled = false;
  });
  $("#signout").addEventListener("click", () => {
    session.signOut();
    state.status = null;
    replace($("#routes"));
    state.rendered.clear();
    state.spend = null;
    state.models = null;
    $("#history").hidden = true;
    $("#spend").hidden = true;
    $("#models").hidden = true;
    showLogin("");
  });
  $("#banner-retry").addEventListener("click", () => tick());
  for (const id of ["#history-route", "#history-kind"]) $(id).addEventListener("change", () => renderHistory(Object.keys(state.status?.routes || {}).sort()));
  document.addEventListener("toggle", (e) => {
    const key = e.target.dataset?.key;
    if (!key) return;
    if (e.target.open) { state.openKeys.add(key); state.openKeys.delete(`closed:${key}`); }
    else { state.openKeys.delete(key); state.openKeys.add(`closed:${key}`); }
  }, true);
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && session.token && $("#login").hidden) tick();
  });
  setInterval(updateBanner, 1000);
  setupActions({
    getStatus: () => state.status,
    after: () => { state.rendered.clear(); refresh({ forceShadow: false }).catch(() => {}); },
    onAuthLost: (message) => { session.signOut(); showLogin(`The gateway refused the token: ${message}`); },
  });
  if (session.token) tick(); else showLogin("");
}

start();
