// The console: sign in with an API token, then see and steer a project's flywheel. `/` lists the caller's
// projects; `/projects/{id}/{page}` draws one page. Everything comes from the public API with the token.
"use strict";

const TOKEN_KEY = "labelwheel.token"; // shared with the labeling page
const $ = (id) => document.getElementById(id);
const state = { token: localStorage.getItem(TOKEN_KEY), me: null, project: null, timers: [] };

class ApiError extends Error {
  constructor(status, code, message, details) {
    super(message);
    Object.assign(this, { status, code, details });
  }
}

async function api(method, path, { body, raw = false } = {}) {
  const init = { method, headers: { Authorization: `Bearer ${state.token}` } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (!response.ok) {
    const error = await response.json().then((payload) => payload.error, () => null);
    throw new ApiError(response.status, error?.code, error?.message ?? `the server answered ${response.status}`,
      error?.details);
  }
  if (raw) return response;
  return response.status === 204 ? null : response.json();
}

function say(text, kind = "error") {
  $("message").textContent = text;
  $("message").dataset.kind = kind;
  $("message").hidden = !text;
}

// Runs an action; a refusal is shown with the server's message, and the page is drawn again on success.
async function act(work, { redraw = true } = {}) {
  say("");
  try {
    const done = await work();
    if (redraw) await draw();
    if (typeof done === "string") say(done, "info");
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) signOut(error.message);
    else say(error instanceof ApiError ? error.message : `Could not reach the server (${error.message})`);
    throw error;
  }
}

const quietly = (work) => act(work).catch(() => {});

function signOut(reason = "") {
  localStorage.removeItem(TOKEN_KEY);
  state.token = null;
  $("view").hidden = $("sign-out").hidden = $("tabs").hidden = true;
  $("who").textContent = $("project-name").textContent = "";
  $("sign-in").hidden = false;
  $("sign-in-error").textContent = reason;
  $("token").focus();
}

function route() {
  const parts = location.pathname.split("/").filter(Boolean);
  return parts[0] === "projects" ? { projectId: Number(parts[1]), page: parts[2] } : { projectId: null, page: "home" };
}

async function draw() {
  for (const timer of state.timers) clearInterval(timer);
  state.timers = [];
  const { projectId, page } = route();
  const view = $("view");
  view.setAttribute("aria-busy", "true");
  state.me = await api("GET", "/api/v1/users/me");
  $("who").textContent = `${state.me.name} (${state.me.role})`;
  let content;
  if (projectId === null) {
    $("tabs").hidden = true;
    $("project-name").textContent = "";
    content = await PAGES.home();
  } else {
    state.project = await api("GET", `/api/v1/projects/${projectId}`);
    $("project-name").textContent = state.project.name;
    document.title = `${state.project.name} · ${page} · labelwheel`;
    $("tabs").hidden = false;
    for (const tab of $("tabs").querySelectorAll("a")) {
      tab.href = `/projects/${projectId}/${tab.dataset.page}`;
      if (tab.dataset.page === page) tab.setAttribute("aria-current", "page");
      else tab.removeAttribute("aria-current");
    }
    content = await PAGES[page]();
  }
  view.replaceChildren(...content.filter(Boolean));
  view.setAttribute("aria-busy", "false");
}

const P = () => `/api/v1/projects/${state.project.id}`;
const isAdmin = () => state.me.role === "admin";
const card = (title, ...children) => h("section", { class: "card" }, h("h2", {}, title), ...children);
const table = (heads, rows) => h("table", {}, h("thead", {}, h("tr", {}, heads.map((t) => h("th", {}, t)))),
  h("tbody", {}, rows));
const when = (iso) => (iso ? new Date(iso).toISOString().replace("T", " ").slice(0, 19) : "–");

// A small form whose submit runs `onSubmit(values)` as an action.
function form(fields, submitText, onSubmit, { id, redraw = true } = {}) {
  const element = h("form", { class: "inline", id }, fields.map(([name, label, input]) => {
    input.name = name;
    return h("label", {}, label, input);
  }), h("button", { type: "submit", class: "primary" }, submitText));
  element.addEventListener("submit", (event) => {
    event.preventDefault();
    const values = Object.fromEntries(new FormData(element).entries());
    act(() => onSubmit(values), { redraw }).catch(() => {});
  });
  return element;
}

function select(options, value) {
  return h("select", {}, options.map((o) => h("option", { value: o, selected: o === value }, o)));
}

// ---- Home: the caller's projects ----

async function home() {
  const projects = await api("GET", "/api/v1/projects");
  const rows = await Promise.all(projects.map(async (project) => {
    const progress = await api("GET", `/api/v1/projects/${project.id}/progress`);
    const done = progress.images ? progress.done / progress.images : 0;
    let headline = "–", open;
    if (state.me.role === "annotator") {
      open = h("a", { href: `/label/${project.id}` }, "Label");
    } else {
      open = h("a", { href: `/projects/${project.id}/overview` }, "Open");
      // The versions' list, not the champion's card: the card also computes the human reference, which reads
      // every test label of the project.
      const versions = await api("GET", `/api/v1/projects/${project.id}/models`);
      const champion = versions.find((v) => v.status === "champion");
      if (!champion) headline = "no model yet";
      else if (champion.test_accuracy !== null) headline = `test_accuracy ${num(champion.test_accuracy)} (model ${champion.id})`;
      else {
        const card = await api("GET", `/api/v1/models/${champion.id}`); // a detector: whatever its card leads with
        const map50 = card.metrics?.test_map50;
        headline = typeof map50 === "number" ? `mAP@.5 ${num(map50)} (model ${champion.id})` : `model ${champion.id}`;
      }
    }
    return h("tr", { "data-project": project.id }, h("td", {}, open), h("td", {}, project.name),
      h("td", {}, project.task_type), h("td", {}, bar(done), `${progress.done} of ${progress.images} done`),
      h("td", {}, headline));
  }));
  const intro = state.me.role === "annotator"
    ? h("p", {}, "Open a project's labeling page to label its images.")
    : h("p", { class: "muted" }, "Progress is the share of images that wait for no more labels.");
  return [card("Your projects", intro,
    table(["", "project", "kind", "progress", "champion"], rows.length ? rows : [h("tr", {}, h("td", {}, "none"))]))];
}

// ---- Overview ----

async function overview() {
  const [figures, jobs] = await Promise.all([api("GET", `${P()}/overview`), api("GET", `${P()}/jobs`)]);
  const { images, classes, days, annotators } = figures;
  const most = Math.max(1, ...classes.map((c) => c.train + c.test));
  const histogram = table(["label", "labels", "train", "test", "test share"], classes.map((c) => {
    const total = c.train + c.test;
    return h("tr", {}, h("td", {}, c.label), h("td", {}, bar(total / most)), h("td", { class: "num" }, c.train),
      h("td", { class: "num" }, c.test), h("td", { class: "num" }, total ? pct(c.test / total) : "–"));
  }));
  const perAnnotator = table(["annotator", "current labels"], annotators.map((a) =>
    h("tr", {}, h("td", {}, a.name), h("td", { class: "num" }, a.labels))));
  const active = jobsTable(jobs.filter((j) => ["queued", "running"].includes(j.status)), { id: "active-jobs" });
  state.timers.push(setInterval(async () => {
    const live = await api("GET", `${P()}/jobs`).catch(() => null);
    const shown = document.getElementById("active-jobs");
    if (live && shown) shown.replaceWith(jobsTable(live.filter((j) => ["queued", "running"].includes(j.status)),
      { id: "active-jobs" }));
  }, 2000));
  return [h("div", { class: "grid" },
    card("Images", h("p", {}, `${images.total} images: ${images.split.train} train, ${images.split.test} test`),
      stack([["unlabeled", images.unlabeled, "s-unlabeled"], ["waiting for overlap", images.overlap, "s-overlap"],
        ["waiting for review", images.review, "s-review"], ["done", images.done, "s-done"]])),
    card("Active jobs", active)),
  card("Current labels per class", histogram),
  h("div", { class: "grid" },
    card("Labels per day (30 days)", columnChart(days.map((d) => ({ name: d.day, value: d.labels })),
      { label: "labels per day" })),
    card("Labels per annotator", perAnnotator))];
}

// ---- Models ----

// A version's test metric for the table: accuracy, or a detector's mAP@.5 and mAP@[.5:.95].
function metricCell(point) {
  if (point.map50 !== null && point.map50 !== undefined) {
    return h("td", { class: "num", "data-map50": point.map50 }, `mAP@.5 ${num(point.map50)}`, h("br"),
      h("span", { class: "muted" }, `mAP@[.5:.95] ${num(point.map)}`));
  }
  return h("td", { class: "num" }, point.value !== undefined ? `${num(point.value)}` : "–", h("br"),
    h("span", { class: "muted" }, point.metric ?? ""));
}

async function models() {
  const detection = state.project.task_type === "detection";
  const curve = await api("GET", `${P()}/learning-curve`); // every trained version, oldest first
  const versions = [...curve].reverse().map((point) => ({ id: point.model_id, status: point.status }));
  const championRow = versions.find((v) => v.status === "champion");
  const chosen = Number(new URLSearchParams(location.search).get("model")) || championRow?.id;
  const shown = chosen ? await api("GET", `/api/v1/models/${chosen}`) : null;
  const byId = Object.fromEntries(curve.map((p) => [p.model_id, p]));
  const human = shown?.human_reference?.pooled_accuracy ?? shown?.human_reference?.pooled_f1 ?? null;
  const rows = versions.map((v) => {
    const point = byId[v.id] ?? {};
    return h("tr", { "data-model": v.id },
      h("td", {}, h("a", { href: `?model=${v.id}` }, `#${v.id}`)),
      h("td", { class: `status-${v.status}` }, v.status),
      h("td", { class: "num" }, point.labels ?? "–"),
      metricCell(point),
      h("td", { class: "num" }, num(point.baseline)),
      h("td", { class: "num" }, num(human)),
      h("td", {}, point.promoted ? "promoted" : "not promoted", h("br"),
        h("span", { class: "muted" }, point.reason ?? "")),
      h("td", { class: "num" }, point.p_value === null || point.p_value === undefined ? "–" : num(point.p_value)),
      h("td", {}, downloads(v.id)));
  });
  const parts = [
    card("Learning curve", h("p", { class: "muted" },
      "Each trained version's test metric against the labels behind it; the ringed point is the champion, " +
      "filled points were promoted, the dashed line is the baseline. Click a point to open that version." +
      (detection ? " Detectors: mAP@.5 (the promotion gate's metric) and, dotted, mAP@[.5:.95]." : "")),
    curveChart(curve, { onPick: (id) => { location.search = `?model=${id}`; } })),
    card("Versions", table(["version", "status", "labels", "metric", "baseline", detection ? "human box F1" : "human",
      "decision", "p-value", "downloads"], rows)),
  ];
  if (shown) parts.push(...versionCards(shown, versions));
  if (versions.length >= 2) parts.push(compareCard(versions));
  return parts;
}

function downloads(modelId) {
  return ["onnx", "weights", "card"].map((format) => h("button", { type: "button", onclick: () => act(async () => {
    const response = await api("GET", `/api/v1/models/${modelId}/download?format=${format}`, { raw: true });
    if (response.status === 202) return `The files are being made (${(await response.json()).message}); try again.`;
    const name = /filename="([^"]+)"/.exec(response.headers.get("Content-Disposition") ?? "")?.[1] ?? format;
    const link = h("a", { href: URL.createObjectURL(await response.blob()), download: name });
    link.click();
    return `Downloaded ${name}`;
  }, { redraw: false }).catch(() => {}) }, format));
}

function versionCards(model, versions) {
  const metrics = model.metrics ?? {};
  const labels = model.labels;
  const wrong = metrics.wrong_test_images ?? [];
  const gallery = h("div", { class: "gallery", id: "errors" });
  const showErrors = (filter) => {
    const picked = wrong.filter((w) => !filter || (w.label === filter.given && w.predicted === filter.predicted));
    gallery.replaceChildren(...picked.map((w) => h("div", { class: "tile", "data-image": w.image_id },
      thumbnail(w.image_id), h("span", {}, `given ${w.label}`),
      h("span", {}, `predicted ${w.predicted}${w.confidence !== undefined ? ` (${pct(w.confidence)})` : ""}`))));
    if (!picked.length) gallery.append(h("p", { class: "muted" }, "No misclassified test image."));
  };
  showErrors(null);
  const parts = [];
  const decision = model.decision ?? {};
  const promotions = (decision.promotions ?? []).map((p) =>
    h("li", {}, `${when(p.at)}: ${p.reason}${p.replaced ? ` (replaced #${p.replaced})` : ""}`));
  const champion = versions.find((v) => v.status === "champion");
  const verb = champion && champion.id > model.id ? "Roll back to" : "Promote";
  const promote = model.status === "champion" || model.kind !== "full" || !["candidate", "retired"].includes(model.status)
    ? h("p", { class: "muted" }, model.status === "champion" ? "This version is the champion." : "")
    : form([["reason", "Reason", h("input", { required: true, size: 40, placeholder: "why" })]],
      `${verb} #${model.id}`, async ({ reason }) => {
        await api("POST", `/api/v1/models/${model.id}/promote`, { body: { reason } });
        return `Model ${model.id} is the champion now.`;
      }, { id: "promote-form" });
  parts.push(card(`Version #${model.id} (${model.status})`,
    h("p", {}, decision.reason ?? ""), h("ul", {}, promotions), promote, retrainForm(model)));
  if (metrics.task === "detection") parts.push(...detectionErrors(metrics));
  if (metrics.confusion_matrix) {
    parts.push(h("div", { class: "grid" },
      card("Confusion matrix (test split)", h("p", { class: "muted" }, "Click a red cell to see those images."),
        heatmap(labels, metrics.confusion_matrix, { onCell: (given, predicted) => showErrors({ given, predicted }) })),
      card(`Misclassified test images (${wrong.length})`, gallery)));
  }
  return parts;
}

// A detector's error analysis on the test split (the TIDE categories) and the gallery of its worst test images:
// the consensus boxes it was scored against, solid, and its own boxes at the operating score, dashed. Clicking a
// category shows the images with that kind of error.
const ERROR_KINDS = { missed: "missed objects", false_boxes: "false boxes", wrong_class: "wrong class",
  poor_localization: "poor localization" };

function detectionErrors(metrics) {
  const images = (metrics.error_images ?? []).filter((e) => e.predicted); // the worst ones carry their boxes
  const gallery = h("div", { class: "gallery", id: "box-errors" });
  const show = (kind) => {
    const picked = images.filter((e) => !kind || e[kind] > 0);
    gallery.replaceChildren(...picked.map((e) => h("div", { class: "tile", "data-image": e.image_id },
      thumbnail(e.image_id, { boxes: e.truth, predicted: e.predicted }),
      h("span", {}, Object.keys(ERROR_KINDS).filter((k) => e[k]).map((k) => `${e[k]} ${ERROR_KINDS[k]}`).join(", ")),
      h("span", { class: "muted" }, `${e.truth.length} consensus, ${e.predicted.length} predicted`))));
    if (!picked.length) gallery.append(h("p", { class: "muted" }, "No test image with such an error."));
  };
  show(null);
  const totals = table(["error", "boxes", ""], Object.entries(ERROR_KINDS).map(([kind, name]) =>
    h("tr", { "data-error": kind }, h("td", {}, name), h("td", { class: "num" }, metrics.errors?.[kind] ?? 0),
      h("td", {}, h("button", { type: "button", onclick: () => show(kind) }, "show")))));
  const legend = h("p", { class: "box-legend muted" }, h("span", { class: "consensus" }, "▭ consensus boxes"), " · ",
    h("span", { class: "predicted" }, "┅ predicted boxes"), ` (score ≥ ${metrics.operating_score ?? "–"})`);
  return [h("div", { class: "grid" },
    card("Errors on the test split", h("p", { class: "muted" }, `mAP@.5 ${num(metrics.test_map50)}, ` +
      `mAP@[.5:.95] ${num(metrics.test_map)}, mean image F1 ${num(metrics.mean_image_f1)} on ${metrics.test_items} ` +
      "test images."), totals),
    card(`Test images with errors (${images.length}, worst first)`, legend, gallery))];
}

// DIGITS' "clone job": this version's settings, some changed, become the project's training settings and a
// training starts.
function retrainForm(model) {
  if (!isAdmin()) return h("p", { class: "muted" }, "Retraining from a version changes settings: admins only.");
  const current = state.project.settings.training;
  const hyper = { ...model.hyperparameters, input_size: model.input?.size };
  const keys = Object.keys(current).filter((k) => k in hyper && typeof current[k] !== "object" &&
    hyper[k] !== null && ["number", "string"].includes(typeof hyper[k]));
  const fields = keys.map((k) => [k, k, h("input", { value: hyper[k], size: 8, "data-kind": typeof hyper[k] })]);
  const element = form(fields, "Retrain from here", async (values) => {
    const training = Object.fromEntries(Object.entries(values).map(([k, v]) =>
      [k, typeof hyper[k] === "number" ? Number(v) : v]));
    await api("PATCH", `${P()}/settings`, { body: { settings: { training } } });
    const job = await api("POST", `${P()}/jobs`, { body: { kind: "train", params: { force: true } } });
    return `Training job ${job.id} started with version ${model.id}'s settings (now the project's).`;
  }, { id: "retrain-form" });
  return h("details", {}, h("summary", {}, "Retrain from here"),
    h("p", { class: "muted" }, "These become the project's training settings, then a training starts."), element);
}

function compareCard(versions) {
  const ids = versions.map((v) => String(v.id));
  const out = h("div", { id: "comparison" });
  const element = form([["a", "Version", select(ids, ids[1])], ["b", "against", select(ids, ids[0])]], "Compare",
    async ({ a, b }) => {
      const [one, two] = await Promise.all([api("GET", `/api/v1/models/${a}`), api("GET", `/api/v1/models/${b}`)]);
      out.replaceChildren(...comparison(one, two));
    }, { id: "compare-form", redraw: false });
  return card("Compare two versions", element, out);
}

// Two detectors side by side: per-class AP, AP@.5 and recall; test images whose errors differ.
function boxComparison(one, two) {
  const classes = one.labels.map((label) => {
    const [a, b] = [one.metrics?.per_class?.[label] ?? {}, two.metrics?.per_class?.[label] ?? {}];
    return h("tr", { "data-label": label }, h("td", {}, label), h("td", { class: "num" }, num(a.ap50)),
      h("td", { class: "num" }, num(b.ap50)), h("td", { class: "num" }, num(a.ap)), h("td", { class: "num" }, num(b.ap)),
      h("td", { class: "num" }, num(a.recall)), h("td", { class: "num" }, num(b.recall)));
  });
  const errorsOf = (m) => new Map((m.metrics?.error_images ?? []).map((e) => [e.image_id, e]));
  const [ea, eb] = [errorsOf(one), errorsOf(two)];
  const count = (e) => (e ? Object.keys(ERROR_KINDS).reduce((sum, k) => sum + (e[k] ?? 0), 0) : 0);
  const differ = [...new Set([...ea.keys(), ...eb.keys()])].filter((id) => count(ea.get(id)) !== count(eb.get(id)))
    .map((id) => {
      const e = ea.get(id) ?? eb.get(id);
      return h("div", { class: "tile", "data-image": id }, thumbnail(id, { boxes: e.truth ?? null }),
        h("span", {}, `#${one.id}: ${count(ea.get(id))} errors`), h("span", {}, `#${two.id}: ${count(eb.get(id))} errors`));
    });
  const figures = (m) => `mAP@.5 ${num(m.metrics?.test_map50)}, mAP@[.5:.95] ${num(m.metrics?.test_map)}`;
  return [h("p", {}, `#${one.id}: ${figures(one)} on ${one.snapshot?.item_count ?? "?"} labels; ` +
    `#${two.id}: ${figures(two)} on ${two.snapshot?.item_count ?? "?"} labels`),
  table(["class", `AP@.5 #${one.id}`, `AP@.5 #${two.id}`, `AP #${one.id}`, `AP #${two.id}`, `recall #${one.id}`,
    `recall #${two.id}`], classes),
  h("h3", {}, `Test images where their errors differ (${differ.length})`), h("div", { class: "gallery" }, differ)];
}

function comparison(one, two) {
  if (one.metrics?.task === "detection") return boxComparison(one, two);
  const classes = one.labels.map((label) => {
    const [a, b] = [one.metrics?.per_class?.[label] ?? {}, two.metrics?.per_class?.[label] ?? {}];
    return h("tr", {}, h("td", {}, label), h("td", { class: "num" }, num(a.f1)), h("td", { class: "num" }, num(b.f1)),
      h("td", { class: "num" }, num(a.recall)), h("td", { class: "num" }, num(b.recall)));
  });
  const wrongOf = (m) => new Map((m.metrics?.wrong_test_images ?? []).map((w) => [w.image_id, w]));
  const [wa, wb] = [wrongOf(one), wrongOf(two)];
  const differ = [...new Set([...wa.keys(), ...wb.keys()])]
    .filter((id) => !wa.has(id) || !wb.has(id) || wa.get(id).predicted !== wb.get(id).predicted)
    .map((id) => {
      const w = wa.get(id) ?? wb.get(id);
      return h("div", { class: "tile" }, thumbnail(id), h("span", {}, `given ${w.label}`),
        h("span", {}, `#${one.id}: ${wa.get(id)?.predicted ?? w.label}`),
        h("span", {}, `#${two.id}: ${wb.get(id)?.predicted ?? w.label}`));
    });
  const accuracy = (m) => num(m.metrics?.test_accuracy);
  return [h("p", {}, `#${one.id}: ${accuracy(one)} on ${one.snapshot?.item_count ?? "?"} labels; ` +
    `#${two.id}: ${accuracy(two)} on ${two.snapshot?.item_count ?? "?"} labels`),
  table(["label", `F1 #${one.id}`, `F1 #${two.id}`, `recall #${one.id}`, `recall #${two.id}`], classes),
  h("h3", {}, `Test images where they differ (${differ.length})`), h("div", { class: "gallery" }, differ)];
}

// ---- Quality ----

async function quality() {
  const [agreement, cards, weak, issues] = await Promise.all([api("GET", `${P()}/agreement`),
    api("GET", `${P()}/annotators`), api("GET", `${P()}/consensus/weak?limit=50`),
    api("GET", `${P()}/label-issues?limit=100`)]);
  const detection = state.project.task_type === "detection";
  const computing = [agreement, cards].find((r) => r.status === "computing");
  if (computing) { // a large project's first report: the job's end redraws the page
    state.timers.push(setInterval(async () => {
      const job = await api("GET", `/api/v1/jobs/${computing.job_id}`).catch(() => null);
      if (job && !["queued", "running"].includes(job.status)) draw().catch(() => {});
    }, 2000));
    return [card("Quality report", h("p", { id: "report-freshness" }, `Being computed by job #${computing.job_id}: ` +
      "Dawid-Skene, kappas and alpha over every label take a while on a project this size. This page shows it " +
      "when the job ends (Mining & jobs shows its progress)."))];
  }
  return [reportCard(cards.report), card("Agreement", agreementFigures(agreement)),
    card("Annotators", scorecards(cards, detection)),
    card(`Weak consensus (${weak.items.length})`, weakGallery(weak.items, detection)),
    card(`Label issues (${issues.items.length})`, issueGallery(issues.items))];
}

// When the stored agreement figures and scorecards were computed, over how many labels, and whether newer ones
// wait for the recompute job (started as labels arrive, at most once per the project's interval).
function reportCard(report) {
  if (!report) return null;
  const behind = report.newer_labels ? "Newer labels have arrived since" : report.outdated
    ? "A gold answer, exclusion or consensus refit came since" : "Up to date";
  const pending = report.recompute_job_id ? `; recompute job #${report.recompute_job_id} is queued or running` : "";
  const recompute = h("button", { type: "button", id: "recompute", onclick: () => quietly(async () => {
    const job = await api("POST", `${P()}/jobs`, { body: { kind: "quality_report" } });
    return `Quality report job ${job.id} started: the figures update when it ends.`;
  }) }, "Recompute now");
  return card("Quality report", h("p", { id: "report-freshness", "data-outdated": report.outdated },
    `Figures computed ${when(report.computed_at)} UTC over ${report.labels} labels. ${behind}${pending}.`),
  report.outdated && !report.recompute_job_id ? recompute : null);
}

// Every figure of the agreement answer that has a value: classification (percent agreement, kappa, alpha) or
// detection (box precision, recall, F1, IoU, label kappa), each with its reading and the items behind it.
function agreementFigures(agreement) {
  if (agreement.task_type === "detection") return boxAgreementFigures(agreement);
  const rows = Object.entries(agreement).filter(([, v]) => v && typeof v === "object" && "value" in v)
    .map(([name, f]) => h("tr", { "data-figure": name }, h("td", {}, name.replaceAll("_", " ")),
      h("td", { class: "num" }, num(f.value)), h("td", {}, f.reading ?? f.reason ?? ""),
      h("td", { class: "num" }, f.items ?? f.images ?? "–")));
  const note = agreement.reason ? h("p", { class: "muted" }, agreement.reason) : null;
  return [note, table(["figure", "value", "reading", "items"], rows)];
}

function scorecards(cards, detection) {
  const rows = cards.annotators.map((a) => {
    const raised = a.flags ?? [...(a.against_consensus?.flags ?? []), ...(a.against_gold?.flags ?? [])];
    const flags = raised.map((f) => h("span", { class: "flag", title: f.evidence }, f.flag));
    const evidence = raised.length ? h("details", {}, h("summary", {}, "evidence"),
      h("pre", {}, raised.map((f) => `${f.flag}: ${f.evidence}`).join("\n"))) : null;
    const confusion = a.confusion ? h("details", {}, h("summary", {}, "confusion"),
      heatmap(cards.labels, a.confusion, { onCell: () => {} })) : null;
    const figures = detection
      ? [`recall ${num(a.against_consensus?.recall)}`, `precision ${num(a.against_consensus?.precision)}`]
      : [`gold ${pct(a.gold_accuracy)}`, `agreement ${pct(a.agreement_with_consensus)}`, `kappa ${num(a.kappa)}`,
        `estimated ${pct(a.estimated_accuracy)}`];
    const toggle = !isAdmin() ? null : a.excluded
      ? h("button", { type: "button", onclick: () => quietly(async () => {
        await api("DELETE", `${P()}/annotators/${a.annotator_id}/exclusion`);
        return `${a.name}'s labels count again.`;
      }) }, "Include")
      : form([["reason", "", h("input", { required: true, placeholder: "reason", size: 14 })]], "Exclude",
        async ({ reason }) => {
          await api("POST", `${P()}/annotators/${a.annotator_id}/exclusion`, { body: { reason } });
          return `${a.name}'s labels are left out of consensus.`;
        });
    return h("tr", { "data-annotator": a.annotator_id }, h("td", {}, a.name, a.excluded ? " (excluded)" : ""),
      h("td", { class: "num" }, a.labels ?? a.answers ?? "–"), h("td", {}, figures.join(" · ")),
      h("td", {}, flags, evidence, confusion), h("td", {}, toggle));
  });
  return [cards.reason ? h("p", { class: "muted" }, cards.reason) : null,
    table(["annotator", "labels", "figures", "flags", ""], rows)];
}

function weakGallery(items, detection) {
  if (!items.length) return h("p", { class: "muted" }, "No image stayed weak after review.");
  return h("div", { class: "gallery" }, items.map((w) => {
    const resolve = detection
      ? h("button", { type: "button", onclick: () => quietly(async () => {
        await api("PUT", `${P()}/gold`, { body: { image_id: w.image_id, boxes: w.boxes ?? [] } });
        return `Image ${w.image_id}'s boxes are gold now.`;
      }) }, "These boxes are right")
      : form([["label", "", select(state.project.labels, w.label)]], "Resolve", async ({ label }) => {
        await api("PUT", `${P()}/gold`, { body: { image_id: w.image_id, label } });
        return `Image ${w.image_id} is gold: ${label}.`;
      });
    const votes = detection ? (w.reasons ?? []).join(", ")
      : Object.entries(w.votes ?? {}).map(([label, n]) => `${label}×${n}`).join(", ");
    return h("div", { class: "tile", "data-image": w.image_id }, thumbnail(w.image_id, { boxes: detection ? w.boxes ?? [] : null }),
      h("span", {}, detection ? `${(w.boxes ?? []).length} boxes` : `${w.label}${w.tie ? " (tie)" : ""}`),
      h("span", { class: "muted" }, votes), resolve);
  }));
}

function issueGallery(items) {
  if (!items.length) return h("p", { class: "muted" }, "No label issues: run a label_quality job to look for some.");
  const chosen = new Set();
  const tiles = items.map((issue) => {
    const tile = h("label", { class: "tile", "data-image": issue.image_id },
      thumbnail(issue.image_id, { boxes: issue.box ? [{ ...issue.box, label: issue.suggested_label }] : null }),
      h("span", {}, issue.issue_type ? `${issue.issue_type}: ${issue.given_label || "no box"} → ${issue.suggested_label}`
        : `given ${issue.given_label} → ${issue.suggested_label}`),
      h("span", { class: "muted" }, `score ${num(issue.score)}${issue.sent_for_review_at ? " · in review" : ""}`),
      h("input", { type: "checkbox", onchange: (event) => {
        if (event.target.checked) chosen.add(issue.image_id); else chosen.delete(issue.image_id);
        tile.classList.toggle("selected", event.target.checked);
      } }));
    return tile;
  });
  const send = h("button", { type: "button", class: "primary", onclick: () => quietly(async () => {
    if (!chosen.size) throw new Error("select the images to send first");
    const answer = await api("POST", `${P()}/label-issues/relabel`, { body: { image_ids: [...chosen] } });
    return `${answer.queued.length} images sent to review.`;
  }) }, "Send selected to review");
  return [send, h("div", { class: "gallery" }, tiles)];
}

function boxAgreementFigures(agreement) {
  const pooled = agreement.overall;
  const note = agreement.reason ? h("p", { class: "muted" }, agreement.reason) : null;
  if (!pooled) return [note];
  const figures = pooled.overall;
  const rows = ["precision", "recall", "f1", "mean_iou", "label_agreement"].map((name) =>
    h("tr", { "data-figure": name }, h("td", {}, `box ${name.replaceAll("_", " ")}`), h("td", { class: "num" },
      num(figures[name])), h("td", {}, `${figures.matched} of ${figures.first_boxes} boxes matched`),
    h("td", { class: "num" }, pooled.images)));
  const kappa = figures.cohen_kappa;
  rows.push(h("tr", { "data-figure": "cohen_kappa" }, h("td", {}, "label kappa"), h("td", { class: "num" },
    num(kappa.value)), h("td", {}, kappa.reading ?? kappa.reason ?? ""), h("td", { class: "num" }, kappa.items)));
  return [note, h("p", { class: "muted" }, `Boxes matched at IoU ${agreement.iou_threshold} or more, every pair ` +
    `of annotators pooled, on ${agreement.images} overlapped images.`), table(["figure", "value", "reading", "images"],
    rows)];
}

// ---- Mining and jobs ----

async function mining() {
  const [queue, schedules, jobs] = await Promise.all([api("GET", `${P()}/queue?limit=20`),
    api("GET", `${P()}/schedules`), api("GET", `${P()}/jobs`)]);
  const next = h("div", { class: "gallery" }, queue.items.map((q) => h("div", { class: "tile", "data-image": q.image_id },
    thumbnail(q.image_id), h("span", {}, `${q.tier} · score ${num(q.priority)}`), h("span", { class: "muted" }, q.why))));
  const cron = Object.fromEntries(schedules.map((sc) => [sc.kind, sc]));
  const scheduleFields = ["mine", "train", "label_quality", "quality_report"].map((kind) =>
    [kind, `${kind}${cron[kind] ? ` (next ${when(cron[kind].next_run_at)} UTC)` : ""}`,
      h("input", { value: cron[kind]?.cron ?? "", placeholder: "cron, e.g. 0 * * * *", size: 16 })]);
  const scheduleForm = form(scheduleFields, "Save schedules", async (values) => {
    const body = Object.fromEntries(Object.entries(values).map(([k, v]) => [k, v.trim() || null]));
    await api("PUT", `${P()}/schedules`, { body });
    return "Schedules saved.";
  }, { id: "schedule-form" });
  const strategies = miningStrategies();
  const strategyForm = isAdmin() ? form([["strategy", "Strategy", select(await strategies,
    state.project.settings.mining.strategy)]], "Save strategy", async ({ strategy }) => {
    await api("PATCH", `${P()}/settings`, { body: { settings: { mining: { strategy } } } });
    return `Mining strategy: ${strategy}.`;
  }) : null;
  const start = h("button", { type: "button", class: "primary", onclick: () => quietly(async () => {
    const job = await api("POST", `${P()}/jobs`, { body: { kind: "mine" } });
    return `Mining job ${job.id} queued.`;
  }) }, "Start a mining pass");
  return [card(`What tasks/next serves next (strategy ${queue.strategy})`, next),
    card("Mining and schedules", strategyForm, start, h("h3", {}, "Schedules (UTC)"), scheduleForm),
    card("Jobs", jobsTable(jobs, { id: "jobs" }))];
}

async function miningStrategies() {
  const schema = await fetch("/openapi.json").then((r) => r.json());
  const property = schema.components.schemas.MiningSettings.properties.strategy;
  const ref = property.$ref ?? property.allOf?.[0]?.$ref;
  return ref ? schema.components.schemas[ref.split("/").pop()].enum : property.enum ?? [];
}

function jobsTable(jobs, { id }) {
  if (!jobs.length) return h("p", { id, class: "muted" }, "No jobs.");
  const rows = jobs.map((job) => {
    const seconds = job.started_at ? ((job.finished_at ? new Date(job.finished_at) : new Date()) -
      new Date(job.started_at)) / 1000 : null;
    const cancel = ["queued", "running"].includes(job.status)
      ? h("button", { type: "button", onclick: () => quietly(async () => {
        await api("DELETE", `/api/v1/jobs/${job.id}`);
        return `Job ${job.id} cancelled.`;
      }) }, "Cancel") : null;
    const failure = job.error ? h("details", {}, h("summary", {}, job.error), h("pre", {}, job.traceback ?? "")) : null;
    return h("tr", { "data-job": job.id }, h("td", {}, `#${job.id}`), h("td", {}, job.kind),
      h("td", { class: `status-${job.status}` }, job.status), h("td", {}, bar(job.progress), pct(job.progress)),
      h("td", { class: "num" }, seconds === null ? "–" : `${seconds.toFixed(1)} s`),
      h("td", {}, job.message, failure), h("td", {}, cancel));
  });
  return h("div", { id }, table(["job", "kind", "status", "progress", "duration", "message", ""], rows));
}

// ---- People and settings ----

async function people() {
  const members = await api("GET", `${P()}/members`);
  const tokenShown = h("div", { id: "token-shown" });
  const showToken = (user, token) => tokenShown.replaceChildren(h("p", {}, `${user}'s token (shown once, copy it now):`),
    h("p", { class: "token" }, token));
  if (state.newToken) showToken(...state.newToken);
  state.newToken = null;
  const rows = members.map((m) => h("tr", { "data-user": m.id }, h("td", {}, m.name), h("td", {}, m.role),
    h("td", {}, isAdmin() ? h("button", { type: "button", onclick: () => quietly(async () => {
      const answer = await api("POST", `/api/v1/users/${m.id}/token`);
      state.newToken = [m.name, answer.token];
    }) }, "Rotate token") : null)));
  const parts = [card("Members", table(["name", "role", ""], rows), tokenShown)];
  if (isAdmin()) {
    parts.push(card("Add a person", form([["name", "Name", h("input", { required: true })],
      ["role", "Role", select(["annotator", "engineer"], "annotator")]], "Create and add", async ({ name, role }) => {
      const user = await api("POST", "/api/v1/users", { body: { name, role } });
      await api("POST", `${P()}/members`, { body: { user_id: user.id } });
      state.newToken = [user.name, user.token];
    }, { id: "add-person" })));
    parts.push(card("Settings", await settingsForm()));
  }
  return parts;
}

// Every project setting as a form field, built from the OpenAPI schema with its description; a refusal's
// details are shown beside the fields they name.
async function settingsForm() {
  const schemas = (await fetch("/openapi.json").then((r) => r.json())).components.schemas;
  const resolve = (p) => {
    const ref = p.$ref ?? p.allOf?.[0]?.$ref ?? p.anyOf?.find((a) => a.$ref)?.$ref;
    return ref ? schemas[ref.split("/").pop()] : p;
  };
  const inputs = [];
  const fieldsOf = (schema, values, path) => Object.entries(schema.properties).flatMap(([name, property]) => {
    const target = resolve(property), key = [...path, name], value = values?.[name];
    if (target.properties) {
      return [h("fieldset", {}, h("legend", {}, name), fieldsOf(target, value, key))];
    }
    const types = (property.anyOf ?? [property]).map((t) => t.type);
    let input;
    if (target.enum) input = select(["", ...target.enum], value ?? "");
    else if (types.includes("boolean") && types.includes("null")) {
      input = select(["default", "true", "false"], value === null || value === undefined ? "default" : String(value));
    } else if (types.includes("boolean")) input = h("input", { type: "checkbox", checked: Boolean(value) });
    else if (types.includes("object")) input = h("input", { value: JSON.stringify(value ?? {}) });
    else input = h("input", { value: value ?? "", size: 10 });
    input.id = `setting-${key.join("-")}`;
    inputs.push({ key, input, types, original: value });
    return [h("label", { for: input.id }, name), input,
      h("span", { class: "desc" }, property.description ?? "", h("span", { class: "field-error", "data-for": key.join(".") }))];
  });
  const element = h("form", { class: "settings-form", id: "settings-form" },
    fieldsOf(schemas.ProjectSettings, state.project.settings, []),
    h("button", { type: "submit", class: "primary" }, "Save changed settings"));
  element.addEventListener("submit", (event) => {
    event.preventDefault();
    for (const shown of element.querySelectorAll(".field-error")) shown.textContent = "";
    const settings = {};
    for (const { key, input, types, original } of inputs) {
      let value;
      if (input.type === "checkbox") value = input.checked;
      else if (types.includes("boolean")) value = input.value === "default" ? null : input.value === "true";
      else if (input.value === "" && types.includes("null")) value = null;
      else if (types.includes("object")) value = JSON.parse(input.value || "{}");
      else if (types.includes("integer") || types.includes("number")) value = input.value === "" ? null : Number(input.value);
      else value = input.value;
      if (JSON.stringify(value) === JSON.stringify(original ?? null) || (value === null && original === undefined)) continue;
      let group = settings;
      for (const part of key.slice(0, -1)) group = group[part] ??= {};
      group[key[key.length - 1]] = value;
    }
    act(async () => {
      await api("PATCH", `${P()}/settings`, { body: { settings } });
      return "Settings saved.";
    }).catch((error) => {
      for (const detail of error.details ?? []) {
        const where = detail.where.replace(/^body\.settings\./, "");
        const slot = element.querySelector(`.field-error[data-for="${CSS.escape(where)}"]`);
        if (slot) slot.textContent = ` ${detail.message}`;
      }
    });
  });
  return element;
}

// ---- Monitoring ----

async function monitoring() {
  const [drift, deployments, days] = await Promise.all([api("GET", `${P()}/drift`),
    api("GET", `${P()}/deployments`), api("GET", `${P()}/predictions/per-day`)]);
  const volume = table(["day", "answers sent", "of them fallbacks", "shadow answers"], days.map((d) =>
    h("tr", {}, h("td", {}, d.day), h("td", { class: "num" }, d.served), h("td", { class: "num" }, d.fallback),
      h("td", { class: "num" }, d.shadow))));
  const check = h("button", { class: "primary", id: "check-drift", onclick: () => quietly(async () => {
    const job = await api("POST", `${P()}/jobs`, { body: { kind: "drift" } });
    return `Drift check #${job.id} started: its point joins the series when it finishes (Mining & jobs shows it).`;
  }) }, "Check drift now");
  const series = table(["window end", "predictions", "reference images", "domain AUC", "MMD p", "labels χ² p", "status"],
    drift.points.map((p) => h("tr", { "data-status": p.status }, h("td", {}, when(p.window_end)),
      h("td", { class: "num" }, p.predictions), h("td", { class: "num" }, p.reference),
      h("td", { class: "num" }, num(p.domain_auc)), h("td", { class: "num" }, num(p.mmd_p, 4)),
      h("td", { class: "num" }, num(p.label_chi2_p, 4)), h("td", { class: p.status === "drift" ? "error" : "" },
        p.status))));
  const drifted = h("div", { class: "gallery", id: "drifted" }, drift.most_drifted.map((d) =>
    h("div", { class: "tile" }, d.image_id ? thumbnail(d.image_id) : h("span", { class: "muted" }, "not captured"),
      h("span", {}, `production score ${num(d.score)}`))));
  const compared = table(["model", "role", "share", "inputs compared", "agreement", "ms/image", "serving ms/image",
    "labeled", "accuracy", "serving accuracy", "McNemar p", "verdict", ""], deployments.map((d) =>
    h("tr", { "data-model": d.model_id }, h("td", {}, `#${d.model_id}`), h("td", {}, d.deployment),
      h("td", { class: "num" }, d.traffic_share === null ? "–" : pct(d.traffic_share)),
      h("td", { class: "num" }, d.compared), h("td", { class: "num" }, pct(d.agreement)),
      h("td", { class: "num" }, num(d.latency_ms)), h("td", { class: "num" }, num(d.serving_latency_ms)),
      h("td", { class: "num" }, d.labeled), h("td", { class: "num" }, pct(d.accuracy)),
      h("td", { class: "num" }, pct(d.serving_accuracy)), h("td", { class: "num" }, num(d.p_value, 4)),
      h("td", {}, d.verdict ?? "–"),
      h("td", {}, h("button", { onclick: () => quietly(async () => {
        await api("POST", `/api/v1/models/${d.model_id}/promote`,
          { body: { reason: `promoted from ${d.deployment} in the console` } });
        return `Model #${d.model_id} is the champion.`;
      }) }, "Promote")))));
  return [
    card("Predictions per day (30 days)", columnChart(days.map((d) => ({ name: d.day, value: d.served })),
      { label: "answers sent per day" }), volume),
    card("Drift", h("p", { class: "muted" }, "Each check compares the newest logged predictions with the project's "
      + "images the champion did not train on. AUC 0.5: indistinguishable."), check,
    columnChart(drift.points.map((p) => ({ name: when(p.window_end), value: Number(p.domain_auc.toFixed(3)) })),
      { label: "domain classifier AUC per check" }), series),
    card("Most drifted inputs of the newest check", drift.most_drifted.length ? drifted
      : h("p", { class: "muted" }, "No drift check yet.")),
    card("Shadow and canary models", deployments.length ? compared
      : h("p", { class: "muted" }, "No model in shadow or canary: PUT /api/v1/models/{id}/deployment.")),
  ];
}

const PAGES = { home, overview, models, quality, mining, people, monitoring };

function start() {
  $("sign-in").hidden = true;
  $("view").hidden = $("sign-out").hidden = false;
  return act(async () => {}).catch(() => {});
}

$("sign-in-form").addEventListener("submit", (event) => {
  event.preventDefault();
  state.token = $("token").value.trim();
  localStorage.setItem(TOKEN_KEY, state.token);
  $("token").value = "";
  start();
});
$("sign-out").addEventListener("click", (event) => {
  event.preventDefault();
  signOut();
});

if (state.token) start();
else signOut();
