// How figures read: short, fixed precision, "–" when there is no data (never a misleading 0).

export const NONE = "–";

const has = (v) => v !== null && v !== undefined && Number.isFinite(v);

export function pct(v, digits = 1) {
  return has(v) ? `${(v * 100).toFixed(digits)}%` : NONE;
}

export function percent(v) {
  if (!has(v)) return NONE;
  return `${Number.isInteger(v) ? v : v.toFixed(v < 1 ? 2 : 1)}%`;
}

export function ms(v) {
  if (!has(v)) return NONE;
  if (v >= 10000) return `${(v / 1000).toFixed(1)} s`;
  if (v >= 100) return `${Math.round(v)} ms`;
  return `${v.toFixed(1)} ms`;
}

export function usd(v) {
  if (!has(v)) return NONE;
  if (v === 0) return "$0";
  const abs = Math.abs(v);
  if (abs >= 100) return `$${v.toFixed(0)}`;
  if (abs >= 1) return `$${v.toFixed(2)}`;
  if (abs >= 0.01) return `$${v.toFixed(4)}`;
  return `$${v.toPrecision(2)}`;
}

export function count(v) {
  if (!has(v)) return NONE;
  if (Math.abs(v) >= 1e6) return `${(v / 1e6).toFixed(1)}M`;
  if (Math.abs(v) >= 1e4) return `${(v / 1e3).toFixed(1)}k`;
  return Number.isInteger(v) ? String(v) : v.toFixed(2);
}

export function rate(v) {
  if (!has(v)) return NONE;
  return v >= 10 ? v.toFixed(0) : v >= 1 ? v.toFixed(1) : v.toFixed(2);
}

export function score(v) {
  return has(v) ? v.toFixed(2) : NONE;
}

/** A signed difference in points of a share: +1.2 pts, −0.4 pts. */
export function signed(v) {
  if (v === null || v === undefined) return "–";
  const points = v * 100;
  return `${points >= 0 ? "+" : "−"}${Math.abs(points).toFixed(1)} pts`;
}

export function time(ts) {
  if (!has(ts)) return NONE;
  const d = new Date(ts * 1000);
  const today = new Date().toDateString() === d.toDateString();
  const clock = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false });
  return today ? clock : `${d.toLocaleDateString([], { month: "short", day: "numeric" })} ${clock}`;
}

export function ago(ts, now = Date.now() / 1000) {
  if (!has(ts)) return NONE;
  const s = Math.max(0, Math.round(now - ts));
  if (s < 90) return `${s}s ago`;
  if (s < 5400) return `${Math.round(s / 60)}m ago`;
  if (s < 172800) return `${Math.round(s / 3600)}h ago`;
  return `${Math.round(s / 86400)}d ago`;
}

export function duration(seconds) {
  if (!has(seconds)) return NONE;
  if (seconds < 90) return `${Math.round(seconds)} s`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

/** A percents map {cand: 10} as "cand 10%", or "baseline only". */
export function percents(map) {
  const entries = Object.entries(map || {}).filter(([, v]) => v > 0);
  return entries.length ? entries.map(([k, v]) => `${k} ${percent(v)}`).join(", ") : "baseline only";
}
