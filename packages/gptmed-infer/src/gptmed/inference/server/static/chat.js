// The chat page of `gptmed-infer serve`: streams answers from /v1/chat/completions (SSE).
// Plain JavaScript, no build step, nothing loaded from elsewhere.
"use strict";

const settings = JSON.parse(document.getElementById("settings").textContent);
const $ = (id) => document.getElementById(id);
const KEY = "gptmed-api-key"; // sessionStorage: this tab only
const FIELDS = [
  "temperature", "top_p", "top_k", "max_tokens", "repetition_penalty",
  "frequency_penalty", "presence_penalty", "no_repeat_ngram_size", "seed",
];
const INTEGERS = new Set(["top_k", "max_tokens", "no_repeat_ngram_size", "seed"]);
let controller = null; // the running request's AbortController

function apiKey() {
  return sessionStorage.getItem(KEY) || "";
}

function showKeyBox(show) {
  $("key-box").hidden = !show;
  if (show) $("key").focus();
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

function setStatus(text) {
  $("status").textContent = text;
}

function addMessage(role, text) {
  const hint = document.querySelector("#log .hint");
  if (hint) hint.remove();
  const el = document.createElement("div");
  el.className = "msg " + role;
  el.textContent = text;
  $("log").appendChild(el);
  el.scrollIntoView({ block: "end" });
  return el;
}

function params() {
  const out = {};
  for (const name of FIELDS) {
    const raw = $(name).value.trim();
    if (raw === "") continue;
    out[name] = INTEGERS.has(name) ? parseInt(raw, 10) : parseFloat(raw);
  }
  const stops = $("stop_strings").value.split("|").filter((s) => s.length > 0);
  if (stops.length) out.stop = stops;
  return out;
}

async function refusal(response) {
  // The server's words: {"error": {"message": ...}} on every 4xx/5xx.
  let message = "";
  try {
    message = (await response.json()).error.message;
  } catch (e) {
    message = response.statusText;
  }
  if (response.status === 401) {
    sessionStorage.removeItem(KEY);
    showKeyBox(true);
    return "The server refused the API key (401): enter the right key above.";
  }
  if (response.status === 429) return "The server is busy (429): too many requests at once. Try again in a moment.";
  if (response.status === 503) return "The server is shutting down (503): " + message;
  return "The server refused the request (" + response.status + "): " + message;
}

function onEvent(data, answer) {
  // One SSE event: a chunk, an error, or [DONE]; true when the answer is complete.
  if (data === "[DONE]") return true;
  const chunk = JSON.parse(data);
  if (chunk.error) {
    answer.dataset.state = "error";
    showError("The answer ended with an error: " + chunk.error.message);
    return true;
  }
  for (const choice of chunk.choices || []) {
    if (choice.delta && choice.delta.content) answer.textContent += choice.delta.content;
    if (choice.finish_reason) answer.dataset.finish = choice.finish_reason;
  }
  answer.scrollIntoView({ block: "end" });
  return false;
}

async function readStream(response, answer) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (line.startsWith("data: ") && onEvent(line.slice(6), answer)) return;
      }
    }
  }
}

function setBusy(busy) {
  $("send").disabled = busy;
  $("stop").disabled = !busy;
  setStatus(busy ? "answering..." : "ready");
}

async function ask(question) {
  showError("");
  addMessage("user", question);
  const answer = addMessage("assistant", "");
  answer.dataset.state = "streaming";
  const headers = { "Content-Type": "application/json" };
  if (apiKey()) headers.Authorization = "Bearer " + apiKey();
  const body = { model: settings.model, messages: [{ role: "user", content: question }], stream: true, ...params() };
  controller = new AbortController();
  setBusy(true);
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST",
      headers,
      body: JSON.stringify(body),
      signal: controller.signal,
    });
    if (!response.ok) {
      const message = await refusal(response);
      answer.dataset.state = "error";
      answer.textContent = "(no answer)";
      showError(message);
      return;
    }
    await readStream(response, answer);
    if (answer.dataset.state === "streaming") answer.dataset.state = "done";
  } catch (err) {
    if (err.name === "AbortError") {
      answer.dataset.state = "stopped"; // the server frees the request's row when the connection closes
    } else {
      answer.dataset.state = "error";
      if (!answer.textContent) answer.textContent = "(no answer)";
      showError("No answer from the server: " + err.message);
    }
  } finally {
    controller = null;
    setBusy(false);
  }
}

function init() {
  $("bundle").textContent = settings.bundle;
  document.title = "gptmed chat: " + settings.bundle;
  for (const [name, value] of Object.entries(settings.defaults)) {
    if (value !== null && value !== undefined) $(name).value = value;
  }
  $("max_tokens").placeholder = "as room allows, up to " + settings.max_tokens;
  if (settings.auth && !apiKey()) showKeyBox(true);
  $("key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const key = $("key").value.trim();
    if (!key) return;
    sessionStorage.setItem(KEY, key);
    $("key").value = "";
    showKeyBox(false);
    showError("");
  });
  $("ask").addEventListener("submit", (e) => {
    e.preventDefault();
    const question = $("question").value.trim();
    if (!question || controller) return;
    $("question").value = "";
    ask(question);
  });
  $("question").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) {
      e.preventDefault();
      $("ask").requestSubmit();
    }
  });
  $("stop").addEventListener("click", () => {
    if (controller) controller.abort();
  });
}

init();
