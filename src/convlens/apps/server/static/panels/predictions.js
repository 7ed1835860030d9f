// The predictions panel (under the picture): a classifier's top classes. A row click asks the
// explanation panel for that class ("explain-class"); the list is shared as "predictions".

import { imageBase, latest, STALE } from "../lib/api.js";
import { $, clamp, el, formatMs, formatPercent, mount as put, showError } from "../lib/dom.js";
import { emit, isClassifier, on, state } from "../lib/state.js";

const MARKUP = `
<h3 class="classify-only">Predictions <span id="predictions-time" class="muted small"></span></h3>
<div id="predictions" class="predictions classify-only" aria-live="polite">
  <p class="muted small">No image yet.</p>
</div>`;

async function loadPredictions() {
  if (!isClassifier() || !state.imageId) return;
  const box = $("predictions");
  box.dataset.state = "loading";
  box.classList.add("loading");
  try {
    const data = await latest("predictions", `${imageBase()}/predictions?top=5`);
    if (data === STALE) return;
    state.predictions = data.predictions || [];
    renderPredictions(state.predictions, data.ms, data.ood);
    box.dataset.state = "ready";
  } catch (err) {
    box.dataset.state = "error";
    box.replaceChildren(el("p", { class: "error-text small" }, err.message));
    $("predictions-time").textContent = "";
    showError(`Predictions: ${err.message}`);
  }
  box.classList.remove("loading");
  emit("predictions", state.predictions);
}

// A toon model shown a photo: say that the picture is far from what it was trained on.
function oodNote(ood) {
  if (!ood) return null;
  const score = Number(ood.ood_score).toFixed(1);
  const text = ood.far
    ? `Far from what this model was trained on (out-of-distribution score ${score}; above 1 is farther than 99 % of its test pictures): these predictions mean little.`
    : `Like the pictures this model was trained on (out-of-distribution score ${score}, below 1).`;
  return el("p", { id: "ood-note", class: ood.far ? "warning-text small" : "muted small", "data-far": String(ood.far) }, text);
}

function renderPredictions(predictions, ms, ood) {
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
    const pick = () => emit("explain-class", p.index);
    row.addEventListener("click", pick);
    row.addEventListener("keydown", (e) => {
      if (e.key !== "Enter" && e.key !== " ") return;
      e.preventDefault();
      pick();
    });
    return row;
  });
  const shown = rows.length ? rows : [el("p", { class: "muted small" }, "No predictions.")];
  const note = oodNote(ood);
  $("predictions").replaceChildren(...(note ? [note, ...shown] : shown));
  $("predictions-time").textContent = ms != null ? formatMs(ms) : "";
}

export function mount() {
  put("#image-panel", MARKUP);
  on("model", loadPredictions);
  on("image", loadPredictions);
}
