// The labeling page: sign in with an API token, then label, skip and correct images from the keyboard; in a
// detection project, draw the boxes (label-boxes.js) and submit them.
"use strict";

const TOKEN_KEY = "labelwheel.token";
const ACTION_KEYS = new Set(["s", "u"]);
const POSITIONAL_KEYS = [..."1234567890abcdefghijklmnopqrstuvwxyz"];
const PROJECT = `/api/v1/projects/${location.pathname.split("/")[2]}`;

const $ = (id) => document.getElementById(id);

const state = {
  token: localStorage.getItem(TOKEN_KEY),
  shortcuts: new Map(), // key -> label name
  detection: false, // a detection project: answers are boxes drawn in `editor`
  editor: null,
  current: null, // the leased task: the API's task plus `blob` and `shownAt`
  last: null, // the task labeled last, with its answer (`label` or `boxes`): what undo brings back
  correcting: false, // the screen shows `last`; the next label corrects it
  pending: null, // a submission whose request failed: a retry reuses its Idempotency-Key
  onScreen: null,
  imageUrl: null,
  busy: false,
};

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function api(method, path, { body, headers = {} } = {}) {
  const init = { method, headers: { Authorization: `Bearer ${state.token}`, ...headers } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (!response.ok) {
    const error = await response.json().then((payload) => payload.error, () => null);
    throw new ApiError(response.status, error?.code, error?.message ?? `the server answered ${response.status}`);
  }
  return response;
}

function newIdempotencyKey() {
  // randomUUID exists only in secure contexts; the service may be reached over plain http on a LAN address.
  if (crypto.randomUUID) return crypto.randomUUID();
  return Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, "0")).join("");
}

function showMessage(text, kind = "error") {
  $("message").textContent = text;
  $("message").dataset.kind = kind;
  $("message").hidden = !text;
}

// Runs one user action at a time. Keys pressed meanwhile are dropped, not queued: a key pressed before the
// next image is on screen cannot be a judgment of that image.
async function act(work) {
  if (state.busy) return;
  state.busy = true;
  $("workspace").setAttribute("aria-busy", "true");
  showMessage("");
  try {
    await work();
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) signOut(error.message);
    else if (error instanceof ApiError) showMessage(error.message);
    else showMessage(`Could not reach the server (${error.message}); try again.`);
  } finally {
    state.busy = false;
    $("workspace").setAttribute("aria-busy", "false");
  }
}

function signOut(reason) {
  localStorage.removeItem(TOKEN_KEY);
  Object.assign(state, { token: null, current: null, last: null, correcting: false, pending: null, onScreen: null });
  $("workspace").hidden = $("sign-out").hidden = true;
  $("progress").textContent = $("project-name").textContent = "";
  $("sign-in").hidden = false;
  $("sign-in-error").textContent = reason;
  $("token").focus();
}

function start() {
  $("sign-in").hidden = true;
  $("workspace").hidden = $("sign-out").hidden = false;
  return act(async () => {
    const project = await (await api("GET", PROJECT)).json();
    $("project-name").textContent = project.name;
    document.title = `${project.name} · labelwheel`;
    setMode(project);
    renderLabels(project.labels, project.settings.hotkeys ?? {});
    await Promise.all([loadNext(), refreshProgress()]);
  });
}

function setMode(project) {
  state.detection = project.task_type === "detection";
  if (state.detection && !state.editor) {
    const parts = { stage: $("stage"), image: $("image"), overlay: $("overlay") };
    state.editor = new BoxEditor({ ...parts, onChange: renderBoxes });
  }
  state.editor?.setLabels(project.labels);
  $("stage").classList.toggle("boxes", state.detection);
  for (const id of ["box-tools", "box-keys", "fit"]) $(id).hidden = !state.detection;
  $("label-keys").hidden = state.detection;
  $("undo").setAttribute("aria-keyshortcuts", state.detection ? "u" : "u Backspace"); // Backspace deletes a box
}

// Each label's key: the project's `hotkeys` setting first; then a label named by one free character gets that
// key (in a digits project `7` labels "7"); the rest take the free keys 1…9, 0, a…z in order.
function labelKeys(names, hotkeys) {
  const keys = new Map();
  const taken = (key) => ACTION_KEYS.has(key.toLowerCase()) || [...keys.values()].includes(key);
  for (const name of names) if (hotkeys[name]) keys.set(name, hotkeys[name]);
  for (const name of names) if (!keys.has(name) && [...name].length === 1 && !taken(name)) keys.set(name, name);
  const free = POSITIONAL_KEYS.filter((key) => !taken(key));
  for (const name of names) if (!keys.has(name) && free.length) keys.set(name, free.shift());
  return keys;
}

function renderLabels(names, hotkeys) {
  state.shortcuts.clear();
  const keys = labelKeys(names, hotkeys);
  const buttons = names.map((name) => {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "label";
    button.dataset.label = name;
    button.title = name;
    const key = keys.get(name);
    const kbd = document.createElement("kbd");
    if (key) {
      state.shortcuts.set(key, name);
      button.setAttribute("aria-keyshortcuts", key);
      kbd.textContent = key;
    }
    const text = document.createElement("span");
    text.textContent = name;
    button.append(kbd, " ", text);
    button.addEventListener("click", () => (state.detection ? state.editor.setLabel(name) : submit({ label: name })));
    return button;
  });
  $("labels").replaceChildren(...buttons);
  $("labels").classList.toggle("compact", names.length > 8);
}

async function refreshProgress() {
  const p = await (await api("GET", `${PROJECT}/progress`)).json();
  $("progress").textContent = `You labeled ${p.labeled_by_you} · done ${p.done} of ${p.images}`;
  // Shown when the queue has nothing for you: "All done" only when nothing waits, else what waits and why.
  $("done-title").textContent = p.waiting
    ? `Nothing left for you to label; ${p.waiting} of ${p.images} images still wait`
    : "All done — nothing left to label";
  $("waiting-reasons").replaceChildren(
    ...p.waiting_reasons.map((reason) => {
      const item = document.createElement("li");
      item.dataset.code = reason.code;
      item.textContent = reason.message;
      return item;
    }),
  );
}

async function loadNext() {
  const response = await api("GET", `${PROJECT}/tasks/next`);
  await show(response.status === 204 ? null : await response.json());
}

// A task as the API leased it (null: nothing left for you) becomes the current one.
async function show(task) {
  // <img src> cannot send the Authorization header, so the bytes come through fetch.
  if (task) task.blob = await (await api("GET", task.content_url)).blob();
  state.current = task;
  await render();
}

// After a label, a skip or a lost lease: back to the held task after a correction, else the next task.
async function advance() {
  if (state.correcting) state.correcting = false;
  else state.current = null;
  if (state.current) await render();
  else await loadNext();
}

async function render() {
  const task = state.correcting ? state.last : state.current;
  const image = $("image");
  image.hidden = task === null;
  $("done").hidden = task !== null;
  const fresh = task !== state.onScreen;
  if (task && fresh) {
    if (state.imageUrl) URL.revokeObjectURL(state.imageUrl);
    state.imageUrl = URL.createObjectURL(task.blob);
    image.src = state.imageUrl;
    image.alt = `Image ${task.image_id}`;
    await image.decode().catch(() => {}); // an undecodable file can still be labeled or skipped
    if (!state.detection) fitImage();
    task.shownAt = performance.now();
  }
  state.onScreen = task;
  image.dataset.imageId = task ? task.image_id : "";

  const reason = task?.review_reason;
  $("review-banner").hidden = !reason;
  $("review-banner").textContent = reason ? `Sent back for review: ${reason}` : "";
  $("undo-banner").hidden = !state.correcting;
  $("undo-banner").textContent = state.correcting ? correctionNote(task) : "";

  // The box editor fits a new image once the banners above the stage are in place: it does not move afterwards.
  if (state.detection && fresh) state.editor.show(task);
  if (state.detection) renderBoxes();
  else showSuggestion(task);
  $("skip").disabled = state.correcting || !state.current;
  $("undo").disabled = !state.last;
}

const count = (n, one, many) => `${n} ${n === 1 ? one : many}`;

function correctionNote(task) {
  const correcting = `Correcting image #${task.image_id}`;
  if (!state.detection) {
    return `${correcting}: you chose “${task.label}”. Pick the right label, or press Esc to go back.`;
  }
  const answer = task.boxes.length ? count(task.boxes.length, "box", "boxes") : "no objects";
  return `${correcting}: you submitted ${answer}. Fix the boxes and press Enter, or press Esc to go back.`;
}

function showSuggestion(task) {
  $("caption").textContent = task ? `Image #${task.image_id} · ${task.width}×${task.height} px` : "";
  const prelabel = task?.prelabel;
  $("suggestion").hidden = !prelabel;
  $("suggestion").textContent = prelabel
    ? `Model suggests ${prelabel.label} (${Math.round(prelabel.confidence * 100)}%)`
    : "";
  $("suggestion").title = prelabel ? `model ${prelabel.model_version}` : "";
  for (const button of $("labels").children) {
    const suggested = prelabel?.label === button.dataset.label;
    button.classList.toggle("suggested", suggested);
    button.classList.toggle("previous", state.correcting && task.label === button.dataset.label);
    if (suggested) button.setAttribute("aria-describedby", "suggestion");
    else button.removeAttribute("aria-describedby");
  }
}

// The box list, the class of the next box and the detector's suggestions, after every change in the editor.
function renderBoxes() {
  const task = state.onScreen;
  const editor = state.editor;
  const zoom = Math.round(editor.view.scale * 100);
  $("caption").textContent = task ? `Image #${task.image_id} · ${task.width}×${task.height} px · zoom ${zoom}%` : "";
  $("box-count").textContent = task ? `(${editor.boxes.length})` : "";
  $("box-list").replaceChildren(
    ...editor.boxes.map((box, i) => {
      const item = document.createElement("li");
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = box.suggested ? `${box.label} · suggested ${Math.round(box.score * 100)}%` : box.label;
      button.classList.toggle("selected", i === editor.selected);
      button.classList.toggle("suggested", Boolean(box.suggested));
      button.addEventListener("click", () => editor.select(i));
      item.append(button);
      return item;
    }),
  );
  for (const button of $("labels").children) {
    button.classList.toggle("current", button.dataset.label === editor.label);
  }
  const suggestions = editor.suggestions();
  const prelabel = task?.prelabel_boxes;
  $("suggestion").hidden = !suggestions;
  $("suggestion").textContent = suggestions
    ? `Model suggests ${count(suggestions, "box", "boxes")}: Ctrl+A accepts all`
    : "";
  $("suggestion").title = prelabel ? `model ${prelabel.model_version}` : "";
  $("accept-all").hidden = !suggestions;
  $("submit-boxes").disabled = $("no-objects").disabled = !task;
}

// Tiny images are enlarged with visible pixels; smooth scaling only blurs what the annotator must judge.
function fitImage() {
  const image = $("image");
  const stage = $("stage");
  const scale = Math.min(stage.clientWidth / image.naturalWidth, stage.clientHeight / image.naturalHeight);
  image.classList.toggle("pixelated", scale >= 2);
}

// `answer` is {label} or, in a detection project, {boxes}.
function submit(answer) {
  return act(async () => {
    const task = state.correcting ? state.last : state.current;
    if (!task) return;
    const sent = JSON.stringify(answer);
    if (state.pending?.image_id !== task.image_id || state.pending.sent !== sent) {
      const duration_ms = Math.round(performance.now() - task.shownAt);
      state.pending = { image_id: task.image_id, sent, duration_ms, key: newIdempotencyKey() };
    }
    const { image_id, duration_ms, key } = state.pending;
    const body = { image_id, ...answer, duration_ms };
    // One round trip per label: the answer brings the next task. A correction goes back to the held task instead.
    const andNext = !state.correcting;
    let stored;
    try {
      const path = `${PROJECT}/annotations${andNext ? "?next=true" : ""}`;
      stored = await (await api("POST", path, { body, headers: { "Idempotency-Key": key } })).json();
    } catch (error) {
      // A network error or a 5xx stored nothing: pressing the key again retries with the same key.
      if (!(error instanceof ApiError) || error.status >= 500) throw error;
      state.pending = null;
      if (error.status !== 409 && error.status !== 404) throw error;
      showMessage(error.message); // e.g. lease_lost: others finished this image meanwhile
      await Promise.all([advance(), refreshProgress()]);
      return;
    }
    state.pending = null;
    state.last = { ...task, ...answer };
    await Promise.all([andNext ? show(stored.next_task) : advance(), refreshProgress()]);
  });
}

function skip() {
  return act(async () => {
    if (state.correcting || !state.current) return;
    try {
      await api("POST", `${PROJECT}/tasks/${state.current.image_id}/skip`);
    } catch (error) {
      if (!(error instanceof ApiError && error.status === 409)) throw error;
      showMessage(error.message);
    }
    await advance();
  });
}

function undo() {
  return act(async () => {
    if (state.correcting) {
      state.correcting = false;
    } else if (state.last) {
      state.correcting = true;
    } else {
      showMessage("Nothing to undo yet.", "info");
      return;
    }
    await render();
  });
}

// Enter submits the boxes drawn. Suggestions still dashed must be accepted or deleted first, so that Enter on a
// pre-labeled image never answers "no objects" by mistake.
function submitBoxes() {
  const left = state.editor.suggestions();
  if (!left) return submit({ boxes: state.editor.answer() });
  const boxes = count(left, "suggested box is", "suggested boxes are");
  showMessage(`${boxes} not accepted yet: accept all with Ctrl+A, or select and delete the wrong ones.`, "info");
}

function labelKey(event) {
  if (event.ctrlKey || event.metaKey) return false;
  const key = event.key.length === 1 ? event.key.toLowerCase() : event.key;
  if (state.shortcuts.has(event.key)) submit({ label: state.shortcuts.get(event.key) }); // "A" is Shift+a
  else if (key === "s") skip();
  else if (key === "u" || key === "Backspace") undo();
  else if (key === "Escape" && state.correcting) undo();
  else if (state.shortcuts.has(key)) submit({ label: state.shortcuts.get(key) });
  else return false;
  return true;
}

// Label keys set the class of the selected box and of the next ones; Backspace deletes a box here.
function boxKey(event) {
  const editor = state.editor;
  const key = event.key.length === 1 ? event.key.toLowerCase() : event.key;
  if (event.ctrlKey || event.metaKey) {
    if (key === "z") editor.undo();
    else if (key === "a") editor.acceptAll();
    else return false;
  } else if (key === " ") editor.setPanKey(true);
  else if (state.shortcuts.has(event.key)) editor.setLabel(state.shortcuts.get(event.key));
  else if (key === "Enter") submitBoxes();
  else if (key === "Delete" || key === "Backspace") editor.deleteSelected();
  else if (key === "Escape") {
    if (!editor.deselect() && state.correcting) undo();
  } else if (key === "s") skip();
  else if (key === "u") undo();
  else if (state.shortcuts.has(key)) editor.setLabel(state.shortcuts.get(key));
  else return false;
  return true;
}

document.addEventListener("keydown", (event) => {
  if ($("workspace").hidden || event.altKey || event.repeat) return;
  if (state.detection ? boxKey(event) : labelKey(event)) event.preventDefault();
});
document.addEventListener("keyup", (event) => {
  if (!state.detection || event.key !== " ") return;
  state.editor.setPanKey(false);
  event.preventDefault(); // a focused button would take Space as a click
});
window.addEventListener("blur", () => state.editor?.setPanKey(false));

$("sign-in-form").addEventListener("submit", (event) => {
  event.preventDefault();
  state.token = $("token").value.trim();
  $("token").value = "";
  localStorage.setItem(TOKEN_KEY, state.token);
  start();
});
$("sign-out").addEventListener("click", (event) => {
  event.preventDefault();
  signOut("");
});
$("skip").addEventListener("click", skip);
$("undo").addEventListener("click", undo);
$("check-again").addEventListener("click", () => act(loadNext));
$("submit-boxes").addEventListener("click", submitBoxes);
$("no-objects").addEventListener("click", () => submit({ boxes: [] }));
$("accept-all").addEventListener("click", () => state.editor.acceptAll());
$("fit").addEventListener("click", () => state.editor.fit());
window.addEventListener("resize", () => {
  if (!state.detection) fitImage(); // the box editor follows its stage itself
});

if (state.token) start();
else signOut("");
