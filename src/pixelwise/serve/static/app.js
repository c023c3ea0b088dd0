// pixelwise web page: upload an image, draw the predicted mask over it on a canvas.
// Plain JS, no dependencies: the page must work offline from the server alone.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { base: null, mask: null, unc: null, serverOverlay: false, maskUrl: null,
                baseUrl: null };

function setStatus(text, isError = false) {
  const el = $("status");
  el.textContent = text;
  el.classList.toggle("error", isError);
}

function loadImage(url) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("cannot decode image"));
    img.src = url;
  });
}

function base64ToBlob(b64, type) {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  return new Blob([bytes], { type });
}

function renderLegend(classes) {
  const list = $("legend");
  list.replaceChildren();
  for (const c of classes) {
    const li = document.createElement("li");
    li.dataset.index = c.index;
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.backgroundColor = `rgb(${c.color.join(",")})`;
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = c.name;
    const area = document.createElement("span");
    area.className = "area";
    if (c.fraction !== undefined) {
      area.textContent = `${(100 * c.fraction).toFixed(1)}%`;
      li.classList.toggle("absent", c.pixels === 0);
    }
    li.append(swatch, name, area);
    list.append(li);
  }
}

function draw() {
  const canvas = $("overlay");
  if (!state.mask) return;
  const w = state.mask.naturalWidth, h = state.mask.naturalHeight;
  if (canvas.width !== w || canvas.height !== h) { canvas.width = w; canvas.height = h; }
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, w, h);
  ctx.globalAlpha = 1;
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(state.base, 0, 0, w, h);
  // The uncertainty layer (entropy, black = sure) replaces the mask while it is ticked.
  const layer = state.unc && $("show-uncertainty").checked ? state.unc : state.mask;
  if (!state.serverOverlay || layer === state.unc) {
    ctx.globalAlpha = Number($("opacity").value) / 100;
    ctx.drawImage(layer, 0, 0, w, h);
  }
  canvas.dataset.state = "ready";
}

async function segment(file) {
  setStatus(`Segmenting ${file.name}…`);
  $("overlay").dataset.state = "busy";
  const form = new FormData();
  form.append("file", file, file.name);
  let resp, body;
  try {
    resp = await fetch("/predict?format=json", { method: "POST", body: form,
                                                 headers: { Accept: "application/json" } });
    body = await resp.json();
  } catch (err) {
    setStatus(`Request failed: ${err.message}`, true);
    return;
  }
  if (!resp.ok) {
    setStatus(`${resp.status}: ${body.error || resp.statusText}`, true);
    return;
  }
  for (const url of [state.maskUrl, state.baseUrl]) if (url) URL.revokeObjectURL(url);
  state.maskUrl = URL.createObjectURL(base64ToBlob(body.mask_png, "image/png"));
  state.mask = await loadImage(state.maskUrl);
  state.baseUrl = URL.createObjectURL(file);
  try {
    state.base = await loadImage(state.baseUrl);
    state.serverOverlay = false;
  } catch {
    // TIFF and other formats browsers cannot show: use the server's overlay instead.
    state.base = await loadImage(`data:image/png;base64,${body.overlay_png}`);
    state.serverOverlay = true;
  }
  state.unc = body.uncertainty_png
    ? await loadImage(`data:image/png;base64,${body.uncertainty_png}`) : null;
  $("uncertainty-toggle").hidden = !state.unc;
  $("overlay-note").hidden = !state.serverOverlay;
  $("opacity").disabled = state.serverOverlay && !state.unc;
  $("result").hidden = false;
  draw();
  renderLegend(body.classes);
  const link = $("download");
  link.href = state.maskUrl;
  link.download = `${file.name.replace(/\.[^.]+$/, "")}_mask.png`;
  setStatus(`${file.name}: ${body.width}×${body.height}`);
}

function pick(files) {
  if (files && files.length) segment(files[0]);
}

async function init() {
  $("file").addEventListener("change", (e) => pick(e.target.files));
  const zone = $("dropzone");
  for (const ev of ["dragenter", "dragover"]) {
    zone.addEventListener(ev, (e) => { e.preventDefault(); zone.classList.add("dragging"); });
  }
  for (const ev of ["dragleave", "drop"]) {
    zone.addEventListener(ev, () => zone.classList.remove("dragging"));
  }
  zone.addEventListener("drop", (e) => { e.preventDefault(); pick(e.dataTransfer.files); });
  $("show-uncertainty").addEventListener("change", draw);
  $("opacity").addEventListener("input", (e) => {
    $("opacity-value").textContent = `${e.target.value}%`;
    draw();
  });
  try {
    const model = await (await fetch("/model")).json();
    $("model-info").textContent =
      `${model.name} · ${model.num_classes} classes · ${model.backend}`;
    const mb = (model.limits.max_upload_bytes / 1048576).toFixed(0);
    const mp = (model.limits.max_pixels / 1e6).toFixed(1);
    $("limits").textContent = `PNG, JPEG, TIFF, BMP or WebP, up to ${mb} MB and ${mp} megapixels`;
    renderLegend(model.classes);
  } catch (err) {
    $("model-info").textContent = "model information unavailable";
  }
}

init();
