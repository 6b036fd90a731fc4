// The labeling page's box editor for detection projects: boxes are kept in pixels of the upright image, whatever
// the zoom, and drawn over it in screen pixels; label.js owns the task, the keys and the submissions.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const STAGE_PADDING = 16; // the fitted image keeps this margin inside the stage, in screen pixels
const HANDLE_REACH = 7; // how near a handle the pointer grabs it, in screen pixels
const MIN_DRAG = 3; // a smaller drag is a click, in screen pixels
const MAX_ZOOM = 16; // times the larger of "fit" and 100%
const HISTORY = 200; // undo steps kept per image
const HANDLES = ["nw", "n", "ne", "e", "se", "s", "sw", "w"];
const CURSORS = { nw: "nwse", se: "nwse", ne: "nesw", sw: "nesw", n: "ns", s: "ns", e: "ew", w: "ew" };
const COLORS = ["#ff4d4f", "#40a9ff", "#73d13d", "#ffc53d", "#b37feb", "#36cfc9", "#ff85c0", "#ffa940", "#bae637"];

const svgElement = (tag, attributes) => {
  const element = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attributes)) element.setAttribute(name, value);
  return element;
};
const clamp = (value, low, high) => Math.min(Math.max(value, low), high);
const area = (box) => box.w * box.h;
const copy = (boxes) => boxes.map((box) => ({ ...box }));
// The box between two corners, whichever way it was dragged.
const spanning = (a, b) => ({
  x: Math.min(a.x, b.x),
  y: Math.min(a.y, b.y),
  w: Math.abs(b.x - a.x),
  h: Math.abs(b.y - a.y),
});

class BoxEditor {
  constructor({ stage, image, overlay, onChange }) {
    Object.assign(this, { stage, image, overlay, onChange });
    this.drafts = new WeakMap(); // task -> {boxes, history}: a correction and the way back keep their edits
    this.draft = null;
    this.size = null; // {width, height} of the upright image
    // Image pixel (px, py) is at stage pixel (x + px·scale, y + py·scale); `fit` is the scale that shows it whole,
    // `fitted` that the view is still that one (not zoomed or panned): it follows the stage's size.
    this.view = { scale: 1, x: 0, y: 0, fit: 1, fitted: true };
    this.labels = [];
    this.label = null; // the class of the next box drawn
    this.selected = -1;
    this.drag = null;
    this.panKey = false;
    image.draggable = false;
    stage.addEventListener("pointerdown", (event) => this.pointerDown(event));
    stage.addEventListener("pointermove", (event) => this.pointerMove(event));
    stage.addEventListener("pointerup", (event) => this.pointerUp(event, true));
    stage.addEventListener("pointercancel", (event) => this.pointerUp(event, false));
    stage.addEventListener("wheel", (event) => this.wheel(event), { passive: false });
    new ResizeObserver(() => this.view.fitted && this.fit()).observe(stage);
  }

  get boxes() {
    return this.draft ? this.draft.boxes : [];
  }

  setLabels(names) {
    this.labels = names;
    this.label = names[0] ?? null;
  }

  // A task's boxes: its own (`boxes`, a submitted answer brought back for correction), else the detector's
  // suggestions, drawn dashed until accepted.
  show(task) {
    this.drag = null;
    this.selected = -1;
    if (!task) {
      this.draft = this.size = null;
      this.render();
      return;
    }
    if (!this.drafts.has(task)) {
      const suggested = (task.prelabel_boxes?.boxes ?? []).map((box) => ({ ...box, suggested: true }));
      this.drafts.set(task, { boxes: task.boxes ? copy(task.boxes) : suggested, history: [] });
    }
    this.draft = this.drafts.get(task);
    this.size = { width: task.width, height: task.height };
    this.fit();
  }

  // The boxes to submit: the suggestions not accepted are left out.
  answer() {
    return this.boxes.filter((box) => !box.suggested).map(({ label, x, y, w, h }) => ({ label, x, y, w, h }));
  }

  suggestions() {
    return this.boxes.filter((box) => box.suggested).length;
  }

  fit() {
    if (!this.size) return;
    const { clientWidth, clientHeight } = this.stage;
    const { width, height } = this.size;
    const scale = Math.min((clientWidth - 2 * STAGE_PADDING) / width, (clientHeight - 2 * STAGE_PADDING) / height);
    const [x, y] = [(clientWidth - width * scale) / 2, (clientHeight - height * scale) / 2];
    this.view = { scale, x, y, fit: scale, fitted: true };
    this.place();
  }

  zoomAt(clientX, clientY, factor) {
    const { left, top } = this.stage.getBoundingClientRect();
    const [sx, sy] = [clientX - left, clientY - top];
    const view = this.view;
    const scale = clamp(view.scale * factor, view.fit / 2, Math.max(view.fit, 1) * MAX_ZOOM);
    const k = scale / view.scale;
    Object.assign(view, { scale, x: sx - (sx - view.x) * k, y: sy - (sy - view.y) * k, fitted: false });
    this.place();
  }

  // The image and the overlay follow the view; tiny images or deep zooms show their pixels, unsmoothed.
  place() {
    const { scale, x, y } = this.view;
    Object.assign(this.image.style, {
      left: `${x}px`,
      top: `${y}px`,
      width: `${this.size.width * scale}px`,
      height: `${this.size.height * scale}px`,
    });
    this.image.classList.toggle("pixelated", scale >= 2);
    this.changed();
  }

  // Undo steps record the boxes before each change.
  remember() {
    const history = this.draft.history;
    history.push(copy(this.draft.boxes));
    if (history.length > HISTORY) history.shift();
  }

  changed() {
    this.render();
    this.onChange();
  }

  select(index) {
    this.selected = index;
    this.changed();
  }

  deselect() {
    if (this.selected < 0) return false;
    this.select(-1);
    return true;
  }

  // A label key: the class of the selected box (which accepts a suggestion) and of the boxes drawn next.
  setLabel(name) {
    this.label = name;
    const box = this.boxes[this.selected];
    if (box && (box.label !== name || box.suggested)) {
      this.remember();
      box.label = name;
      this.accept(box);
    }
    this.changed();
  }

  accept(box) {
    delete box.suggested;
    delete box.score;
  }

  acceptAll() {
    if (!this.suggestions()) return;
    this.remember();
    this.boxes.forEach((box) => this.accept(box));
    this.changed();
  }

  deleteSelected() {
    if (this.selected < 0) return;
    this.remember();
    this.boxes.splice(this.selected, 1);
    this.selected = -1;
    this.changed();
  }

  undo() {
    if (!this.draft?.history.length) return;
    this.draft.boxes = this.draft.history.pop();
    this.selected = -1;
    this.changed();
  }

  setPanKey(held) {
    this.panKey = held;
    this.stage.classList.toggle("panning", held || this.drag?.kind === "pan");
  }

  // Where the pointer is, in image pixels (not clamped to the image).
  point(event) {
    const { left, top } = this.stage.getBoundingClientRect();
    const { scale, x, y } = this.view;
    return { x: (event.clientX - left - x) / scale, y: (event.clientY - top - y) / scale };
  }

  inside(point) {
    return { x: clamp(point.x, 0, this.size.width), y: clamp(point.y, 0, this.size.height) };
  }

  // What the pointer would take: a handle of the selected box, else the smallest box under it.
  hit(point) {
    const selected = this.boxes[this.selected];
    const reach = HANDLE_REACH / this.view.scale;
    if (selected) {
      for (const handle of HANDLES) {
        const spot = handlePoint(selected, handle);
        const near = Math.abs(spot.x - point.x) <= reach && Math.abs(spot.y - point.y) <= reach;
        if (near) return { index: this.selected, handle };
      }
    }
    let best = -1;
    this.boxes.forEach((box, i) => {
      const under = point.x >= box.x && point.x <= box.x + box.w && point.y >= box.y && point.y <= box.y + box.h;
      if (under && (best < 0 || area(box) < area(this.boxes[best]))) best = i;
    });
    return best < 0 ? null : { index: best };
  }

  pointerDown(event) {
    if (!this.size || this.drag || event.button === 2) return;
    event.preventDefault();
    const point = this.point(event);
    const base = { pointerId: event.pointerId, clientX: event.clientX, clientY: event.clientY, moved: false };
    if (event.button === 1 || this.panKey) {
      this.drag = { ...base, kind: "pan", view: { ...this.view } };
      this.setPanKey(this.panKey);
    } else if (event.button === 0) {
      const hit = this.hit(point);
      if (hit) {
        this.selected = hit.index;
        const kind = hit.handle ? "resize" : "move";
        this.drag = { ...base, kind, handle: hit.handle, start: point, original: { ...this.boxes[hit.index] } };
        this.changed();
      } else {
        this.drag = { ...base, kind: "draw", start: this.inside(point), end: this.inside(point) };
      }
    } else {
      return;
    }
    this.stage.setPointerCapture(event.pointerId);
  }

  pointerMove(event) {
    const drag = this.drag;
    if (!drag) {
      this.hover(event);
      return;
    }
    if (event.pointerId !== drag.pointerId) return;
    if (!drag.moved && Math.hypot(event.clientX - drag.clientX, event.clientY - drag.clientY) < MIN_DRAG) return;
    const firstMove = !drag.moved;
    drag.moved = true;
    if (drag.kind === "pan") {
      this.view.x = drag.view.x + event.clientX - drag.clientX;
      this.view.y = drag.view.y + event.clientY - drag.clientY;
      this.view.fitted = false;
      this.place();
      return;
    }
    const point = this.point(event);
    if (drag.kind === "draw") {
      drag.end = this.inside(point);
      this.render();
      return;
    }
    if (firstMove) this.remember();
    const box = this.boxes[this.selected];
    this.accept(box); // moving or resizing a suggestion makes it yours
    if (drag.kind === "move") {
      const { original } = drag;
      box.x = clamp(original.x + point.x - drag.start.x, 0, this.size.width - original.w);
      box.y = clamp(original.y + point.y - drag.start.y, 0, this.size.height - original.h);
    } else {
      resize(box, drag.original, drag.handle, this.inside(point));
    }
    this.changed();
  }

  pointerUp(event, done) {
    const drag = this.drag;
    if (!drag || event.pointerId !== drag.pointerId) return;
    this.drag = null;
    this.setPanKey(this.panKey);
    if (drag.kind === "draw" && done) {
      const box = { label: this.label, ...spanning(drag.start, drag.end) };
      if (drag.moved && Math.min(box.w, box.h) * this.view.scale >= MIN_DRAG) {
        this.remember();
        this.boxes.push(box);
        this.selected = this.boxes.length - 1;
      } else {
        this.selected = -1; // a click beside every box
      }
    }
    this.changed();
  }

  hover(event) {
    if (!this.size) return;
    const hit = this.panKey ? null : this.hit(this.point(event));
    this.stage.style.cursor = hit?.handle ? `${CURSORS[hit.handle]}-resize` : hit ? "move" : "";
  }

  // Zooms around the pointer; a notch of a mouse wheel is about a quarter.
  wheel(event) {
    if (!this.size) return;
    event.preventDefault();
    const pixels = event.deltaY * (event.deltaMode === 1 ? 16 : event.deltaMode === 2 ? 400 : 1);
    this.zoomAt(event.clientX, event.clientY, 2 ** (-pixels / 300));
  }

  render() {
    const shapes = [];
    if (this.size) {
      this.boxes.forEach((box, i) => shapes.push(...this.shapes(box, i === this.selected)));
      if (this.drag?.kind === "draw" && this.drag.moved) {
        const box = { label: this.label, ...spanning(this.drag.start, this.drag.end) };
        shapes.push(this.rect(box, "box drawing"));
      }
    }
    this.overlay.replaceChildren(...shapes);
  }

  rect(box, className) {
    const { scale, x, y } = this.view;
    const color = COLORS[Math.max(this.labels.indexOf(box.label), 0) % COLORS.length];
    return svgElement("rect", {
      class: className,
      x: x + box.x * scale,
      y: y + box.y * scale,
      width: box.w * scale,
      height: box.h * scale,
      stroke: color,
    });
  }

  shapes(box, selected) {
    const outline = this.rect(box, `box${box.suggested ? " suggested" : ""}${selected ? " selected" : ""}`);
    const color = outline.getAttribute("stroke");
    const left = Number(outline.getAttribute("x"));
    const top = Number(outline.getAttribute("y"));
    const baseline = top > 16 ? top - 4 : top + 14; // above the box, or inside it at the stage's top
    const caption = svgElement("text", { class: "box-caption", x: left + 3, y: baseline, fill: color });
    caption.textContent = box.suggested ? `${box.label} ${Math.round(box.score * 100)}%` : box.label;
    const shapes = [outline, caption];
    if (selected) {
      for (const handle of HANDLES) {
        const spot = handlePoint(box, handle);
        const [sx, sy] = [this.view.x + spot.x * this.view.scale, this.view.y + spot.y * this.view.scale];
        const square = { x: sx - 4, y: sy - 4, width: 8, height: 8 };
        shapes.push(svgElement("rect", { class: "handle", "data-handle": handle, ...square, stroke: color }));
      }
    }
    return shapes;
  }
}

function handlePoint(box, handle) {
  const x = handle.includes("w") ? box.x : handle.includes("e") ? box.x + box.w : box.x + box.w / 2;
  const y = handle.includes("n") ? box.y : handle.includes("s") ? box.y + box.h : box.y + box.h / 2;
  return { x, y };
}

// A handle moves its edges to the pointer; dragged past the opposite edge, the box turns over.
function resize(box, original, handle, point) {
  let [left, top, right, bottom] = [original.x, original.y, original.x + original.w, original.y + original.h];
  if (handle.includes("w")) left = point.x;
  if (handle.includes("e")) right = point.x;
  if (handle.includes("n")) top = point.y;
  if (handle.includes("s")) bottom = point.y;
  if (left !== right && top !== bottom) Object.assign(box, spanning({ x: left, y: top }, { x: right, y: bottom }));
}
