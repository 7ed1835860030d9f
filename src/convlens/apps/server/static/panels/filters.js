// The filters panel: the filter weights of the activations panel's layer, shown under it when
// its "Filters" button (in the activations toolbar) is pressed.

import { seg } from "../lib/api.js";
import { $, el, mount as put, openFullSize } from "../lib/dom.js";
import { clearImage, loadImage } from "../lib/slots.js";
import { isClassifier, on, state } from "../lib/state.js";

const MARKUP = `
<div id="filters-panel" class="subpanel" hidden>
  <h3>Filters <span id="filters-layer" class="muted small"></span></h3>
  <div id="filters-frame" class="frame filters-frame" data-state="empty">
    <img id="filters" alt="Filter weights of the selected layer" title="Click to open at full size">
    <span id="filters-message" class="frame-msg"></span>
  </div>
</div>`;

let open = false;

function toggleFilters() {
  open = !open;
  $("filters-panel").hidden = !open;
  $("filters-button").setAttribute("aria-pressed", String(open));
  $("filters-button").classList.toggle("active", open);
  loadFilters();
}

function loadFilters() {
  if (!isClassifier()) return;
  if (!open || !state.model) return;
  if (!state.layer) return clearImage("filters", "No layer selected");
  const url = `/api/models/${seg(state.model.name)}/layers/${seg(state.layer)}/filters.png`;
  // Layers without weights answer 4xx: the message is shown in the panel itself, not the banner.
  loadImage("filters", url, { meta: { layer: state.layer }, onError: () => {} });
}

export function mount() {
  const button = el(
    "button",
    { type: "button", id: "filters-button", "aria-pressed": "false", "aria-controls": "filters-panel" },
    "Filters",
  );
  document.querySelector("#activations-panel .toolbar").append(button);
  put("#activations-panel", MARKUP);
  button.addEventListener("click", toggleFilters);
  $("filters").addEventListener("click", openFullSize);
  on("layer", (name) => {
    $("filters-layer").textContent = name || "";
    loadFilters();
  });
}
