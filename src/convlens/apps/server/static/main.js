/* convlens explorer: the page shell. It loads the panel modules the server lists
   (/api/panels: static/panels/<name>.js, ES modules, nothing from the internet), mounts them
   in that order, and owns the top bar: the model menu, the error banner and the health dot.
   The panels share state and events through lib/state.js. */

import { getJSON, loadList } from "./lib/api.js";
import { $, fillSelect, hideError, showError } from "./lib/dom.js";
import { emit, setClasses, state } from "./lib/state.js";

window.convlens = state; // the one global: handy in devtools

function renderModelOptions() {
  const items = state.models.map((m) => ({ value: m.name, label: m.name, title: m.description }));
  fillSelect($("model-select"), items);
}

function modelInfo(model) {
  if (model.task === "detect" || model.task === "segment") {
    const classes = model.labels && model.labels.length ? `classes ${model.labels.join(", ")}` : "";
    return [model.description, model.task === "detect" ? "detector" : "segmenter", classes];
  }
  const size = (model.input_size || []).join("×");
  const classes = model.classes && `${model.classes} classes`;
  return [model.description, size && `input ${size}`, classes];
}

function setModel(name) {
  const model = state.models.find((m) => m.name === name);
  if (!model) return;
  state.model = model;
  state.predictions = [];
  $("model-select").value = model.name;
  document.body.dataset.task = ["detect", "segment"].includes(model.task) ? model.task : "classify";
  $("model-info").textContent = modelInfo(model).filter(Boolean).join(" · ");
  $("model-info").title = $("model-info").textContent;
  if (model.task === "classify") setClasses(model);
  emit("model", model);
}

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

// Every panel's module, mounted in the server's order (each puts its markup in place at once,
// then loads what it lists: methods, samples, ...).
async function mountPanels(list) {
  const modules = await Promise.all(list.map((panel) => import(panel.module)));
  await Promise.all(modules.map((module) => module.mount()));
}

async function init() {
  $("error-dismiss").addEventListener("click", hideError);
  $("model-select").addEventListener("change", (e) => setModel(e.target.value));
  checkHealth();
  const [list, models] = await Promise.all([loadList("/api/panels", "panels"), loadList("/api/models", "models")]);
  try {
    await mountPanels(list);
  } catch (err) {
    showError(`Could not load the page's panels: ${err.message}`);
    return;
  }
  state.models = models;
  renderModelOptions();
  if (models.length) setModel(models[0].name);
  emit("start"); // show something straight away
}

init();
