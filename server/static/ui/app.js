// VITAL viewer: ask /explain about an image and show, per latent step, the sentence, the heatmap with the
// step's region (box and mask outline, toggled) and the nearest reference patches. Plain JS, no build step, no network beyond this server.
"use strict";

const $ = (id) => document.getElementById(id);
const api = (path) => new URL("../" + path, window.location.href).toString(); // the app serves /ui/
const KEY_STORE = "vital.apiKey";
const state = { file: null, steps: [], previewUrl: null, current: 0 };

function headers() {
  const key = $("api-key").value.trim();
  return key ? { Authorization: "Bearer " + key } : {};
}

async function errorText(resp) {
  try {
    const body = await resp.json();
    if (body && body.error) return `${resp.status} ${body.error.code}: ${body.error.message}`;
  } catch (_) { /* not JSON */ }
  return `${resp.status} ${resp.statusText}`;
}

function showError(text) {
  $("error").textContent = text;
  $("error").hidden = !text;
}

async function loadInfo() {
  try {
    const resp = await fetch(api("info"), { headers: headers() });
    if (!resp.ok) {
      $("model-info").textContent = resp.status === 401 ? "enter the API key to connect" : await errorText(resp);
      return;
    }
    const info = await resp.json();
    $("model-info").textContent =
      `${info.model} · preset ${info.preset} · K default ${info.k_default}, max ${info.k_max} · ${info.device}` +
      (info.explain_available ? "" : " · explanations unavailable");
    const select = $("k");
    for (const opt of [...select.options]) if (/^\d+$/.test(opt.value)) opt.remove();
    for (let k = 0; k <= info.k_max; k++) select.add(new Option(String(k), String(k)));
    if (info.k_max > 0) select.value = String(info.k_max);
  } catch (err) {
    $("model-info").textContent = "server unreachable: " + err;
  }
}

function setFile(file) {
  state.file = file;
  $("file-name").textContent = file ? `${file.name} (${Math.round(file.size / 1024)} KB)` : "";
  if (state.previewUrl) URL.revokeObjectURL(state.previewUrl);
  state.previewUrl = null;
  const preview = $("preview");
  preview.hidden = true;
  if (file && /^image\/(png|jpeg)$/.test(file.type)) {
    state.previewUrl = URL.createObjectURL(file);
    preview.src = state.previewUrl;
    preview.hidden = false;
  }
}

// COCO compressed RLE (the `counts` string pycocotools writes; maskApi.c rleFrString) -> run lengths.
function rleCounts(text) {
  const counts = [];
  let p = 0;
  while (p < text.length) {
    let x = 0, k = 0, more = true;
    while (more) {
      const c = text.charCodeAt(p) - 48;
      x |= (c & 0x1f) << (5 * k);
      more = (c & 0x20) !== 0;
      p++;
      k++;
      if (!more && (c & 0x10)) x |= -1 << (5 * k);
    }
    if (counts.length > 2) x += counts[counts.length - 2];
    counts.push(x);
  }
  return counts;
}

// A step's mask as a Uint8Array [h * w] in row-major order (COCO runs are column-major, starting with 0s).
function decodeMask(mask) {
  const [h, w] = mask.size;
  const out = new Uint8Array(h * w);
  let pos = 0, value = 0;
  for (const run of rleCounts(mask.counts)) {
    for (let i = 0; i < run; i++, pos++) out[(pos % h) * w + Math.floor(pos / h)] = value;
    value = 1 - value;
  }
  return out;
}

// The step's region over the heatmap: its box and its mask's outline, drawn on the encoder's square view
// (the heatmap is the image zero-padded to a centred square, so the original pixels sit at an offset).
function drawRegion(step) {
  const canvas = $("region");
  const show = $("show-region").checked && step.mask && step.box;
  canvas.hidden = !show;
  $("region-info").textContent = "";
  if (!show) return;
  const [h, w] = step.mask.size;
  const side = Math.max(h, w), top = Math.floor((side - h) / 2), left = Math.floor((side - w) / 2);
  canvas.width = side;
  canvas.height = side;
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, side, side);
  const m = decodeMask(step.mask);
  const img = ctx.createImageData(side, side);
  let area = 0;
  const tight = [w, h, 0, 0]; // the decoded mask's own box, for the page's readers (and its test)
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      if (!m[y * w + x]) continue;
      area++;
      tight[0] = Math.min(tight[0], x);
      tight[1] = Math.min(tight[1], y);
      tight[2] = Math.max(tight[2], x + 1);
      tight[3] = Math.max(tight[3], y + 1);
      const edge = x === 0 || y === 0 || x === w - 1 || y === h - 1 ||
        !m[y * w + x - 1] || !m[y * w + x + 1] || !m[(y - 1) * w + x] || !m[(y + 1) * w + x];
      if (!edge) continue;
      const o = 4 * ((y + top) * side + x + left);
      img.data.set([255, 255, 255, 255], o); // mask outline: white
    }
  }
  ctx.putImageData(img, 0, 0);
  const [x0, y0, x1, y1] = step.box;
  ctx.strokeStyle = "rgb(0, 255, 0)"; // box: green, on the pixel edges it names
  ctx.lineWidth = Math.max(1, side / 160);
  ctx.strokeRect(x0 + left, y0 + top, x1 - x0, y1 - y0);
  canvas.dataset.box = step.box.join(",");
  canvas.dataset.maskArea = String(area);
  canvas.dataset.maskBox = tight.join(",");
  $("region-info").textContent = `region: box [${step.box.join(", ")}] px, ${area} px of mask`;
}

function showStep(index) {
  const step = state.steps[index];
  if (!step) return;
  state.current = index;
  $("step-slider").value = String(index + 1);
  $("step-number").textContent = String(step.step);
  $("heatmap").src = "data:image/png;base64," + step.heatmap.png_base64;
  $("peak").textContent = `peak at patch (${step.heatmap.peak[0]}, ${step.heatmap.peak[1]})`;
  drawRegion(step);
  $("step-sentence").textContent = step.sentence || "(empty)";
  const body = $("nearest").querySelector("tbody");
  body.replaceChildren();
  for (const p of step.nearest) {
    const tr = document.createElement("tr");
    for (const [value, cls] of [[p.image_id, ""], [p.row, ""], [p.col, ""], [p.score.toFixed(3), "score"]]) {
      const td = document.createElement("td");
      td.textContent = String(value);
      if (cls) td.className = cls;
      tr.append(td);
    }
    body.append(tr);
  }
  $("nearest").hidden = step.nearest.length === 0;
  $("nearest-empty").hidden = step.nearest.length !== 0;
  [...$("strip").children].forEach((el, i) => el.classList.toggle("selected", i === index));
}

function showResult(body, explained) {
  $("result").hidden = false;
  $("answer").textContent = body.answer || "(empty answer)";
  const t = body.timings_ms || {};
  $("meta").textContent =
    `K = ${body.k} · ${body.model} · ${Math.round(t.total || 0)} ms · ` +
    `${body.image.format} ${body.image.width}×${body.image.height} · request ${body.request_id}`;
  state.steps = explained ? body.steps : [];
  const strip = $("strip");
  strip.replaceChildren();
  state.steps.forEach((step, i) => {
    const b = document.createElement("button");
    b.type = "button";
    b.title = step.sentence;
    const img = document.createElement("img");
    img.className = "heatmap-thumb";
    img.alt = `heatmap of step ${step.step}`;
    img.src = "data:image/png;base64," + step.heatmap.png_base64;
    const label = document.createElement("span");
    label.textContent = `step ${step.step}`;
    b.append(img, label);
    b.addEventListener("click", () => showStep(i));
    strip.append(b);
  });
  $("steps-view").hidden = state.steps.length === 0;
  $("no-steps").hidden = state.steps.length !== 0;
  $("no-steps").textContent = explained
    ? "K = 0: the answer came without latent steps, so there is nothing to explain."
    : "Explanations are not available on this server; showing the answer only.";
  $("step-slider").max = String(Math.max(1, state.steps.length));
  $("step-count").textContent = String(state.steps.length);
  if (state.steps.length) showStep(0);
}

async function ask(event) {
  event.preventDefault();
  showError("");
  if (!state.file) return showError("choose or drop an image first");
  const question = $("question").value.trim();
  if (!question) return showError("type a question");
  const form = new FormData();
  form.append("image", state.file, state.file.name);
  form.append("question", question);
  if ($("k").value) form.append("k", $("k").value);
  form.append("top_k", $("top-k").value || "5");
  $("ask").disabled = true;
  $("status").textContent = "thinking…";
  const t0 = performance.now();
  try {
    let resp = await fetch(api("explain"), { method: "POST", body: form, headers: headers() });
    let explained = true;
    if (resp.status === 404 || resp.status === 503) {
      const text = await errorText(resp);
      if (/explain_(disabled|unavailable)/.test(text)) {
        form.delete("top_k");
        resp = await fetch(api("answer"), { method: "POST", body: form, headers: headers() });
        explained = false;
      } else {
        throw new Error(text);
      }
    }
    if (!resp.ok) throw new Error(await errorText(resp));
    showResult(await resp.json(), explained);
    $("status").textContent = `answered in ${Math.round(performance.now() - t0)} ms`;
  } catch (err) {
    showError(err.message || String(err));
    $("status").textContent = "";
  } finally {
    $("ask").disabled = false;
  }
}

function init() {
  const key = $("api-key");
  key.value = sessionStorage.getItem(KEY_STORE) || "";
  key.addEventListener("change", () => {
    sessionStorage.setItem(KEY_STORE, key.value.trim());
    loadInfo();
  });
  $("file").addEventListener("change", (e) => setFile(e.target.files[0] || null));
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files.length) setFile(e.dataTransfer.files[0]);
  });
  $("step-slider").addEventListener("input", (e) => showStep(Number(e.target.value) - 1));
  $("show-region").addEventListener("change", () => {
    const step = state.steps[state.current];
    if (step) drawRegion(step);
  });
  $("ask-form").addEventListener("submit", ask);
  loadInfo();
}

init();
