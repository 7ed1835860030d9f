// The layer table panel: every layer of the chosen classifier (dotted name, type, kind, output
// shape, parameter count) in forward order, filtered by kind.

import { latest, seg, STALE } from "../lib/api.js";
import { $, el, fillSelect, mount as put, showError } from "../lib/dom.js";
import { isClassifier, on, state } from "../lib/state.js";

const MARKUP = `
<section id="layers-panel" class="panel wide-panel classify-only" aria-labelledby="layers-title">
  <h2 id="layers-title">Layers</h2>
  <div class="toolbar">
    <label class="inline-field" for="layers-kind">Kind</label>
    <select id="layers-kind"></select>
    <span id="layers-summary" class="muted small"></span>
  </div>
  <div id="layers-wrap" class="table-wrap">
    <table id="layers-table" class="data-table">
      <thead>
        <tr><th>Layer</th><th>Type</th><th>Kind</th><th>Output shape</th><th>Parameters</th></tr>
      </thead>
      <tbody></tbody>
    </table>
  </div>
</section>`;

const RIGHT = { textAlign: "right" };
let kindsOf = null; // the model whose kinds fill the menu

function fillKinds(kinds) {
  const total = Object.values(kinds).reduce((a, b) => a + b, 0);
  const items = Object.entries(kinds).map(([kind, n]) => ({ value: kind, label: `${kind} (${n})` }));
  fillSelect($("layers-kind"), [{ value: "", label: `all (${total})` }, ...items], "");
}

function row(layer) {
  const shape = layer.shape ? layer.shape.join("×") : "–";
  return el(
    "tr",
    { "data-name": layer.name, "data-kind": layer.kind },
    el("td", { class: "mono", style: { paddingLeft: `${8 + 14 * layer.depth}px` } }, layer.name),
    el("td", {}, layer.type),
    el("td", {}, layer.kind),
    el("td", { class: "mono" }, shape),
    el("td", { class: "mono", style: RIGHT }, layer.params.toLocaleString("en-US")),
  );
}

async function loadTable() {
  if (!isClassifier() || !state.model) return;
  const model = state.model;
  const kind = kindsOf === model.name ? $("layers-kind").value : "";
  const table = $("layers-table");
  table.dataset.state = "loading";
  try {
    const query = kind ? `?kind=${seg(kind)}` : "";
    const data = await latest("layers", `/api/models/${seg(model.name)}/layers${query}`);
    if (data === STALE || state.model !== model) return;
    if (kindsOf !== model.name) fillKinds(data.kinds);
    kindsOf = model.name;
    table.tBodies[0].replaceChildren(...data.layers.map(row));
    const params = data.total_params.toLocaleString("en-US");
    $("layers-summary").textContent = `${data.layers.length} layers · ${params} parameters in all · input ${data.input_shape.join("×")}`;
    Object.assign(table.dataset, { state: "ready", model: model.name, kind: kind || "all" });
  } catch (err) {
    if (state.model !== model) return;
    table.dataset.state = "error";
    showError(`Layer table: ${err.message}`);
  }
}

export function mount() {
  put(document.body, MARKUP);
  $("layers-wrap").style.maxHeight = "420px"; // a long table scrolls inside the panel
  $("layers-table").tHead.rows[0].cells[4].style.textAlign = "right";
  $("layers-kind").addEventListener("change", loadTable);
  on("model", loadTable);
}
