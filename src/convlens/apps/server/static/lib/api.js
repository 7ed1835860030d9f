// Calls to the explorer's API: errors carry the server's "detail"; `latest` keeps only the
// newest of a series of requests (a slider, a threshold).

import { showError } from "./dom.js";
import { state } from "./state.js";

export const seg = encodeURIComponent;
export const STALE = Symbol("stale"); // a request that a newer one replaced
const requests = {}; // key -> AbortController of the latest JSON request

export class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.name = "ApiError";
    this.status = status;
  }
}

export async function errorDetail(res) {
  let detail = "";
  try {
    const body = await res.json();
    detail = body.detail ?? body.message ?? "";
    if (Array.isArray(detail)) {
      // FastAPI validation errors: [{loc: ["query", "top"], msg: "..."}]
      detail = detail
        .map((d) => (d && d.msg ? `${(d.loc || []).slice(1).join(".") || "request"}: ${d.msg}` : String(d)))
        .join("; ");
    } else if (typeof detail !== "string") {
      detail = JSON.stringify(detail);
    }
  } catch {
    // not JSON: fall back to the status line
  }
  return detail || `${res.status} ${res.statusText || "error"}`;
}

export async function api(url, options = {}) {
  let res;
  try {
    res = await fetch(url, options);
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError("Cannot reach the convlens server.", 0);
  }
  if (!res.ok) throw new ApiError(await errorDetail(res), res.status);
  return res;
}

export const getJSON = async (url, options) => (await api(url, options)).json();

// A JSON request that replaces any earlier one with the same key; resolves STALE if replaced.
export async function latest(key, url, options = {}) {
  requests[key]?.abort();
  const ctrl = new AbortController();
  requests[key] = ctrl;
  try {
    const data = await getJSON(url, { ...options, signal: ctrl.signal });
    return requests[key] === ctrl ? data : STALE;
  } catch (err) {
    if (requests[key] !== ctrl) return STALE;
    throw err;
  } finally {
    if (requests[key] === ctrl) delete requests[key];
  }
}

export const pending = (key) => requests[key] != null;
export const abort = (key) => requests[key]?.abort();

// The URL of the chosen picture under the chosen model.
export const imageBase = () => `/api/models/${seg(state.model.name)}/images/${seg(state.imageId)}`;

export async function loadList(url, what) {
  try {
    const data = await getJSON(url);
    return Array.isArray(data) ? data : [];
  } catch (err) {
    showError(`Could not load the ${what}: ${err.message}`);
    return [];
  }
}
