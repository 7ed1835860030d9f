// A request's model work while it goes (the server's Run, /api/runs/<id>): its progress in a
// text element (waiting for the model, or done of total) and a Cancel button that stops it.
// Every panel whose requests run long work shares this: the request carries `run=<id>` (from
// begin()), and its outcome calls end(id), which says whether it was cancelled. A run with a
// new first map to show (occlusion's coarse passes, RISE's first masks) is handed to
// onPreview(id, run), whose answer (a short text) is then shown before the progress.

import { $ } from "./dom.js";

const POLL_MS = 250;
let seq = 0;

export class RunWatch {
  // prefix: names the run ids; statusId: the element showing the progress; cancelId: the
  // button; onPreview: async (id, run) => text, called for each new preview of a run
  constructor(prefix, statusId, cancelId, onPreview = null) {
    Object.assign(this, { prefix, statusId, cancelId, onPreview, id: null, timer: 0, cancelled: false });
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
    if (this.onPreview && run.preview > this.previewed) {
      this.previewed = run.preview;
      const note = await this.onPreview(id, run).catch(() => "");
      if (this.id === id && note) this.note = `${note} · `;
    }
  }

  // the request of run `id` is over: stop following it; true when it was cancelled here
  end(id) {
    if (!id || this.id !== id) return false;
    clearInterval(this.timer);
    this.id = null;
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
