// The chat page: conversations kept in this browser (store.js), one to four models answering
// each prompt side by side, each in its own column with its own status and metrics. One POST
// /api/chat/stream carries every model's events (start, token, done, error, then final); Stop
// aborts it, which the server passes on to the backends. Model output, model names, titles and
// imported files only ever become text nodes (markdown.js builds the nodes of an answer).
//
// Going on from a turn: by default each model goes on with its own answers; "Continue with this"
// on one answer makes every model go on with that one. Editing a sent message or regenerating the
// last answers replaces that turn and everything after it (no branches are kept).
"use strict";

(function () {
  const $ = (selector) => document.querySelector(selector);
  const { store, newId, parseExport, exportJson, LIMITS } = window.chatStore;
  const MAX_COLUMNS = LIMITS.models;
  const state = {
    models: [], // from /api/models
    conversations: [], // every saved conversation, newest first
    current: null, // the open conversation
    controller: null, // AbortController of the stream in progress
    live: {}, // model name -> {answer, bubble, pending} of the answer in progress
    editing: null, // index of the turn being edited
    stick: true, // autoscroll: false once the reader scrolls up
    firstLoad: true,
  };

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function button(text, className, onClick, label) {
    const node = el("button", className, text);
    node.type = "button";
    if (label) node.setAttribute("aria-label", label);
    node.addEventListener("click", onClick);
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

  // -- conversations ------------------------------------------------------------------------

  function blank(from) {
    const now = Date.now();
    return {
      id: newId(),
      title: "New chat",
      created: now,
      updated: now,
      system: from ? from.system : "",
      models: from ? [...from.models] : [],
      settings: from ? { ...from.settings } : { max_tokens: 512, temperature: 0.7 },
      turns: [],
    };
  }

  function saved(conversation) {
    return state.conversations.some((c) => c.id === conversation.id);
  }

  async function save(conversation = state.current) {
    if (!conversation.turns.length && !saved(conversation)) return; // an empty new chat stays unsaved
    conversation.updated = Date.now();
    if (!saved(conversation)) state.conversations.unshift(conversation);
    state.conversations.sort((a, b) => b.updated - a.updated);
    renderList();
    try {
      await store.put(conversation);
    } catch (e) {
      notice(`cannot save the conversation: ${e}`);
    }
  }

  function open(conversation) {
    if (state.controller) return;
    state.current = conversation;
    state.editing = null;
    $("#editing").hidden = true;
    showSettings();
    renderPicker();
    renderPanes();
    renderList();
    if (window.matchMedia("(max-width: 760px)").matches) setSidebar(false);
  }

  function newChat() {
    if (state.controller) return;
    open(blank(state.current));
    $("#prompt").focus();
  }

  function matches(conversation, query) {
    if (!query) return true;
    const q = query.toLowerCase();
    if (conversation.title.toLowerCase().includes(q)) return true;
    return conversation.turns.some(
      (t) => t.user.toLowerCase().includes(q) || t.answers.some((a) => a.text.toLowerCase().includes(q))
    );
  }

  function renderList() {
    const list = $("#conversations");
    const query = $("#search").value.trim();
    const shown = state.conversations.filter((c) => matches(c, query));
    list.replaceChildren();
    for (const conversation of shown) {
      const item = el("li", "conversation-item");
      item.dataset.id = conversation.id;
      if (state.current && conversation.id === state.current.id) item.setAttribute("aria-current", "true");
      const title = button(conversation.title, "open", () => open(conversation));
      title.title = conversation.title;
      const rename = button("✎", "rename icon", () => startRename(item, conversation), "Rename");
      const remove = button("✕", "delete icon", () => removeConversation(remove, conversation), "Delete");
      item.append(title, rename, remove);
      list.append(item);
    }
    if (!shown.length) list.append(el("li", "placeholder", query ? "no match" : "no saved conversations"));
    $("#title").textContent = state.current ? state.current.title : "";
  }

  function startRename(item, conversation) {
    const input = el("input", "rename-input");
    input.value = conversation.title;
    input.maxLength = 200;
    input.setAttribute("aria-label", "New title");
    let done = false;
    const finish = (keep) => {
      if (done) return;
      done = true;
      const title = input.value.trim();
      if (keep && title) {
        conversation.title = title;
        save(conversation);
      } else {
        renderList();
      }
    };
    input.addEventListener("keydown", (event) => {
      if (event.key === "Enter") finish(true);
      else if (event.key === "Escape") finish(false);
    });
    input.addEventListener("blur", () => finish(true));
    item.replaceChildren(input);
    input.focus();
    input.select();
  }

  // Two clicks: the first arms the button for three seconds.
  async function removeConversation(node, conversation) {
    if (!node.classList.contains("armed")) {
      node.classList.add("armed");
      node.textContent = "Delete?";
      setTimeout(() => {
        node.classList.remove("armed");
        node.textContent = "✕";
      }, 3000);
      return;
    }
    if (state.controller && state.current.id === conversation.id) return;
    await store.remove(conversation.id);
    state.conversations = state.conversations.filter((c) => c.id !== conversation.id);
    if (state.current.id === conversation.id) open(state.conversations[0] || blank(conversation));
    else renderList();
  }

  function exportAll() {
    const blob = new Blob([exportJson(state.conversations)], { type: "application/json" });
    const link = el("a");
    link.href = URL.createObjectURL(blob);
    link.download = `slimllm-chat-${new Date().toISOString().slice(0, 10)}.json`;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 10_000);
  }

  async function importFile(event) {
    const file = event.target.files[0];
    event.target.value = "";
    if (!file) return;
    let conversations;
    try {
      if (file.size > LIMITS.file) throw new Error(`the file is larger than ${LIMITS.file} bytes`);
      conversations = parseExport(await file.text());
    } catch (e) {
      notice(`import failed: ${e.message}`);
      return;
    }
    for (const conversation of conversations) await store.put(conversation);
    state.conversations.push(...conversations);
    state.conversations.sort((a, b) => b.updated - a.updated);
    renderList();
    notice(`imported ${conversations.length} conversation${conversations.length === 1 ? "" : "s"}`);
  }

  // -- settings -----------------------------------------------------------------------------

  const NUMBERS = { "#max-tokens": "max_tokens", "#temperature": "temperature", "#top-p": "top_p", "#seed": "seed" };

  function showSettings() {
    const c = state.current;
    $("#system").value = c.system;
    for (const [selector, key] of Object.entries(NUMBERS)) {
      $(selector).value = c.settings[key] === undefined ? "" : String(c.settings[key]);
    }
  }

  function readSettings() {
    const c = state.current;
    c.system = $("#system").value;
    for (const [selector, key] of Object.entries(NUMBERS)) {
      const raw = $(selector).value.trim();
      const value = key === "max_tokens" || key === "seed" ? parseInt(raw, 10) : parseFloat(raw);
      if (raw !== "" && Number.isFinite(value)) c.settings[key] = value;
      else delete c.settings[key];
    }
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
        state.firstLoad = false;
        // A new chat starts with the first model that is up, so the page is ready to use.
        if (!state.current.models.length) {
          const first = state.models.find((m) => m.status === "up");
          if (first) state.current.models.push(first.name);
        }
      }
      renderPicker();
      if (state.controller) updateBadges();
      else renderPanes();
    } catch (e) {
      notice(`cannot load the models: ${e}`);
    }
    setTimeout(loadModels, delay);
  }

  function modelOf(name) {
    return state.models.find((m) => m.name === name);
  }

  // Before the first /api/models answer the columns are drawn from the conversation alone.
  function chosenModels() {
    if (!state.models.length) return [...state.current.models];
    return state.current.models.filter((name) => modelOf(name));
  }

  // Updated in place, not rebuilt: a check box must not vanish under a click between two polls.
  function renderPicker() {
    const list = $("#models");
    for (const node of [...list.children]) {
      if (!state.models.some((m) => m.name === node.dataset.model)) node.remove();
    }
    const selected = new Set(state.current.models);
    const full = state.models.filter((m) => selected.has(m.name)).length >= MAX_COLUMNS;
    for (const model of state.models) {
      let item = [...list.children].find((node) => node.dataset.model === model.name);
      if (!item) {
        item = el("li");
        item.dataset.model = model.name;
        const label = el("label");
        const box = document.createElement("input");
        box.type = "checkbox";
        box.value = model.name;
        box.addEventListener("change", () => toggleModel(model.name, box.checked));
        label.append(box, el("span", "name", model.name), el("span", "status"));
        item.append(label);
        list.append(item);
      }
      item.className = `model ${model.status}`;
      item.dataset.status = model.status;
      const box = item.querySelector("input");
      box.checked = selected.has(model.name);
      // A down model cannot be picked; one picked before it went down keeps its column.
      box.disabled = !box.checked && (model.status === "down" || full);
      const badge = item.querySelector(".status");
      badge.className = `status ${model.status}`;
      badge.textContent = statusText(model);
      const trouble = model.instances
        .filter((i) => i.status !== "ok")
        .map((i) => `instance ${i.index}: ${i.reason || i.status}`);
      badge.title = trouble.join("\n");
    }
  }

  function toggleModel(name, on) {
    const names = new Set(state.current.models);
    if (on && names.size < MAX_COLUMNS) names.add(name);
    else names.delete(name);
    // Columns in the order of the model list.
    const order = state.models.map((m) => m.name);
    state.current.models = [...names].sort((a, b) => order.indexOf(a) - order.indexOf(b));
    save();
    renderPicker();
    renderPanes();
  }

  // -- columns ------------------------------------------------------------------------------

  function pane(name) {
    return [...document.querySelectorAll(".pane")].find((node) => node.dataset.model === name);
  }

  function metricsText(answer) {
    if (!answer) return "";
    if (answer.state === "waiting") return "connecting…";
    if (answer.state === "streaming")
      return answer.ttft_ms === null ? "waiting for the first token…" : `TTFT ${Math.round(answer.ttft_ms)} ms · ${answer.tokens} tokens…`;
    if (answer.state === "error") return answer.error_code === "model_down" ? "down" : "error";
    const parts = [];
    if (answer.ttft_ms !== null && answer.ttft_ms !== undefined) parts.push(`TTFT ${Math.round(answer.ttft_ms)} ms`);
    if (answer.state === "stopped") parts.push("stopped");
    else {
      if (answer.tok_per_s !== null && answer.tok_per_s !== undefined) parts.push(`${answer.tok_per_s.toFixed(1)} tok/s`);
      parts.push(`${answer.tokens} tokens`);
    }
    return parts.join(" · ");
  }

  function renderPanes() {
    const container = $("#panes");
    const names = [...new Set([...chosenModels(), ...Object.keys(state.live)])];
    container.replaceChildren();
    const turns = state.current.turns;
    for (const name of names) {
      const model = modelOf(name) || { name, status: "unknown", latency_ms: null };
      const node = el("article", "pane");
      node.dataset.model = name;
      node.dataset.status = model.status;
      const header = el("header");
      const title = el("h2", "", name);
      const badge = el("span", `status ${model.status}`, statusText(model));
      let latest = null;
      const conversation = el("div", "conversation");
      turns.forEach((turn, index) => {
        conversation.append(userBubble(turn, index));
        const answer = turn.answers.find((a) => a.model === name);
        if (answer) {
          latest = answer;
          conversation.append(answerBubble(turn, index, answer));
        } else {
          conversation.append(el("div", "msg skipped", `${name} was not asked this`));
        }
      });
      header.append(title, badge, el("span", "metrics", metricsText(latest)));
      if (latest && latest.ttft_ms !== null) node.dataset.ttftMs = String(latest.ttft_ms);
      if (latest && latest.tok_per_s !== null) node.dataset.tokPerS = String(latest.tok_per_s);
      node.append(header, conversation);
      container.append(node);
    }
    if (!names.length) container.append(el("p", "empty", "Pick a model above to start."));
    else if (!turns.length) {
      const hint = el("p", "empty", names.length > 1 ? "Each model answers in its own column." : "");
      if (hint.textContent) container.append(hint);
    }
    container.dataset.count = String(names.length);
    for (const [name, live] of Object.entries(state.live)) {
      const bubbles = pane(name).querySelectorAll(".msg.assistant");
      live.bubble = bubbles[bubbles.length - 1];
    }
    $("#regenerate").disabled = Boolean(state.controller) || !turns.length;
  }

  function updateBadges() {
    for (const node of document.querySelectorAll(".pane")) {
      const model = modelOf(node.dataset.model);
      if (!model) continue;
      node.dataset.status = model.status;
      const badge = node.querySelector("header .status");
      badge.className = `status ${model.status}`;
      badge.textContent = statusText(model);
    }
  }

  function userBubble(turn, index) {
    const bubble = el("div", "msg user");
    bubble.dataset.turn = String(index);
    bubble.append(el("div", "content", turn.user));
    const actions = el("div", "msg-actions");
    actions.append(button("Edit", "edit link", () => startEdit(index), "Edit this message"));
    bubble.append(actions);
    return bubble;
  }

  function answerBubble(turn, index, answer) {
    const bubble = el("div", "msg assistant");
    bubble.dataset.turn = String(index);
    bubble.dataset.state = answer.state;
    if (turn.chosen) bubble.dataset.kept = turn.chosen === answer.model ? "yes" : "no";
    if (answer.reasoning) {
      const details = el("details", "reasoning");
      details.append(el("summary", "", "Reasoning"), el("div", "reasoning-text", answer.reasoning));
      bubble.append(details);
    }
    const content = el("div", "content");
    content.append(window.renderMarkdown(answer.text));
    bubble.append(content);
    if (answer.state === "error") {
      bubble.classList.add("error");
      bubble.append(el("div", "error-text", answer.error || "error"));
    }
    if (answer.state === "stopped") bubble.append(el("div", "note", "stopped"));
    if (answer.state === "done" || answer.state === "stopped" || answer.state === "error") {
      const foot = el("div", "answer-foot");
      foot.append(el("span", "answer-metrics", metricsText(answer)));
      if (answer.text) foot.append(button("Copy", "copy-answer link", (e) => copyText(answer.text, e.target)));
      const usable = turn.answers.filter((a) => a.text).length;
      if (usable > 1 && answer.text) {
        const kept = turn.chosen === answer.model;
        const keep = button(kept ? "✓ Continuing with this" : "Continue with this", "keep link", () =>
          choose(turn, answer.model)
        );
        keep.setAttribute("aria-pressed", kept ? "true" : "false");
        foot.append(keep);
      }
      bubble.append(foot);
    }
    return bubble;
  }

  async function copyText(text, node) {
    try {
      await navigator.clipboard.writeText(text);
      node.textContent = "Copied";
    } catch (e) {
      node.textContent = "Copy failed";
    }
    setTimeout(() => (node.textContent = "Copy"), 1500);
  }

  function choose(turn, model) {
    if (state.controller) return;
    turn.chosen = turn.chosen === model ? null : model;
    save();
    renderPanes();
  }

  // -- autoscroll ---------------------------------------------------------------------------

  function atBottom() {
    const root = document.documentElement;
    return window.innerHeight + window.scrollY >= root.scrollHeight - 48;
  }

  function follow() {
    if (state.stick) window.scrollTo(0, document.documentElement.scrollHeight);
  }

  window.addEventListener("scroll", () => {
    state.stick = atBottom();
  }, { passive: true });

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

  function setMetrics(name, text) {
    const node = pane(name);
    if (node) node.querySelector(".metrics").textContent = text;
  }

  function scheduleRender(live) {
    if (live.pending) return;
    live.pending = true;
    requestAnimationFrame(() => {
      live.pending = false;
      live.bubble.querySelector(".content").replaceChildren(window.renderMarkdown(live.answer.text));
      if (live.answer.reasoning) {
        let details = live.bubble.querySelector(".reasoning");
        if (!details) {
          details = el("details", "reasoning");
          details.append(el("summary", "", "Reasoning"), el("div", "reasoning-text"));
          live.bubble.prepend(details);
        }
        details.querySelector(".reasoning-text").textContent = live.answer.reasoning;
      }
      follow();
    });
  }

  function handle(event, data) {
    const live = state.live[data.model];
    if (event === "final" || !live) return;
    const answer = live.answer;
    if (event === "start") {
      answer.state = "streaming";
      live.bubble.dataset.state = "streaming";
    } else if (event === "token") {
      if (typeof data.text === "string") answer.text += data.text;
      // Designed for the API's reasoning_content: shown in a closed "Reasoning" block.
      if (typeof data.reasoning === "string") answer.reasoning = (answer.reasoning || "") + data.reasoning;
      answer.tokens += 1;
      if (data.ttft_ms !== undefined) answer.ttft_ms = data.ttft_ms;
      scheduleRender(live);
    } else if (event === "done") {
      answer.ttft_ms = data.ttft_ms;
      answer.tok_per_s = data.tok_per_s;
      answer.tokens = data.tokens;
      answer.state = "done";
      delete state.live[data.model];
    } else if (event === "error") {
      answer.state = "error";
      answer.error = String(data.message);
      answer.error_code = data.code;
      delete state.live[data.model];
    }
    setMetrics(data.model, metricsText(answer));
    if (answer.state === "done" || answer.state === "error") {
      live.bubble.dataset.state = answer.state;
      const node = pane(data.model);
      if (node && answer.state === "done") {
        node.dataset.ttftMs = String(answer.ttft_ms);
        node.dataset.tokPerS = String(answer.tok_per_s);
      }
    }
  }

  // What each model has seen before this turn: the system prompt, then per turn the user's
  // message and the answer kept (or, when none is, the model's own; or the first there is).
  function histories(turns, names) {
    const out = {};
    for (const name of names) {
      const messages = [];
      if (state.current.system.trim()) messages.push({ role: "system", content: state.current.system });
      for (const turn of turns) {
        const usable = turn.answers.filter((a) => a.text);
        const answer =
          usable.find((a) => a.model === turn.chosen) || usable.find((a) => a.model === name) || usable[0];
        if (!answer) continue;
        messages.push({ role: "user", content: turn.user }, { role: "assistant", content: answer.text });
      }
      if (messages.length) out[name] = messages;
    }
    return out;
  }

  async function ask(prompt) {
    const names = chosenModels();
    if (!prompt || state.controller) return;
    if (!names.length) {
      notice("pick at least one model");
      return;
    }
    notice("");
    readSettings();
    const conversation = state.current;
    if (state.editing !== null) {
      conversation.turns = conversation.turns.slice(0, state.editing);
      state.editing = null;
      $("#editing").hidden = true;
    }
    const history = histories(conversation.turns, names);
    const turn = { user: prompt, chosen: null, answers: [] };
    for (const name of names) {
      turn.answers.push({ model: name, text: "", state: "waiting", error: null, ttft_ms: null, tok_per_s: null, tokens: 0, reasoning: "" });
    }
    conversation.turns.push(turn);
    if (conversation.title === "New chat") conversation.title = prompt.replace(/\s+/g, " ").slice(0, 60);
    const controller = (state.controller = new AbortController());
    for (const answer of turn.answers) state.live[answer.model] = { answer, bubble: null, pending: false };
    renderPanes(); // points each live answer at its bubble
    state.stick = true;
    follow();
    save(conversation);
    const body = { models: names, messages: [{ role: "user", content: prompt }], history };
    Object.assign(body, conversation.settings);
    $("#prompt").value = "";
    $("#send").disabled = true;
    $("#stop").disabled = false;
    $("#regenerate").disabled = true;
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
      for await (const { event, data } of sseEvents(response)) handle(event, data);
    } catch (e) {
      if (e.name !== "AbortError") notice(String(e.message || e));
    } finally {
      const leftover = controller.signal.aborted ? "stopped" : "error";
      for (const live of Object.values(state.live)) {
        live.answer.state = leftover === "stopped" || live.answer.text ? leftover : "error";
        if (live.answer.state === "error") live.answer.error = live.answer.error || "no answer";
      }
      state.live = {};
      state.controller = null;
      $("#send").disabled = false;
      $("#stop").disabled = true;
      renderPanes();
      follow();
      save(conversation);
    }
  }

  function send(event) {
    event.preventDefault();
    ask($("#prompt").value.trim());
  }

  function stop() {
    if (state.controller) state.controller.abort();
  }

  function regenerate() {
    const turns = state.current.turns;
    if (state.controller || !turns.length) return;
    state.editing = turns.length - 1;
    ask(turns[turns.length - 1].user);
  }

  function startEdit(index) {
    if (state.controller) return;
    state.editing = index;
    $("#editing").hidden = false;
    const prompt = $("#prompt");
    prompt.value = state.current.turns[index].user;
    prompt.focus();
  }

  function cancelEdit() {
    state.editing = null;
    $("#editing").hidden = true;
    $("#prompt").value = "";
  }

  // -- layout and keys ----------------------------------------------------------------------

  function setSidebar(openIt) {
    document.body.dataset.sidebar = openIt ? "open" : "closed";
    $("#toggle-sidebar").setAttribute("aria-expanded", openIt ? "true" : "false");
  }

  function toggleSidebar() {
    setSidebar(document.body.dataset.sidebar !== "open");
  }

  function shortcuts(event) {
    const mod = event.ctrlKey || event.metaKey;
    const key = event.key.toLowerCase();
    if (event.key === "Escape" && state.controller) {
      event.preventDefault();
      stop();
    } else if (mod && event.shiftKey && key === "o") {
      event.preventDefault();
      newChat();
    } else if (mod && event.shiftKey && key === "s") {
      event.preventDefault();
      toggleSidebar();
    } else if (mod && !event.shiftKey && key === "k") {
      event.preventDefault();
      setSidebar(true);
      $("#search").focus();
    } else if (mod && key === "/") {
      event.preventDefault();
      $("#shortcuts").showModal();
    }
  }

  async function start() {
    setSidebar(!window.matchMedia("(max-width: 760px)").matches);
    try {
      state.conversations = (await store.all()).sort((a, b) => b.updated - a.updated);
    } catch (e) {
      notice(`conversations cannot be kept in this browser: ${e}`);
    }
    state.current = state.conversations[0] ? state.conversations[0] : blank(null);
    showSettings();
    renderList();
    renderPanes();
    document.body.dataset.ready = "true";
    performance.mark("slimllm-ready");
    loadModels();
  }

  $("#composer").addEventListener("submit", send);
  $("#stop").addEventListener("click", stop);
  $("#regenerate").addEventListener("click", regenerate);
  $("#cancel-edit").addEventListener("click", cancelEdit);
  $("#new-chat").addEventListener("click", newChat);
  $("#toggle-sidebar").addEventListener("click", toggleSidebar);
  $("#show-shortcuts").addEventListener("click", () => $("#shortcuts").showModal());
  $("#search").addEventListener("input", renderList);
  $("#export").addEventListener("click", exportAll);
  $("#import").addEventListener("change", importFile);
  $("#settings").addEventListener("change", () => {
    readSettings();
    save();
  });
  $("#prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $("#composer").requestSubmit();
    }
  });
  document.addEventListener("keydown", shortcuts);
  start();
})();
