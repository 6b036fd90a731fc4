// The console's drawing helpers: DOM elements, SVG charts (drawn here, no library), heat maps and thumbnails with
// their boxes. Text always goes in as text, never as HTML.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";

function h(tag, attrs = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) element.addEventListener(name.slice(2), value);
    else if (name === "dataset") Object.assign(element.dataset, value);
    else element.setAttribute(name, value === true ? "" : value);
  }
  element.append(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
  return element;
}

function s(tag, attrs = {}, ...children) {
  const element = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attrs)) element.setAttribute(name, value);
  element.append(...children.flat());
  return element;
}

const pct = (value) => (value === null || value === undefined ? "–" : `${(100 * value).toFixed(1)}%`);
const num = (value, digits = 3) => (value === null || value === undefined ? "–" : Number(value).toFixed(digits));

// A bar whose width is `share` of the cell, for tables of counts.
function bar(share, kind = "") {
  const fill = h("span", { class: kind });
  fill.style.width = `${Math.max(0, Math.min(1, share)) * 100}%`;
  return h("div", { class: "bar" }, fill);
}

// One stacked bar of counts; `parts`: [[name, count, css class], ...].
function stack(parts) {
  const total = parts.reduce((sum, [, count]) => sum + count, 0) || 1;
  const row = h("div", { class: "stack", role: "img", "aria-label": parts.map(([n, c]) => `${n} ${c}`).join(", ") });
  for (const [name, count, kind] of parts) {
    const piece = h("span", { class: kind, title: `${name}: ${count}` });
    piece.style.width = `${(100 * count) / total}%`;
    row.append(piece);
  }
  const legend = h("div", { class: "legend" }, parts.map(([name, count, kind]) =>
    h("span", {}, h("span", { class: `swatch ${kind}` }), `${name} ${count}`)));
  return h("div", {}, row, legend);
}

// Vertical bars over categories (labels per day).
function columnChart(points, { label }) {
  const width = 640, height = 160, pad = 28;
  const most = Math.max(1, ...points.map((p) => p.value));
  const step = (width - 2 * pad) / Math.max(1, points.length);
  const chart = s("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart", role: "img", "aria-label": label });
  chart.append(s("text", { x: 2, y: 12 }, String(most)), s("text", { x: 2, y: height - pad }, "0"));
  points.forEach((point, i) => {
    const tall = ((height - 2 * pad) * point.value) / most;
    const column = s("rect", { x: pad + i * step + 1, y: height - pad - tall, width: Math.max(1, step - 2),
      height: tall, fill: "#2457c5" }, s("title", {}, `${point.name}: ${point.value}`));
    chart.append(column);
    if (points.length <= 12 || i % Math.ceil(points.length / 8) === 0) {
      chart.append(s("text", { x: pad + i * step, y: height - 8 }, point.name.slice(5)));
    }
  });
  return chart;
}

const METRIC_NAMES = { test_accuracy: "test accuracy", test_map50: "mAP@.5", test_map: "mAP@[.5:.95]" };

// The learning curve: metric against labels; the champion ringed, promotions by hand and rollbacks annotated.
function curveChart(points, { onPick }) {
  const width = 720, height = 300, left = 44, right = 24, top = 30, bottom = 40;
  const shown = points.filter((p) => p.value !== null && p.labels !== null);
  const chart = s("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart", role: "img",
    "aria-label": "Learning curve: test metric against labels" });
  if (!shown.length) {
    chart.append(s("text", { x: left, y: height / 2 }, "No evaluated model yet"));
    return chart;
  }
  const xs = shown.map((p) => p.labels);
  const values = shown.flatMap((p) => [p.value, p.baseline ?? p.value, p.map ?? p.value]);
  const [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  const [y0, y1] = [Math.max(0, Math.min(...values) - 0.05), Math.min(1, Math.max(...values) + 0.02)];
  const x = (v) => left + ((v - x0) / (x1 - x0 || 1)) * (width - left - right);
  const y = (v) => top + (1 - (v - y0) / (y1 - y0 || 1)) * (height - top - bottom);
  for (const tick of [y0, (y0 + y1) / 2, y1]) {
    chart.append(s("text", { x: 2, y: y(tick) + 4 }, tick.toFixed(2)),
      s("line", { x1: left, x2: width - right, y1: y(tick), y2: y(tick), stroke: "#e6e9ef" }));
  }
  chart.append(s("text", { x: left, y: height - 6 }, `${x0} labels`),
    s("text", { x: width - right - 70, y: height - 6 }, `${x1} labels`),
    s("text", { x: left + 4, y: top + 10 }, METRIC_NAMES[shown[0].metric] ?? shown[0].metric ?? "metric"));
  chart.append(s("polyline", { class: "baseline", points: shown.filter((p) => p.baseline !== null)
    .map((p) => `${x(p.labels)},${y(p.baseline)}`).join(" ") }));
  chart.append(s("polyline", { class: "curve", points: shown.map((p) => `${x(p.labels)},${y(p.value)}`).join(" ") }));
  const strict = shown.filter((p) => p.map !== null && p.map !== undefined); // a detector's mAP@[.5:.95] too
  if (strict.length) {
    chart.append(s("polyline", { class: "curve-strict", points: strict.map((p) => `${x(p.labels)},${y(p.map)}`)
      .join(" ") }), s("text", { x: width - right - 170, y: top + 10 }, "dotted: mAP@[.5:.95]"));
    for (const point of strict) {
      chart.append(s("circle", { class: "strict", cx: x(point.labels), cy: y(point.map), r: 3,
        "data-map-model": point.model_id }, s("title", {}, `model ${point.model_id}: mAP@[.5:.95] ${num(point.map)}`)));
    }
  }
  for (const point of shown) {
    const cx = x(point.labels), cy = y(point.value);
    const dot = s("circle", { cx, cy, r: 5, fill: point.promoted ? "#2457c5" : "#fff", stroke: "#2457c5",
      "data-model": point.model_id, tabindex: 0 },
    s("title", {}, `model ${point.model_id}: ${point.metric} ${num(point.value)} at ${point.labels} labels; ` +
      `${point.status}${point.reason ? ` (${point.reason})` : ""}`));
    dot.addEventListener("click", () => onPick(point.model_id));
    chart.append(dot);
    if (point.status === "champion") chart.append(s("circle", { class: "champion", cx, cy, r: 9 }));
    const byHand = point.promotions.filter((p) => p.by_user !== null);
    if (byHand.length) {
      const last = byHand[byHand.length - 1];
      const word = last.replaced !== null && last.replaced > point.model_id ? "rollback" : "promoted by hand";
      const anchor = cx > width / 2 ? "end" : "start";
      chart.append(s("text", { class: "note", x: cx + (anchor === "end" ? -10 : 10), y: cy - 12, "text-anchor": anchor },
        word));
    }
  }
  return chart;
}

// A confusion matrix as a heat map: rows are the given labels, columns the predictions.
function heatmap(labels, matrix, { onCell }) {
  const most = Math.max(1, ...matrix.flat());
  const head = h("tr", {}, h("th", {}, "given \\ predicted"), labels.map((l) => h("th", { class: "num" }, l)));
  const rows = matrix.map((row, i) => h("tr", {}, h("th", {}, labels[i]), row.map((count, j) => {
    const cell = h("td", { class: count ? "" : "zero", title: `given ${labels[i]}, predicted ${labels[j]}: ${count}`,
      dataset: { given: labels[i], predicted: labels[j] } }, String(count));
    const strength = count / most;
    cell.style.backgroundColor = i === j ? `rgba(31, 138, 76, ${0.1 + 0.6 * strength})`
      : `rgba(192, 57, 43, ${count ? 0.15 + 0.7 * strength : 0})`;
    if (count && i !== j) cell.addEventListener("click", () => onCell(labels[i], labels[j]));
    return cell;
  })));
  return h("table", { class: "heat" }, h("thead", {}, head), h("tbody", {}, rows));
}

// Box layers: consensus (or gold) boxes solid yellow, a model's predicted boxes dashed magenta with their score.
const BOX_LAYERS = {
  consensus: { stroke: "#ffd400", dash: "none" },
  predicted: { stroke: "#ff2d95", dash: "4 2" },
};

// A thumbnail fetched with the token (the page's policy allows images only from blob: URLs), with boxes drawn
// over it in the upright image's pixels when given: `boxes` (consensus) and `predicted` (a model's).
function thumbnail(imageId, { boxes = null, predicted = null } = {}) {
  const image = h("img", { alt: `image ${imageId}`, "data-image-id": imageId });
  const frame = h("div", { class: "thumb" }, image);
  api("GET", `/api/v1/images/${imageId}/thumbnail`, { raw: true })
    .then((response) => response.blob())
    .then((blob) => { image.src = URL.createObjectURL(blob); })
    .catch(() => { image.alt = `image ${imageId} (not loaded)`; });
  const layers = Object.entries({ consensus: boxes, predicted }).filter(([, drawn]) => drawn);
  if (layers.length) {
    const overlay = s("svg", { preserveAspectRatio: "xMidYMid meet", "data-boxes": boxes?.length ?? 0 });
    frame.append(overlay);
    api("GET", `/api/v1/images/${imageId}`).then((facts) => {
      const turned = facts.exif_orientation >= 5; // boxes are in pixels of the upright image
      const [width, height] = turned ? [facts.height, facts.width] : [facts.width, facts.height];
      overlay.setAttribute("viewBox", `0 0 ${width} ${height}`);
      for (const [layer, drawn] of layers) {
        const { stroke, dash } = BOX_LAYERS[layer];
        for (const box of drawn) {
          const title = box.score === undefined ? box.label : `${box.label} ${num(box.score, 2)}`;
          overlay.append(s("rect", { x: box.x, y: box.y, width: box.w, height: box.h, fill: "none", stroke,
            "stroke-dasharray": dash, "stroke-width": 2, "vector-effect": "non-scaling-stroke", "data-layer": layer,
            "data-label": box.label }, s("title", {}, title)));
        }
      }
    }).catch(() => {});
  }
  return frame;
}
