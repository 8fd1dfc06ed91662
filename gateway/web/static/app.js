// The llm-gateway playground: a multi-turn chat over POST /v1/chat/completions, streamed with fetch.
// It can cut the connection and resume the stream from the last event id (GET /v1/streams/{id}
// with Last-Event-ID), and shows token counts from the usage the gateway reports
// (stream_options.include_usage), not a count of chunks.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY_STORAGE = "llm-gateway-key";
const state = { controller: null, streamId: null, lastId: 0, dropping: false, stopping: false,
                sentAt: 0, firstAt: 0, lastAt: 0, usage: null, resumes: 0,
                history: [], text: "", failed: false, answer: null, renderQueued: false };

function headers(extra = {}) {
  const key = $("key").value.trim();
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

function setStatus(text) { $("status").textContent = text; }

async function loadModels() {
  const previous = $("model").value;
  try {
    const response = await fetch("/v1/models", { headers: headers() });
    const body = await response.json();
    if (response.status === 401) {
      $("model").replaceChildren();
      setStatus("This gateway needs an API key: enter one above.");
      return;
    }
    if (!response.ok) throw new Error(body.error ? body.error.message : response.statusText);
    $("model").replaceChildren(...body.data.map((m) => new Option(m.id, m.id)));
    if (body.data.some((m) => m.id === previous)) $("model").value = previous;
    if (!body.data.length) {
      setStatus("No model is listed by this gateway: it may pass any model name through, "
                + "so use the API directly (see Show code).");
    }
    else if (!state.controller) setStatus("Ready.");
  } catch (error) {
    setStatus(`Could not list models: ${error.message}`);
  } finally {
    $("send").disabled = !$("model").options.length || document.body.dataset.state === "streaming";
  }
}

function copyButton(getText, label = "Copy code") {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "copy";
  button.setAttribute("aria-label", label);  // the visible label is CSS, so it is not message text
  button.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(getText());
      button.classList.add("copied");
      setTimeout(() => button.classList.remove("copied"), 1200);
    } catch (error) {
      setStatus(`Could not copy: ${error.message}`);
    }
  });
  return button;
}

function addMessage(role, text) {
  $("empty").hidden = true;
  const node = $("message-template").content.firstElementChild.cloneNode(true);
  node.classList.add(role);
  node.querySelector(".role").textContent = role === "user" ? "You" : "Assistant";
  const content = node.querySelector(".content");
  if (role === "user") content.textContent = text;
  const copy = node.querySelector(".copy");
  copy.replaceWith(copyButton(() => (role === "user" ? text : sourceOf(content)), "Copy message"));
  $("messages").append(node);
  node.scrollIntoView({ block: "end" });
  return content;
}

// The markdown an answer was rendered from (what its copy button copies).
function sourceOf(content) { return content.dataset.source || content.textContent; }

function render(content, text) {
  content.dataset.source = text;
  content.replaceChildren(Markdown.render(text, copyButton));
}

function queueRender() {
  if (state.renderQueued) return;
  state.renderQueued = true;
  requestAnimationFrame(() => {
    state.renderQueued = false;
    if (state.answer) render(state.answer, state.text);
  });
}

function busy(on) {
  $("send").disabled = on || !$("model").options.length;
  $("stop").disabled = !on;
  $("drop").disabled = !on;
  document.body.dataset.state = on ? "streaming" : "idle";
}

function showFigures() {
  if (state.firstAt) $("ttft").textContent = `${Math.round(state.firstAt - state.sentAt)} ms`;
  const usage = state.usage;
  if (usage) {
    $("tokens").textContent = `${usage.prompt_tokens} / ${usage.completion_tokens}`;
    // Completion tokens (as the gateway reports them) over the time from sending to the last
    // token: a figure that stays honest when a fast answer arrives in one burst.
    const seconds = (state.lastAt - state.sentAt) / 1000;
    $("tps").textContent = seconds > 0 && state.lastAt
      ? (usage.completion_tokens / seconds).toFixed(1) : "–";
  }
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
    state.failed = true;
    setStatus(`Stream ended: ${event.error.message}`);
    return true;
  }
  if (event.usage) state.usage = event.usage;
  for (const choice of event.choices || []) {
    const piece = (choice.delta && choice.delta.content) || choice.text || "";
    if (piece) {
      const now = performance.now();
      if (!state.firstAt) state.firstAt = now;
      state.lastAt = now;
      state.text += piece;
      queueRender();
    }
  }
  showFigures();
  return false;
}

async function errorMessage(response) {
  try {
    const body = await response.json();
    return body.error ? body.error.message : response.statusText;
  } catch {
    return response.statusText;
  }
}

async function run(request) {
  busy(true);
  for (;;) {
    state.controller = new AbortController();
    try {
      const response = await request(state.controller.signal);
      if (response.status === 204) { setStatus("The stream has expired."); break; }
      if (!response.ok) {
        setStatus(`Error ${response.status}: ${await errorMessage(response)}`);
        break;
      }
      state.streamId = response.headers.get("X-Gateway-Stream-Id") || state.streamId;
      const cache = response.headers.get("X-Gateway-Cache");
      if (cache) {
        $("cache").textContent = cache === "hit" ? "cache hit" : cache;
        $("cache").classList.toggle("hit", cache === "hit");
      }
      const finished = await consume(response);
      if (finished) { if (!state.stopping && !state.failed) setStatus("Done."); break; }
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
  if (state.answer) render(state.answer, state.text);
  if (state.text) state.history.push({ role: "assistant", content: state.text });
  state.controller = null;
  showFigures();
  busy(false);
}

// The request body for the conversation so far plus ``prompt`` (without the gateway's headers).
function requestBody(prompt) {
  const messages = [];
  const system = $("system").value.trim();
  if (system) messages.push({ role: "system", content: system });
  messages.push(...state.history, { role: "user", content: prompt });
  const body = { model: $("model").value, stream: true,
                 stream_options: { include_usage: true }, messages };
  const temperature = Number($("temperature").value);
  if (temperature !== 1) body.temperature = temperature;
  const maxTokens = parseInt($("max-tokens").value, 10);
  if (maxTokens > 0) body.max_tokens = maxTokens;
  return body;
}

function showCode() {
  const body = requestBody($("prompt").value || "Hello");
  const base = `${location.origin}/v1`;
  const json = JSON.stringify(body, null, 2).replace(/'/g, "'\\''");
  $("code-curl").textContent = `curl -N ${base}/chat/completions \\\n`
    + `  -H "Authorization: Bearer $LLM_GATEWAY_KEY" \\\n`
    + `  -H "Content-Type: application/json" \\\n  -d '${json}'`;
  const extra = ["temperature", "max_tokens"].filter((k) => k in body)
    .map((k) => `    ${k}=${JSON.stringify(body[k])},\n`).join("");
  const messages = JSON.stringify(body.messages, null, 4).replace(/\n/g, "\n    ");
  $("code-python").textContent = `import os\nfrom openai import OpenAI\n\n`
    + `client = OpenAI(base_url="${base}", api_key=os.environ.get("LLM_GATEWAY_KEY", "none"))\n`
    + `stream = client.chat.completions.create(\n    model=${JSON.stringify(body.model)},\n`
    + `    messages=${messages},\n${extra}    stream=True,\n`
    + `    stream_options={"include_usage": True},\n)\n`
    + `for chunk in stream:\n    if chunk.choices and chunk.choices[0].delta.content:\n`
    + `        print(chunk.choices[0].delta.content, end="", flush=True)\n`;
}

$("ask").addEventListener("submit", (event) => {
  event.preventDefault();
  const prompt = $("prompt").value;
  if (!prompt.trim() || document.body.dataset.state === "streaming") return;
  const body = requestBody(prompt);
  Object.assign(state, { streamId: null, lastId: 0, dropping: false, stopping: false,
                         sentAt: performance.now(), firstAt: 0, lastAt: 0, usage: null,
                         resumes: 0, text: "", failed: false });
  state.history.push({ role: "user", content: prompt });
  addMessage("user", prompt);
  const previous = $("answer");
  if (previous) previous.removeAttribute("id");
  state.answer = addMessage("assistant", "");
  state.answer.id = "answer";
  $("prompt").value = "";
  $("ttft").textContent = $("tps").textContent = $("tokens").textContent = "–";
  $("cache").textContent = "–";
  $("cache").classList.remove("hit");
  setStatus("Streaming…");
  if ($("show-code").open) showCode();
  const payload = JSON.stringify(body);
  run((signal) => fetch("/v1/chat/completions", { method: "POST", body: payload, signal,
    headers: headers({ "Content-Type": "application/json", "X-Gateway-Resumable": "true",
                       "X-Gateway-Cache": $("use-cache").checked ? "on" : "off" }) }));
});

$("prompt").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    $("ask").requestSubmit();
  }
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

$("new-chat").addEventListener("click", () => {
  if (document.body.dataset.state === "streaming") return;
  state.history = [];
  state.answer = null;
  $("messages").replaceChildren($("empty"));
  $("empty").hidden = false;
  setStatus("Ready.");
});

$("temperature").addEventListener("input", () => {
  $("temperature-value").textContent = Number($("temperature").value).toFixed(1);
});
$("show-code").addEventListener("toggle", () => { if ($("show-code").open) showCode(); });
for (const id of ["prompt", "system", "temperature", "max-tokens", "model"]) {
  $(id).addEventListener("input", () => { if ($("show-code").open) showCode(); });
}

let keyTimer = null;
$("key").addEventListener("input", () => {
  localStorage.setItem(KEY_STORAGE, $("key").value.trim());
  clearTimeout(keyTimer);
  keyTimer = setTimeout(loadModels, 300);  // the models this key may use
});

$("key").value = localStorage.getItem(KEY_STORAGE) || "";
loadModels();
