// The llm-gateway playground: streams a chat completion with fetch, and can cut the connection
// and resume the stream from the last event id (GET /v1/streams/{id} with Last-Event-ID).
"use strict";

const $ = (id) => document.getElementById(id);
const state = { controller: null, streamId: null, lastId: 0, dropping: false, stopping: false,
                sentAt: 0, firstAt: 0, tokens: 0, resumes: 0 };

function headers(extra = {}) {
  const key = $("key").value.trim();
  localStorage.setItem("llm-gateway-key", key);
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

async function loadModels() {
  $("key").value = localStorage.getItem("llm-gateway-key") || "";
  try {
    const response = await fetch("/v1/models", { headers: headers() });
    const body = await response.json();
    if (!response.ok) throw new Error(body.error ? body.error.message : response.statusText);
    $("model").replaceChildren(...body.data.map((m) => new Option(m.id, m.id)));
  } catch (error) {
    setStatus(`Could not list models: ${error.message}`);
  }
}

function setStatus(text) { $("status").textContent = text; }

function busy(on) {
  $("send").disabled = on;
  $("stop").disabled = !on;
  $("drop").disabled = !on;
}

function showFigures() {
  if (state.firstAt) $("ttft").textContent = `${Math.round(state.firstAt - state.sentAt)} ms`;
  const seconds = (performance.now() - state.firstAt) / 1000;
  if (state.firstAt && seconds > 0) $("tps").textContent = (state.tokens / seconds).toFixed(1);
  $("resumes").textContent = String(state.resumes);
}

// Parse SSE from a fetch body; returns true when the stream ended with [DONE] or an error event.
async function consume(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return false;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      if (handleEvent(block)) return true;
    }
  }
}

function handleEvent(block) {
  let id = null;
  const data = [];
  for (const line of block.split("\n")) {
    if (line.startsWith("id:")) id = line.slice(3).trim();
    else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
  }
  if (!data.length) return false;  // a keep-alive comment
  if (id !== null) state.lastId = Number(id);
  const text = data.join("\n");
  if (text === "[DONE]") return true;
  const event = JSON.parse(text);
  if (event.error) {
    setStatus(`Stream ended: ${event.error.message}`);
    return true;
  }
  for (const choice of event.choices || []) {
    const piece = (choice.delta && choice.delta.content) || choice.text || "";
    if (piece) {
      if (!state.firstAt) state.firstAt = performance.now();
      state.tokens += 1;
      $("answer").textContent += piece;
    }
  }
  showFigures();
  return false;
}

async function run(request) {
  busy(true);
  for (;;) {
    state.controller = new AbortController();
    try {
      const response = await request(state.controller.signal);
      if (response.status === 204) { setStatus("The stream has expired."); break; }
      if (!response.ok) {
        const body = await response.json();
        setStatus(`Error ${response.status}: ${body.error.message}`);
        break;
      }
      state.streamId = response.headers.get("X-Gateway-Stream-Id") || state.streamId;
      const cache = response.headers.get("X-Gateway-Cache");
      if (cache) {
        $("cache").textContent = cache === "hit" ? "cache hit" : cache;
        $("cache").classList.toggle("hit", cache === "hit");
      }
      const finished = await consume(response);
      if (finished) { if (!state.stopping) setStatus("Done."); break; }
      setStatus("The connection ended early; resuming.");
    } catch (error) {
      if (error.name !== "AbortError") { setStatus(`Error: ${error.message}`); break; }
      if (state.stopping) { setStatus("Stopped."); break; }
      if (!state.dropping) break;
      state.dropping = false;
    }
    if (!state.streamId) break;
    // Resume from the last event we saw: the gateway replays what came after it, then live.
    state.resumes += 1;
    showFigures();
    setStatus(`Resuming after event ${state.lastId}…`);
    request = (signal) => fetch(`/v1/streams/${state.streamId}`, {
      headers: headers({ "Last-Event-ID": String(state.lastId) }), signal });
  }
  showFigures();
  busy(false);
  document.body.dataset.state = "idle";
}

$("ask").addEventListener("submit", (event) => {
  event.preventDefault();
  Object.assign(state, { streamId: null, lastId: 0, dropping: false, stopping: false,
                         sentAt: performance.now(), firstAt: 0, tokens: 0, resumes: 0 });
  $("answer").textContent = "";
  $("ttft").textContent = $("tps").textContent = "–";
  $("cache").textContent = "–";
  $("cache").classList.remove("hit");
  setStatus("Streaming…");
  document.body.dataset.state = "streaming";
  const body = JSON.stringify({ model: $("model").value, stream: true,
                                messages: [{ role: "user", content: $("prompt").value }] });
  run((signal) => fetch("/v1/chat/completions", { method: "POST", body, signal,
    headers: headers({ "Content-Type": "application/json", "X-Gateway-Resumable": "true",
                       "X-Gateway-Cache": $("use-cache").checked ? "on" : "off" }) }));
});

$("drop").addEventListener("click", () => {
  state.dropping = true;
  setStatus("Connection dropped.");
  state.controller.abort();
});

$("stop").addEventListener("click", async () => {
  state.stopping = true;
  state.controller.abort();
  if (state.streamId) {
    await fetch(`/v1/streams/${state.streamId}/cancel`, { method: "POST", headers: headers() });
  }
});

loadModels();
