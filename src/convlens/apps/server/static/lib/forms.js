// Form controls from the method table: each setting of /api/methods (or of a detector's
// box_methods) becomes a labelled control with its range and help.

import { el, humanize } from "./dom.js";

export const FAMILY_LABELS = { cam: "CAM", gradient: "Gradient", perturbation: "Perturbation" };

export function settingRow(spec, saved, prefix = "setting") {
  const id = `${prefix}-${spec.name.replace(/[^\w-]/g, "_")}`;
  const value = saved[spec.name] ?? spec.default;
  let input;
  if (spec.type === "bool") {
    input = el("input", { type: "checkbox", id });
    input.checked = value === true || value === "true";
  } else if (spec.type === "choice") {
    // a choice whose default is none (an approximate mode) offers "none" first: not sent
    const choices = spec.default == null ? ["none", ...(spec.choices || [])] : spec.choices || [];
    input = el("select", { id }, ...choices.map((c) => el("option", { value: c }, String(c))));
    input.value = String(value ?? choices[0] ?? "");
  } else if (spec.type === "int" || spec.type === "float") {
    const step = spec.step ?? (spec.type === "int" ? 1 : "any");
    // an optional setting (a seed; Score-CAM's channels, where none means all) may stay empty: it is
    // then not sent and the library's default holds
    const optional = spec.optional || spec.default == null;
    const placeholder = optional ? "none" : null;
    input = el("input", { type: "number", id, required: !optional, step, min: spec.min, max: spec.max, placeholder });
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

// Every setting of a method as rows in `container` (values the user chose kept in `saved`).
export function renderSettings(container, settings, saved, prefix) {
  const rows = (settings || []).map((spec) => settingRow(spec, saved, prefix));
  container.replaceChildren(...(rows.length ? rows : [el("p", { class: "muted small" }, "No settings.")]));
}

// Current settings as query values; the first invalid one is reported instead.
export function readSettings(container) {
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
    if (input.value === "" && !input.required) continue; // an optional setting left empty
    if (input.tagName === "SELECT" && input.value === "none") continue; // a choice left at none
    values[name] = input.value;
  }
  return { values, error };
}
