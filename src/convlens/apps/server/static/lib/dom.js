// DOM helpers, number formats and the error banner: what every panel module uses.

export const $ = (id) => document.getElementById(id);
export const clamp = (x, lo, hi) => Math.min(hi, Math.max(lo, x));

export function el(tag, attrs = {}, ...children) {
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

// A panel's own static markup (never data from the server) appended to `where`.
export function mount(where, markup) {
  const template = document.createElement("template");
  template.innerHTML = markup.trim();
  const target = typeof where === "string" ? document.querySelector(where) : where;
  const first = template.content.firstElementChild;
  target.append(template.content);
  return first;
}

export function fillSelect(select, items, value) {
  select.replaceChildren(...items.map((it) => el("option", { value: it.value, title: it.title }, it.label)));
  if (value != null) select.value = value;
}

export function formatMs(ms) {
  return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(2)} s`;
}

export function formatPercent(p) {
  const pct = p * 100;
  return pct > 0 && pct < 0.1 ? "<0.1%" : `${pct.toFixed(1)}%`;
}

export function humanize(name) {
  return name.replace(/_/g, " ");
}

export function showError(message) {
  $("error-message").textContent = message;
  $("error-banner").hidden = false;
}

export function hideError() {
  $("error-banner").hidden = true;
}

export function openFullSize(event) {
  const src = event.currentTarget.getAttribute("src");
  if (src) window.open(src, "_blank");
}
