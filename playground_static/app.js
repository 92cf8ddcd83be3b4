// The playground page: plain JavaScript, no libraries, nothing fetched but this server's own API.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { model: null, busy: false, steps: [], pinned: null, settings: null, abort: null };
const UNSUITED = { lm: ["chat", "classify"], instruct: ["classify"], classifier: ["generate", "chat"] };
const FIRST_VIEW = { lm: "generate", instruct: "chat", classifier: "classify" };

function showMessage(text) {
  $("message").textContent = text;
  $("message").hidden = !text;
}

// Spaces and line breaks made visible, for tokens shown on their own.
function visible(label) {
  return label.replace(/ /g, "\u00b7").replace(/\n/g, "\u21b5").replace(/\t/g, "\u2192");
}

function percent(p) {
  if (p > 0 && p < 0.001) return "<0.1%";
  return (100 * p).toFixed(1) + "%";
}

async function api(path, body) {
  const options = body === undefined ? {} : {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
  const response = await fetch(path, options);
  const data = await response.json().catch(() => ({ error: `the server answered ${response.status}` }));
  if (!response.ok || data.error) throw new Error(data.error || `the server answered ${response.status}`);
  return data;
}

// POST body to path and call onEvent for each line of the streamed answer (one JSON object a line).
async function stream(path, body, onEvent, signal) {
  const response = await fetch(path, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body), signal });
  if (!response.ok) {
    const data = await response.json().catch(() => ({}));
    throw new Error(data.error || `the server answered ${response.status}`);
  }
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffered = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffered += decoder.decode(value, { stream: true });
    const lines = buffered.split("\n");
    buffered = lines.pop();
    for (const line of lines) if (line.trim()) onEvent(JSON.parse(line));
  }
}

function setBusy(busy) {
  state.busy = busy;
  for (const button of document.querySelectorAll("button.primary, #model-select")) button.disabled = busy;
  $("stop-button").disabled = !busy || state.abort === null;
}

// Run an action that talks to the server: one at a time, and any problem shown as the message.
async function run(action) {
  if (state.busy) return;
  showMessage("");
  setBusy(true);
  try {
    await action();
  } catch (error) {
    if (error.name !== "AbortError") showMessage(error.message);
  } finally {
    state.abort = null;
    setBusy(false);
  }
}

function sampling() {
  return { temperature: $("temperature").value, top_k: $("top-k").value,
           max_new_tokens: $("max-new-tokens").value, seed: $("seed").value };
}

// ---- models and views ----

function showView(name) {
  for (const tab of document.querySelectorAll("#tabs button")) {
    tab.setAttribute("aria-selected", String(tab.dataset.view === name));
  }
  for (const view of document.querySelectorAll(".view")) view.hidden = view.id !== "view-" + name;
  $("settings").hidden = !["generate", "chat"].includes(name);
  $("prompt-box").hidden = !["generate", "tokens", "attention"].includes(name);
  if (name === "tokens" && state.model) run(showTokens);
}

function setModel(info) {
  state.model = info;
  const millions = (info.parameters / 1e6).toFixed(info.parameters < 1e7 ? 2 : 0);
  $("model-info").textContent = [`${info.name}: ${info.kind_text}`,
    `${info.tokenizer} tokenizer (${info.vocab_size.toLocaleString()} tokens)`,
    `${info.n_layers} layers \u00d7 ${info.n_heads} heads`, `${info.emb_dim}-d embeddings`,
    `context ${info.context_length} tokens`, `${millions}M parameters`, info.device].join(" \u00b7 ");
  $("model-select").value = info.name;
  $("template-note").hidden = info.kind !== "instruct";
  fillNumbers($("layer"), info.n_layers);
  fillNumbers($("head"), info.n_heads);
  for (const tab of document.querySelectorAll("#tabs button")) {
    const unsuited = UNSUITED[info.kind].includes(tab.dataset.view);
    tab.classList.toggle("unsuited", unsuited);
    tab.title = unsuited ? `not for a ${info.kind_text.split(" (")[0]}` : "";
  }
  showView(FIRST_VIEW[info.kind]);
}

function fillNumbers(select, count) {
  select.innerHTML = "";
  for (let i = 0; i < count; i++) select.add(new Option(`${i + 1} of ${count}`, String(i)));
}

async function loadModels() {
  const data = await api("/api/models");
  for (const name of data.models) $("model-select").add(new Option(name, name));
  if (data.current) setModel(data.current);
  else {
    $("model-info").textContent = "No model is open.";
    showMessage(data.error || "Choose a model above.");
  }
}

// ---- generate and the next-token view ----

async function generate() {
  const output = $("generated");
  output.innerHTML = "";
  $("candidates").hidden = true;
  state.steps = [];
  state.pinned = null;
  state.settings = sampling();
  state.abort = new AbortController();
  setBusy(true);
  $("generate-status").textContent = "generating...";
  await stream("/api/generate", { prompt: $("prompt").value, ...state.settings }, (event) => {
    if (event.type === "start") {
      const prompt = document.createElement("span");
      prompt.className = "prompt-text";
      prompt.textContent = event.prompt;
      output.append(prompt);
      $("generate-status").textContent = `prompt: ${event.prompt_tokens} tokens; generating...`;
    } else if (event.type === "token") {
      output.append(tokenSpan(event));
      $("generate-status").textContent = `${event.step} tokens...`;
    } else if (event.type === "end") {
      if (event.tail) output.append(event.tail);
      const rate = event.seconds > 0 ? `, ${Math.round(event.tokens / event.seconds)} tokens/s` : "";
      $("generate-status").textContent = `${event.tokens} new token${event.tokens === 1 ? "" : "s"} in ` +
        `${event.seconds.toFixed(2)} s` +
        rate + (event.reason === "endoftext" ? "; stopped at <|endoftext|>" : "") +
        ". Click a token for its candidates.";
    } else if (event.type === "error") {
      showMessage(event.message);
      $("generate-status").textContent = "stopped by an error (see the message above)";
    }
  }, state.abort.signal).catch((error) => {
    $("generate-status").textContent = error.name === "AbortError" ? "stopped" :
      "not generated (see the message above)";
    throw error;
  });
}

function tokenSpan(event) {
  state.steps[event.step] = event;
  const span = document.createElement("span");
  span.className = "tok" + (event.text ? "" : " partial");
  span.textContent = (event.text || event.label).replace(/\n/g, "\u21b5\n");  // a visible line break
  span.dataset.step = event.step;
  span.title = `token ${event.step}: id ${event.id}`;
  span.addEventListener("mouseenter", () => showCandidates(event.step));
  span.addEventListener("click", () => {
    state.pinned = event.step;
    showCandidates(event.step);
  });
  return span;
}

function showCandidates(step) {
  const event = state.steps[step];
  for (const span of document.querySelectorAll("#generated .tok")) {
    span.classList.toggle("selected", Number(span.dataset.step) === step);
  }
  const { temperature, top_k: topK } = state.settings;
  const greedy = Number(temperature) === 0;
  const limits = [Number(topK) > 0 ? `top-k ${topK}` : "all tokens", greedy ? "temperature 0" : `temperature ${temperature}`];
  const max = Math.max(...event.candidates.map((c) => Math.max(c.before, c.after)), 1e-9);
  const rows = event.candidates.map((c) => {
    const chosen = c.id === event.id;
    return `<tr class="${chosen ? "chosen" : ""}"><td>${c.rank}</td>` +
      `<td class="mono">${escape(visible(c.label))}</td><td>${c.id}</td>` +
      `<td>${bar(c.before, max, "before")}</td><td>${bar(c.after, max, "after")}</td>` +
      `<td>${chosen ? "&larr; chosen" : ""}</td></tr>`;
  }).join("");
  const panel = $("candidates");
  panel.innerHTML = `<h3>Token ${step}: the model wrote <span class="mono">"${escape(visible(event.label))}"</span></h3>` +
    `<p class="hint"><b>Before</b>: the softmax of the model's scores (logits) for every token of the vocabulary. ` +
    `<b>After</b>: with ${limits.join(" and ")}, the distribution the token was drawn from` +
    (greedy ? " (temperature 0 is greedy: the most likely token is taken)." : ".") + `</p>` +
    `<table class="candidates"><tr><th>rank</th><th>token</th><th>id</th><th>before</th><th>after</th><th></th></tr>` +
    rows + `</table>`;
  panel.hidden = false;
}

function bar(p, max, kind) {
  return `<span class="pct">${percent(p)}</span><span class="bar ${kind}" style="width:${(8 * p / max).toFixed(2)}rem"></span>`;
}

function escape(text) {
  const div = document.createElement("div");
  div.textContent = text;
  return div.innerHTML;
}

// ---- tokens ----

async function showTokens() {
  const data = await api("/api/tokens", { prompt: $("prompt").value });
  const list = $("token-list");
  list.innerHTML = "";
  data.ids.forEach((id, i) => {
    const chip = document.createElement("div");
    chip.className = "token-chip";
    chip.innerHTML = `<span class="mono">${escape(visible(data.labels[i]))}</span><span class="id">${id}</span>`;
    list.append(chip);
  });
  const over = data.ids.length > data.context_length ? ` (more than the model's context of ${data.context_length})` : "";
  $("tokens-status").textContent = `${data.ids.length} tokens${over}, ${data.tokenizer} tokenizer with ` +
    `${data.vocab_size.toLocaleString()} tokens`;
}

// ---- attention ----

async function showAttention() {
  const layer = Number($("layer").value), head = Number($("head").value);
  const data = await api("/api/attention", { prompt: $("prompt").value, layer, head });
  drawHeatmap(data.labels.map(visible), data.weights);
  $("attention-status").textContent = `layer ${layer + 1} of ${state.model.n_layers}, head ${head + 1} ` +
    `of ${state.model.n_heads}, over the prompt's ${data.ids.length} tokens`;
}

function drawHeatmap(labels, weights) {
  const canvas = $("heatmap");
  const n = labels.length;
  const cell = Math.max(4, Math.min(34, Math.floor(560 / n)));
  const context = canvas.getContext("2d");
  const fontSize = Math.min(12, cell - 2);
  context.font = `${fontSize}px ui-monospace, monospace`;
  const showLabels = cell >= 9;
  const margin = showLabels ? Math.min(140, 10 + Math.max(...labels.map((l) => context.measureText(l).width))) : 10;
  const width = margin + n * cell + 10, height = margin + n * cell + 10;
  const ratio = window.devicePixelRatio || 1;
  canvas.width = width * ratio;
  canvas.height = height * ratio;
  canvas.style.width = width + "px";
  canvas.style.height = height + "px";
  context.scale(ratio, ratio);
  context.font = `${fontSize}px ui-monospace, monospace`;
  const masked = context.createPattern(hatch(), "repeat");
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < n; j++) {
      context.fillStyle = j > i ? masked : shade(weights[i][j]);  // j > i: hidden by the causal mask
      context.fillRect(margin + j * cell, margin + i * cell, cell - 1, cell - 1);
    }
  }
  if (showLabels) {
    context.fillStyle = "#1d2330";
    context.textBaseline = "middle";
    context.textAlign = "right";
    labels.forEach((label, i) => context.fillText(label, margin - 5, margin + i * cell + cell / 2, margin - 8));
    labels.forEach((label, j) => {
      context.save();
      context.translate(margin + j * cell + cell / 2, margin - 5);
      context.rotate(-Math.PI / 3);
      context.textAlign = "left";
      context.fillText(label, 0, 0, margin / Math.sin(Math.PI / 3) - 8);
      context.restore();
    });
  }
  canvas.onmousemove = (e) => {
    const box = canvas.getBoundingClientRect();
    const j = Math.floor((e.clientX - box.left - margin) / cell), i = Math.floor((e.clientY - box.top - margin) / cell);
    if (i < 0 || j < 0 || i >= n || j >= n) return;
    $("heatmap-cell").textContent = j > i ? `"${labels[i]}" cannot look at the later token "${labels[j]}"` :
      `"${labels[i]}" (row ${i + 1}) gives "${labels[j]}" (column ${j + 1}) a weight of ${weights[i][j].toFixed(3)}`;
  };
  canvas.dataset.tokens = String(n);
}

// Grey diagonal lines: a masked cell must not look like a small weight.
function hatch() {
  const tile = document.createElement("canvas");
  tile.width = tile.height = 6;
  const context = tile.getContext("2d");
  context.fillStyle = "#f1f2f4";
  context.fillRect(0, 0, 6, 6);
  context.strokeStyle = "#b9bfc8";
  context.beginPath();
  context.moveTo(0, 6);
  context.lineTo(6, 0);
  context.stroke();
  return tile;
}

function shade(w) {
  const mix = (a, b) => Math.round(a + (b - a) * Math.max(0, Math.min(1, w)));
  return `rgb(${mix(255, 11)}, ${mix(255, 42)}, ${mix(255, 117)})`;
}

// ---- chat and classify ----

async function chat() {
  const box = $("chat-message");
  const message = box.value.trim();
  if (!message) throw new Error("type a message first");
  const question = turn("user", "You", message), answer = turn("model", state.model.name, "");
  $("chat-log").append(question, answer);
  const text = answer.querySelector(".text");
  let started = false;
  try {
    await stream("/api/generate", { prompt: message, mode: "chat", ...sampling() }, (event) => {
      if (event.type === "start") {
        started = true;
        box.value = "";  // taken: the box is free for the next message
      } else if (event.type === "token") text.textContent += event.text;
      else if (event.type === "end") {
        text.textContent += event.tail;
        if (!text.textContent.trim()) text.textContent = "(no answer: the model ended at once)";
      } else if (event.type === "error") throw new Error(event.message);
    });
  } catch (error) {
    if (started) {  // an answer broken off: it stays, marked, and the message goes back into the box
      answer.classList.add("failed");
      text.textContent += (text.textContent ? " " : "") + `[no more: ${error.message}]`;
      if (!box.value) box.value = message;
    } else {  // refused (a setting out of range, the model busy): no turns, the message stays typed
      question.remove();
      answer.remove();
    }
    throw error;
  }
}

function turn(kind, who, content) {
  const div = document.createElement("div");
  div.className = "turn " + kind;
  div.innerHTML = `<span class="who">${escape(who)}</span><span class="text"></span>`;
  div.querySelector(".text").textContent = content;
  return div;
}

async function classify() {
  const data = await api("/api/classify", { text: $("classify-text").value });
  const rows = Object.entries(data.probabilities).map(([name, p]) =>
    `<tr><td>${escape(name)}</td><td>${bar(p, 1, "after")}</td></tr>`).join("");
  const result = $("classify-result");
  result.innerHTML = `<p>The classifier says: <span class="label-big">${escape(data.label)}</span></p>` +
    `<table class="candidates"><tr><th>class</th><th>probability</th></tr>${rows}</table>` +
    `<p class="hint">The message is ${data.tokens} token${data.tokens === 1 ? "" : "s"} long` +
    (data.tokens > data.read_tokens ? `; like chapter 6's classify_review, the model read only its first ` +
      `${data.read_tokens}: ` + (data.limit === "max_length" ? `the classifier's max_length, the length ` +
      `of the texts it was trained on.` : `its context length.`) : ".") + `</p>`;
  result.hidden = false;
}

// ---- wiring ----

for (const tab of document.querySelectorAll("#tabs button")) {
  tab.addEventListener("click", () => showView(tab.dataset.view));
}
$("model-select").addEventListener("change", () => run(async () => {
  $("model-info").textContent = `Opening ${$("model-select").value}...`;
  try {
    setModel(await api("/api/model", { name: $("model-select").value }));
  } catch (error) {
    state.model = null;
    $("model-info").textContent = "No model is open.";
    throw error;
  }
}));
// Pointing at tokens previews their steps; leaving the text shows the clicked one again.
$("generated").addEventListener("mouseleave", () => state.pinned !== null && showCandidates(state.pinned));
$("generate-button").addEventListener("click", () => run(generate));
$("stop-button").addEventListener("click", () => state.abort && state.abort.abort());
$("tokens-button").addEventListener("click", () => run(showTokens));
$("attention-button").addEventListener("click", () => run(showAttention));
$("chat-button").addEventListener("click", () => run(chat));
$("chat-clear").addEventListener("click", () => { $("chat-log").innerHTML = ""; });
$("classify-button").addEventListener("click", () => run(classify));
run(loadModels);
