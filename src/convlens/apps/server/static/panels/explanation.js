// The explanation panel: any registered attribution method (/api/methods: the method table,
// each setting a form control) on the picture, for the top-1 class or a chosen one.

import { imageBase, loadList, seg } from "../lib/api.js";
import { $, el, fillSelect, humanize, formatMs, mount as put, openFullSize, showError } from "../lib/dom.js";
import { FAMILY_LABELS, readSettings, renderSettings } from "../lib/forms.js";
import { RunWatch } from "../lib/runs.js";
import { loadImage } from "../lib/slots.js";
import { isClassifier, layerItem, on, resolveClass, state } from "../lib/state.js";

const FAMILY_ORDER = ["cam", "gradient", "perturbation"];

const MARKUP = `
<section class="panel classify-only" id="explain-panel" aria-labelledby="explain-title">
  <h2 id="explain-title">Explanation</h2>
  <div class="field">
    <label for="method-select">Method</label>
    <select id="method-select"></select>
  </div>
  <div id="method-info" class="method-info small">
    <span id="method-family" class="badge"></span>
    <span id="method-description"></span>
    <a id="method-paper" target="_blank" rel="noopener noreferrer" hidden>paper&nbsp;&#8599;</a>
  </div>
  <div class="field">
    <label for="class-input">Class</label>
    <div class="class-wrap">
      <input id="class-input" list="class-labels" value="top-1" autocomplete="off" spellcheck="false"
             placeholder="top-1, a label or an index">
      <small id="class-hint" class="help"></small>
    </div>
  </div>
  <div id="method-settings" class="settings" aria-label="Method settings"></div>
  <div id="explain-layer-field" class="field" hidden>
    <label for="explain-layer-select">Layer</label>
    <select id="explain-layer-select"></select>
  </div>
  <div class="run-row">
    <button id="run-button" type="button" class="primary">Run</button>
    <button id="explain-cancel" type="button" class="small-button" hidden>Cancel</button>
    <span id="explain-time" class="mono small"></span>
    <span id="explain-target" class="muted small ellipsis"></span>
  </div>
  <div class="scale-row small">
    <label title="Draw the next maps (other methods, classes or pictures) on the range of this one, so that equal values get equal colours">
      <input id="hold-scale" type="checkbox"> Keep this scale</label>
    <span id="explain-scale" class="mono"></span>
  </div>
  <div id="overlay-frame" class="frame overlay-frame" data-state="empty">
    <img id="overlay" alt="Explanation overlay" title="Click to open at full size">
    <span class="frame-msg">No image yet</span>
  </div>
</section>`;

let methods = [];
let method = null; // the selected entry of /api/methods
const chosen = {}; // method name -> {setting name: value chosen by the user}
let timer = 0;
let watch = null; // the request in flight: its progress and its Cancel button (mount())
let shownScale = null; // [vmin, vmax] of the map on show (its colour bar)
let heldScale = null; // the range the next maps are drawn on, while "Keep this scale" is ticked

function renderMethodOptions() {
  const groups = new Map();
  for (const m of methods) {
    const family = m.family || "other";
    if (!groups.has(family)) groups.set(family, []);
    groups.get(family).push(m);
  }
  const rank = (f) => (FAMILY_ORDER.includes(f) ? FAMILY_ORDER.indexOf(f) : FAMILY_ORDER.length);
  const families = [...groups.keys()].sort((a, b) => rank(a) - rank(b));
  $("method-select").replaceChildren(
    ...families.map((family) =>
      el(
        "optgroup",
        { label: FAMILY_LABELS[family] || humanize(family) },
        ...groups.get(family).map((m) => el("option", { value: m.name, title: m.description }, m.name)),
      ),
    ),
  );
}

function setMethod(name) {
  method = methods.find((m) => m.name === name) || null;
  if (!method) return;
  $("method-select").value = method.name;
  $("method-family").textContent = FAMILY_LABELS[method.family] || method.family || "";
  $("method-description").textContent = method.description || "";
  const paper = $("method-paper");
  paper.hidden = !method.paper;
  if (method.paper) paper.href = method.paper;
  $("explain-layer-field").hidden = !method.needs_layer;
  chosen[method.name] ??= {};
  renderSettings($("method-settings"), method.settings, chosen[method.name]);
  scheduleExplain();
}

function onSettingChanged(event) {
  const input = event.target;
  if (!input.dataset || !input.dataset.setting || !method) return;
  chosen[method.name][input.dataset.setting] = input.type === "checkbox" ? input.checked : input.value;
  scheduleExplain();
}

function setModel(model) {
  if (!isClassifier()) return;
  // every layer with a map (blocks too: CAMs are usually taken at a block's output)
  const layers = model.explain_layers || model.layers || [];
  const fallback = layers.length ? layers[layers.length - 1].name : null;
  fillSelect($("explain-layer-select"), layers.map(layerItem), model.default_layer || fallback);
  $("class-input").value = "top-1";
  checkClassInput();
  if (state.imageId) scheduleExplain(0);
}

function checkClassInput() {
  const input = $("class-input");
  const result = resolveClass(input.value);
  input.classList.toggle("invalid", Boolean(result.error));
  $("class-hint").textContent = result.error || (result.index == null ? "" : `class #${result.index}`);
  return result;
}

function explainClass(index) {
  $("class-input").value = state.classValues[index] ?? String(index);
  checkClassInput();
  scheduleExplain(0);
}

function updateExplainTarget(index = resolveClass($("class-input").value).index) {
  let text = "";
  if (index != null) text = `target: ${state.classValues[index] ?? `#${index}`}`;
  else if (state.predictions.length) text = `target: top-1 (${state.predictions[0].label})`;
  $("explain-target").textContent = text;
  $("explain-target").title = text;
}

function scheduleExplain(delay = 300) {
  clearTimeout(timer);
  timer = setTimeout(runExplain, delay);
}

function runExplain() {
  clearTimeout(timer);
  const { model, imageId } = state;
  if (!model || !method || !imageId || !isClassifier()) return;
  const target = checkClassInput();
  const settings = readSettings($("method-settings"));
  const problem = target.error || settings.error;
  if (problem) {
    $("explain-time").textContent = "";
    $("explain-target").textContent = problem;
    return;
  }
  const params = new URLSearchParams();
  if (target.index != null) params.set("target", String(target.index));
  if (method.needs_layer && $("explain-layer-select").value) params.set("layer", $("explain-layer-select").value);
  for (const [name, value] of Object.entries(settings.values)) params.set(name, value);
  if (heldScale) params.set("scale", heldScale.join(","));
  // its progress at /api/runs/<id>, and its cancel; the previous map stays dimmed under it
  // (the frame's loading state) until it is done
  const runId = watch.begin();
  params.set("run", runId);
  const query = params.toString();
  const url = `${imageBase()}/explain/${seg(method.name)}.png${query ? `?${query}` : ""}`;
  const name = method.name;

  updateExplainTarget(target.index);
  loadImage("overlay", url, {
    meta: { method: name, target: target.index == null ? "top-1" : String(target.index) },
    onLoad: (res, ms) => {
      watch.end(runId);
      const compute = parseFloat(res.headers.get("X-Ms") || ""); // the server's own compute time
      const total = formatMs(ms);
      $("explain-time").textContent = Number.isFinite(compute) ? `${formatMs(compute)} (${total} total)` : total;
      showScale(res.headers);
    },
    onError: (message) => {
      const cancelled = watch.end(runId);
      $("explain-time").textContent = cancelled ? "cancelled" : "failed";
      if (!cancelled) showError(`Explanation (${name}): ${message}`);
    },
  });
}

function showScale(headers) {
  const low = parseFloat(headers.get("X-Scale-Min") || "");
  const high = parseFloat(headers.get("X-Scale-Max") || "");
  const score = headers.get("X-Score");
  shownScale = Number.isFinite(low) && Number.isFinite(high) ? [low, high] : null;
  const parts = [];
  if (shownScale) parts.push(`scale ${low} … ${high}${heldScale ? " (kept)" : ""}`);
  if (score != null) parts.push(`target score ${score}`);
  // Integrated Gradients: how far the map's sum is from the score's change (its completeness)
  const error = headers.get("X-Completeness-Error");
  if (error != null) parts.push(`completeness error ${error}`);
  const approximate = headers.get("X-Approximate"); // occlusion's approximate modes
  if (approximate != null) parts.push(`approximate: ${approximate}`);
  $("explain-scale").textContent = parts.join(" · ");
  $("explain-scale").title = error != null
    ? "completeness error: |sum of the map - (score(picture) - score(baseline))|, in logits; small beside the score means the steps were enough"
    : "";
}

function holdScale(event) {
  heldScale = event.target.checked && shownScale ? shownScale : null;
  scheduleExplain(0);
}

export function mount() {
  put("#columns", MARKUP);
  $("method-select").addEventListener("change", (e) => setMethod(e.target.value));
  $("method-settings").addEventListener("input", onSettingChanged);
  $("method-settings").addEventListener("change", onSettingChanged);
  $("explain-layer-select").addEventListener("change", () => scheduleExplain());
  const classInput = $("class-input");
  classInput.addEventListener("focus", () => classInput.select());
  classInput.addEventListener("input", () => checkClassInput().error || scheduleExplain());
  classInput.addEventListener("keydown", (e) => e.key === "Enter" && runExplain());
  $("run-button").addEventListener("click", runExplain);
  $("hold-scale").addEventListener("change", holdScale);
  // a run's first maps (occlusion's coarse passes, RISE's first masks) take the frame while
  // it goes, drawn on the kept scale
  watch = new RunWatch("explain", "explain-time", "explain-cancel", {
    image: "overlay",
    query: () => (heldScale ? `?scale=${heldScale.join(",")}` : ""),
    onShown: (res) => showScale(res.headers),
  });
  $("overlay").addEventListener("click", openFullSize);
  on("model", setModel);
  on("image", () => !isClassifier() || scheduleExplain(0));
  on("predictions", () => updateExplainTarget());
  on("explain-class", explainClass);
  return loadList("/api/methods", "methods").then((list) => {
    methods = list;
    renderMethodOptions();
    const first = methods.find((m) => m.name === "gradcam") || methods[0];
    if (first) setMethod(first.name);
  });
}
