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
