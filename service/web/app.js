// The page's behaviour: classify an image, compare the backends.
// It talks to the service's own endpoints (relative URLs, so a path prefix in front of the service still works)
// and builds every element with DOM calls: nothing from a response is ever parsed as HTML.

import { barChart, colourOf, html } from "./charts.js";

const API = { classify: "../classify", modelInfo: "../model_info" };
// A service with API keys needs one (SECURITY.md): typed into the page, kept in this tab's session storage only
// (gone when the tab closes; never in a cookie or the URL), and sent as "Authorization: Bearer <key>".
const KEY_STORE = "fashion-serve-api-key";
const CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
  "Ankle boot"];

const $ = (id) => document.getElementById(id);
const state = { image: null, info: null, request: 0, lastCompare: null };

// ---------- talking to the service ----------

/** The service's message from an error body (`[{"error": ...}]` or `{"error": ...}`), else the raw text. */
function errorText(status, statusText, body) {
  let message = "";
  try {
    const parsed = JSON.parse(body);
    const first = Array.isArray(parsed) ? parsed[0] : parsed;
    message = first && typeof first.error === "string" ? first.error : "";
  } catch {
    message = "";
  }
  if (!message) message = body.trim().slice(0, 300) || "no details";
  return `The service answered ${status}${statusText ? ` ${statusText}` : ""}: ${message}`;
}

/** The header that carries the API key typed into the page; none without a key. */
function keyHeaders() {
  const key = sessionStorage.getItem(KEY_STORE);
  return key ? { Authorization: `Bearer ${key}` } : {};
}

/** POST and parse JSON; throws an Error whose message is readable by a person. */
async function post(url, body) {
  let reply;
  try {
    reply = await fetch(url, { method: "POST", body, headers: keyHeaders() });
  } catch (err) {
    throw new Error(`Could not reach the service (${err.message}).`);
  }
  const text = await reply.text();
  if (!reply.ok) {
    const error = new Error(errorText(reply.status, reply.statusText, text));
    error.status = reply.status;
    error.retryAfter = Number(reply.headers.get("Retry-After")) || 0;
    throw error;
  }
  return JSON.parse(text);
}

/** One answer for one image on one backend, with every probability and the 28 x 28 input; plus the latency. */
async function classify(image, backend) {
  const form = new FormData();
  form.append("images", image.blob, image.name);
  const query = new URLSearchParams({ top_k: "10", return_input: "1" });
  if (backend) query.set("backend", backend);
  const start = performance.now();
  const [answer] = await post(`${API.classify}?${query}`, form);
  return { answer, latencyMs: performance.now() - start };
}

// ---------- the classify panel ----------

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

function setStatus(message) {
  $("status").textContent = message;
}

/** Probabilities in class order from an answer's top_k (all ten when asked with top_k=10). */
function probabilities(answer) {
  const probs = new Array(CLASS_NAMES.length).fill(0);
  for (const entry of answer.top_k) probs[entry.class_id] = entry.probability;
  return probs;
}

function percent(p) {
  if (p >= 0.9995) return `${(p * 100).toFixed(1)}%`;
  return p < 0.001 ? "<0.1%" : `${(p * 100).toFixed(1)}%`;
}

function probabilityChart(answer, width, compact = false) {
  const probs = probabilities(answer);
  return barChart({
    width, title: `class probabilities, predicted ${answer.label}`, max: 1, format: percent,
    rowHeight: compact ? 18 : 24,
    rows: probs.map((p, i) => ({ label: CLASS_NAMES[i], value: p, key: String(i), strong: i === answer.class_id,
      colour: i === answer.class_id ? colourOf(answer.backend) : "#8a8f98" })),
  });
}

function drawPixels(canvas, pixels) {
  const image = canvas.getContext("2d").createImageData(28, 28);
  pixels.flat().forEach((v, i) => {
    image.data.set([v, v, v, 255], i * 4);
  });
  canvas.getContext("2d").putImageData(image, 0, 0);
}

/** The uploaded image as the browser sees it (the model's view is beside it); some formats it cannot show. */
async function drawOriginal(blob) {
  const canvas = $("original"), context = canvas.getContext("2d");
  context.clearRect(0, 0, canvas.width, canvas.height);
  $("original-note").textContent = "";
  try {
    const bitmap = await createImageBitmap(blob);
    const fit = Math.min(canvas.width / bitmap.width, canvas.height / bitmap.height);
    const w = bitmap.width * fit, h = bitmap.height * fit;
    context.imageSmoothingEnabled = fit < 1;
    context.drawImage(bitmap, (canvas.width - w) / 2, (canvas.height - h) / 2, w, h);
    bitmap.close();
  } catch {
    $("original-note").textContent = "(this browser cannot display this format)";
  }
}

function showAnswer(answer, latencyMs, image) {
  $("label").textContent = answer.label;
  $("confidence").textContent = `${percent(answer.confidence)} confident`;
  // The model's "not clothing" check (fashion.ood): absent from models exported before it existed.
  $("not-clothing").hidden = answer.in_distribution !== false;
  $("ood-score").textContent = answer.ood_score === undefined ? "" : `clothing score ${answer.ood_score.toFixed(3)}`;
  $("shown-backend").textContent = answer.backend;
  $("version").textContent = answer.model_version;
  $("latency").textContent = `${latencyMs.toFixed(1)} ms (round trip measured in this browser)`;
  $("filename").textContent = `${image.name} (${image.blob.size.toLocaleString()} bytes)`;
  const known = image.trueLabel !== undefined;
  $("truth-term").hidden = $("truth").hidden = !known;
  $("truth").textContent = known ? image.trueLabel : "";
  drawPixels($("input28"), answer.pixels);
  state.lastAnswer = answer;
  $("result").hidden = false;  // before drawing: the chart takes the width the panel really has
  drawProbabilities();
}

function drawProbabilities() {
  if (!state.lastAnswer) return;
  const box = $("probs");
  box.replaceChildren(probabilityChart(state.lastAnswer, box.clientWidth || 320));
}

/** Classify the current image on the chosen backend and show the result (later requests win). */
async function run() {
  if (!state.image) return;
  const token = ++state.request;
  await state.backendsLoaded;  // a sample clicked while the list loads waits for it
  const image = state.image, backend = $("backend").disabled ? "" : $("backend").value;
  showError("");
  setStatus(`Classifying ${image.name} with ${backend}…`);
  const [result] = await Promise.allSettled([classify(image, backend), drawOriginal(image.blob)]);
  if (token !== state.request) return;
  if (result.status === "fulfilled") {
    showAnswer(result.value.answer, result.value.latencyMs, image);
    setStatus("");
  } else {
    $("result").hidden = true;
    setStatus("");
    showError(`${image.name}: ${result.reason.message}`);
  }
  $("compare-run").disabled = false;
}

function useImage(blob, name, trueLabel) {
  state.image = { blob, name, trueLabel };
  run();
}

function setUpInputs() {
  for (const id of ["file", "camera"]) {
    $(id).addEventListener("change", (event) => {
      const [file] = event.target.files;
      if (file) useImage(file, file.name);
      event.target.value = "";  // choosing the same file again still triggers a change
    });
  }
  const drop = $("drop");
  for (const name of ["dragenter", "dragover"]) {
    drop.addEventListener(name, (event) => {
      event.preventDefault();
      drop.classList.add("over");
    });
  }
  for (const name of ["dragleave", "drop"]) drop.addEventListener(name, () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    const [file] = event.dataTransfer.files;
    if (file) useImage(file, file.name);
  });
  // A file dropped beside the zone must not make the browser leave the page to open it.
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());
  $("backend").addEventListener("change", run);
  $("compare-run").addEventListener("click", compareAll);
}

async function loadSamples() {
  const reply = await fetch("samples.json");
  const list = $("samples");
  for (const sample of await reply.json()) {
    const button = html("button", "sample");
    button.type = "button";
    button.dataset.classId = sample.class_id;
    button.title = `${sample.label} (test image ${sample.test_index})`;
    const img = html("img");
    img.src = sample.url;
    img.alt = sample.label;
    img.width = img.height = 28;
    button.append(img, html("span", "", sample.label));
    button.addEventListener("click", async () => {
      const blob = await (await fetch(sample.url)).blob();
      useImage(blob, sample.name, sample.label);
    });
    const item = html("li");
    item.append(button);
    list.append(item);
  }
}

/** Fill the backend list from /model_info; while the models load (503), say so and ask again. */
async function loadBackends() {
  for (;;) {
    try {
      state.info = await post(API.modelInfo, null);
      break;
    } catch (err) {
      showError(err.status === 503 ? `${err.message}. Asking again shortly…` : err.message);
      if (err.status !== 503) return;
      await new Promise((resolve) => setTimeout(resolve, 1000 * Math.max(1, err.retryAfter)));
    }
  }
  showError("");
  const select = $("backend");
  select.replaceChildren();
  for (const [name, facts] of Object.entries(state.info.backends)) {
    const option = html("option", "", facts.loaded ? `${name} (${facts.device || "cpu"})` : `${name} (not loaded)`);
    option.value = name;
    option.disabled = !facts.loaded;
    option.selected = name === state.info.default_backend;
    select.append(option);
  }
  select.disabled = false;
  $("backend-note").textContent = `default: ${state.info.default_backend}`;
}

// ---------- every backend side by side ----------

function loadedBackends() {
  return Object.entries(state.info?.backends || {}).filter(([, f]) => f.loaded).map(([name]) => name);
}

function compareCard(backend, outcome) {
  const card = html("article", "card");
  card.dataset.backend = backend;
  const title = html("h3"), dot = html("span", "dot");
  dot.dataset.colour = colourOf(backend);
  title.append(dot, document.createTextNode(backend));
  card.append(title);
  if (outcome.error) {
    card.append(html("p", "error", outcome.error));
    return card;
  }
  const { answer, latencyMs } = outcome;
  const head = html("p", "answer");
  head.append(html("span", "card-label", answer.label), html("span", "muted", ` ${percent(answer.confidence)}`));
  const facts = html("p", "muted small", `${latencyMs.toFixed(1)} ms · model ${answer.model_version}`);
  const chart = html("div", "chart");
  chart.dataset.role = "probs";
  card.append(head, facts, chart);
  return card;
}

function drawCompareCharts() {
  for (const card of document.querySelectorAll("#compare-grid .card")) {
    const outcome = state.lastCompare?.get(card.dataset.backend);
    const box = card.querySelector("[data-role=probs]");
    if (outcome?.answer && box) box.replaceChildren(probabilityChart(outcome.answer, box.clientWidth || 260, true));
  }
}

function compareSummary(outcomes) {
  const answers = [...outcomes.entries()].filter(([, o]) => o.answer);
  if (!answers.length) return "No backend answered.";
  const labels = new Set(answers.map(([, o]) => o.answer.label));
  const reference = outcomes.get(state.info.default_backend)?.answer || answers[0][1].answer;
  const base = probabilities(reference);
  const spread = Math.max(...answers.map(([, o]) => Math.max(...probabilities(o.answer).map((p, i) =>
    Math.abs(p - base[i])))));
  const agree = labels.size === 1
    ? `All ${answers.length} backends predict ${[...labels][0]}.`
    : `The backends disagree: ${answers.map(([b, o]) => `${b} → ${o.answer.label}`).join(", ")}.`;
  return `${agree} Largest probability difference from ${reference.backend}: ${spread.toExponential(1)}.`;
}

async function compareAll() {
  if (!state.image) return;
  const button = $("compare-run"), grid = $("compare-grid");
  button.disabled = true;
  grid.replaceChildren();
  $("compare-summary").textContent = `Sending ${state.image.name} to each backend…`;
  const outcomes = new Map();
  state.lastCompare = outcomes;
  for (const backend of loadedBackends()) {
    try {
      outcomes.set(backend, await classify(state.image, backend));
    } catch (err) {
      outcomes.set(backend, { error: err.message });
    }
    grid.append(compareCard(backend, outcomes.get(backend)));
    paintDots(grid);
    drawCompareCharts();
  }
  $("compare-summary").textContent = compareSummary(outcomes);
  button.disabled = false;
}

/** Colour dots are SVG-free spans; their colour is set through the CSSOM, which the CSP allows. */
function paintDots(root) {
  for (const dot of root.querySelectorAll(".dot[data-colour]")) dot.style.backgroundColor = dot.dataset.colour;
}

// ---------- start ----------

function redrawOnResize() {
  let timer = 0, lastWidth = window.innerWidth;
  window.addEventListener("resize", () => {
    if (window.innerWidth === lastWidth) return;
    lastWidth = window.innerWidth;
    clearTimeout(timer);
    timer = setTimeout(() => {
      drawProbabilities();
      drawCompareCharts();
    }, 150);
  });
}

/** The key field: filled from session storage; a new key is stored and the backend list asked for again. */
function setUpKey() {
  const field = $("api-key");
  field.value = sessionStorage.getItem(KEY_STORE) || "";
  field.addEventListener("change", () => {
    const key = field.value.trim();
    if (key) sessionStorage.setItem(KEY_STORE, key);
    else sessionStorage.removeItem(KEY_STORE);
    state.backendsLoaded = loadBackends();
  });
}

setUpKey();
setUpInputs();
redrawOnResize();
loadSamples().catch((err) => showError(`Could not load the sample images: ${err.message}`));
state.backendsLoaded = loadBackends();
