// Image slots: an <img> inside a .frame, filled from a PNG endpoint. PNGs are fetched (not set
// as src directly) so that error details and headers can be read. "coalesce" keeps the request
// in flight and sends only the newest one after it (the slider); otherwise a new request
// aborts the one in flight. The <img> and its frame carry data-state: loading, ready or error.

import { api } from "./api.js";
import { $, showError } from "./dom.js";

const slots = {}; // <img> id -> loader bookkeeping

function slot(id) {
  if (!slots[id]) {
    const img = $(id);
    const frame = img.closest(".frame");
    slots[id] = {
      img,
      frame,
      msg: frame && frame.querySelector(".frame-msg"),
      busy: false,
      ctrl: null,
      queued: null,
      objectUrl: null,
    };
  }
  return slots[id];
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

export function clearImage(id, message = "") {
  const s = slot(id);
  s.ctrl?.abort();
  Object.assign(s, { ctrl: null, busy: false, queued: null });
  dropPicture(s);
  setSlotState(s, null, message);
}

// options: meta (data- attributes set once loaded), onLoad(res, ms), onError(message), coalesce
export function loadImage(id, url, options = {}) {
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
