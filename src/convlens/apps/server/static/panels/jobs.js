// The jobs panel: start long work in the background (feature visualization of a layer, TCAV,
// explanations of the picture by several methods, an evaluation on the toons), follow its
// progress, cancel it, open its results. Hidden when the server runs no jobs.

import { api, ApiError, errorDetail, getJSON, seg } from "../lib/api.js";
import { $, clamp, el, fillSelect, formatPercent, mount as put, showError } from "../lib/dom.js";
import { isClassifier, layerChannels, layerItem, on, resolveClass, state } from "../lib/state.js";

const MARKUP = `
<section id="jobs-panel" class="panel wide-panel" aria-labelledby="jobs-title" hidden>
  <h2 id="jobs-title">Jobs</h2>
  <form id="job-form" class="job-form classify-only" novalidate>
    <label>Kind
      <select id="job-kind">
        <option value="featurevis">Feature visualization</option>
        <option value="tcav">TCAV</option>
        <option value="explain">Explanations of this picture</option>
        <option value="evaluate">Evaluation on toons</option>
        <option value="dataset">Data set run on toons (report)</option>
      </select>
    </label>
    <span class="job-fields" data-kind="featurevis">
      <label>Layer <select id="job-layer"></select></label>
      <label>Channels <input id="job-channels" value="0-7" size="9" placeholder="0-7, 12"></label>
      <label>Steps <input id="job-steps" type="number" min="1" max="2048" step="1" value="256"></label>
    </span>
    <span class="job-fields" data-kind="tcav" hidden>
      <label>Target class <input id="job-target" list="class-labels" autocomplete="off" placeholder="top-1 of the picture"></label>
      <label>Layers <input id="job-layers" list="job-layer-names" size="16" placeholder="comma-separated"></label>
      <label>Concepts <input id="job-concepts" value="toons" size="10"></label>
      <label>Test <select id="job-test" title="local: a permutation test where the concept appears (default); sets: the TCAV score against the random sets'; paper: Kim et al.'s t-test, for comparison">
        <option value="local" selected>local (default)</option>
        <option value="sets">sets</option>
        <option value="paper">paper (Kim et al.)</option>
      </select></label>
    </span>
    <span class="job-fields" data-kind="explain" hidden>
      <label>Methods <input id="job-explain-methods" value="gradcam, integrated_gradients, occlusion" size="28"></label>
      <label>Class <input id="job-explain-target" list="class-labels" autocomplete="off" placeholder="top-1"></label>
    </span>
    <span class="job-fields" data-kind="evaluate" hidden>
      <label>Methods <input id="job-eval-methods" value="gradcam, saliency" size="20"></label>
      <label>Pictures <input id="job-eval-n" type="number" min="2" max="1000" step="1" value="50"></label>
      <label>Steps <input id="job-eval-steps" type="number" min="2" max="100" step="1" value="20"></label>
    </span>
    <span class="job-fields" data-kind="dataset" hidden>
      <label>Methods <input id="job-dataset-methods" value="gradcam" size="20"></label>
      <label>Toons <input id="job-dataset-n" type="number" min="2" max="2000" step="1" value="60"></label>
    </span>
    <datalist id="job-layer-names"></datalist>
    <button id="job-start" type="submit" class="primary">Start</button>
  </form>
  <p id="jobs-note" class="muted small detect-only">Jobs (feature visualization, TCAV, explanations, evaluation, data set runs) take a classifier: choose one in the Model menu to start one.</p>
  <div class="table-wrap">
    <table id="jobs-table" class="data-table">
      <thead>
        <tr><th>Job</th><th>Kind</th><th>Model</th><th>Parameters</th><th>Status</th><th>Progress</th><th>Message</th><th>Results</th><th></th></tr>
      </thead>
      <tbody></tbody>
    </table>
  </div>
  <p id="jobs-empty" class="muted small">No jobs yet.</p>
</section>`;

const ACTIVE_JOBS = new Set(["queued", "running"]);
const IMAGE_URL = /\.(png|jpe?g|gif|webp|svg)(\?|#|$)/i;
const jobs = {
  timer: 0,
  seq: 0,
  available: false,
  failing: false,
  rows: new Map(), // job id -> {sig, row}
};

function fillJobLayers(model) {
  if (!isClassifier()) return;
  const items = state.layers.map(layerItem);
  const preferred = items.some((i) => i.value === model.default_layer) ? model.default_layer : state.layer;
  fillSelect($("job-layer"), items, preferred);
  $("job-layer-names").replaceChildren(...state.layers.map((l) => el("option", { value: l.name })));
  $("job-layers").value = model.default_layer || "";
  $("job-target").value = "";
}

function prefillJobTarget() {
  const input = $("job-target");
  if (!input.value && state.predictions.length) input.value = state.classValues[state.predictions[0].index] ?? "";
}

function showJobFields() {
  const kind = $("job-kind").value;
  for (const box of document.querySelectorAll(".job-fields")) box.hidden = box.dataset.kind !== kind;
}

// "0-7, 12" -> [0, 1, ..., 7, 12]
function parseChannels(text, count) {
  const channels = [];
  for (const part of text.split(",").map((p) => p.trim()).filter(Boolean)) {
    const m = part.match(/^(\d+)(?:\s*-\s*(\d+))?$/);
    if (!m) throw new Error(`Channels: “${part}” is not a number or a range like 0-7`);
    const lo = Number(m[1]);
    const hi = m[2] == null ? lo : Number(m[2]);
    if (hi < lo) throw new Error(`Channels: the range “${part}” runs backwards`);
    if (count && hi >= count) throw new Error(`Channels: the layer has channels 0-${count - 1}`);
    for (let c = lo; c <= hi; c += 1) channels.push(c);
  }
  const unique = [...new Set(channels)];
  if (!unique.length || unique.length > 256) throw new Error("Channels: give 1 to 256 channels, e.g. 0-7");
  return unique;
}

function methodList(id) {
  const names = $(id).value.split(",").map((s) => s.trim()).filter(Boolean);
  if (!names.length) throw new Error("Methods: give at least one, e.g. gradcam, saliency");
  return names;
}

function wholeNumber(id, label) {
  const value = Number($(id).value);
  if (!Number.isInteger(value)) throw new Error(`${label}: a whole number is needed`);
  return value;
}

function jobParams(kind) {
  if (kind === "explain") {
    if (!state.imageId) throw new Error("Explanations: choose or upload a picture first");
    const params = { images: [state.imageId], methods: methodList("job-explain-methods") };
    const text = $("job-explain-target").value.trim();
    if (text && text !== "top-1") {
      const target = resolveClass(text);
      if (target.error) throw new Error(target.error);
      params.target = target.index;
    }
    return params;
  }
  if (kind === "evaluate") {
    return {
      methods: methodList("job-eval-methods"),
      n: wholeNumber("job-eval-n", "Pictures"),
      steps: wholeNumber("job-eval-steps", "Steps"),
    };
  }
  if (kind === "dataset") {
    return { methods: methodList("job-dataset-methods"), n: wholeNumber("job-dataset-n", "Toons") };
  }
  if (kind === "featurevis") {
    const layer = $("job-layer").value;
    const steps = Number($("job-steps").value);
    if (!Number.isInteger(steps) || steps < 1) throw new Error("Steps: a whole number of at least 1 is needed");
    const count = layerChannels(state.layers.find((l) => l.name === layer));
    return { layer, channels: parseChannels($("job-channels").value, count), steps };
  }
  const text = $("job-target").value.trim() || (state.predictions[0] ? String(state.predictions[0].index) : "");
  const target = resolveClass(text);
  if (target.error || target.index == null) throw new Error(target.error || "Target class: choose a class");
  const layers = $("job-layers").value.split(",").map((s) => s.trim()).filter(Boolean);
  const concepts = $("job-concepts").value.trim() || "toons";
  const test = $("job-test").value || "local";
  return layers.length ? { target: target.index, layers, concepts, test } : { target: target.index, concepts, test };
}

async function startJob(event) {
  event.preventDefault();
  if (!state.model) return;
  const kind = $("job-kind").value;
  let params;
  try {
    params = jobParams(kind);
  } catch (err) {
    showError(err.message);
    return;
  }
  const button = $("job-start");
  button.disabled = true;
  button.classList.add("loading");
  try {
    const body = JSON.stringify({ kind, model: state.model.name, params });
    await getJSON("/api/jobs", { method: "POST", headers: { "Content-Type": "application/json" }, body });
  } catch (err) {
    showError(`Could not start the job: ${err.message}`);
  } finally {
    button.disabled = false;
    button.classList.remove("loading");
  }
  refreshJobs();
}

async function cancelJob(id, button) {
  button.disabled = true;
  try {
    await api(`/api/jobs/${seg(id)}`, { method: "DELETE" });
  } catch (err) {
    showError(`Could not cancel the job: ${err.message}`);
  }
  refreshJobs();
}

async function refreshJobs() {
  clearTimeout(jobs.timer);
  const seq = ++jobs.seq;
  let list;
  try {
    const res = await fetch("/api/jobs");
    if (res.status === 404 || res.status === 405) {
      jobs.available = false;
      $("jobs-panel").hidden = true;
      return;
    }
    if (!res.ok) throw new ApiError(await errorDetail(res), res.status);
    list = await res.json();
    if (!Array.isArray(list)) list = [];
  } catch (err) {
    if (seq !== jobs.seq) return;
    if (jobs.available && !jobs.failing) showError(`Jobs: ${err.message || "cannot reach the server"}`);
    jobs.failing = true;
    if (jobs.available) jobs.timer = setTimeout(refreshJobs, 3000);
    return;
  }
  if (seq !== jobs.seq) return; // a newer refresh is on its way
  Object.assign(jobs, { available: true, failing: false });
  $("jobs-panel").hidden = false;
  renderJobs(list);
  if (list.some((j) => ACTIVE_JOBS.has(j.status))) jobs.timer = setTimeout(refreshJobs, 1000);
}

// Rows are rebuilt only when their job changed, so result thumbnails don't reload every second.
function renderJobs(list) {
  const rows = list.map((job) => {
    const sig = JSON.stringify(job);
    const known = jobs.rows.get(job.id);
    if (known && known.sig === sig) return known.row;
    const row = jobRow(job);
    jobs.rows.set(job.id, { sig, row });
    return row;
  });
  const ids = new Set(list.map((j) => j.id));
  for (const id of [...jobs.rows.keys()]) if (!ids.has(id)) jobs.rows.delete(id);
  $("jobs-table").tBodies[0].replaceChildren(...rows);
  $("jobs-empty").hidden = list.length > 0;
}

function jobRow(job) {
  const progress = clamp(Number(job.progress) || 0, 0, 1);
  const bar = el(
    "div",
    { class: `progress${job.status === "running" ? " running" : ""}`, title: formatPercent(progress) },
    el("div", { class: "progress-fill", style: { width: `${(progress * 100).toFixed(1)}%` } }),
  );
  let action = null;
  if (ACTIVE_JOBS.has(job.status)) {
    action = el("button", { type: "button", class: "job-cancel small-button", "data-job-id": job.id }, "Cancel");
    action.addEventListener("click", () => cancelJob(job.id, action));
  }
  return el(
    "tr",
    { "data-job-id": job.id, "data-status": job.status },
    el("td", { class: "mono", title: job.id }, String(job.id).slice(0, 8)),
    el("td", {}, job.kind || ""),
    el("td", {}, job.model || ""),
    el("td", { class: "job-params mono small", title: JSON.stringify(job.params || {}) }, describeParams(job.params)),
    el("td", {}, el("span", { class: `status status-${job.status}` }, job.status)),
    el("td", { class: "progress-cell" }, bar, el("span", { class: "mono small" }, formatPercent(progress))),
    el("td", { class: "job-message", title: job.message || "" }, job.message || ""),
    el("td", {}, el("div", { class: "job-results" }, ...jobResults(job.results || []))),
    el("td", {}, action),
  );
}

// {layer: "conv2", channels: [0, 1, 2, 3]} -> "layer conv2 · channels 0-3"
function describeParams(params) {
  const parts = [];
  for (const [name, value] of Object.entries(params || {})) {
    let text = Array.isArray(value) ? value.join(", ") : String(value);
    const numbers = Array.isArray(value) && value.length > 2 && value.every(Number.isInteger);
    if (numbers && value.every((v, i) => i === 0 || v === value[i - 1] + 1)) text = `${value[0]}-${value[value.length - 1]}`;
    if (name === "images") text = `${value.length} picture${value.length === 1 ? "" : "s"}`;
    parts.push(`${name} ${text.length > 40 ? `${text.slice(0, 39)}…` : text}`);
  }
  return parts.join(" · ");
}

function jobResults(results) {
  const shown = results.slice(0, 24).map((r) => {
    const name = r.name || r.url;
    const content = IMAGE_URL.test(r.url) ? el("img", { src: r.url, alt: name, loading: "lazy" }) : name;
    return el("a", { href: r.url, target: "_blank", rel: "noopener", title: name, class: "result" }, content);
  });
  const more = results.length - shown.length;
  if (more > 0) shown.push(el("span", { class: "muted small" }, `+${more} more`));
  return shown;
}

export function mount() {
  put(document.body, MARKUP);
  $("job-kind").addEventListener("change", showJobFields);
  $("job-form").addEventListener("submit", startJob);
  on("model", fillJobLayers);
  on("predictions", prefillJobTarget);
  showJobFields();
  refreshJobs();
}
