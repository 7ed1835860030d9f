// The segmentation panel (a segmenter is chosen): its classes drawn over the picture, and the
// region clicked explained (Seg-Grad-CAM, Layer-CAM, occlusion, RISE of the class's score
// summed over the region). A click is sent in the picture's pixels; the server picks the
// connected region of the class found there. It reuses the detection panel's layout classes.

import { getJSON, imageBase, latest, seg, STALE } from "../lib/api.js";
import { $, el, fillSelect, formatMs, formatPercent, mount as put, openFullSize, showError } from "../lib/dom.js";
import { FAMILY_LABELS, readSettings, renderSettings } from "../lib/forms.js";
import { RunWatch } from "../lib/runs.js";
import { clearImage, loadImage } from "../lib/slots.js";
import { on, state } from "../lib/state.js";

const MARKUP = `
<section class="panel segment-only" id="segment-panel" aria-labelledby="segment-title">
  <h2 id="segment-title">Segmentation</h2>
  <div class="detect-layout">
    <div class="detect-main">
      <div id="segment-frame" class="frame detect-frame" data-state="empty">
        <div id="segment-stage" class="detect-stage">
          <img id="segment-picture" alt="The classes the segmenter gives each pixel: click a region to explain it" title="Click a region to explain it">
        </div>
        <span class="frame-msg">No image yet</span>
      </div>
      <p id="segment-summary" class="muted small" aria-live="polite"></p>
      <ol id="segment-list" class="detect-list" aria-label="Classes in the picture"></ol>
    </div>
    <div class="detect-explain">
      <h3>Region explanation</h3>
      <div class="field">
        <label for="region-method">Method</label>
        <select id="region-method"></select>
      </div>
      <div class="method-info small">
        <span id="region-method-family" class="badge"></span>
        <span id="region-method-description"></span>
        <span id="region-method-paper" class="paper"></span>
      </div>
      <div id="region-settings" class="settings" aria-label="Region explanation settings"></div>
      <div class="run-row">
        <button id="region-cancel" type="button" class="small-button" hidden>Cancel</button>
        <span id="region-time" class="mono small"></span>
        <span id="region-target" class="muted small ellipsis">Click a region to explain it</span>
      </div>
      <div id="region-overlay-frame" class="frame box-overlay-frame" data-state="empty">
        <img id="region-overlay" alt="Where the segmenter looks for the chosen region" title="Click to open at full size">
        <span class="frame-msg">Click a region of the picture</span>
      </div>
      <p id="region-energy" class="box-energy" aria-live="polite"></p>
    </div>
  </div>
</section>`;

const LABELS = { gradcam: "Seg-Grad-CAM", layercam: "Layer-CAM", occlusion: "Occlusion", rise: "RISE" };
const isSegmenter = () => Boolean(state.model && state.model.task === "segment");
// watch: the region explanation in flight, its progress and its Cancel button (mount())
const shown = { point: null, target: null, method: null, settings: {}, watch: null };

function setModel(model) {
  shown.point = null;
  shown.target = null;
  if (!isSegmenter()) return;
  const methods = model.region_methods || [];
  fillSelect(
    $("region-method"),
    methods.map((m) => ({ value: m.name, label: LABELS[m.name] || m.name, title: m.description })),
  );
  const keep = shown.method && methods.find((m) => m.name === shown.method.name);
  setMethod((keep || methods[0] || {}).name, false);
  if (state.imageId) showPicture();
}

function setMethod(name, run = true) {
  const method = ((state.model && state.model.region_methods) || []).find((m) => m.name === name) || null;
  shown.method = method;
  if (!method) {
    $("region-settings").replaceChildren();
    return;
  }
  $("region-method").value = method.name;
  $("region-method-family").textContent = FAMILY_LABELS[method.family] || method.family || "";
  $("region-method-description").textContent = method.description || "";
  $("region-method-paper").textContent = method.paper || "";
  shown.settings[method.name] ??= {};
  renderSettings($("region-settings"), method.settings, shown.settings[method.name], "region-setting");
  if (run) explainRegion();
}

async function showPicture() {
  const model = state.model;
  const imageId = state.imageId;
  const { width, height } = state.imageSize || { width: 1, height: 1 };
  for (const id of ["segment-stage", "region-overlay-frame"]) {
    $(id).style.aspectRatio = `${width} / ${height}`;
  }
  shown.point = null;
  shown.watch.end(shown.watch.id);
  $("region-energy").replaceChildren();
  $("region-target").textContent = "Click a region to explain it";
  clearImage("region-overlay", "Click a region of the picture");
  loadImage("segment-picture", `${imageBase()}/segmentation.png`, {
    meta: { image: imageId },
    onError: (message) => showError(`Segmentation: ${message}`),
  });
  try {
    const data = await latest("segmentation", `${imageBase()}/segmentation`);
    if (data === STALE || state.model !== model || state.imageId !== imageId) return;
    renderClasses(data);
  } catch (err) {
    $("segment-summary").replaceChildren(el("span", { class: "error-text" }, err.message));
    showError(`Segmentation: ${err.message}`);
  }
}

function renderClasses(data) {
  const colors = state.model.colors || [];
  const present = data.classes.filter((c) => c.pixels > 0 && c.index !== state.model.background);
  $("segment-list").replaceChildren(
    ...present.map((c) => {
      const row = el(
        "button",
        { type: "button", class: "det-row", "data-class": c.index, title: `Explain every ${c.name} pixel` },
        el("span", { class: "det-swatch", "aria-hidden": "true" }),
        el("span", { class: "det-name" }, c.name),
        el("span", { class: "det-score" }, formatPercent(c.share)),
        el("span", { class: "det-coords" }, `${c.pixels} px`),
      );
      row.style.setProperty("--c", colors[c.index % colors.length] || "#2563eb");
      row.addEventListener("click", () => chooseClass(c.index, c.name));
      return el("li", {}, row);
    }),
  );
  const took = data.cached ? "cached" : formatMs(data.ms);
  $("segment-summary").textContent = present.length
    ? `${present.length} class${present.length === 1 ? "" : "es"} · ${took}. Click a region of the picture (or a class) to explain it.`
    : `Nothing but background · ${took}. Try another picture (the toon samples).`;
  $("segment-summary").dataset.count = String(present.length);
}

// a click on the picture: its point in the upload's pixels
function onPictureClick(event) {
  if (!isSegmenter() || !state.imageSize) return;
  const box = event.currentTarget.getBoundingClientRect();
  const { width, height } = state.imageSize;
  const x = Math.floor(((event.clientX - box.left) / box.width) * width);
  const y = Math.floor(((event.clientY - box.top) / box.height) * height);
  shown.point = { x: Math.min(Math.max(x, 0), width - 1), y: Math.min(Math.max(y, 0), height - 1) };
  shown.target = null;
  explainRegion();
}

function chooseClass(index, name) {
  shown.point = null;
  shown.target = { index, name };
  explainRegion();
}

async function explainRegion() {
  const method = shown.method;
  if (!isSegmenter() || !method || !state.imageId || (!shown.point && !shown.target)) return;
  const settings = readSettings($("region-settings"));
  if (settings.error) {
    $("region-time").textContent = settings.error;
    return;
  }
  const params = new URLSearchParams(settings.values);
  if (shown.point) {
    params.set("x", String(shown.point.x));
    params.set("y", String(shown.point.y));
  } else {
    params.set("target", String(shown.target.index));
  }
  const label = LABELS[method.name] || method.name;
  const where = shown.point ? `the region at (${shown.point.x}, ${shown.point.y})` : `every ${shown.target.name} pixel`;
  $("region-overlay-frame").classList.add("loading"); // the map on show is stale from here
  if (shown.point) {
    try {
      const region = await getJSON(`${imageBase()}/segmentation/region?x=${shown.point.x}&y=${shown.point.y}`);
      $("region-target").textContent = `${region.name}: ${region.pixels} px at (${shown.point.x}, ${shown.point.y})`;
    } catch (err) {
      $("region-target").textContent = err.message;
    }
  } else {
    $("region-target").textContent = where;
  }
  // its progress at /api/runs/<id>, and its cancel; the previous map stays dimmed under it
  const runId = shown.watch.begin();
  params.set("run", runId);
  $("region-energy").replaceChildren(el("span", { class: "muted" }, `${label} of ${where}…`));
  loadImage("region-overlay", `${imageBase()}/segmentation/explain/${seg(method.name)}.png?${params}`, {
    meta: { method: method.name },
    onLoad: (res, ms) => {
      shown.watch.end(runId);
      const compute = parseFloat(res.headers.get("X-Ms") || "");
      $("region-time").textContent =
        res.headers.get("X-Cache") === "hit" ? `cached (${formatMs(compute)} when computed)` : `${formatMs(compute)} (${formatMs(ms)} total)`;
      const energy = parseFloat(res.headers.get("X-Energy-In-Region") || "");
      const name = res.headers.get("X-Class") || "";
      const pixels = res.headers.get("X-Region-Pixels") || "";
      $("region-energy").replaceChildren(
        Number.isFinite(energy) ? "Energy in region " : "No positive attribution",
        Number.isFinite(energy)
          ? el("strong", { id: "region-energy-value", "data-value": energy.toFixed(6), title: "share of the positive attribution inside the region" }, formatPercent(energy))
          : "",
        ` · ${label} of ${name} over ${pixels} px`,
      );
    },
    onError: (message) => {
      const cancelled = shown.watch.end(runId);
      $("region-time").textContent = cancelled ? "cancelled" : "failed";
      $("region-energy").replaceChildren(el("span", { class: cancelled ? "muted" : "error-text" }, cancelled ? `${label} of ${where} was cancelled` : message));
      if (!cancelled) showError(`Region explanation (${label}): ${message}`);
    },
  });
}

function onSettingChanged(event) {
  const input = event.target;
  if (!input.dataset || !input.dataset.setting || !shown.method) return;
  shown.settings[shown.method.name][input.dataset.setting] = input.type === "checkbox" ? input.checked : input.value;
  explainRegion();
}

export function mount() {
  put("#columns", MARKUP);
  $("segment-picture").addEventListener("click", onPictureClick);
  $("region-method").addEventListener("change", (e) => setMethod(e.target.value));
  $("region-settings").addEventListener("change", onSettingChanged);
  $("region-overlay").addEventListener("click", openFullSize);
  // occlusion's and RISE's first maps take the frame while they run
  shown.watch = new RunWatch("region", "region-time", "region-cancel", { image: "region-overlay" });
  on("model", setModel);
  on("image", () => isSegmenter() && showPicture());
}
