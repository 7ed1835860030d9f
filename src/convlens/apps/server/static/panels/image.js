// The image panel: sample pictures, upload (choose, drop or paste), and the picture as a
// classifier sees it (resized and cropped). Choosing a picture emits "image".

import { getJSON, imageBase, loadList, seg } from "../lib/api.js";
import { $, el, mount as put, showError } from "../lib/dom.js";
import { loadImage } from "../lib/slots.js";
import { emit, isClassifier, on, state } from "../lib/state.js";

const MARKUP = `
<section class="panel" id="image-panel" aria-labelledby="image-title">
  <h2 id="image-title">Image</h2>
  <div id="drop-zone" class="drop-zone" tabindex="0" aria-label="Drop an image here">
    <span>Drop or paste an image, or</span>
    <label for="file-input" class="button">Choose file…</label>
    <input type="file" id="file-input" accept="image/*" class="visually-hidden">
  </div>
  <div id="samples" class="samples" aria-label="Sample images"></div>
  <div id="picture-frame" class="frame picture-frame classify-only" data-state="empty">
    <img id="picture" alt="The picture as the model sees it">
    <span class="frame-msg">Choose, drop or paste an image</span>
  </div>
  <p id="image-info" class="muted small"></p>
</section>`;

let samples = [];
let imageToken = 0; // only the newest upload / sample choice wins

function renderSamples() {
  const buttons = samples.map((sample) => {
    const button = el(
      "button",
      { type: "button", class: "sample", "data-sample": sample.name, title: `Use ${sample.name}` },
      el("img", { src: sample.url, alt: sample.name, loading: "lazy" }),
      el("span", {}, sample.name),
    );
    button.addEventListener("click", () => useSample(sample.name));
    return button;
  });
  $("samples").replaceChildren(...buttons);
}

function markSample(name) {
  for (const button of $("samples").querySelectorAll(".sample")) {
    button.classList.toggle("active", button.dataset.sample === name);
  }
}

function useSample(name) {
  markSample(name);
  chooseImage(() => getJSON(`/api/images/sample/${seg(name)}`, { method: "POST", headers: { "Content-Type": "application/json" }, body: "{}" }), `sample “${name}”`);
}

function uploadFile(file) {
  if (!file) return;
  markSample(null);
  const form = new FormData();
  form.append("file", file, file.name);
  chooseImage(() => getJSON("/api/images", { method: "POST", body: form }), `“${file.name}”`);
}

async function chooseImage(request, what) {
  const token = ++imageToken;
  const zone = $("drop-zone");
  zone.classList.add("loading");
  try {
    const info = await request();
    if (token === imageToken) setImage(info, what);
  } catch (err) {
    if (token === imageToken) showError(`Could not use ${what}: ${err.message}`);
  } finally {
    if (token === imageToken) zone.classList.remove("loading");
  }
}

function setImage(info, what) {
  state.imageId = info.id;
  state.imageSize = { width: info.width, height: info.height };
  state.predictions = [];
  $("image-info").textContent = `${what} · ${info.width}×${info.height} px`;
  if (!state.model) return;
  emit("image", info);
}

function loadPicture() {
  if (!isClassifier() || !state.imageId) return;
  loadImage("picture", `${imageBase()}/picture.png`, { meta: { image: state.imageId } });
}

function bindDropZone() {
  const zone = $("drop-zone");
  let depth = 0; // dragenter/leave fire for children too
  const hasFiles = (e) => e.dataTransfer && [...e.dataTransfer.types].includes("Files");
  zone.addEventListener("dragenter", (e) => {
    if (!hasFiles(e)) return;
    e.preventDefault();
    depth += 1;
    zone.classList.add("dragover");
  });
  zone.addEventListener("dragover", (e) => e.preventDefault());
  zone.addEventListener("dragleave", () => {
    depth = Math.max(0, depth - 1);
    if (!depth) zone.classList.remove("dragover");
  });
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    e.stopPropagation();
    depth = 0;
    zone.classList.remove("dragover");
    uploadFile(e.dataTransfer && e.dataTransfer.files[0]);
  });
  zone.addEventListener("keydown", (e) => {
    if (e.target !== zone || (e.key !== "Enter" && e.key !== " ")) return;
    e.preventDefault();
    $("file-input").click();
  });
  // A file dropped beside the zone must not make the browser navigate away.
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => e.preventDefault());
  document.addEventListener("paste", (e) => {
    const file = [...((e.clipboardData && e.clipboardData.files) || [])].find((f) => f.type.startsWith("image/"));
    if (file) uploadFile(file);
  });
  $("file-input").addEventListener("change", (e) => {
    uploadFile(e.target.files[0]);
    e.target.value = ""; // choosing the same file again still fires "change"
  });
}

export function mount() {
  put("#columns", MARKUP);
  bindDropZone();
  on("model", loadPicture);
  on("image", loadPicture);
  // a crowd toon frame first when the first model is a detector
  on("start", () => {
    const first = (!isClassifier() && samples.find((s) => s.kind === "toons")) || samples[0];
    if (first) useSample(first.name);
  });
  return loadList("/api/samples", "sample images").then((list) => {
    samples = list;
    renderSamples();
  });
}
