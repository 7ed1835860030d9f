// The detection panel (a detector is chosen): its boxes on the picture under the chosen
// thresholds, and one box explained (D-RISE, box Grad-CAM, box Layer-CAM). A detector sees the
// upload itself: its boxes come in the picture's pixels and are placed, in percentages, on a
// stage that has the picture's aspect ratio, so they stay on the characters at any displayed
// size. Box indices refer to the detections last shown (`shown.query` holds their thresholds).

import { abort, imageBase, latest, pending, seg, STALE } from "../lib/api.js";
import { $, el, fillSelect, formatMs, formatPercent, mount as put, openFullSize, showError } from "../lib/dom.js";
import { FAMILY_LABELS, readSettings, renderSettings } from "../lib/forms.js";
import { RunWatch } from "../lib/runs.js";
import { clearImage, loadImage } from "../lib/slots.js";
import { isDetector, on, state } from "../lib/state.js";

const MARKUP = `
<section class="panel detect-only" id="detect-panel" aria-labelledby="detect-title">
  <h2 id="detect-title">Detections</h2>
  <div class="detect-layout">
    <div class="detect-main">
      <div class="threshold-row" role="group" aria-label="Detection settings">
        <label for="score-threshold" title="Keep boxes scoring at least this">Score ≥</label>
        <input type="range" id="score-threshold" min="0" max="1" step="0.01" value="0.5">
        <output id="score-threshold-value" for="score-threshold" class="mono">0.50</output>
        <label for="iou-threshold" title="Non-maximum suppression: of two boxes of one class overlapping more than this, the weaker is dropped">NMS IoU</label>
        <input type="range" id="iou-threshold" min="0.05" max="1" step="0.05" value="0.5">
        <output id="iou-threshold-value" for="iou-threshold" class="mono">0.50</output>
        <label for="max-detections" title="Keep at most this many boxes">Max</label>
        <input type="number" id="max-detections" min="1" max="1000" step="1" value="100">
      </div>
      <div id="detect-frame" class="frame detect-frame" data-state="empty">
        <div id="detect-stage" class="detect-stage">
          <img id="detect-picture" alt="The picture the detector sees">
          <div id="detect-boxes" class="detect-boxes" role="group" aria-label="Detected boxes: choose one to explain it"></div>
        </div>
        <span class="frame-msg">No image yet</span>
      </div>
      <p id="detect-summary" class="muted small" aria-live="polite"></p>
      <ol id="detect-list" class="detect-list" aria-label="Detections, highest score first"></ol>
    </div>
    <div class="detect-explain">
      <h3>Box explanation</h3>
      <div class="field">
        <label for="box-method">Method</label>
        <select id="box-method"></select>
      </div>
      <div id="box-method-info" class="method-info small">
        <span id="box-method-family" class="badge"></span>
        <span id="box-method-description"></span>
        <span id="box-method-paper" class="paper"></span>
      </div>
      <div id="box-settings" class="settings" aria-label="Box explanation settings"></div>
      <div class="run-row">
        <button id="box-run" type="button" class="primary" disabled>Explain</button>
        <button id="box-cancel" type="button" class="small-button" hidden>Cancel</button>
        <span id="box-time" class="mono small"></span>
        <span id="box-target" class="muted small ellipsis">Click a box to explain it</span>
      </div>
      <div id="box-overlay-frame" class="frame box-overlay-frame" data-state="empty">
        <img id="box-overlay" alt="Where the detector looks for the chosen box" title="Click to open at full size">
        <span class="frame-msg">Click a box (or a row of the list)</span>
      </div>
      <p id="box-energy" class="box-energy" aria-live="polite"></p>
    </div>
  </div>
</section>`;

const STAGE_HEIGHT = 520; // px: the tallest the picture is shown
const OVERLAY_HEIGHT = 400;
const BOX_METHOD_LABELS = { drise: "D-RISE", gradcam: "Grad-CAM", layercam: "Layer-CAM" };

const shown = {
  detections: null, // the latest /detections answer shown
  query: "", // its thresholds as a query string (box indices refer to it)
  timer: 0,
  box: null, // index of the chosen box in shown.detections
  boxKey: null, // "label:x0,y0,x1,y1" of the chosen box (kept across threshold changes)
  method: null, // the selected entry of model.box_methods
  settings: {}, // method name -> {setting name: value chosen by the user}
  watch: null, // the box explanation in flight: its progress and its Cancel button (mount())
};

function setModel(model) {
  if (!isDetector()) {
    clearDetections();
    return;
  }
  $("score-threshold").value = String(model.score_threshold);
  $("iou-threshold").value = String(model.iou_threshold);
  const most = $("max-detections");
  most.max = String(model.max_detections_limit || 1000);
  most.value = String(model.max_detections);
  showThresholds();
  const methods = model.box_methods || [];
  fillSelect(
    $("box-method"),
    methods.map((m) => ({ value: m.name, label: BOX_METHOD_LABELS[m.name] || m.name, title: m.description })),
  );
  const keep = shown.method && methods.find((m) => m.name === shown.method.name);
  setBoxMethod((keep || methods[0] || {}).name, false);
  clearDetections();
  if (state.imageId) showDetectImage();
}

function showThresholds() {
  $("score-threshold-value").textContent = Number($("score-threshold").value).toFixed(2);
  $("iou-threshold-value").textContent = Number($("iou-threshold").value).toFixed(2);
}

// The thresholds as a query string; null (and the field marked) when one is out of range.
function thresholdQuery() {
  const most = $("max-detections");
  const value = Number(most.value);
  const bad = !Number.isInteger(value) || value < Number(most.min) || value > Number(most.max);
  most.classList.toggle("invalid", bad);
  if (bad) return null;
  const params = new URLSearchParams({
    score_threshold: $("score-threshold").value,
    iou_threshold: $("iou-threshold").value,
    max_detections: String(value),
  });
  return params.toString();
}

// the picture's aspect ratio; as wide as the column allows, at most `tallest` px high
function sizeStage(target, width, height, tallest) {
  target.style.aspectRatio = `${width} / ${height}`;
  target.style.width = `min(100%, ${((tallest * width) / height).toFixed(1)}px)`;
}

function showDetectImage() {
  const { width, height } = state.imageSize || { width: 1, height: 1 };
  sizeStage($("detect-stage"), width, height, STAGE_HEIGHT);
  sizeStage($("box-overlay-frame"), width, height, OVERLAY_HEIGHT);
  clearBox("Click a box (or a row of the list)");
  shown.detections = null;
  $("detect-boxes").replaceChildren();
  $("detect-list").replaceChildren();
  loadImage("detect-picture", `${imageBase()}/picture.png`, {
    meta: { image: state.imageId },
    onError: (message) => showError(`Picture: ${message}`),
  });
  loadDetections();
}

function clearDetections() {
  clearTimeout(shown.timer);
  abort("detections");
  shown.detections = null;
  shown.query = "";
  $("detect-boxes").replaceChildren();
  $("detect-list").replaceChildren();
  $("detect-summary").textContent = "";
  clearImage("detect-picture", "No image yet");
  clearBox("Click a box (or a row of the list)");
}

function scheduleDetections(delay = 200) {
  clearTimeout(shown.timer);
  shown.timer = setTimeout(loadDetections, delay);
}

async function loadDetections() {
  clearTimeout(shown.timer);
  if (!isDetector() || !state.imageId) return;
  const query = thresholdQuery();
  if (query == null) {
    $("detect-summary").textContent = "Max: a whole number in range is needed.";
    return;
  }
  const model = state.model;
  const imageId = state.imageId;
  const list = $("detect-list");
  list.dataset.state = "loading";
  $("detect-frame").classList.add("loading");
  try {
    const data = await latest("detections", `${imageBase()}/detections?${query}`);
    if (data === STALE || state.model !== model || state.imageId !== imageId) return;
    shown.query = query;
    renderDetections(data);
    list.dataset.state = "ready";
  } catch (err) {
    if (state.model !== model || state.imageId !== imageId) return;
    list.dataset.state = "error";
    shown.detections = null;
    $("detect-boxes").replaceChildren();
    list.replaceChildren();
    $("detect-summary").replaceChildren(el("span", { class: "error-text" }, err.message));
    showError(`Detections: ${err.message}`);
  } finally {
    if (!pending("detections")) $("detect-frame").classList.remove("loading");
  }
}

const boxKey = (d) => `${d.label}:${d.box.map((v) => v.toFixed(3)).join(",")}`;
const classColor = (label) => {
  const colors = (state.model && state.model.colors) || [];
  return colors.length ? colors[label % colors.length] : "#2563eb";
};
const isLight = (hex) => {
  const n = parseInt(hex.slice(1), 16);
  return ((n >> 16) + ((n >> 8) & 255) + (n & 255)) / 3 > 150;
};
const formatBox = (box) => box.map((v) => Math.round(v)).join(", ");

function renderDetections(data) {
  shown.detections = data;
  const { width, height } = data;
  state.imageSize = { width, height };
  sizeStage($("detect-stage"), width, height, STAGE_HEIGHT);
  sizeStage($("box-overlay-frame"), width, height, OVERLAY_HEIGHT);
  const dets = data.detections || [];
  // smaller boxes above larger ones, so a box inside another can still be clicked
  const area = (d) => (d.box[2] - d.box[0]) * (d.box[3] - d.box[1]);
  const rank = new Map([...dets].sort((a, b) => area(b) - area(a)).map((d, k) => [d.index, k + 1]));
  $("detect-boxes").replaceChildren(...dets.map((d) => detectionBox(d, width, height, rank.get(d.index))));
  $("detect-list").replaceChildren(...dets.map((d) => detectionRow(d)));
  const s = data.settings || {};
  const rule = `score ≥ ${Number(s.score_threshold).toFixed(2)}, NMS IoU ${Number(s.iou_threshold).toFixed(2)}, at most ${s.max_detections}`;
  const took = data.cached ? "cached" : formatMs(data.ms);
  $("detect-summary").textContent = dets.length
    ? `${dets.length} detection${dets.length === 1 ? "" : "s"} (${rule}) · ${took}. Click a box or a row to explain it.`
    : `No boxes at ${rule}. Lower the score threshold, or try another picture (the crowd samples are toon frames).`;
  $("detect-summary").dataset.count = String(dets.length);
  // the chosen box survives a threshold change when the detector still finds it
  const again = shown.boxKey == null ? -1 : dets.findIndex((d) => boxKey(d) === shown.boxKey);
  if (again >= 0) markBox(again);
  else if (shown.boxKey != null) clearBox("The chosen box is gone at these thresholds: click another");
}

function detectionBox(d, width, height, z) {
  const [x0, y0, x1, y1] = d.box;
  const colour = classColor(d.label);
  const label = `${d.name} ${d.score.toFixed(2)}`;
  const button = el(
    "button",
    {
      type: "button",
      class: y0 / height < 0.04 ? "det-box tag-inside" : "det-box",
      "data-index": d.index,
      "aria-pressed": "false",
      "aria-label": `Box ${d.index}: ${d.name}, score ${d.score.toFixed(2)}; explain it`,
      title: `#${d.index} ${label} · box ${formatBox(d.box)}`,
      style: {
        left: `${(100 * x0) / width}%`,
        top: `${(100 * y0) / height}%`,
        width: `${(100 * (x1 - x0)) / width}%`,
        height: `${(100 * (y1 - y0)) / height}%`,
        zIndex: String(z || 1),
      },
    },
    el("span", { class: isLight(colour) ? "det-tag dark" : "det-tag", "aria-hidden": "true" }, label),
  );
  button.style.setProperty("--c", colour);
  button.addEventListener("click", () => chooseBox(d.index));
  hoverPair(button, d.index);
  return button;
}

function detectionRow(d) {
  const button = el(
    "button",
    { type: "button", class: "det-row", "data-index": d.index, "aria-pressed": "false", title: `Explain box #${d.index}` },
    el("span", { class: "det-swatch", "aria-hidden": "true" }),
    el("span", { class: "det-index" }, `#${d.index}`),
    el("span", { class: "det-name" }, d.name),
    el("span", { class: "det-score" }, d.score.toFixed(3)),
    el("span", { class: "det-coords", title: "x0, y0, x1, y1 in the picture's pixels" }, formatBox(d.box)),
  );
  button.style.setProperty("--c", classColor(d.label));
  button.addEventListener("click", () => chooseBox(d.index));
  hoverPair(button, d.index);
  return el("li", {}, button);
}

// hovering a box lights its row, and the reverse
function hoverPair(node, index) {
  const toggle = (on) => {
    for (const other of document.querySelectorAll(`#detect-panel [data-index="${index}"]`)) other.classList.toggle("hover", on);
  };
  node.addEventListener("mouseenter", () => toggle(true));
  node.addEventListener("mouseleave", () => toggle(false));
}

function markBox(index) {
  shown.box = index;
  const d = shown.detections && shown.detections.detections[index];
  shown.boxKey = d ? boxKey(d) : null;
  for (const node of document.querySelectorAll("#detect-panel .det-box, #detect-panel .det-row")) {
    node.setAttribute("aria-pressed", String(Number(node.dataset.index) === index));
  }
  $("detect-boxes").classList.toggle("has-selection", index != null);
  $("box-run").disabled = index == null;
  if (d) {
    $("box-target").textContent = `box #${index} · ${d.name} ${d.score.toFixed(2)}`;
    $("box-target").title = `box (${formatBox(d.box)})`;
  }
}

function chooseBox(index) {
  markBox(index);
  runBoxExplain();
}

function clearBox(message) {
  shown.watch?.end(shown.watch.id);
  shown.box = null;
  shown.boxKey = null;
  for (const node of document.querySelectorAll("#detect-panel [aria-pressed='true']")) node.setAttribute("aria-pressed", "false");
  $("detect-boxes").classList.remove("has-selection");
  $("box-run").disabled = true;
  $("box-target").textContent = "Click a box to explain it";
  $("box-time").textContent = "";
  $("box-energy").replaceChildren();
  clearImage("box-overlay", message);
}

function setBoxMethod(name, run = true) {
  const methods = (state.model && state.model.box_methods) || [];
  const method = methods.find((m) => m.name === name) || null;
  shown.method = method;
  if (!method) {
    $("box-settings").replaceChildren();
    return;
  }
  $("box-method").value = method.name;
  $("box-method-family").textContent = FAMILY_LABELS[method.family] || method.family || "";
  $("box-method-description").textContent = method.description || "";
  $("box-method-paper").textContent = method.paper || "";
  shown.settings[method.name] ??= {};
  renderSettings($("box-settings"), method.settings, shown.settings[method.name], "box-setting");
  if (run && shown.box != null) runBoxExplain();
}

function onBoxSettingChanged(event) {
  const input = event.target;
  if (!input.dataset || !input.dataset.setting || !shown.method) return;
  shown.settings[shown.method.name][input.dataset.setting] = input.type === "checkbox" ? input.checked : input.value;
  if (shown.box != null) runBoxExplain();
}

function runBoxExplain() {
  const method = shown.method;
  if (!isDetector() || !method || shown.box == null || !shown.detections) return;
  const settings = readSettings($("box-settings"));
  if (settings.error) {
    $("box-time").textContent = settings.error;
    return;
  }
  const params = new URLSearchParams(shown.query);
  for (const [name, value] of Object.entries(settings.values)) params.set(name, value);
  const index = shown.box;
  const label = BOX_METHOD_LABELS[method.name] || method.name;
  // its progress at /api/runs/<id>, and its cancel; the previous map stays dimmed under it
  const runId = shown.watch.begin();
  params.set("run", runId);
  const url = `${imageBase()}/detections/${index}/explain/${seg(method.name)}.png?${params}`;
  $("box-energy").replaceChildren(el("span", { class: "muted" }, `${label} of box #${index}…`));
  loadImage("box-overlay", url, {
    meta: { method: method.name, box: String(index) },
    onLoad: (res, ms) => {
      shown.watch.end(runId);
      // the map with its colour bar below (the bar makes it taller than the picture)
      const img = $("box-overlay");
      if (img.naturalWidth) $("box-overlay-frame").style.aspectRatio = `${img.naturalWidth} / ${img.naturalHeight}`;
      const compute = parseFloat(res.headers.get("X-Ms") || "");
      const cached = res.headers.get("X-Cache") === "hit";
      $("box-time").textContent = cached
        ? `cached (${formatMs(compute)} when computed)`
        : `${formatMs(compute)} (${formatMs(ms)} total)`;
      showEnergy(res, index, label);
    },
    onError: (message) => {
      const cancelled = shown.watch.end(runId);
      $("box-time").textContent = cancelled ? "cancelled" : "failed";
      $("box-energy").replaceChildren(el("span", { class: cancelled ? "muted" : "error-text" }, cancelled ? `${label} of box #${index} was cancelled` : message));
      if (!cancelled) showError(`Box explanation (${label}): ${message}`);
    },
  });
}

function showEnergy(res, index, label) {
  const energy = parseFloat(res.headers.get("X-Energy-In-Box") || "");
  const [px, py] = (res.headers.get("X-Peak") || "").split(",").map(Number);
  const d = shown.detections && shown.detections.detections[index];
  const inside = d && px >= d.box[0] && px <= d.box[2] && py >= d.box[1] && py <= d.box[3];
  if (!Number.isFinite(energy)) {
    $("box-energy").replaceChildren(
      el("span", { id: "box-energy-value", "data-value": "" }, "No positive attribution"),
      ` (${label} of box #${index} is zero everywhere: try another layer or method)`,
    );
    return;
  }
  $("box-energy").replaceChildren(
    "Energy in box ",
    el("strong", { id: "box-energy-value", "data-value": energy.toFixed(6), title: "share of the positive attribution inside the box" }, formatPercent(energy)),
    Number.isFinite(px) ? ` · peak at (${px}, ${py}) ${inside ? "inside" : "outside"} the box` : "",
  );
}

// arrow keys move between boxes (Enter or Space explains the focused one)
function onBoxKey(event) {
  const keys = { ArrowRight: 1, ArrowDown: 1, ArrowLeft: -1, ArrowUp: -1 };
  if (!(event.key in keys) || !event.target.classList.contains("det-box")) return;
  const boxes = [...$("detect-boxes").querySelectorAll(".det-box")];
  const at = boxes.indexOf(event.target);
  const next = boxes[(at + keys[event.key] + boxes.length) % boxes.length];
  if (next) {
    event.preventDefault();
    next.focus();
  }
}

export function mount() {
  put("#columns", MARKUP);
  for (const id of ["score-threshold", "iou-threshold"]) {
    $(id).addEventListener("input", () => {
      showThresholds();
      scheduleDetections();
    });
  }
  $("max-detections").addEventListener("input", () => scheduleDetections(400));
  $("box-method").addEventListener("change", (e) => setBoxMethod(e.target.value));
  $("box-settings").addEventListener("change", onBoxSettingChanged);
  $("box-run").addEventListener("click", runBoxExplain);
  // D-RISE's first maps take the frame while it runs
  shown.watch = new RunWatch("box", "box-time", "box-cancel", { image: "box-overlay" });
  $("detect-boxes").addEventListener("keydown", onBoxKey);
  $("box-overlay").addEventListener("click", openFullSize);
  on("model", setModel);
  on("image", () => isDetector() && showDetectImage());
}
