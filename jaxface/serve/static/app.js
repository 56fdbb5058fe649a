// The jaxface page: upload -> POST /v1/detect; attribute picker from GET /v1/model -> POST /v1/generate.
"use strict";

const $ = (id) => document.getElementById(id);
const percent = (p) => `${(100 * p).toFixed(1)}%`;
let model = null;

function show(el, visible) { el.hidden = !visible; }

function showError(el, message) {
  el.textContent = message;
  show(el, Boolean(message));
}

async function errorMessage(response) {
  try {
    const body = await response.json();
    return body.message || body.error || `HTTP ${response.status}`;
  } catch (_) {
    return `HTTP ${response.status}`;
  }
}

// ----------------------------------------------------------------------------------- start-up
async function loadModel() {
  let response;
  try {
    response = await fetch("/v1/model");
  } catch (_) {
    $("status").textContent = "Cannot reach the server; retrying…";
    setTimeout(loadModel, 2000);
    return;
  }
  if (response.status === 503) {
    const body = await response.json().catch(() => ({}));
    $("status").textContent = body.error === "load_failed" ? body.message : "Loading and compiling the models…";
    $("status").classList.toggle("bad", body.error === "load_failed");
    if (body.error !== "load_failed") setTimeout(loadModel, 2000);
    return;
  }
  if (!response.ok) {
    $("status").textContent = await errorMessage(response);
    $("status").classList.add("bad");
    return;
  }
  model = await response.json();
  const d = model.detector;
  $("status").textContent = `Detector: ${d.name} at ${d.input_size} px (checkpoint step ${d.checkpoint_step}), ` +
    `threshold p(fake) ≥ ${d.threshold.toFixed(3)}; running on ${model.runtime.backend}.`;
  $("trained-note").textContent = `This detector was trained on ${d.trained_on}. Other kinds of images ` +
    `(other cameras, other generators, drawings, heavily edited or compressed pictures) may be misclassified: ` +
    `treat the verdict as one signal, not proof.`;
  setUpGenerator(model.generator);
}

// ---------------------------------------------------------------------------------- detection
function setUpDetection() {
  const zone = $("drop-zone");
  const input = $("file-input");
  input.addEventListener("change", () => { if (input.files.length) detect(input.files[0]); });
  zone.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); input.click(); } });
  for (const type of ["dragenter", "dragover"]) {
    zone.addEventListener(type, (e) => { e.preventDefault(); zone.classList.add("dragging"); });
  }
  for (const type of ["dragleave", "drop"]) {
    zone.addEventListener(type, (e) => { e.preventDefault(); zone.classList.remove("dragging"); });
  }
  zone.addEventListener("drop", (e) => { if (e.dataTransfer.files.length) detect(e.dataTransfer.files[0]); });
}

async function detect(file) {
  showError($("detect-error"), "");
  const limit = model ? model.limits.max_upload_bytes : null;
  if (limit && file.size > limit) {  // say so at once instead of uploading what the server refuses
    const mb = (n) => (n / 1048576).toFixed(1);
    showError($("detect-error"), `${file.name} is ${mb(file.size)} MB; this server accepts up to ${mb(limit)} MB per image`);
    show($("detect-result"), false);
    return;
  }
  const preview = $("preview");
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(file);
  $("verdict").textContent = "…";
  $("verdict").className = "verdict";
  $("confidence-text").textContent = "Analysing…";
  show($("detect-result"), true);
  const form = new FormData();
  form.append("file", file, file.name);
  let response;
  try {
    response = await fetch("/v1/detect", { method: "POST", body: form });
  } catch (_) {
    showError($("detect-error"), "The server did not answer; is it still running?");
    show($("detect-result"), false);
    return;
  }
  if (!response.ok) {
    showError($("detect-error"), await errorMessage(response));
    show($("detect-result"), false);
    return;
  }
  showVerdict(await response.json(), file.name);
}

function showVerdict(r, name) {
  const label = r.label.charAt(0).toUpperCase() + r.label.slice(1);
  $("verdict").textContent = label;
  $("verdict").className = `verdict ${r.label}`;
  const confidence = r.label === "fake" ? r.p_fake : r.label === "real" ? 1 - r.p_fake : null;
  $("confidence-text").textContent = confidence === null
    ? `p(fake) ${percent(r.p_fake)} is too close to the threshold to call`
    : `${percent(confidence)} confident · p(fake) ${percent(r.p_fake)}`;
  $("bar-fill").style.width = percent(r.p_fake);
  $("bar-threshold").style.left = percent(r.threshold);
  $("detect-details").textContent = `${name} · threshold ${r.threshold.toFixed(3)} · ${r.model}, step ` +
    `${r.checkpoint_step} · ${r.latency_ms.toFixed(1)} ms on the server`;
}

// --------------------------------------------------------------------------------- generation
function setUpGenerator(gen) {
  if (!gen) {
    $("generate-unavailable").textContent = "No face generator is loaded on this server. Fit one with " +
      "`jaxface fit-cgmm --config=configs/generate/synthfaces_tiny.py --workdir=W` and restart with " +
      "`jaxface serve --generator_workdir=W`.";
    show($("generate-unavailable"), true);
    return;
  }
  const groups = $("attribute-groups");
  groups.textContent = "";
  const binary = gen.schema.groups.filter((g) => g.kind === "binary");
  for (const group of gen.schema.groups.filter((g) => g.kind === "softmax")) {
    // A softmax group is one choice among its members (or none of them).
    const fieldset = document.createElement("fieldset");
    fieldset.innerHTML = `<legend></legend>`;
    fieldset.querySelector("legend").textContent = group.name;
    for (const choice of ["", ...group.attributes]) {
      const label = document.createElement("label");
      const radio = document.createElement("input");
      radio.type = "radio";
      radio.name = `group-${group.name}`;
      radio.value = choice;
      radio.checked = choice === "";
      label.append(radio, ` ${choice || "any"}`);
      fieldset.append(label);
    }
    groups.append(fieldset);
  }
  if (binary.length) {
    const fieldset = document.createElement("fieldset");
    fieldset.innerHTML = `<legend>other attributes</legend>`;
    for (const group of binary) {
      const label = document.createElement("label");
      const box = document.createElement("input");
      box.type = "checkbox";
      box.value = group.attributes[0];
      label.append(box, ` ${group.attributes[0]}`);
      fieldset.append(label);
    }
    groups.append(fieldset);
  }
  $("steps").value = gen.default_steps;
  $("steps").max = gen.max_steps;
  $("steps").title = `1 to ${gen.max_steps}; ${gen.default_steps} is compiled at start-up, other values compile once`;
  for (const [select, values] of [[$("model"), gen.models], [$("mode"), gen.modes]]) {
    select.textContent = "";
    for (const v of values) select.append(new Option(v, v));
  }
  groups.addEventListener("change", updateSelection);
  $("generate-form").addEventListener("submit", (e) => { e.preventDefault(); generate(); });
  show($("generate-form"), true);
  updateSelection();
}

function selectedAttributes() {
  const picked = [];
  for (const input of $("attribute-groups").querySelectorAll("input:checked")) {
    if (input.value) picked.push(input.value);
  }
  return picked;
}

function updateSelection() {
  const picked = selectedAttributes();
  $("selection").textContent = picked.length ? `Selected: ${picked.join(", ")}` : "Pick at least one attribute.";
  $("generate-button").disabled = picked.length === 0;
}

async function generate() {
  showError($("generate-error"), "");
  const button = $("generate-button");
  button.disabled = true;
  button.textContent = "Generating…";
  const body = {
    attributes: selectedAttributes(),
    seed: Number($("seed").value),
    steps: Number($("steps").value),
    model: $("model").value,
    mode: $("mode").value,
  };
  try {
    const response = await fetch("/v1/generate", {
      method: "POST", headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: JSON.stringify(body),
    });
    if (!response.ok) {
      showError($("generate-error"), await errorMessage(response));
      return;
    }
    showFace(await response.json());
  } catch (_) {
    showError($("generate-error"), "The server did not answer; is it still running?");
  } finally {
    button.textContent = "Generate";
    updateSelection();
  }
}

function showFace(r) {
  $("generated").src = `data:image/png;base64,${r.image_png_base64}`;
  const table = $("probabilities");
  table.textContent = "";
  for (const [name, p] of Object.entries(r.attribute_probs)) {
    const row = table.insertRow();
    row.insertCell().textContent = name;
    const bar = document.createElement("div");
    bar.className = "prob-bar";
    bar.innerHTML = "<div></div>";
    bar.firstChild.style.width = percent(p);
    row.insertCell().append(bar);
    row.insertCell().textContent = percent(p);
  }
  $("generate-summary").textContent = `Hit rate ${percent(r.hit_rate)} (attributes the classifier sees in the ` +
    `face) · seed ${r.seed} · ${r.steps} steps · ${r.model}/${r.mode} · ${(r.latency_ms / 1000).toFixed(1)} s`;
  show($("generate-result"), true);
}

setUpDetection();
loadModel();
