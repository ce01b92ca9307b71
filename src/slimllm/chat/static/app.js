// The chat page: pick models, send one prompt to all of them, watch the answers stream side by
// side. One POST /api/chat/stream carries every model's events (start, token, done, error, then
// final); Stop aborts it, which the server passes on to the backends. Model output is only ever
// handed to renderMarkdown (markdown.js), which builds text nodes.
"use strict";

(function () {
  const $ = (selector) => document.querySelector(selector);
  const state = {
    models: [], // from /api/models
    selected: new Set(),
    history: {}, // model name -> [{role, content}], that model's own conversation
    controller: null, // AbortController of the stream in progress
    live: {}, // model name -> {text, bubble, ...} of the answer in progress
    firstLoad: true,
  };

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function notice(text) {
    $("#notice").textContent = text || "";
  }

  function statusText(model) {
    if (model.status === "up" && model.latency_ms !== null) return `up · ${Math.round(model.latency_ms)} ms`;
    return model.status;
  }

  // With a key set, a session that has expired (or never was) gets 401: back to the login form.
  function loggedOut(response) {
    if (response.status !== 401) return false;
    window.location.assign("/login");
    return true;
  }

  // -- models -------------------------------------------------------------------------------

  async function loadModels() {
    let delay = 5000;
    try {
      const response = await fetch("/api/models", { cache: "no-store" });
      if (loggedOut(response)) return;
      const data = await response.json();
      state.models = data.models;
      delay = Math.max(2000, Math.min(15000, data.poll_interval * 1000));
      if (state.firstLoad) {
        // Start with the first model that is up selected, so the page is ready to use.
        const first = state.models.find((m) => m.status === "up");
        if (first) state.selected.add(first.name);
        state.firstLoad = false;
      }
      renderPicker();
      renderPanes();
    } catch (e) {
      notice(`cannot load the models: ${e}`);
    }
    setTimeout(loadModels, delay);
  }

  // Updated in place, not rebuilt: a check box must not vanish under a click between two polls.
  function renderPicker() {
    const list = $("#models");
    for (const node of [...list.children]) {
      if (!state.models.some((m) => m.name === node.dataset.model)) node.remove();
    }
    for (const model of state.models) {
      let item = list.querySelector(`.model[data-model="${CSS.escape(model.name)}"]`);
      if (!item) {
        item = el("li");
        item.dataset.model = model.name;
        const label = el("label");
        const box = document.createElement("input");
        box.type = "checkbox";
        box.value = model.name;
        box.addEventListener("change", () => {
          if (box.checked) state.selected.add(model.name);
          else state.selected.delete(model.name);
          renderPanes();
        });
        label.append(box, el("span", "name", model.name), el("span", "status"));
        item.append(label);
        list.append(item);
      }
      item.className = `model ${model.status}`;
      item.dataset.status = model.status;
      const box = item.querySelector("input");
      box.checked = state.selected.has(model.name);
      // A down model cannot be picked; one picked before it went down keeps its pane.
      box.disabled = model.status === "down" && !box.checked;
      const badge = item.querySelector(".status");
      badge.className = `status ${model.status}`;
      badge.textContent = statusText(model);
      const trouble = model.instances
        .filter((i) => i.status !== "ok")
        .map((i) => `instance ${i.index}: ${i.reason || i.status}`);
      badge.title = trouble.join("\n");
    }
  }

  // -- panes --------------------------------------------------------------------------------

  function pane(name) {
    return document.querySelector(`.pane[data-model="${CSS.escape(name)}"]`);
  }

  function renderPanes() {
    const container = $("#panes");
    const wanted = state.models.filter((m) => state.selected.has(m.name) || state.live[m.name]);
    for (const node of [...container.children]) {
      if (!wanted.some((m) => m.name === node.dataset.model)) node.remove();
    }
    for (const model of wanted) {
      let node = pane(model.name);
      if (!node) {
        node = el("article", "pane");
        node.dataset.model = model.name;
        const header = el("header");
        header.append(el("h2", "", model.name), el("span", "status"), el("span", "metrics"));
        node.append(header, el("div", "conversation"));
        for (const message of state.history[model.name] || []) addMessage(node, message.role, message.content);
        container.append(node);
      }
      const badge = node.querySelector("header .status");
      badge.className = `status ${model.status}`;
      badge.textContent = statusText(model);
      node.dataset.status = model.status;
    }
    container.dataset.count = String(container.children.length);
  }

  function addMessage(node, role, text) {
    const bubble = el("div", `msg ${role}`);
    const content = el("div", "content");
    if (role === "assistant") content.append(window.renderMarkdown(text));
    else content.textContent = text;
    bubble.append(content);
    const conversation = node.querySelector(".conversation");
    conversation.append(bubble);
    conversation.scrollTop = conversation.scrollHeight;
    return bubble;
  }

  function setMetrics(name, text) {
    const node = pane(name);
    if (node) node.querySelector(".metrics").textContent = text;
  }

  // -- the stream ---------------------------------------------------------------------------

  async function* sseEvents(response) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      // Lines may end in \r\n, \n or \r; a \r at the very end may be half of a \r\n.
      buffer = (buffer + decoder.decode(value, { stream: true })).replace(/\r\n|\r(?!$)/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        let event = "message";
        const data = [];
        for (const line of block.split("\n")) {
          if (line.startsWith(":")) continue; // keep-alive comment
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          let value = colon < 0 ? "" : line.slice(colon + 1);
          if (value.startsWith(" ")) value = value.slice(1);
          if (field === "event") event = value;
          else if (field === "data") data.push(value);
        }
        if (data.length) yield { event, data: JSON.parse(data.join("\n")) };
      }
    }
  }

  function scheduleRender(live) {
    if (live.pending) return;
    live.pending = true;
    requestAnimationFrame(() => {
      live.pending = false;
      const content = live.bubble.querySelector(".content");
      content.replaceChildren(window.renderMarkdown(live.text));
      const conversation = live.bubble.parentElement;
      if (conversation) conversation.scrollTop = conversation.scrollHeight;
    });
  }

  function finish(name, outcome, prompt) {
    const live = state.live[name];
    if (!live) return;
    delete state.live[name];
    live.bubble.dataset.state = outcome;
    live.bubble.querySelector(".content").replaceChildren(window.renderMarkdown(live.text));
    if (outcome === "done" || (outcome === "stopped" && live.text)) {
      const history = (state.history[name] = state.history[name] || []);
      history.push({ role: "user", content: prompt }, { role: "assistant", content: live.text });
    }
    if (outcome === "stopped") {
      live.bubble.append(el("div", "note", "stopped"));
      if (live.ttft !== null) setMetrics(name, `TTFT ${Math.round(live.ttft)} ms · stopped`);
      else setMetrics(name, "stopped");
    }
  }

  function handle(event, data, prompt) {
    const live = state.live[data.model];
    if (event === "final" || !live) return;
    if (event === "start") {
      live.bubble.dataset.state = "streaming";
      setMetrics(data.model, "waiting for the first token…");
    } else if (event === "token") {
      live.text += data.text;
      live.tokens += 1;
      if (data.ttft_ms !== undefined) live.ttft = data.ttft_ms;
      setMetrics(data.model, `TTFT ${Math.round(live.ttft)} ms · ${live.tokens} tokens…`);
      scheduleRender(live);
    } else if (event === "done") {
      const parts = [];
      if (data.ttft_ms !== null) parts.push(`TTFT ${Math.round(data.ttft_ms)} ms`);
      if (data.tok_per_s !== null) parts.push(`${data.tok_per_s.toFixed(1)} tok/s`);
      parts.push(`${data.tokens} tokens`);
      setMetrics(data.model, parts.join(" · "));
      const node = pane(data.model);
      if (node) {
        node.dataset.ttftMs = String(data.ttft_ms);
        node.dataset.tokPerS = String(data.tok_per_s);
      }
      finish(data.model, "done", prompt);
    } else if (event === "error") {
      live.bubble.classList.add("error");
      live.bubble.append(el("div", "error-text", data.message));
      setMetrics(data.model, data.code === "model_down" ? "down" : "error");
      finish(data.model, "error", prompt);
    }
  }

  async function send(event) {
    event.preventDefault();
    const prompt = $("#prompt").value.trim();
    const names = state.models.filter((m) => state.selected.has(m.name)).map((m) => m.name);
    if (!prompt || state.controller) return;
    if (!names.length) {
      notice("pick at least one model");
      return;
    }
    notice("");
    const history = {};
    for (const name of names) {
      const node = pane(name);
      addMessage(node, "user", prompt);
      const bubble = addMessage(node, "assistant", "");
      bubble.dataset.state = "waiting";
      state.live[name] = { text: "", tokens: 0, ttft: null, bubble, pending: false };
      history[name] = state.history[name] || [];
      setMetrics(name, "connecting…");
    }
    const body = { models: names, messages: [{ role: "user", content: prompt }], history };
    const maxTokens = parseInt($("#max-tokens").value, 10);
    const temperature = parseFloat($("#temperature").value);
    if (Number.isFinite(maxTokens)) body.max_tokens = maxTokens;
    if (Number.isFinite(temperature)) body.temperature = temperature;
    $("#prompt").value = "";
    const controller = (state.controller = new AbortController());
    $("#send").disabled = true;
    $("#stop").disabled = false;
    try {
      const response = await fetch("/api/chat/stream", {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
        body: JSON.stringify(body),
        signal: controller.signal,
      });
      if (loggedOut(response)) return;
      if (!response.ok) {
        const error = await response.json().catch(() => ({}));
        throw new Error((error.error && error.error.message) || `HTTP ${response.status}`);
      }
      for await (const { event, data } of sseEvents(response)) handle(event, data, prompt);
    } catch (e) {
      if (e.name !== "AbortError") notice(String(e.message || e));
    } finally {
      const leftover = controller.signal.aborted ? "stopped" : "error";
      for (const name of Object.keys(state.live)) finish(name, leftover, prompt);
      state.controller = null;
      $("#send").disabled = false;
      $("#stop").disabled = true;
      renderPanes();
    }
  }

  function stop() {
    if (state.controller) state.controller.abort();
  }

  function clear() {
    state.history = {};
    for (const node of document.querySelectorAll(".pane .conversation")) node.replaceChildren();
    for (const node of document.querySelectorAll(".pane .metrics")) node.textContent = "";
  }

  $("#composer").addEventListener("submit", send);
  $("#stop").addEventListener("click", stop);
  $("#clear").addEventListener("click", clear);
  $("#prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) $("#composer").requestSubmit();
  });
  loadModels();
})();
