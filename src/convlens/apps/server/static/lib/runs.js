// A request's model work while it goes (the server's Run, /api/runs/<id>): its progress in a
// text element (waiting for the model, or done of total) and a Cancel button that stops it.
// Every panel whose requests run long work shares this: the request carries `run=<id>` (from
// begin()), and its outcome calls end(id), which says whether it was cancelled. A panel that
// names where previews go gets each new first map of a run (occlusion's coarse passes, the
// first masks of RISE and D-RISE) in that <img> while the run goes, its frame marked
// data-preview (the share of the work it holds), and "preview from 9 % of windows" before
// the progress; the finished map replaces it.

import { api } from "./api.js";
import { $ } from "./dom.js";

const POLL_MS = 250;
let seq = 0;

export class RunWatch {
  // prefix: names the run ids; statusId: the element showing the progress; cancelId: the
  // button; preview (optional): { image: the <img> id, query: () => "?scale=…" for the
  // preview's URL, onShown: (response) => void, called once a preview is on show }
  constructor(prefix, statusId, cancelId, preview = null) {
    Object.assign(this, { prefix, statusId, cancelId, preview, id: null, timer: 0, cancelled: false });
    this.frame = preview ? $(preview.image).closest(".frame") : null;
    this.previewUrl = null; // the object URL of the first map on show
    $(cancelId).addEventListener("click", () => this.cancel());
  }

  // a new run id for the next request (any run still watched is no longer followed)
  begin() {
    this.end(this.id);
    const id = `${this.prefix}-${++seq}-${Date.now().toString(36)}`;
    Object.assign(this, { id, cancelled: false, previewed: 0, note: "" });
    $(this.cancelId).hidden = false;
    $(this.statusId).textContent = "running…";
    this.timer = setInterval(() => this.poll(id), POLL_MS);
    return id;
  }

  async poll(id) {
    const res = await fetch(`/api/runs/${encodeURIComponent(id)}`).catch(() => null);
    if (!res || !res.ok || this.id !== id) return;
    const run = await res.json();
    if (this.id !== id) return;
    const share = run.total ? ` ${Math.floor((100 * run.done) / run.total)} %` : "";
    const text = run.status === "waiting" ? "waiting for the model…" : `running…${share}`;
    $(this.statusId).textContent = `${this.note}${text}`;
    if (this.preview && run.preview > this.previewed) {
      this.previewed = run.preview;
      const note = await this.showPreview(id).catch(() => "");
      if (this.id === id && note) this.note = `${note} · `;
    }
  }

  // run `id`'s latest first map into the panel's <img>, in place of the stale one; its
  // description ("preview from 9 % of windows"), or "" once the run is no longer watched
  async showPreview(id) {
    const query = this.preview.query ? this.preview.query() : "";
    const res = await api(`/api/runs/${encodeURIComponent(id)}/preview.png${query}`);
    const url = URL.createObjectURL(await res.blob());
    if (this.id !== id) {
      URL.revokeObjectURL(url);
      return "";
    }
    const before = this.previewUrl;
    $(this.preview.image).src = url;
    this.previewUrl = url;
    if (before) URL.revokeObjectURL(before); // no longer on show
    if (this.frame) {
      this.frame.dataset.preview = res.headers.get("X-Preview") || "";
      const message = this.frame.querySelector(".frame-msg"); // "Loading…" of an empty frame
      if (message) message.textContent = "";
    }
    if (this.preview.onShown) this.preview.onShown(res);
    const part = parseFloat(res.headers.get("X-Preview") || "");
    const of = res.headers.get("X-Preview-Of") || "the work";
    return Number.isFinite(part) ? `preview from ${Math.round(100 * part)} % of ${of}` : "preview";
  }

  // the first map on show is no longer one (its run is over). Its object URL is let go once
  // the <img> shows something else: a run given up for new settings leaves it on show,
  // dimmed, until the new map comes, and "open at full size" must still find it
  dropPreview() {
    if (this.frame) delete this.frame.dataset.preview;
    if (this.previewUrl && $(this.preview.image).src !== this.previewUrl) {
      URL.revokeObjectURL(this.previewUrl);
      this.previewUrl = null;
    }
  }

  // the request of run `id` is over: stop following it; true when it was cancelled here
  end(id) {
    if (!id || this.id !== id) return false;
    clearInterval(this.timer);
    this.id = null;
    this.dropPreview();
    $(this.cancelId).hidden = true;
    return this.cancelled;
  }

  // a run the server does not know yet (its request is still on its way) is asked again
  async cancel() {
    const id = this.id;
    if (!id) return;
    this.cancelled = true;
    for (let tries = 0; tries < 10 && this.id === id; tries += 1) {
      const res = await fetch(`/api/runs/${encodeURIComponent(id)}`, { method: "DELETE" }).catch(() => null);
      if (!res || res.status !== 404) return;
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
  }
}
