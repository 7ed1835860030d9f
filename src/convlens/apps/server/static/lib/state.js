// What the panels share: the chosen model, picture and layer, the class names, and a small
// event bus. Panels never call each other; they emit and listen:
//   "model" (entry of /api/models)   the model menu chose a model
//   "image" (info)                   a picture was uploaded or a sample chosen
//   "start"                          the page is ready: the image panel picks a first sample
//   "predictions" (list)             the predictions panel has the top classes
//   "layer" (name)                   the activations panel chose a layer
//   "explain-class" (index)          a prediction was clicked: explain that class

import { el } from "./dom.js";

export const state = {
  models: [],
  model: null, // the selected entry of /api/models
  imageId: null,
  imageSize: null, // {width, height} of the upload
  predictions: [],
  layers: [], // the model's conv/pool layers (the activations panel's menu)
  layer: null, // the layer the activations panel shows
  classValues: [], // datalist value per class index (labels, made unique)
  classLookup: new Map(), // lower-cased value or label -> class index
};

const listeners = new Map();

export function on(event, fn) {
  if (!listeners.has(event)) listeners.set(event, []);
  listeners.get(event).push(fn);
}

export function emit(event, ...args) {
  for (const fn of listeners.get(event) || []) fn(...args);
}

export const isDetector = () => Boolean(state.model && state.model.task === "detect");
// the classifier's panels stand aside for a detector or a segmenter (each has its own panel)
export const isClassifier = () => Boolean(state.model && state.model.task === "classify");

// ---------------------------------------------------------------- layers

export function browsableLayers(model) {
  const layers = model.layers || [];
  const picked = layers.filter((l) => /conv|pool/i.test(l.kind || ""));
  return picked.length ? picked : layers;
}

export const layerChannels = (layer) => (layer ? layer.channels ?? (layer.shape || [])[0] ?? 0 : 0);

export function layerItem(layer) {
  const shape = (layer.shape || []).join("×");
  return { value: layer.name, label: `${layer.name} · ${layer.kind}${shape ? ` · ${shape}` : ""}` };
}

// ---------------------------------------------------------------- classes

// The class names of a classifier as the page's class inputs take them (#class-labels).
export function setClasses(model) {
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
  document.getElementById("class-labels").replaceChildren(options);
}

// "top-1" / "" -> {index: null}; a label, "label #i", "#i" or "i" -> {index}; else {error}.
export function resolveClass(text) {
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
