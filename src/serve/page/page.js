// wick's try-it page: posts the photo to /invocations as a form upload and draws the answer.
// Every text from the server goes into the page through textContent, never as HTML.
"use strict";
const $ = (id) => document.getElementById(id);
const OPTIONS = {
  "Image Classification": [["top_k", "number", "5", "classes to show"]],
  "Image Segmentation": [["threshold", "number", "", "foreground threshold (binary models)"]],
  "Object Detection": [["threshold", "number", "0.25", "lowest score"], ["iou", "number", "0.45", "overlap for suppression"],
    ["max_detections", "number", "300", "most boxes"], ["classes", "text", "", "only these classes (ids or names)"]],
};
const COLORS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45",
  "#fabed4", "#469990", "#dcbeff", "#9a6324", "#800000", "#aaffc3", "#808000", "#000075"];
let task = null;
let photo = null;

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function setStatus(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

function buildOptions(params) {
  const form = $("options");
  form.replaceChildren();
  for (const [name, type, placeholder, help] of OPTIONS[task] || []) {
    const label = el("label", undefined);
    label.append(el("span", name));
    const input = el("input");
    input.name = name; input.type = type; input.placeholder = placeholder; input.title = help;
    if (type === "number") input.step = "any";
    if (params.has(name)) input.value = params.get(name);
    label.append(input);
    form.append(label);
  }
}

function choose(blob) {
  photo = blob;
  $("run").disabled = !(photo && task);
  const reader = new Image();
  reader.onload = () => drawPhoto(reader);
  reader.src = URL.createObjectURL(blob);
}

function drawPhoto(image) {
  const canvas = $("canvas");
  canvas.width = image.naturalWidth; canvas.height = image.naturalHeight;
  canvas.getContext("2d").drawImage(image, 0, 0);
  canvas.photo = image;
}

function clearAnswer() {
  for (const id of ["bars", "legend", "boxes", "timings"]) $(id).replaceChildren();
  $("raw").textContent = "";
  if ($("canvas").photo) drawPhoto($("canvas").photo);
}

async function predict() {
  if (!photo) return;
  clearAnswer();
  document.body.dataset.state = "running";
  setStatus("predicting\u2026");
  const form = new FormData();
  form.append("file", photo, photo.name || "photo");
  for (const input of $("options").elements) if (input.value.trim()) form.append(input.name, input.value.trim());
  if (task === "Image Segmentation") form.append("mask_format", "rle");
  const started = performance.now();
  try {
    const response = await fetch("/invocations", { method: "POST", body: form, headers: { Accept: "application/json" } });
    const roundTrip = performance.now() - started;
    const answer = await response.json();
    $("raw").textContent = JSON.stringify(answer, null, 2);
    showTimings(response.headers.get("X-Amzn-SageMaker-Custom-Attributes"), roundTrip);
    if (!response.ok) throw new Error(answer.error || response.statusText);
    if (task === "Image Classification") showClasses(answer);
    else if (task === "Image Segmentation") showMask(answer);
    else showBoxes(answer);
    setStatus("done");
    document.body.dataset.state = "done";
  } catch (error) {
    setStatus(String(error.message || error), true);
    document.body.dataset.state = "error";
  }
}

function showTimings(attributes, roundTrip) {
  const list = $("timings");
  for (const pair of (attributes || "").split(";")) {
    const [key, value] = pair.split("=");
    if (key && value !== undefined) { list.append(el("dt", key)); list.append(el("dd", value)); }
  }
  list.append(el("dt", "round trip (browser)")); list.append(el("dd", roundTrip.toFixed(1) + " ms"));
}

function showClasses(classes) {
  for (const { label, score } of classes) {
    const item = el("li");
    item.dataset.label = label;
    const bar = el("div", undefined, "bar");
    bar.style.width = (100 * score).toFixed(1) + "%";
    const track = el("div"); track.append(bar);
    item.append(el("span", label), track, el("span", (100 * score).toFixed(1) + "%"));
    $("bars").append(item);
  }
}

function hexColor(hex) { return [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16)); }

// COCO RLE, uncompressed: column-major runs, starting with a run of zeros.
function rleIndices(rle, visit) {
  const [height] = rle.size;
  let position = 0, inside = false;
  for (const count of rle.counts) {
    if (inside) for (let p = position; p < position + count; p++) visit((p % height), Math.floor(p / height));
    position += count; inside = !inside;
  }
}

function showMask(entries) {
  const canvas = $("canvas"), context = canvas.getContext("2d");
  const pixels = context.getImageData(0, 0, canvas.width, canvas.height);
  const total = entries.reduce((sum, e) => sum + e.pixels, 0) || 1;
  entries.forEach((entry, index) => {
    const color = COLORS[index % COLORS.length];
    const [r, g, b] = hexColor(color);
    const item = el("li");
    item.dataset.label = entry.label; item.dataset.pixels = entry.pixels;
    const swatch = el("span", undefined, "swatch"); swatch.style.background = color;
    item.append(swatch, el("span", `${entry.label}: ${(100 * entry.pixels / total).toFixed(1)}%`));
    $("legend").append(item);
    let drawn = 0;
    if (entry.mask && entry.mask.counts) rleIndices(entry.mask, (y, x) => {
      if (x >= canvas.width || y >= canvas.height) return;
      const i = 4 * (y * canvas.width + x);
      pixels.data[i] = (pixels.data[i] + r) / 2; pixels.data[i + 1] = (pixels.data[i + 1] + g) / 2;
      pixels.data[i + 2] = (pixels.data[i + 2] + b) / 2;
      drawn++;
    });
    // How many of the photo's pixels were tinted for this class (checked by the browser test).
    item.dataset.drawn = drawn;
  });
  context.putImageData(pixels, 0, 0);
}

function showBoxes(boxes) {
  const context = $("canvas").getContext("2d");
  const labels = [];
  context.lineWidth = Math.max(2, $("canvas").width / 300);
  context.font = `${Math.max(12, $("canvas").width / 50)}px sans-serif`;
  for (const { label, score, box } of boxes) {
    if (!labels.includes(label)) labels.push(label);
    const color = COLORS[labels.indexOf(label) % COLORS.length];
    context.strokeStyle = color; context.fillStyle = color;
    context.strokeRect(box.xmin, box.ymin, box.xmax - box.xmin, box.ymax - box.ymin);
    context.fillText(`${label} ${(100 * score).toFixed(0)}%`, box.xmin + 3, Math.max(box.ymin - 4, 12));
    const item = el("li");
    item.dataset.label = label; item.dataset.box = [box.xmin, box.ymin, box.xmax, box.ymax].join(",");
    const swatch = el("span", undefined, "swatch"); swatch.style.background = color;
    item.append(swatch, el("span", `${label} ${(100 * score).toFixed(1)}% at (${box.xmin}, ${box.ymin})-(${box.xmax}, ${box.ymax})`));
    $("boxes").append(item);
  }
}

function dataUrlBlob(url) {
  const [head, data] = url.split(",");
  const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
  return new Blob([bytes], { type: (head.match(/^data:([^;]+)/) || [])[1] || "application/octet-stream" });
}

async function start() {
  // `#image=<data URL>&top_k=3` picks a photo and options and predicts at once (tests, links).
  const params = new URLSearchParams(location.hash.slice(1));
  try {
    const response = await fetch("/model/metadata");
    const card = await response.json();
    if (!response.ok) throw new Error(card.error || response.statusText);
    task = card.type;
    $("model").textContent = `${card.name}: ${card.type} (${card.license})`;
    buildOptions(params);
  } catch (error) {
    setStatus(`the model is not ready: ${error.message || error}`, true);
    document.body.dataset.state = "error";
    return;
  }
  document.body.dataset.state = "ready";
  $("run").disabled = !photo;
  if (params.has("image")) {
    choose(dataUrlBlob(params.get("image")));
    await new Promise((resolve) => setTimeout(resolve, 50));
    await predict();
  }
}

$("file").addEventListener("change", () => { if ($("file").files[0]) choose($("file").files[0]); });
$("run").addEventListener("click", predict);
const drop = $("drop");
drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault(); drop.classList.remove("over");
  if (event.dataTransfer.files[0]) choose(event.dataTransfer.files[0]);
});
start();
