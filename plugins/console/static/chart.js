// Small line charts as inline SVG: one chart per figure, one line per variant, gaps where a
// variant had no data. Labels are HTML around the SVG so they stay crisp at any width.

import { h, svg } from "./dom.js";

const W = 300;
const H = 64;
const PAD = 3;

function path(points, x, y) {
  let d = "";
  let open = false;
  for (const [t, v] of points) {
    if (v === null || v === undefined || !Number.isFinite(v)) {
      open = false;
      continue;
    }
    d += `${open ? "L" : "M"}${x(t).toFixed(1)},${y(v).toFixed(1)}`;
    open = true;
  }
  return d;
}

function last(points) {
  for (let i = points.length - 1; i >= 0; i--) {
    const v = points[i][1];
    if (v !== null && v !== undefined && Number.isFinite(v)) return points[i];
  }
  return null;
}

/**
 * chart({title, format, series: [{name, color, points: [[t, v], ...]}], t0, t1, max, span})
 * `max` fixes the top of the scale (1 for rates); otherwise it follows the data.
 */
export function chart({ title, format, series, t0, t1, max, span, empty }) {
  const values = series.flatMap((s) => s.points.map((p) => p[1])).filter((v) => v !== null && Number.isFinite(v));
  const top = max ?? (Math.max(...values, 0) * 1.1 || 1);
  const x = (t) => ((t - t0) / Math.max(t1 - t0, 1)) * W;
  const y = (v) => H - PAD - (Math.min(v, top) / top) * (H - 2 * PAD);
  const plot = svg("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", role: "img",
                             "aria-label": title, class: "plot" });
  for (const g of [0.25, 0.5, 0.75]) {
    plot.append(svg("line", { x1: 0, x2: W, y1: y(top * g), y2: y(top * g), class: "grid" }));
  }
  plot.append(svg("line", { x1: 0, x2: W, y1: H - PAD, y2: H - PAD, class: "axis" }));
  const legend = [];
  for (const s of series) {
    const d = path(s.points, x, y);
    if (d) {
      plot.append(svg("path", { d, stroke: s.color, class: "line", "vector-effect": "non-scaling-stroke" }));
    }
    const end = last(s.points);
    if (end) {
      // a lone point draws no line: mark the latest point so it shows either way
      plot.append(svg("line", { x1: x(end[0]), x2: x(end[0]) + 0.01, y1: y(end[1]), y2: y(end[1]),
                                stroke: s.color, class: "dot", "vector-effect": "non-scaling-stroke" }));
    }
    legend.push(h("span", { class: "key" }, h("i", { class: "swatch", style: { background: s.color } }),
                  s.name, " ", h("b", {}, end ? format(end[1]) : "–")));
  }
  if (!values.length) {
    legend.push(h("span", { class: "muted" }, empty || "no data yet"));
  }
  return h("figure", { class: "chart" },
    h("figcaption", {}, h("span", { class: "chart-title" }, title),
      h("span", { class: "chart-max" }, values.length ? `max ${format(Math.max(...values))}` : "")),
    plot,
    h("div", { class: "chart-axis" }, h("span", {}, span), h("span", {}, "now")),
    h("div", { class: "chart-legend" }, legend));
}
