// Small SVG charts built with DOM calls only (no innerHTML, so data can never become markup).
// Each chart is drawn at its container's width in CSS pixels, so text keeps its size on a phone;
// the caller redraws on resize.

const SVG_NS = "http://www.w3.org/2000/svg";

// Okabe-Ito colours (distinguishable with colour-blindness), fixed per backend across every chart.
const NAMED_COLOURS = {
  "onnx-torch": "#0072B2", "onnx-tf": "#E69F00", "torch": "#D55E00", "savedmodel": "#009E73",
  "onnx-int8": "#CC79A7", "torch-compile": "#56B4E9", "bare-starlette": "#777777",
};
const SPARE_COLOURS = ["#F0E442", "#000000", "#999933", "#882255"];

/** The colour of a series name: fixed for known backends, stable for others. */
export function colourOf(name) {
  if (NAMED_COLOURS[name]) return NAMED_COLOURS[name];
  let hash = 0;
  for (const ch of String(name)) hash = (hash * 31 + ch.charCodeAt(0)) >>> 0;
  return SPARE_COLOURS[hash % SPARE_COLOURS.length];
}

/** An SVG element with attributes and optional text. */
export function svg(name, attrs = {}, text = null) {
  const node = document.createElementNS(SVG_NS, name);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
  if (text !== null) node.textContent = text;
  return node;
}

/** An HTML element with a class and optional text. */
export function html(name, className = "", text = null) {
  const node = document.createElement(name);
  if (className) node.className = className;
  if (text !== null) node.textContent = text;
  return node;
}

/** 1234 -> "1.2k", 152000 -> "152k", 0.5 -> "0.5". */
export function si(value) {
  const abs = Math.abs(value);
  if (Number.isInteger(value) && abs < 1e4) return String(value);
  if (abs >= 1e6) return `${+(value / 1e6).toPrecision(3)}M`;
  if (abs >= 1e3) return `${+(value / 1e3).toPrecision(3)}k`;
  return `${+value.toPrecision(3)}`;
}

function logTicks(lo, hi) {
  const ticks = [];
  for (let p = Math.floor(Math.log10(lo)); p <= Math.ceil(Math.log10(hi)); p++) {
    for (const m of [1, 2, 5]) {
      const t = m * 10 ** p;
      if (t >= lo * 0.999 && t <= hi * 1.001) ticks.push(t);
    }
  }
  // Few decades: 1-2-5 ticks; many: powers of ten only.
  return ticks.length > 8 ? ticks.filter((t) => Math.log10(t) % 1 === 0) : ticks;
}

function linearTicks(lo, hi, count = 5) {
  const span = hi - lo || 1;
  const raw = span / count;
  const step = [1, 2, 5, 10].map((m) => m * 10 ** Math.floor(Math.log10(raw))).find((s) => s >= raw);
  const ticks = [];
  for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) ticks.push(+t.toPrecision(12));
  return ticks;
}

function scale(axis, lo, hi, from, to) {
  if (axis.log) {
    const a = Math.log10(lo), b = Math.log10(hi);
    return (v) => from + ((Math.log10(v) - a) / (b - a || 1)) * (to - from);
  }
  return (v) => from + ((v - lo) / (hi - lo || 1)) * (to - from);
}

function domain(values, axis) {
  let lo = Math.min(...values), hi = Math.max(...values);
  if (axis.min !== undefined) lo = axis.min;
  if (axis.log) return [lo / 1.25, hi * 1.25];
  if (axis.min === undefined) lo = Math.min(0, lo);
  return [lo, hi + (hi - lo) * 0.08];
}

function legend(names, dashed = new Set()) {
  const list = html("ul", "legend");
  for (const name of names) {
    const item = html("li");
    const swatch = svg("svg", { width: 18, height: 10, "aria-hidden": "true" });
    swatch.append(svg("line", { x1: 1, y1: 5, x2: 17, y2: 5, stroke: colourOf(name), "stroke-width": 3,
      "stroke-dasharray": dashed.has(name) ? "4 3" : "none" }));
    item.append(swatch, document.createTextNode(` ${name}`));
    list.append(item);
  }
  return list;
}

/**
 * A line chart: one line per series, points with tooltips, optional log axes and horizontal reference lines.
 * @param {{width:number, height?:number, title:string, series:{name:string, points:number[][], dashed?:boolean}[],
 *          x:{label:string, log?:boolean, ticks?:number[]}, y:{label:string, log?:boolean, min?:number},
 *          unit?:string, xName?:string, references?:{y:number, label:string}[]}} spec
 * @returns {HTMLElement}
 */
export function lineChart(spec) {
  const width = Math.max(260, spec.width), height = spec.height || Math.round(Math.min(340, width * 0.62));
  const m = { left: 52, right: 14, top: 10, bottom: 42 };
  const xs = spec.series.flatMap((s) => s.points.map((p) => p[0]));
  const ys = [...spec.series.flatMap((s) => s.points.map((p) => p[1])), ...(spec.references || []).map((r) => r.y)];
  const [x0, x1] = domain(xs, spec.x), [y0, y1] = domain(ys, spec.y);
  const sx = scale(spec.x, x0, x1, m.left, width - m.right), sy = scale(spec.y, y0, y1, height - m.bottom, m.top);
  const root = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": spec.title,
    class: "plot" });
  for (const t of spec.y.log ? logTicks(y0, y1) : linearTicks(y0, y1)) {
    root.append(svg("line", { x1: m.left, x2: width - m.right, y1: sy(t), y2: sy(t), class: "grid" }));
    root.append(svg("text", { x: m.left - 6, y: sy(t) + 4, "text-anchor": "end", class: "tick" }, si(t)));
  }
  for (const t of spec.x.ticks || (spec.x.log ? logTicks(x0, x1) : linearTicks(x0, x1))) {
    root.append(svg("line", { x1: sx(t), x2: sx(t), y1: m.top, y2: height - m.bottom, class: "grid" }));
    root.append(svg("text", { x: sx(t), y: height - m.bottom + 16, "text-anchor": "middle", class: "tick" }, si(t)));
  }
  root.append(svg("text", { x: (m.left + width - m.right) / 2, y: height - 6, "text-anchor": "middle",
    class: "axis-label" }, spec.x.label));
  root.append(svg("text", { x: -(m.top + (height - m.bottom - m.top) / 2), y: 13, "text-anchor": "middle",
    transform: "rotate(-90)", class: "axis-label" }, spec.y.label));
  for (const ref of spec.references || []) {
    root.append(svg("line", { x1: m.left, x2: width - m.right, y1: sy(ref.y), y2: sy(ref.y), class: "reference" }));
    root.append(svg("text", { x: width - m.right - 4, y: sy(ref.y) - 5, "text-anchor": "end", class: "tick" },
      `${ref.label} ${si(ref.y)}`));
  }
  for (const series of spec.series) {
    const colour = colourOf(series.name);
    const d = series.points.map((p, i) => `${i ? "L" : "M"}${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join("");
    root.append(svg("path", { d, fill: "none", stroke: colour, "stroke-width": 2,
      "stroke-dasharray": series.dashed ? "5 4" : "none" }));
    for (const [x, y] of series.points) {
      const dot = svg("circle", { cx: sx(x), cy: sy(y), r: 3.2, fill: colour });
      dot.append(svg("title", {}, `${series.name}, ${spec.xName || spec.x.label} ${x}: ${si(y)} ${spec.unit || ""}`));
      root.append(dot);
    }
  }
  const box = html("div", "chart-box");
  box.append(root, legend(spec.series.map((s) => s.name), new Set(spec.series.filter((s) => s.dashed)
    .map((s) => s.name))));
  return box;
}

/**
 * Horizontal bars from zero, one row per item, the value written beside each bar.
 * @param {{width:number, title:string, rows:{label:string, value:number, colour?:string, strong?:boolean,
 *          key?:string}[], max?:number, format:(v:number)=>string, rowHeight?:number}} spec
 * @returns {SVGElement}
 */
export function barChart(spec) {
  const rowHeight = spec.rowHeight || 24;
  const width = Math.max(240, spec.width), height = rowHeight * spec.rows.length + 4;
  const labelWidth = Math.min(120, Math.round(width * 0.34)), valueWidth = 64;
  const max = spec.max || Math.max(...spec.rows.map((r) => r.value)) || 1;
  const barSpace = width - labelWidth - valueWidth - 8;
  const root = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": spec.title,
    class: "plot bars" });
  spec.rows.forEach((row, i) => {
    const y = 2 + i * rowHeight;
    const g = svg("g", { class: row.strong ? "bar strong" : "bar" });
    if (row.key !== undefined) g.setAttribute("data-key", row.key);
    g.setAttribute("data-value", String(row.value));
    g.append(svg("text", { x: labelWidth - 6, y: y + rowHeight / 2 + 4, "text-anchor": "end", class: "bar-label" },
      row.label));
    g.append(svg("rect", { x: labelWidth, y: y + 3, height: rowHeight - 6, rx: 2, class: "track",
      width: barSpace }));
    const length = Math.max(0, Math.min(1, row.value / max)) * barSpace;
    g.append(svg("rect", { x: labelWidth, y: y + 3, height: rowHeight - 6, rx: 2, width: length.toFixed(1),
      fill: row.colour || "currentColor", class: "fill" }));
    g.append(svg("text", { x: labelWidth + barSpace + 6, y: y + rowHeight / 2 + 4, class: "bar-value" },
      spec.format(row.value)));
    g.append(svg("title", {}, `${row.label}: ${spec.format(row.value)}`));
    root.append(g);
  });
  return root;
}
