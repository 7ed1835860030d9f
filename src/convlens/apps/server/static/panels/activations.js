// The activations panel: one conv or pool layer of the picture, a channel at a time (the
// slider) or the whole layer as a grid. Choosing a layer emits "layer".

import { imageBase, seg } from "../lib/api.js";
import { $, clamp, fillSelect, mount as put, openFullSize } from "../lib/dom.js";
import { clearImage, loadImage } from "../lib/slots.js";
import { browsableLayers, emit, isClassifier, layerChannels, layerItem, on, state } from "../lib/state.js";

const MARKUP = `
<section class="panel classify-only" id="activations-panel" aria-labelledby="activations-title">
  <h2 id="activations-title">Activations</h2>
  <div class="field">
    <label for="layer-select">Layer</label>
    <select id="layer-select"></select>
  </div>
  <div class="channel-row">
    <label for="channel-slider">Channel</label>
    <button id="channel-prev" type="button" class="icon-button" aria-label="Previous channel" title="Previous channel">&minus;</button>
    <input type="range" id="channel-slider" min="0" max="0" step="1" value="0">
    <button id="channel-next" type="button" class="icon-button" aria-label="Next channel" title="Next channel">+</button>
    <output id="channel-value" for="channel-slider">0</output>
    <span id="channel-count" class="muted small"></span>
  </div>
  <div class="toolbar">
    <label class="check"><input type="checkbox" id="grid-toggle"> Whole layer</label>
    <span class="spacer"></span>
  </div>
  <div id="heatmap-frame" class="frame heatmap-frame" data-state="empty">
    <img id="heatmap" alt="Activation heatmap" title="Click to open at full size">
    <span class="frame-msg">No image yet</span>
  </div>
</section>`;

const view = { channel: 0, channels: 0, grid: false };

function setModel(model) {
  if (!isClassifier()) return;
  state.layers = browsableLayers(model);
  fillSelect($("layer-select"), state.layers.map(layerItem));
  const first = state.layers.find((l) => l.kind === "conv") || state.layers[0];
  setLayer(first ? first.name : null);
}

function setLayer(name) {
  state.layer = name;
  if (name) $("layer-select").value = name;
  setChannelCount(layerChannels(state.layers.find((l) => l.name === name)));
  view.channel = 0;
  showChannel();
  loadHeatmap();
  emit("layer", name);
}

function setChannelCount(count) {
  view.channels = count;
  $("channel-slider").max = String(Math.max(0, count - 1));
  $("channel-count").textContent = count ? `of ${count}` : "";
  updateChannelControls();
}

function updateChannelControls() {
  const off = view.grid || view.channels <= 1;
  for (const id of ["channel-slider", "channel-prev", "channel-next"]) $(id).disabled = off;
}

function showChannel() {
  $("channel-slider").value = String(view.channel);
  $("channel-value").textContent = String(view.channel);
}

function setChannel(value) {
  const channel = clamp(Math.round(Number(value) || 0), 0, Math.max(0, view.channels - 1));
  if (channel === view.channel) return showChannel();
  view.channel = channel;
  showChannel();
  loadHeatmap();
}

function setGrid(on) {
  view.grid = on;
  $("heatmap-frame").classList.toggle("wide", on);
  updateChannelControls();
  loadHeatmap();
}

function loadHeatmap() {
  if (!isClassifier()) return;
  if (!state.model || !state.imageId || !state.layer) {
    clearImage("heatmap", state.imageId ? "No layer to show" : "No image yet");
    return;
  }
  const layer = state.layer;
  const query = view.grid ? "grid=1" : `channel=${view.channel}`;
  loadImage("heatmap", `${imageBase()}/activations/${seg(layer)}.png?${query}`, {
    coalesce: true,
    meta: { channel: view.grid ? "grid" : String(view.channel), layer },
    onLoad: (res) => {
      const count = parseInt(res.headers.get("X-Channels") || "", 10);
      if (layer === state.layer && count > 0 && count !== view.channels) {
        setChannelCount(count);
        if (view.channel >= count) setChannel(count - 1);
      }
    },
  });
}

export function mount() {
  put("#columns", MARKUP);
  $("layer-select").addEventListener("change", (e) => setLayer(e.target.value));
  $("channel-slider").addEventListener("input", (e) => setChannel(e.target.value));
  $("channel-prev").addEventListener("click", () => setChannel(view.channel - 1));
  $("channel-next").addEventListener("click", () => setChannel(view.channel + 1));
  $("grid-toggle").addEventListener("change", (e) => setGrid(e.target.checked));
  $("heatmap").addEventListener("click", openFullSize);
  on("model", setModel);
  on("image", loadHeatmap);
}
