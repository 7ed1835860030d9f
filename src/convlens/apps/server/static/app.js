/* convlens explorer: the browser side. Plain ES2020, no dependencies, nothing from the internet. */
(() => {
  "use strict";

  const FAMILY_ORDER = ["cam", "gradient", "perturbation"];
  const FAMILY_LABELS = { cam: "CAM", gradient: "Gradient", perturbation: "Perturbation" };
  const ACTIVE_JOBS = new Set(["queued", "running"]);
  const STALE = Symbol("stale"); // a request that a newer one replaced
  const IMAGE_URL = /\.(png|jpe?g|gif|webp|svg)(\?|#|$)/i;

  const state = {
    models: [],
    methods: [],
    samples: [],
    model: null, // the selected entry of /api/models
    method: null, // the selected entry of /api/methods
    imageId: null,
    imageSize: null, // {width, height} of the upload
    imageToken: 0, // only the newest upload / sample choice wins
    layers: [], // the model's conv/pool layers
    layer: null,
    channel: 0,
    channels: 0,
    grid: false,
    filtersOpen: false,
    predictions: [],
    classValues: [], // datalist value per class index (labels, made unique)
    classLookup: new Map(), // lower-cased value or label -> class index
    settings: {}, // method name -> {setting name: value chosen by the user}
    slots: {}, // <img> id -> loader bookkeeping (see loadImage)
    requests: {}, // key -> AbortController of the latest JSON request
    explainTimer: 0,
    jobsTimer: 0,
    jobsSeq: 0,
    jobsAvailable: false,
    jobsFailing: false,
    jobRows: new Map(), // job id -> {sig, row}
    // the detection panel (a detector is selected)
    detections: null, // the latest /detections answer shown
    detectionsQuery: "", // its thresholds as a query string (box indices refer to it)
    detectTimer: 0,
    box: null, // index of the chosen box in state.detections
    boxKey: null, // "label:x0,y0,x1,y1" of the chosen box (kept across threshold changes)
    boxMethod: null, // the selected entry of model.box_methods
    boxSettings: {}, // method name -> {setting name: value chosen by the user}
    boxTicker: 0,
  };
  window.convlens = state; // the one global: handy in devtools

  const $ = (id) => document.getElementById(id);
  const seg = encodeURIComponent;
  const clamp = (x, lo, hi) => Math.min(hi, Math.max(lo, x));

  // ---------------------------------------------------------------- helpers

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (value == null || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "style") Object.assign(node.style, value); // CSSOM: the CSP forbids style="" attributes
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    node.append(...children.filter((c) => c != null));
    return node;
  }

  function fillSelect(select, items, value) {
    select.replaceChildren(...items.map((it) => el("option", { value: it.value, title: it.title }, it.label)));
    if (value != null) select.value = value;
  }

  function formatMs(ms) {
    return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(2)} s`;
  }

  function formatPercent(p) {
    const pct = p * 100;
    return pct > 0 && pct < 0.1 ? "<0.1%" : `${pct.toFixed(1)}%`;
  }

  function humanize(name) {
    return name.replace(/_/g, " ");
  }

  // ---------------------------------------------------------------- API

  class ApiError extends Error {
    constructor(message, status) {
      super(message);
      this.name = "ApiError";
      this.status = status;
    }
  }

  async function errorDetail(res) {
    let detail = "";
    try {
      const body = await res.json();
      detail = body.detail ?? body.message ?? "";
      if (Array.isArray(detail)) {
        // FastAPI validation errors: [{loc: ["query", "top"], msg: "..."}]
        detail = detail
          .map((d) => (d && d.msg ? `${(d.loc || []).slice(1).join(".") || "request"}: ${d.msg}` : String(d)))
          .join("; ");
      } else if (typeof detail !== "string") {
        detail = JSON.stringify(detail);
      }
    } catch {
      // not JSON: fall back to the status line
    }
    return detail || `${res.status} ${res.statusText || "error"}`;
  }

  async function api(url, options = {}) {
    let res;
    try {
      res = await fetch(url, options);
    } catch (err) {
      if (err.name === "AbortError") throw err;
      throw new ApiError("Cannot reach the convlens server.", 0);
    }
    if (!res.ok) throw new ApiError(await errorDetail(res), res.status);
    return res;
  }

  const getJSON = async (url, options) => (await api(url, options)).json();

  // A JSON request that replaces any earlier one with the same key; resolves STALE if replaced.
  async function latest(key, url, options = {}) {
    state.requests[key]?.abort();
    const ctrl = new AbortController();
    state.requests[key] = ctrl;
    try {
      const data = await getJSON(url, { ...options, signal: ctrl.signal });
      return state.requests[key] === ctrl ? data : STALE;
    } catch (err) {
      if (state.requests[key] !== ctrl) return STALE;
      throw err;
    } finally {
      if (state.requests[key] === ctrl) delete state.requests[key];
    }
  }

  const imageBase = () => `/api/models/${seg(state.model.name)}/images/${seg(state.imageId)}`;
  const isDetector = () => Boolean(state.model && state.model.task === "detect");

  // ---------------------------------------------------------------- error banner

  function showError(message) {
    $("error-message").textContent = message;
    $("error-banner").hidden = false;
  }

  function hideError() {
    $("error-banner").hidden = true;
  }

  // ---------------------------------------------------------------- image slots
  // PNGs are fetched (not set as src directly) so that error details and headers can be read.
  // "coalesce" keeps the request in flight and sends only the newest one after it (the slider);
  // otherwise a new request aborts the one in flight.

  function slot(id) {
    if (!state.slots[id]) {
      const img = $(id);
      const frame = img.closest(".frame");
      state.slots[id] = {
        img,
        frame,
        msg: frame && frame.querySelector(".frame-msg"),
        busy: false,
        ctrl: null,
        queued: null,
        objectUrl: null,
      };
    }
    return state.slots[id];
  }

  function setSlotState(s, value, message = "") {
    if (value) s.img.dataset.state = value;
    else delete s.img.dataset.state;
    if (s.frame) {
      s.frame.dataset.state = value || "empty";
      s.frame.classList.toggle("loading", value === "loading");
    }
    if (s.msg) s.msg.textContent = value === "loading" ? (s.img.getAttribute("src") ? "" : "Loading…") : message;
  }

  function dropPicture(s) {
    s.img.removeAttribute("src");
    if (s.objectUrl) URL.revokeObjectURL(s.objectUrl);
    s.objectUrl = null;
  }

  function clearImage(id, message = "") {
    const s = slot(id);
    s.ctrl?.abort();
    Object.assign(s, { ctrl: null, busy: false, queued: null });
    dropPicture(s);
    setSlotState(s, null, message);
  }

  function loadImage(id, url, options = {}) {
    const s = slot(id);
    const req = { url, meta: options.meta || {}, onLoad: options.onLoad, onError: options.onError };
    if (options.coalesce && s.busy) {
      s.queued = req;
      return;
    }
    s.ctrl?.abort();
    s.queued = null;
    fetchIntoImage(s, req);
  }

  async function fetchIntoImage(s, req) {
    const ctrl = new AbortController();
    Object.assign(s, { ctrl, busy: true });
    setSlotState(s, "loading");
    const started = performance.now();
    let error = null;
    try {
      const res = await api(req.url, { signal: ctrl.signal });
      const objectUrl = URL.createObjectURL(await res.blob());
      const probe = new Image(); // decode off-screen so the visible image swaps without a flash
      probe.src = objectUrl;
      await probe.decode().catch(() => {
        throw new Error("The server sent something that is not a picture.");
      });
      if (s.ctrl !== ctrl) {
        URL.revokeObjectURL(objectUrl);
        return;
      }
      if (s.objectUrl) URL.revokeObjectURL(s.objectUrl);
      s.objectUrl = objectUrl;
      s.img.src = objectUrl;
      await s.img.decode().catch(() => {});
      Object.assign(s.img.dataset, req.meta);
      req.onLoad?.(res, performance.now() - started);
    } catch (err) {
      error = err;
    } finally {
      if (s.ctrl === ctrl) finishSlot(s, req, error);
    }
  }

  function finishSlot(s, req, error) {
    Object.assign(s, { ctrl: null, busy: false });
    const next = s.queued;
    s.queued = null;
    if (next) {
      fetchIntoImage(s, next); // a newer request waited: this one's outcome no longer matters
    } else if (!error) {
      setSlotState(s, "ready");
    } else {
      const message = error.message || String(error);
      dropPicture(s);
      setSlotState(s, "error", message);
      (req.onError || showError)(message);
    }
  }

  function openFullSize(event) {
    const src = event.currentTarget.getAttribute("src");
    if (src) window.open(src, "_blank");
  }

  // ---------------------------------------------------------------- models and layers

  function browsableLayers(model) {
    const layers = model.layers || [];
    const picked = layers.filter((l) => /conv|pool/i.test(l.kind || ""));
    return picked.length ? picked : layers;
  }

  const layerChannels = (layer) => (layer ? layer.channels ?? (layer.shape || [])[0] ?? 0 : 0);

  function layerItem(layer) {
    const shape = (layer.shape || []).join("×");
    return { value: layer.name, label: `${layer.name} · ${layer.kind}${shape ? ` · ${shape}` : ""}` };
  }

  function renderModelOptions() {
    const items = state.models.map((m) => ({ value: m.name, label: m.name, title: m.description }));
    fillSelect($("model-select"), items);
  }

  function setModel(name) {
    const model = state.models.find((m) => m.name === name);
    if (!model) return;
    state.model = model;
    state.predictions = [];
    $("model-select").value = model.name;
    document.body.dataset.task = model.task === "detect" ? "detect" : "classify";
    if (model.task === "detect") {
      setDetector(model);
      return;
    }
    clearDetections();
    const size = (model.input_size || []).join("×");
    const classes = model.classes && `${model.classes} classes`;
    $("model-info").textContent = [model.description, size && `input ${size}`, classes]
      .filter(Boolean)
      .join(" · ");
    $("model-info").title = $("model-info").textContent;

    state.layers = browsableLayers(model);
    fillSelect($("layer-select"), state.layers.map(layerItem));
    fillExplainLayers(model);
    buildClassList(model);
    fillJobLayers(model);
    $("class-input").value = "top-1";
    checkClassInput();

    const first = state.layers.find((l) => l.kind === "conv") || state.layers[0];
    setLayer(first ? first.name : null);
    if (state.imageId) {
      loadPicture();
      loadPredictions();
      scheduleExplain(0);
    }
  }

  function fillExplainLayers(model) {
    // every layer with a map (blocks too: CAMs are usually taken at a block's output)
    const layers = model.explain_layers || model.layers || [];
    const fallback = layers.length ? layers[layers.length - 1].name : null;
    fillSelect($("explain-layer-select"), layers.map(layerItem), model.default_layer || fallback);
  }

  // ---------------------------------------------------------------- image choice

  function renderSamples() {
    const buttons = state.samples.map((sample) => {
      const button = el(
        "button",
        { type: "button", class: "sample", "data-sample": sample.name, title: `Use ${sample.name}` },
        el("img", { src: sample.url, alt: sample.name, loading: "lazy" }),
        el("span", {}, sample.name),
      );
      button.addEventListener("click", () => useSample(sample.name));
      return button;
    });
    $("samples").replaceChildren(...buttons);
  }

  function markSample(name) {
    for (const button of $("samples").querySelectorAll(".sample")) {
      button.classList.toggle("active", button.dataset.sample === name);
    }
  }

  function useSample(name) {
    markSample(name);
    chooseImage(() => getJSON(`/api/images/sample/${seg(name)}`, { method: "POST" }), `sample “${name}”`);
  }

  function uploadFile(file) {
    if (!file) return;
    markSample(null);
    const form = new FormData();
    form.append("file", file, file.name);
    chooseImage(() => getJSON("/api/images", { method: "POST", body: form }), `“${file.name}”`);
  }

  async function chooseImage(request, what) {
    const token = ++state.imageToken;
    const zone = $("drop-zone");
    zone.classList.add("loading");
    try {
      const info = await request();
      if (token === state.imageToken) setImage(info, what);
    } catch (err) {
      if (token === state.imageToken) showError(`Could not use ${what}: ${err.message}`);
    } finally {
      if (token === state.imageToken) zone.classList.remove("loading");
    }
  }

  function setImage(info, what) {
    state.imageId = info.id;
    state.imageSize = { width: info.width, height: info.height };
    state.predictions = [];
    $("image-info").textContent = `${what} · ${info.width}×${info.height} px`;
    if (!state.model) return;
    if (isDetector()) {
      showDetectImage();
      return;
    }
    loadPicture();
    loadPredictions();
    loadHeatmap();
    scheduleExplain(0);
  }

  function loadPicture() {
    if (isDetector()) return;
    loadImage("picture", `${imageBase()}/picture.png`, { meta: { image: state.imageId } });
  }

  // ---------------------------------------------------------------- predictions

  async function loadPredictions() {
    if (isDetector()) return;
    const box = $("predictions");
    box.dataset.state = "loading";
    box.classList.add("loading");
    try {
      const data = await latest("predictions", `${imageBase()}/predictions?top=5`);
      if (data === STALE) return;
      state.predictions = data.predictions || [];
      renderPredictions(state.predictions, data.ms);
      box.dataset.state = "ready";
      prefillJobTarget();
    } catch (err) {
      box.dataset.state = "error";
      box.replaceChildren(el("p", { class: "error-text small" }, err.message));
      $("predictions-time").textContent = "";
      showError(`Predictions: ${err.message}`);
    }
    box.classList.remove("loading");
    updateExplainTarget();
  }

  function renderPredictions(predictions, ms) {
    const rows = predictions.map((p, i) => {
      const pct = clamp(p.probability * 100, 0, 100);
      const row = el(
        "div",
        {
          class: i === 0 ? "prediction top" : "prediction",
          "data-index": p.index,
          role: "button",
          tabindex: 0,
          title: `#${p.index} ${p.label}: click to explain this class`,
        },
        el("span", { class: "pred-label" }, p.label),
        el("span", { class: "pred-pct" }, formatPercent(p.probability)),
        el("span", { class: "pred-bar" }, el("span", { class: "pred-fill", style: { width: `${pct.toFixed(2)}%` } })),
      );
      const pick = () => explainClass(p.index);
      row.addEventListener("click", pick);
      row.addEventListener("keydown", (e) => {
        if (e.key !== "Enter" && e.key !== " ") return;
        e.preventDefault();
        pick();
      });
      return row;
    });
    $("predictions").replaceChildren(...(rows.length ? rows : [el("p", { class: "muted small" }, "No predictions.")]));
    $("predictions-time").textContent = ms != null ? formatMs(ms) : "";
  }

  // ---------------------------------------------------------------- activations

  function setLayer(name) {
    state.layer = name;
    if (name) $("layer-select").value = name;
    setChannelCount(layerChannels(state.layers.find((l) => l.name === name)));
    state.channel = 0;
    showChannel();
    $("filters-layer").textContent = name || "";
    loadHeatmap();
    loadFilters();
  }

  function setChannelCount(count) {
    state.channels = count;
    $("channel-slider").max = String(Math.max(0, count - 1));
    $("channel-count").textContent = count ? `of ${count}` : "";
    updateChannelControls();
  }

  function updateChannelControls() {
    const off = state.grid || state.channels <= 1;
    for (const id of ["channel-slider", "channel-prev", "channel-next"]) $(id).disabled = off;
  }

  function showChannel() {
    $("channel-slider").value = String(state.channel);
    $("channel-value").textContent = String(state.channel);
  }

  function setChannel(value) {
    const channel = clamp(Math.round(Number(value) || 0), 0, Math.max(0, state.channels - 1));
    if (channel === state.channel) return showChannel();
    state.channel = channel;
    showChannel();
    loadHeatmap();
  }

  function setGrid(on) {
    state.grid = on;
    $("heatmap-frame").classList.toggle("wide", on);
    updateChannelControls();
    loadHeatmap();
  }

  function loadHeatmap() {
    if (isDetector()) return;
    if (!state.model || !state.imageId || !state.layer) {
      clearImage("heatmap", state.imageId ? "No layer to show" : "No image yet");
      return;
    }
    const layer = state.layer;
    const query = state.grid ? "grid=1" : `channel=${state.channel}`;
    loadImage("heatmap", `${imageBase()}/activations/${seg(layer)}.png?${query}`, {
      coalesce: true,
      meta: { channel: state.grid ? "grid" : String(state.channel), layer },
      onLoad: (res) => {
        const count = parseInt(res.headers.get("X-Channels") || "", 10);
        if (layer === state.layer && count > 0 && count !== state.channels) {
          setChannelCount(count);
          if (state.channel >= count) setChannel(count - 1);
        }
      },
    });
  }

  function toggleFilters() {
    state.filtersOpen = !state.filtersOpen;
    $("filters-panel").hidden = !state.filtersOpen;
    $("filters-button").setAttribute("aria-pressed", String(state.filtersOpen));
    $("filters-button").classList.toggle("active", state.filtersOpen);
    loadFilters();
  }

  function loadFilters() {
    if (isDetector()) return;
    if (!state.filtersOpen || !state.model) return;
    if (!state.layer) return clearImage("filters", "No layer selected");
    const url = `/api/models/${seg(state.model.name)}/layers/${seg(state.layer)}/filters.png`;
    // Layers without weights answer 4xx: the message is shown in the panel itself, not the banner.
    loadImage("filters", url, { meta: { layer: state.layer }, onError: () => {} });
  }

  // ---------------------------------------------------------------- explanation: method, class, settings

  function renderMethodOptions() {
    const groups = new Map();
    for (const m of state.methods) {
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
    const method = state.methods.find((m) => m.name === name) || null;
    state.method = method;
    if (!method) return;
    $("method-select").value = method.name;
    $("method-family").textContent = FAMILY_LABELS[method.family] || method.family || "";
    $("method-description").textContent = method.description || "";
    const paper = $("method-paper");
    paper.hidden = !method.paper;
    if (method.paper) paper.href = method.paper;
    $("explain-layer-field").hidden = !method.needs_layer;
    renderSettings(method);
    scheduleExplain();
  }

  function savedSettings(methodName) {
    if (!state.settings[methodName]) state.settings[methodName] = {};
    return state.settings[methodName];
  }

  function renderSettings(method) {
    const saved = savedSettings(method.name);
    const rows = (method.settings || []).map((spec) => settingRow(spec, saved));
    $("method-settings").replaceChildren(...(rows.length ? rows : [el("p", { class: "muted small" }, "No settings.")]));
  }

  function settingRow(spec, saved, prefix = "setting") {
    const id = `${prefix}-${spec.name.replace(/[^\w-]/g, "_")}`;
    const value = saved[spec.name] ?? spec.default;
    let input;
    if (spec.type === "bool") {
      input = el("input", { type: "checkbox", id });
      input.checked = value === true || value === "true";
    } else if (spec.type === "choice") {
      const choices = spec.choices || [];
      input = el("select", { id }, ...choices.map((c) => el("option", { value: c }, String(c))));
      input.value = String(value ?? choices[0] ?? "");
    } else if (spec.type === "int" || spec.type === "float") {
      const step = spec.step ?? (spec.type === "int" ? 1 : "any");
      input = el("input", { type: "number", id, required: true, step, min: spec.min, max: spec.max });
      input.value = value == null ? "" : String(value);
    } else {
      input = el("input", { type: "text", id, value: value ?? "" });
    }
    input.dataset.setting = spec.name;
    input.dataset.type = spec.type;
    const range = spec.min != null || spec.max != null ? ` (${spec.min ?? "…"} to ${spec.max ?? "…"})` : "";
    const help = el("small", { class: "help" }, (spec.help || "") + range);
    const label = el("label", { for: id, class: "setting-name", title: spec.name }, humanize(spec.name));
    const cls = spec.type === "bool" ? "setting setting-bool" : "setting";
    return el("div", { class: cls }, label, input, help);
  }

  function onSettingChanged(event) {
    const input = event.target;
    if (!input.dataset || !input.dataset.setting || !state.method) return;
    const saved = savedSettings(state.method.name);
    saved[input.dataset.setting] = input.type === "checkbox" ? input.checked : input.value;
    scheduleExplain();
  }

  // Current settings as query values; the first invalid one is reported instead.
  function readSettings(container = $("method-settings")) {
    const values = {};
    let error = null;
    for (const input of container.querySelectorAll("[data-setting]")) {
      const name = input.dataset.setting;
      if (input.type === "checkbox") {
        values[name] = input.checked ? "true" : "false";
        continue;
      }
      const v = input.validity;
      const notInt = input.dataset.type === "int" && input.value !== "" && !Number.isInteger(Number(input.value));
      const bad = v.badInput || v.valueMissing || v.rangeUnderflow || v.rangeOverflow || notInt;
      input.classList.toggle("invalid", bad);
      const why = notInt ? "a whole number is needed" : input.validationMessage || "invalid value";
      if (bad && !error) error = `${humanize(name)}: ${why}`;
      values[name] = input.value;
    }
    return { values, error };
  }

  function buildClassList(model) {
    const labels = model.labels || [];
    const count = labels.length || model.classes || 0;
    const seen = new Map();
    for (const label of labels) seen.set(label, (seen.get(label) || 0) + 1);
    state.classValues = Array.from({ length: count }, (_, i) => {
      const label = labels[i];
      if (label == null) return String(i);
      return seen.get(label) > 1 ? `${label} #${i}` : label; // duplicate labels get their index
    });
    state.classLookup = new Map();
    state.classValues.forEach((v, i) => state.classLookup.set(v.toLowerCase(), i));
    labels.forEach((label, i) => {
      const key = String(label).toLowerCase();
      if (!state.classLookup.has(key)) state.classLookup.set(key, i);
    });
    const options = document.createDocumentFragment();
    options.append(el("option", { value: "top-1" }));
    for (const v of state.classValues) options.append(el("option", { value: v }));
    $("class-labels").replaceChildren(options);
  }

  // "top-1" / "" -> {index: null}; a label, "label #i", "#i" or "i" -> {index}; else {error}.
  function resolveClass(text) {
    const v = text.trim();
    if (!v || v.toLowerCase() === "top-1") return { index: null };
    let index = state.classLookup.get(v.toLowerCase());
    if (index === undefined) {
      const m = v.match(/^#?(\d+)$/) || v.match(/#(\d+)$/);
      if (m) index = Number(m[1]);
    }
    const count = state.classValues.length;
    if (index === undefined || (count && index >= count)) return { error: `Unknown class “${v}”` };
    return { index };
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

  // ---------------------------------------------------------------- explanation: running

  function scheduleExplain(delay = 300) {
    clearTimeout(state.explainTimer);
    state.explainTimer = setTimeout(runExplain, delay);
  }

  function runExplain() {
    clearTimeout(state.explainTimer);
    const { model, method, imageId } = state;
    if (!model || !method || !imageId || isDetector()) return;
    const target = checkClassInput();
    const settings = readSettings();
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
    const query = params.toString();
    const url = `${imageBase()}/explain/${seg(method.name)}.png${query ? `?${query}` : ""}`;

    $("explain-time").textContent = "running…";
    updateExplainTarget(target.index);
    loadImage("overlay", url, {
      meta: { method: method.name, target: target.index == null ? "top-1" : String(target.index) },
      onLoad: (res, ms) => {
        const compute = parseFloat(res.headers.get("X-Ms") || ""); // the server's own compute time
        const total = formatMs(ms);
        $("explain-time").textContent = Number.isFinite(compute) ? `${formatMs(compute)} (${total} total)` : total;
      },
      onError: (message) => {
        $("explain-time").textContent = "failed";
        showError(`Explanation (${method.name}): ${message}`);
      },
    });
  }

  // ---------------------------------------------------------------- detection panel
  // A detector sees the upload itself: its boxes come in the picture's pixels and are placed,
  // in percentages, on a stage that has the picture's aspect ratio, so they stay on the
  // characters at any displayed size. Box indices refer to the detections last shown
  // (state.detectionsQuery holds their thresholds).

  const STAGE_HEIGHT = 520; // px: the tallest the picture is shown
  const OVERLAY_HEIGHT = 400;

  function setDetector(model) {
    const classes = model.labels && model.labels.length ? `classes ${model.labels.join(", ")}` : "";
    $("model-info").textContent = [model.description, "detector", classes].filter(Boolean).join(" · ");
    $("model-info").title = $("model-info").textContent;
    const score = $("score-threshold");
    score.value = String(model.score_threshold);
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
    const keep = state.boxMethod && methods.find((m) => m.name === state.boxMethod.name);
    setBoxMethod((keep || methods[0] || {}).name, false);
    clearDetections();
    if (state.imageId) showDetectImage();
  }

  const BOX_METHOD_LABELS = { drise: "D-RISE", gradcam: "Grad-CAM", layercam: "Layer-CAM" };

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
    state.detections = null;
    $("detect-boxes").replaceChildren();
    $("detect-list").replaceChildren();
    loadImage("detect-picture", `${imageBase()}/picture.png`, {
      meta: { image: state.imageId },
      onError: (message) => showError(`Picture: ${message}`),
    });
    loadDetections();
  }

  function clearDetections() {
    clearTimeout(state.detectTimer);
    state.requests.detections?.abort();
    state.detections = null;
    state.detectionsQuery = "";
    $("detect-boxes").replaceChildren();
    $("detect-list").replaceChildren();
    $("detect-summary").textContent = "";
    clearImage("detect-picture", "No image yet");
    clearBox("Click a box (or a row of the list)");
  }

  function scheduleDetections(delay = 200) {
    clearTimeout(state.detectTimer);
    state.detectTimer = setTimeout(loadDetections, delay);
  }

  async function loadDetections() {
    clearTimeout(state.detectTimer);
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
      state.detectionsQuery = query;
      renderDetections(data);
      list.dataset.state = "ready";
    } catch (err) {
      if (state.model !== model || state.imageId !== imageId) return;
      list.dataset.state = "error";
      state.detections = null;
      $("detect-boxes").replaceChildren();
      list.replaceChildren();
      $("detect-summary").replaceChildren(el("span", { class: "error-text" }, err.message));
      showError(`Detections: ${err.message}`);
    } finally {
      if (state.requests.detections == null) $("detect-frame").classList.remove("loading");
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
    state.detections = data;
    const { width, height } = data;
    state.imageSize = { width, height };
    sizeStage($("detect-stage"), width, height, STAGE_HEIGHT);
    sizeStage($("box-overlay-frame"), width, height, OVERLAY_HEIGHT);
    const dets = data.detections || [];
    // smaller boxes above larger ones, so a box inside another can still be clicked
    const area = (d) => (d.box[2] - d.box[0]) * (d.box[3] - d.box[1]);
    const rank = new Map([...dets].sort((a, b) => area(b) - area(a)).map((d, k) => [d.index, k + 1]));
    const boxes = dets.map((d) => detectionBox(d, width, height, rank.get(d.index)));
    const rows = dets.map((d) => detectionRow(d));
    $("detect-boxes").replaceChildren(...boxes);
    $("detect-list").replaceChildren(...rows);
    const s = data.settings || {};
    const rule = `score ≥ ${Number(s.score_threshold).toFixed(2)}, NMS IoU ${Number(s.iou_threshold).toFixed(2)}, at most ${s.max_detections}`;
    const took = data.cached ? "cached" : formatMs(data.ms);
    $("detect-summary").textContent = dets.length
      ? `${dets.length} detection${dets.length === 1 ? "" : "s"} (${rule}) · ${took}. Click a box or a row to explain it.`
      : `No boxes at ${rule}. Lower the score threshold, or try another picture (the crowd samples are toon frames).`;
    $("detect-summary").dataset.count = String(dets.length);
    // the chosen box survives a threshold change when the detector still finds it
    const again = state.boxKey == null ? -1 : dets.findIndex((d) => boxKey(d) === state.boxKey);
    if (again >= 0) markBox(again);
    else if (state.boxKey != null) clearBox("The chosen box is gone at these thresholds: click another");
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
    const colour = classColor(d.label);
    const button = el(
      "button",
      {
        type: "button",
        class: "det-row",
        "data-index": d.index,
        "aria-pressed": "false",
        title: `Explain box #${d.index}`,
      },
      el("span", { class: "det-swatch", "aria-hidden": "true" }),
      el("span", { class: "det-index" }, `#${d.index}`),
      el("span", { class: "det-name" }, d.name),
      el("span", { class: "det-score" }, d.score.toFixed(3)),
      el("span", { class: "det-coords", title: "x0, y0, x1, y1 in the picture's pixels" }, formatBox(d.box)),
    );
    button.style.setProperty("--c", colour);
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
    state.box = index;
    const d = state.detections && state.detections.detections[index];
    state.boxKey = d ? boxKey(d) : null;
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
    clearInterval(state.boxTicker);
    state.box = null;
    state.boxKey = null;
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
    state.boxMethod = method;
    if (!method) {
      $("box-settings").replaceChildren();
      return;
    }
    $("box-method").value = method.name;
    $("box-method-family").textContent = FAMILY_LABELS[method.family] || method.family || "";
    $("box-method-description").textContent = method.description || "";
    $("box-method-paper").textContent = method.paper || "";
    if (!state.boxSettings[method.name]) state.boxSettings[method.name] = {};
    const saved = state.boxSettings[method.name];
    const rows = (method.settings || []).map((spec) => settingRow(spec, saved, "box-setting"));
    $("box-settings").replaceChildren(...(rows.length ? rows : [el("p", { class: "muted small" }, "No settings.")]));
    if (run && state.box != null) runBoxExplain();
  }

  function onBoxSettingChanged(event) {
    const input = event.target;
    if (!input.dataset || !input.dataset.setting || !state.boxMethod) return;
    state.boxSettings[state.boxMethod.name][input.dataset.setting] = input.type === "checkbox" ? input.checked : input.value;
    if (state.box != null) runBoxExplain();
  }

  function runBoxExplain() {
    const method = state.boxMethod;
    if (!isDetector() || !method || state.box == null || !state.detections) return;
    const settings = readSettings($("box-settings"));
    if (settings.error) {
      $("box-time").textContent = settings.error;
      return;
    }
    const params = new URLSearchParams(state.detectionsQuery);
    for (const [name, value] of Object.entries(settings.values)) params.set(name, value);
    const index = state.box;
    const url = `${imageBase()}/detections/${index}/explain/${seg(method.name)}.png?${params}`;
    const label = BOX_METHOD_LABELS[method.name] || method.name;
    const started = performance.now();
    clearInterval(state.boxTicker);
    $("box-time").textContent = "running…";
    state.boxTicker = setInterval(() => {
      $("box-time").textContent = `running… ${((performance.now() - started) / 1000).toFixed(0)} s`;
    }, 1000);
    $("box-energy").replaceChildren(el("span", { class: "muted" }, `${label} of box #${index}…`));
    loadImage("box-overlay", url, {
      meta: { method: method.name, box: String(index) },
      onLoad: (res, ms) => {
        clearInterval(state.boxTicker);
        const compute = parseFloat(res.headers.get("X-Ms") || "");
        const cached = res.headers.get("X-Cache") === "hit";
        $("box-time").textContent = cached
          ? `cached (${formatMs(compute)} when computed)`
          : `${formatMs(compute)} (${formatMs(ms)} total)`;
        showEnergy(res, index, label);
      },
      onError: (message) => {
        clearInterval(state.boxTicker);
        $("box-time").textContent = "failed";
        $("box-energy").replaceChildren(el("span", { class: "error-text" }, message));
        showError(`Box explanation (${label}): ${message}`);
      },
    });
  }

  function showEnergy(res, index, label) {
    const energy = parseFloat(res.headers.get("X-Energy-In-Box") || "");
    const [px, py] = (res.headers.get("X-Peak") || "").split(",").map(Number);
    const d = state.detections && state.detections.detections[index];
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

  function bindDetectionPanel() {
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
    $("detect-boxes").addEventListener("keydown", onBoxKey);
  }

  // ---------------------------------------------------------------- jobs

  function fillJobLayers(model) {
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

  function jobParams(kind) {
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
    return layers.length ? { target: target.index, layers, concepts } : { target: target.index, concepts };
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
    clearTimeout(state.jobsTimer);
    const seq = ++state.jobsSeq;
    let jobs;
    try {
      const res = await fetch("/api/jobs");
      if (res.status === 404 || res.status === 405) {
        state.jobsAvailable = false;
        $("jobs-panel").hidden = true;
        return;
      }
      if (!res.ok) throw new ApiError(await errorDetail(res), res.status);
      jobs = await res.json();
      if (!Array.isArray(jobs)) jobs = [];
    } catch (err) {
      if (seq !== state.jobsSeq) return;
      if (state.jobsAvailable && !state.jobsFailing) showError(`Jobs: ${err.message || "cannot reach the server"}`);
      state.jobsFailing = true;
      if (state.jobsAvailable) state.jobsTimer = setTimeout(refreshJobs, 3000);
      return;
    }
    if (seq !== state.jobsSeq) return; // a newer refresh is on its way
    Object.assign(state, { jobsAvailable: true, jobsFailing: false });
    $("jobs-panel").hidden = false;
    renderJobs(jobs);
    if (jobs.some((j) => ACTIVE_JOBS.has(j.status))) state.jobsTimer = setTimeout(refreshJobs, 1000);
  }

  // Rows are rebuilt only when their job changed, so result thumbnails don't reload every second.
  function renderJobs(jobs) {
    const rows = jobs.map((job) => {
      const sig = JSON.stringify(job);
      const known = state.jobRows.get(job.id);
      if (known && known.sig === sig) return known.row;
      const row = jobRow(job);
      state.jobRows.set(job.id, { sig, row });
      return row;
    });
    const ids = new Set(jobs.map((j) => j.id));
    for (const id of [...state.jobRows.keys()]) if (!ids.has(id)) state.jobRows.delete(id);
    $("jobs-table").tBodies[0].replaceChildren(...rows);
    $("jobs-empty").hidden = jobs.length > 0;
  }

  function jobRow(job) {
    const progress = clamp(Number(job.progress) || 0, 0, 1);
    const active = ACTIVE_JOBS.has(job.status);
    const bar = el(
      "div",
      { class: `progress${job.status === "running" ? " running" : ""}`, title: formatPercent(progress) },
      el("div", { class: "progress-fill", style: { width: `${(progress * 100).toFixed(1)}%` } }),
    );
    let action = null;
    if (active) {
      action = el("button", { type: "button", class: "job-cancel small-button", "data-job-id": job.id }, "Cancel");
      action.addEventListener("click", () => cancelJob(job.id, action));
    }
    return el(
      "tr",
      { "data-job-id": job.id, "data-status": job.status },
      el("td", { class: "mono", title: job.id }, String(job.id).slice(0, 8)),
      el("td", {}, job.kind || ""),
      el("td", {}, el("span", { class: `status status-${job.status}` }, job.status)),
      el("td", { class: "progress-cell" }, bar, el("span", { class: "mono small" }, formatPercent(progress))),
      el("td", { class: "job-message", title: job.message || "" }, job.message || ""),
      el("td", {}, el("div", { class: "job-results" }, ...jobResults(job.results || []))),
      el("td", {}, action),
    );
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

  // ---------------------------------------------------------------- health

  async function checkHealth() {
    let ok = false;
    try {
      ok = (await getJSON("/api/health")).status === "ok";
    } catch {
      ok = false;
    }
    $("health-dot").className = `dot ${ok ? "ok" : "down"}`;
    $("health-text").textContent = ok ? "online" : "offline";
    $("health-dot").parentElement.title = ok ? "The server answers" : "The server does not answer";
    setTimeout(checkHealth, ok ? 15000 : 4000);
  }

  // ---------------------------------------------------------------- wiring

  function bindDropZone() {
    const zone = $("drop-zone");
    let depth = 0; // dragenter/leave fire for children too
    const hasFiles = (e) => e.dataTransfer && [...e.dataTransfer.types].includes("Files");
    zone.addEventListener("dragenter", (e) => {
      if (!hasFiles(e)) return;
      e.preventDefault();
      depth += 1;
      zone.classList.add("dragover");
    });
    zone.addEventListener("dragover", (e) => e.preventDefault());
    zone.addEventListener("dragleave", () => {
      depth = Math.max(0, depth - 1);
      if (!depth) zone.classList.remove("dragover");
    });
    zone.addEventListener("drop", (e) => {
      e.preventDefault();
      e.stopPropagation();
      depth = 0;
      zone.classList.remove("dragover");
      uploadFile(e.dataTransfer && e.dataTransfer.files[0]);
    });
    zone.addEventListener("keydown", (e) => {
      if (e.target !== zone || (e.key !== "Enter" && e.key !== " ")) return;
      e.preventDefault();
      $("file-input").click();
    });
    // A file dropped beside the zone must not make the browser navigate away.
    window.addEventListener("dragover", (e) => e.preventDefault());
    window.addEventListener("drop", (e) => e.preventDefault());
    document.addEventListener("paste", (e) => {
      const file = [...((e.clipboardData && e.clipboardData.files) || [])].find((f) => f.type.startsWith("image/"));
      if (file) uploadFile(file);
    });
    $("file-input").addEventListener("change", (e) => {
      uploadFile(e.target.files[0]);
      e.target.value = ""; // choosing the same file again still fires "change"
    });
  }

  function bindEvents() {
    $("error-dismiss").addEventListener("click", hideError);
    $("model-select").addEventListener("change", (e) => setModel(e.target.value));
    bindDropZone();

    $("layer-select").addEventListener("change", (e) => setLayer(e.target.value));
    $("channel-slider").addEventListener("input", (e) => setChannel(e.target.value));
    $("channel-prev").addEventListener("click", () => setChannel(state.channel - 1));
    $("channel-next").addEventListener("click", () => setChannel(state.channel + 1));
    $("grid-toggle").addEventListener("change", (e) => setGrid(e.target.checked));
    $("filters-button").addEventListener("click", toggleFilters);
    for (const id of ["heatmap", "filters", "overlay", "box-overlay"]) $(id).addEventListener("click", openFullSize);

    $("method-select").addEventListener("change", (e) => setMethod(e.target.value));
    $("method-settings").addEventListener("input", onSettingChanged);
    $("method-settings").addEventListener("change", onSettingChanged);
    $("explain-layer-select").addEventListener("change", () => scheduleExplain());
    const classInput = $("class-input");
    classInput.addEventListener("focus", () => classInput.select());
    classInput.addEventListener("input", () => checkClassInput().error || scheduleExplain());
    classInput.addEventListener("keydown", (e) => e.key === "Enter" && runExplain());
    $("run-button").addEventListener("click", runExplain);

    bindDetectionPanel();

    $("job-kind").addEventListener("change", showJobFields);
    $("job-form").addEventListener("submit", startJob);
  }

  async function loadList(url, what) {
    try {
      const data = await getJSON(url);
      return Array.isArray(data) ? data : [];
    } catch (err) {
      showError(`Could not load the ${what}: ${err.message}`);
      return [];
    }
  }

  async function init() {
    bindEvents();
    showJobFields();
    checkHealth();
    refreshJobs();
    const [models, methods, samples] = await Promise.all([
      loadList("/api/models", "models"),
      loadList("/api/methods", "methods"),
      loadList("/api/samples", "sample images"),
    ]);
    Object.assign(state, { models, methods, samples });
    renderModelOptions();
    renderMethodOptions();
    renderSamples();
    const method = methods.find((m) => m.name === "gradcam") || methods[0];
    if (method) setMethod(method.name);
    if (models.length) setModel(models[0].name);
    // show something straight away: a crowd toon frame when the first model is a detector
    const first = (isDetector() && samples.find((s) => s.kind === "toons")) || samples[0];
    if (first) useSample(first.name);
  }

  init();
})();
