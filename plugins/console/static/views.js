// What the page shows, as functions of the data: one section per route (variants, charts,
// schedule, shadow comparison), the spend per team and route, the models registered at run time
// with the flywheel's runs, and the event history. Each returns fresh nodes; app.js decides
// when to put them on the page. Buttons carry data-action; actions.js handles them.

import { h } from "./dom.js";
import * as f from "./format.js";
import { chart } from "./chart.js";

const BASELINE_COLOR = "#3b6fd8";
const PALETTE = ["#e07b00", "#12a06b", "#c2307a", "#7b52d3", "#0d9bb5", "#9a6a1d"];
const OTHER_COLOR = "#8a8f98";

export const METRICS = [
  { key: "rps", title: "Requests / s", format: f.rate },
  { key: "error_rate", title: "Error rate", format: (v) => f.pct(v) },
  { key: "p50_ms", title: "p50 latency", format: f.ms },
  { key: "p95_ms", title: "p95 latency", format: f.ms },
  { key: "cost_per_request", title: "Cost / 1k requests", format: (v) => f.usd(v === null ? null : v * 1000) },
  { key: "judge_win_rate", title: "Judge win rate", format: f.score, max: 1 },
];

/** A figure's 95% interval under it, small: "0.2% to 3.1%". */
function band(interval, fmt) {
  return interval ? h("small", { class: "muted band" }, `${fmt(interval[0])} to ${fmt(interval[1])}`) : "";
}

/** The variants of a route in display order, each with its role and colour. */
export function variantsOf(name, status, series) {
  const cfg = status.routes[name];
  const list = [{ name: cfg.baseline, role: "baseline", color: BASELINE_COLOR }];
  Object.keys(cfg.candidates || {}).forEach((c, i) => {
    list.push({ name: c, role: "candidate", color: PALETTE[i % PALETTE.length] });
  });
  const seen = new Set(list.map((v) => v.name));
  const observed = new Set(Object.keys((series.window || {})[name] || {}));
  for (const sample of series.samples || []) {
    for (const v of Object.keys(sample.routes?.[name]?.variants || {})) observed.add(v);
  }
  for (const v of [...observed].sort()) {
    if (!seen.has(v)) list.push({ name: v, role: v === "semantic_cache" ? "cache" : "other", color: OTHER_COLOR });
  }
  return list;
}

const per1k = (v) => (v === null || v === undefined ? null : v * 1000);

function badge(text, kind, title) {
  return h("span", { class: `badge ${kind || ""}`, title }, text);
}

function shareBar(percent, color, killed) {
  return h("div", { class: "share" },
    h("span", { class: "bar" }, h("i", { style: { width: `${Math.max(0, Math.min(100, percent))}%`, background: color } })),
    h("span", { class: "num" }, killed && percent === 0 ? "0%" : f.percent(percent)));
}

function button(label, action, data, kind) {
  return h("button", { type: "button", class: kind || "", dataset: { action, ...data } }, label);
}

function verdict(evaluation) {
  if (!evaluation) return h("span", { class: "muted" }, "–");
  const kind = { Successful: "ok", Failed: "bad", Inconclusive: "warn" }[evaluation.outcome] || "";
  const checks = Object.entries(evaluation.checks || {})
    .map(([rule, c]) => `${rule}: ${c.failed === true ? "FAILED" : c.failed === false ? "ok" : "no data"} — ${c.detail}`)
    .join("\n");
  const failing = evaluation.failing ? ` ×${evaluation.failing}` : "";
  return badge(`${evaluation.outcome}${failing}`, kind, checks);
}

function variantsTable(name, status, series, variants) {
  const cfg = status.routes[name];
  const rollout = status.rollout?.routes?.[name] || { percents: {}, rolled_back: {}, canary: {} };
  const evaluations = status.auto_rollback?.evaluations?.[name] || {};
  const schedule = status.auto_rollback?.schedules?.[name];
  const figures = (series.window || {})[name] || {};
  const candidatesShare = Object.values(rollout.percents || {}).reduce((a, b) => a + b, 0);
  const windowLabel = series.window_seconds?.[name] ? `last ${f.duration(series.window_seconds[name])}` : "window";
  const rows = variants.map((v) => {
    let share = null;
    const state = [];
    if (v.role === "baseline") {
      share = rollout.killed ? 100 : Math.max(0, 100 - candidatesShare);
    } else if (v.role === "candidate") {
      share = rollout.killed ? 0 : rollout.percents?.[v.name] || 0;
      const back = rollout.rolled_back?.[v.name];
      if (back) {
        state.push(badge("rolled back", "bad", `by ${back.actor || "?"} at ${f.time(back.ts)}`),
          h("span", { class: "reason", title: back.reason || "" }, back.reason || ""));
      }
      if (rollout.canary?.[v.name]) state.push(badge(`canary ${rollout.canary[v.name]}`, "info"));
      if (schedule && schedule.candidate === v.name && ["running", "paused"].includes(schedule.status)) {
        state.push(badge(`schedule ${schedule.step + 1}/${schedule.steps.length}`, "info"));
      }
    } else {
      state.push(h("span", { class: "muted" }, v.role === "cache" ? "cache hits" : "fallback / other"));
    }
    const x = figures[v.name] || {};
    const actions = v.role === "candidate" ? [
      button("Set %", "percent", { route: name, candidate: v.name }),
      button("Promote", "promote", { route: name, candidate: v.name }),
      button("Roll back", "rollback", { route: name, candidate: v.name }, "danger"),
    ] : [];
    return h("tr", { dataset: { variant: v.name, role: v.role } },
      h("th", { scope: "row", class: "variant" }, h("i", { class: "swatch", style: { background: v.color } }),
        h("span", { class: "vname" }, v.name), h("span", { class: "role" }, v.role)),
      h("td", { class: "share-cell" }, share === null ? h("span", { class: "muted" }, "–") : shareBar(share, v.color, rollout.killed)),
      h("td", { class: `state ${state.length ? "" : "empty"}` }, state),
      h("td", { class: "num", "data-label": "requests" }, f.count(x.requests)),
      h("td", { class: `num ${x.error_rate > 0.05 ? "alarm" : ""}`, "data-label": "errors" }, f.pct(x.error_rate, 2),
        band(x.error_rate_interval, (v) => f.pct(v, 1))),
      h("td", { class: "num", "data-label": "p50" }, f.ms(x.p50_ms)),
      h("td", { class: "num", "data-label": "p95" }, f.ms(x.p95_ms)),
      h("td", { class: "num", "data-label": "$ / 1k req" }, f.usd(per1k(x.cost_per_request))),
      h("td", { class: "num", "data-label": "judge" }, x.judge_n ? `${f.score(x.judge_win_rate)} (${x.judge_n})` : "–",
        x.judge_n ? band(x.judge_interval, f.score) : ""),
      h("td", { class: `verdict ${v.role === "candidate" ? "" : "empty"}`, "data-label": "verdict" },
        v.role === "candidate" ? verdict(evaluations[v.name]) : ""),
      h("td", { class: `actions ${actions.length ? "" : "empty"}` }, actions));
  });
  return h("div", { class: "scroll" }, h("table", { class: "variants" },
    h("thead", {}, h("tr", {}, h("th", {}, "variant"), h("th", {}, "share"), h("th", {}, "state"),
      h("th", { class: "num", title: windowLabel }, "requests"), h("th", { class: "num" }, "errors"),
      h("th", { class: "num" }, "p50"), h("th", { class: "num" }, "p95"), h("th", { class: "num", title: "cost per 1,000 requests" }, "$ / 1k req"),
      h("th", { class: "num" }, "judge"), h("th", {}, "verdict"), h("th", {}, ""))),
    h("tbody", {}, rows),
    h("caption", {}, `Figures over the ${windowLabel}; share is the percent of users routed.`)));
}

function charts(name, series, variants, cacheOn) {
  const samples = series.samples || [];
  const step = series.interval_seconds || 5;
  const t1 = samples.length ? samples[samples.length - 1].t : Date.now() / 1000;
  // From the route's first point with traffic (the ring's length at most), never narrower than 30 points.
  const first = samples.find((s) => s.routes?.[name]);
  const oldest = first ? first.t - step : t1;
  const t0 = Math.min(Math.max(oldest, t1 - step * (series.capacity || 180)), t1 - step * 30);
  const span = `−${f.duration(t1 - t0)}`;
  const out = METRICS.map((m) => chart({
    title: m.title, format: m.format, t0, t1, max: m.max, span,
    series: variants.map((v) => ({
      name: v.name, color: v.color,
      points: samples.map((s) => {
        const fig = s.routes?.[name]?.variants?.[v.name];
        return [s.t, fig ? fig[m.key] : (m.key === "rps" ? 0 : null)];
      }),
    })).filter((s) => s.points.some((p) => p[1] !== null && p[1] !== 0) || variants.length <= 4),
  }));
  out.push(chart({
    title: "Cache hit rate", format: (v) => f.pct(v), t0, t1, max: 1, span,
    empty: cacheOn ? null : "semantic cache off",
    series: cacheOn ? [{ name: "route", color: OTHER_COLOR,
                         points: samples.map((s) => [s.t, s.routes?.[name]?.cache_hit_rate ?? null]) }] : [],
  }));
  return h("div", { class: "charts" }, out);
}

/** The semantic cache's measured precision on this route (re-checked hits), and whether it stopped. */
function cachePrecision(name, status) {
  const recheck = status.semantic_cache?.recheck;
  const measured = recheck?.routes?.[name];
  if (!measured) return "";
  const stopped = recheck.stopped?.[name];
  return h("span", { class: stopped ? "alarm" : "", title: stopped || "" },
    ` · cache precision ${f.pct(measured.precision, 1)} (${f.count(measured.checks)} re-checked, 95% `
    + `${f.pct(measured.interval[0], 1)} to ${f.pct(measured.interval[1], 1)})${stopped ? ": semantic hits stopped" : ""}`);
}

function scheduleBlock(name, status) {
  const schedule = status.auto_rollback?.schedules?.[name];
  const cfg = status.routes[name];
  const start = Object.keys(cfg.candidates || {}).length
    ? button("Start schedule…", "schedule-start", { route: name }) : null;
  if (!schedule) {
    return h("div", { class: "schedule" }, h("span", { class: "label" }, "Schedule"),
      h("span", { class: "muted" }, "none"), start);
  }
  const active = ["running", "paused"].includes(schedule.status);
  const kind = { running: "info", paused: "warn", aborted: "bad", done: "ok" }[schedule.status] || "";
  const steps = schedule.steps.map((p, i) => h("span", {
    class: `step ${i < schedule.step ? "past" : i === schedule.step ? "now" : ""}`,
  }, f.percent(p)));
  const began = schedule.step_started ? `step began ${f.ago(schedule.step_started)}` : "";
  const adaptive = schedule.mode === "adaptive";
  const decision = adaptive ? status.auto_rollback?.decisions?.[name] || schedule.last_analysis : null;
  const analysis = adaptive
    ? (decision ? `evidence: ${decision.action}, primary ${decision.primary.interval[0] === null ? "−∞"
      : f.signed(decision.primary.interval[0])} to ${decision.primary.interval[1] === null ? "+∞"
      : f.signed(decision.primary.interval[1])} (${decision.samples.primary.map(f.count).join(" / ")} calls)` : "")
    : schedule.last_analysis?.outcome ? `last analysis: ${schedule.last_analysis.outcome}` : "";
  return h("div", { class: "schedule" },
    h("span", { class: "label" }, "Schedule"),
    badge(schedule.status, kind), h("b", {}, schedule.candidate),
    h("span", { class: "steps" }, steps),
    h("span", { class: "muted", title: decision?.reason || "" },
      [`${adaptive ? "adaptive, at most" : "hold"} ${f.duration(schedule.hold_seconds)}`, began, analysis]
        .filter(Boolean).join(" · ")),
    schedule.reason ? h("span", { class: "muted", title: schedule.reason }, `“${schedule.reason}”`) : null,
    h("span", { class: "grow" }),
    schedule.status === "running" ? button("Pause", "schedule-pause", { route: name }) : null,
    schedule.status === "paused" ? button("Resume", "schedule-resume", { route: name }) : null,
    active ? button("Abort", "schedule-abort", { route: name }, "danger") : start);
}

function shadowBlock(name, status, shadow, openKeys) {
  const cfg = status.routes[name];
  if (!cfg.shadow || !cfg.shadow.length) return null;
  const report = shadow?.report;
  const pairs = shadow?.pairs || [];
  const parts = [h("h3", {}, "Shadow comparison ", h("span", { class: "muted" },
    report ? `last ${f.duration(report.since_s)}, sample rate ${f.pct(report.sample_rate, 0)}` : "loading…"))];
  for (const [backend, s] of Object.entries(report?.shadows || {})) {
    const row = (label, p, q, fmt, diff) => h("tr", {}, h("th", { scope: "row" }, label),
      h("td", { class: "num" }, fmt(p)), h("td", { class: "num" }, fmt(q)),
      h("td", { class: "num muted" }, diff === undefined ? "" : diff));
    const delta = (a, b, fmt) => (a === null || a === undefined || b === null || b === undefined) ? "–"
      : `${b - a >= 0 ? "+" : "−"}${fmt(Math.abs(b - a))}`;
    const pp = s.primary, sh = s.shadow;
    // the shadow minus the primary on the requests both answered, with its 95% interval and pair count
    const paired = (label, d, fmt) => d && d.interval ? h("tr", {}, h("th", { scope: "row" }, label),
      h("td", { class: "num", colspan: 2 }, `${fmt(d.interval[0])} to ${fmt(d.interval[1])} (95%)`),
      h("td", { class: "num muted" }, `${d.mean >= 0 ? "+" : "−"}${fmt(Math.abs(d.mean))}, ${f.count(d.n)} pairs`)) : "";
    parts.push(h("div", { class: "shadow-summary" },
      h("div", { class: "shadow-head" }, h("b", {}, backend), ` ${f.count(s.count)} comparisons`,
        s.mirrored && s.mirrored.requests
          ? h("span", { class: s.mirrored.dropped ? "alarm" : "" },
            ` · mirrored ${f.pct(s.mirrored.share, 1)} of requests (${f.count(s.mirrored.dropped)} dropped)`) : "",
        s.judge ? ` · judge mean ${f.score(s.judge.mean)} (${s.judge.count}${s.judge.interval
          ? `, 95% ${f.score(s.judge.interval[0])} to ${f.score(s.judge.interval[1])}` : ""})` : "",
        s.projected_monthly_saving_usd !== null && s.projected_monthly_saving_usd !== undefined
          ? h("span", { class: s.projected_monthly_saving_usd >= 0 ? "good" : "alarm" },
            ` · projected saving ${f.usd(s.projected_monthly_saving_usd)}/month`) : ""),
      h("div", { class: "scroll" }, h("table", { class: "compare" },
        h("thead", {}, h("tr", {}, h("th", {}, ""), h("th", { class: "num" }, "primary"),
          h("th", { class: "num" }, "shadow"), h("th", { class: "num" }, "difference"))),
        h("tbody", {},
          row("error rate", pp.error_rate, sh.error_rate, (v) => f.pct(v, 1), delta(pp.error_rate, sh.error_rate, (v) => f.pct(v, 1))),
          row("error rate, 95%", pp.errors, sh.errors,
            (e) => e ? `${f.pct(e.interval[0], 1)} to ${f.pct(e.interval[1], 1)}` : "–", `${f.count(pp.errors?.n || 0)} requests`),
          row("p50", pp.latency_ms?.p50, sh.latency_ms?.p50, f.ms, delta(pp.latency_ms?.p50, sh.latency_ms?.p50, f.ms)),
          row("p95", pp.latency_ms?.p95, sh.latency_ms?.p95, f.ms, delta(pp.latency_ms?.p95, sh.latency_ms?.p95, f.ms)),
          row("completion tokens", pp.completion_tokens_mean, sh.completion_tokens_mean, f.count,
            delta(pp.completion_tokens_mean, sh.completion_tokens_mean, f.count)),
          row("cost / 1k requests", per1k(pp.cost_per_request_usd), per1k(sh.cost_per_request_usd), f.usd,
            delta(per1k(pp.cost_per_request_usd), per1k(sh.cost_per_request_usd), f.usd)),
          paired("latency, same requests", s.paired_difference?.latency_ms, f.ms),
          paired("cost / 1k, same requests", s.paired_difference?.cost_usd, (v) => f.usd(v * 1000)))))));
  }
  if (pairs.length) {
    parts.push(h("h4", {}, `Latest paired answers (${pairs.length})`));
    pairs.forEach((p, i) => {
      const key = `pair:${name}:${p.id}`;
      const failed = p.shadow_error || p.shadow_status >= 400;
      const details = h("details", { class: "pair", dataset: { key }, open: openKeys.has(key) || (i === 0 && !openKeys.has(`closed:${key}`)) },
        h("summary", {}, h("span", { class: "muted" }, f.time(p.ts)), " ",
          h("b", {}, `${p.primary_backend} ↔ ${p.shadow_backend}`), " ",
          failed ? badge(`shadow ${p.shadow_status}`, "bad") : badge("both answered", "ok"),
          p.judge_score !== null && p.judge_score !== undefined ? badge(`judge ${f.score(p.judge_score)}`, "info") : "",
          h("span", { class: "muted" }, ` ${f.ms(p.primary_latency_ms)} vs ${f.ms(p.shadow_latency_ms)}`)),
        h("div", { class: "sides" },
          h("div", { class: "side" }, h("div", { class: "side-head" }, `primary · ${p.primary_backend} · ${p.primary_status}`),
            h("pre", {}, p.primary_answer ?? "(answer not stored)", p.primary_chars > (p.primary_answer || "").length ? " …" : "")),
          h("div", { class: "side" }, h("div", { class: "side-head" }, `shadow · ${p.shadow_backend} · ${p.shadow_status}`),
            h("pre", { class: failed ? "failed" : "" }, p.shadow_error || p.shadow_answer || "(answer not stored)",
              p.shadow_chars > (p.shadow_answer || "").length ? " …" : ""))));
      parts.push(details);
    });
  } else if (report) {
    parts.push(h("p", { class: "muted" }, "No paired answers recorded yet."));
  }
  return h("div", { class: "shadow" }, parts);
}

export function routeSection(name, status, series, shadow, openKeys) {
  const cfg = status.routes[name];
  const rollout = status.rollout?.routes?.[name] || {};
  const variants = variantsOf(name, status, series);
  const hasCandidates = Object.keys(cfg.candidates || {}).length > 0;
  const cacheRate = (series.samples || []).slice(-12).reduce((acc, s) => {
    const r = s.routes?.[name];
    if (r?.requests) { acc.n += r.requests; acc.hits += (r.cache_hit_rate || 0) * r.requests; }
    return acc;
  }, { n: 0, hits: 0 });
  return h("section", { class: `route panel ${rollout.killed ? "killed" : ""}`, id: `route-${name}`, dataset: { route: name } },
    h("div", { class: "panel-head" },
      h("h2", {}, name),
      rollout.killed ? badge("KILL SWITCH ON: all traffic to baseline", "bad") : null,
      h("span", { class: "muted" }, `baseline ${cfg.baseline}`,
        cfg.shadow?.length ? ` · shadow ${cfg.shadow.join(", ")}` : "",
        cfg.fallback?.length ? ` · fallback ${cfg.fallback.join(", ")}` : "",
        cacheRate.n && status.semantic_cache ? ` · cache hits ${f.pct(cacheRate.hits / cacheRate.n, 0)}` : "",
        cachePrecision(name, status)),
      h("span", { class: "grow" }),
      button(rollout.killed ? "Kill switch off" : "Kill switch", "kill", { route: name, on: rollout.killed ? "false" : "true" },
        rollout.killed ? "" : "danger"),
      hasCandidates ? button("Roll back all", "rollback", { route: name }, "danger") : null),
    variantsTable(name, status, series, variants),
    scheduleBlock(name, status),
    charts(name, series, variants, Boolean(status.semantic_cache)),
    shadowBlock(name, status, shadow, openKeys));
}

function changeText(event) {
  const show = (v) => (v === null || v === undefined) ? "–"
    : (typeof v === "object" && !Array.isArray(v) && Object.values(v).every((x) => typeof x === "number"))
      ? f.percents(v) : typeof v === "object" ? Object.entries(v).map(([k, x]) => `${k} ${x}`).join(", ") : String(v);
  if (event.before === undefined && event.after === undefined) return "";
  return `${show(event.before)} → ${show(event.after)}`;
}

function figuresList(figures) {
  if (!figures || typeof figures !== "object") return null;
  const items = [];
  for (const side of ["candidate", "baseline"]) {
    const x = figures[side];
    if (x) {
      items.push(h("li", {}, h("b", {}, side), ` ${x.requests ?? "?"} calls, errors ${f.pct(x.error_rate, 2)}, `,
        `p95 ${f.ms(x.p95_ms)}, ${f.usd(x.cost_per_request)}/req`,
        x.judge_win_rate !== undefined ? `, judge ${f.score(x.judge_win_rate)}` : ""));
    }
  }
  for (const [rule, c] of Object.entries(figures.checks || {})) {
    items.push(h("li", { class: c.failed ? "alarm" : "" }, h("b", {}, rule), ` ${c.failed ? "FAILED" : c.failed === false ? "ok" : "no data"}: ${c.detail}`));
  }
  return items.length ? h("ul", { class: "figures" }, items) : null;
}

export function eventRow(event, openKeys) {
  const key = `event:${event.id}`;
  const detail = figuresList(event.figures);
  const extra = [];
  if (event.rule) extra.push(badge(`rule ${event.rule}`, "bad"));
  if (event.candidate) extra.push(h("span", { class: "muted" }, ` candidate ${event.candidate}`));
  if (event.steps) extra.push(h("span", { class: "muted" }, ` steps ${event.steps.map(f.percent).join("→")}`));
  return h("tr", { class: `kind-${event.kind}`, dataset: { eventId: event.id, kind: event.kind } },
    h("td", { class: "nowrap when", title: new Date(event.ts * 1000).toISOString() }, f.time(event.ts)),
    h("td", { class: "num muted id" }, `#${event.id}`),
    h("td", { class: "route-name" }, event.route || "–"),
    h("td", { class: "kind-cell" }, badge(event.kind, `kind ${event.kind}`)),
    h("td", { class: "actor" }, event.actor || "–"),
    h("td", { class: "change" }, changeText(event)),
    h("td", { class: "why" }, event.reason || "", extra,
      detail ? h("details", { dataset: { key }, open: openKeys.has(key) }, h("summary", {}, "figures that fired it"), detail) : null));
}

/** Spend per team and route, today and this month (UTC), from GET /v1/usage grouped by team, route and day. */
export function spendRows(report) {
  const sums = new Map();
  const total = { today: 0, todayTokens: 0, month: 0, monthTokens: 0 };
  for (const r of report.rows || []) {
    const key = JSON.stringify([r.team, r.route]);
    const s = sums.get(key) || { team: r.team, route: r.route, today: 0, todayTokens: 0, month: 0, monthTokens: 0 };
    const tokens = r.prompt_tokens + r.completion_tokens;
    s.month += r.cost_usd; s.monthTokens += tokens;
    if (r.day === report.to) { s.today += r.cost_usd; s.todayTokens += tokens; }
    sums.set(key, s);
  }
  const rows = [...sums.values()].sort((a, b) => b.month - a.month || String(a.team).localeCompare(String(b.team)));
  if (!rows.length) return [h("tr", {}, h("td", { colspan: 6, class: "muted" }, "No spend recorded this month."))];
  for (const s of rows) for (const k of Object.keys(total)) total[k] += s[k];
  const line = (s, attrs, team, route) => h("tr", attrs,
    h("td", { class: "team" }, team), h("td", { class: "route-name" }, route),
    h("td", { class: "num", "data-label": "today" }, f.usd(s.today)),
    h("td", { class: "num", "data-label": "tokens today" }, f.count(s.todayTokens)),
    h("td", { class: "num", "data-label": "this month" }, f.usd(s.month)),
    h("td", { class: "num", "data-label": "tokens this month" }, f.count(s.monthTokens)));
  return [
    ...rows.map((s) => line(s, { dataset: { team: s.team || "", route: s.route } }, s.team || h("span", { class: "muted" }, "no team"), s.route)),
    line(total, { class: "total" }, h("b", {}, "total"), ""),
  ];
}

const LIFECYCLE_KIND = { serving: "ok", evaluated: "ok", canary: "warn", shadow: "warn", training: "",
  rejected: "bad", rolled_back: "bad", retired: "" };

function gateCell(gate) {
  if (!gate) return h("span", { class: "muted" }, f.NONE);
  const ci = gate.ci95 || {};
  const kind = gate.verdict === "pass" ? "ok" : gate.verdict === "fail" ? "bad" : "warn";
  return [badge(gate.verdict, kind, `against ${gate.against || "?"}`), " ",
    `${f.score(gate.win_rate)} `, h("small", { class: "muted band" }, `${f.score(ci.low)} to ${f.score(ci.high)}`),
    h("small", { class: "muted" }, ` · ${f.count(gate.judged)} of ${f.count(gate.cases)} judged`)];
}

/** The run-time registry (GET /admin/models): where each model is, where it came from, how it was judged. */
export function modelRows(models) {
  const entries = Object.entries(models || {}).sort(([, a], [, b]) => (b.registered_at || 0) - (a.registered_at || 0));
  if (!entries.length) return [h("tr", {}, h("td", { colspan: 8, class: "muted" }, "No models registered at run time."))];
  return entries.map(([name, r]) => {
    const d = r.details || {};
    const lineage = d.lineage || {};
    const dataset = lineage.dataset || {};
    const counts = dataset.counts || {};
    const traffic = r.candidate?.length ? `candidate of ${r.candidate.join(", ")}`
      : r.shadow?.length ? `shadow of ${r.shadow.join(", ")}` : "no traffic";
    const lifecycle = d.lifecycle || "registered";
    const shadow = d.evaluation?.shadow?.judge;
    const last = (d.lifecycle_history || []).slice(-1)[0];
    return h("tr", { dataset: { model: name, lifecycle } },
      h("td", { class: "model-name" }, name, r.serving ? "" : h("small", { class: "muted" }, " (not serving)")),
      h("td", {}, badge(lifecycle, LIFECYCLE_KIND[lifecycle] || "")),
      h("td", {}, traffic),
      h("td", { class: "mono upstream", title: r.backend?.model }, r.backend?.model || f.NONE),
      h("td", { class: "lineage" }, lineage.run
        ? [`run ${lineage.run} (${lineage.trigger || "?"})`, h("br", {}),
          h("small", { class: "muted" }, `${dataset.format || "?"}: train ${f.count(counts.train)}, test ${f.count(counts.test)}`
            + (d.job ? ` · job ${d.job}` : "") + (lineage.cost_usd !== undefined ? ` · ${f.usd(lineage.cost_usd)}` : ""))]
        : h("span", { class: "muted" }, f.NONE)),
      h("td", { class: "gate" }, gateCell(d.evaluation?.gate)),
      h("td", { class: "num" }, shadow ? [f.score(shadow.mean), h("small", { class: "muted" }, ` over ${f.count(shadow.count)}`)]
        : f.NONE),
      h("td", { class: "why" }, last ? [h("small", { class: "muted" }, `${f.ago(last.ts)} `), last.note || last.lifecycle] : f.NONE));
  });
}

/** The flywheel's runs (GET /admin/flywheel), newest first: each step's note, so a stopped run says why. */
export function runRows(runs) {
  const list = [...(runs || [])].sort((a, b) => b.created - a.created);
  if (!list.length) return [h("tr", {}, h("td", { colspan: 7, class: "muted" }, "No flywheel run yet."))];
  return list.map((run) => {
    const kind = run.state === "promoted" ? "ok" : run.state === "stopped" ? "bad" : "warn";
    return h("tr", { dataset: { run: run.id, state: run.state } },
      h("td", { class: "mono" }, run.id),
      h("td", { class: "route-name" }, run.route),
      h("td", {}, badge(run.state, kind), run.stop_reason ? h("div", { class: "muted" }, run.stop_reason) : ""),
      h("td", {}, run.trigger || f.NONE),
      h("td", { class: "mono" }, run.model || f.NONE),
      h("td", {}, f.time(run.created)),
      h("td", { class: "why" }, h("ol", { class: "run-steps" }, (run.history || []).map((step) =>
        h("li", {}, h("b", {}, step.state), ` ${f.time(step.ts)}`, step.note ? h("small", { class: "muted" }, ` ${step.note}`) : "")))));
  });
}
