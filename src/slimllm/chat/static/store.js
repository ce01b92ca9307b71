// Conversations kept in this browser (IndexedDB "slimllm-chat", store "conversations"), and the
// checked shape of an exported file. Nothing leaves the browser: the gateway sees a conversation
// only as the history of the next request.
//
// A conversation: {id, title, created, updated, system, models: [names], settings: {max_tokens,
// temperature, top_p, seed}, turns: [{user, chosen, answers: [{model, text, state, error,
// ttft_ms, tok_per_s, tokens, reasoning}]}]}. `chosen` names the answer the conversation goes on
// with (null: each model goes on with its own).
"use strict";

(function () {
  const DB = "slimllm-chat";
  const STORE = "conversations";
  const FORMAT = "slimllm-chat";
  const LIMITS = { file: 20 * 1024 * 1024, conversations: 1000, turns: 1000, text: 1024 * 1024, models: 4 };
  const STATES = new Set(["done", "stopped", "error"]);
  const SETTINGS = { max_tokens: "int", temperature: "number", top_p: "number", seed: "int" };

  let opened = null;
  function db() {
    if (opened) return opened;
    opened = new Promise((resolve, reject) => {
      const request = indexedDB.open(DB, 1);
      request.onupgradeneeded = () => request.result.createObjectStore(STORE, { keyPath: "id" });
      request.onsuccess = () => resolve(request.result);
      request.onerror = () => reject(request.error);
    });
    return opened;
  }

  async function run(mode, action) {
    const handle = await db();
    return new Promise((resolve, reject) => {
      const tx = handle.transaction(STORE, mode);
      const request = action(tx.objectStore(STORE));
      tx.oncomplete = () => resolve(request && request.result);
      tx.onerror = () => reject(tx.error);
      tx.onabort = () => reject(tx.error);
    });
  }

  const store = {
    all: () => run("readonly", (s) => s.getAll()),
    put: (conversation) => run("readwrite", (s) => s.put(conversation)),
    remove: (id) => run("readwrite", (s) => s.delete(id)),
  };

  function newId() {
    const bytes = new Uint8Array(12);
    crypto.getRandomValues(bytes);
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  // -- the checked shape --------------------------------------------------------------------

  class Invalid extends Error {}

  function text(value, where, { optional = false, max = LIMITS.text } = {}) {
    if (optional && (value === undefined || value === null)) return "";
    if (typeof value !== "string") throw new Invalid(`${where} must be a string`);
    if (value.length > max) throw new Invalid(`${where} is longer than ${max} characters`);
    return value;
  }

  function number(value, where, kind) {
    if (value === undefined || value === null) return null;
    if (typeof value !== "number" || !Number.isFinite(value) || (kind === "int" && !Number.isInteger(value)))
      throw new Invalid(`${where} must be ${kind === "int" ? "an integer" : "a number"}`);
    return value;
  }

  function object(value, where) {
    if (value === null || typeof value !== "object" || Array.isArray(value))
      throw new Invalid(`${where} must be an object`);
    return value;
  }

  function list(value, where, max) {
    if (!Array.isArray(value)) throw new Invalid(`${where} must be a list`);
    if (value.length > max) throw new Invalid(`${where} has more than ${max} entries`);
    return value;
  }

  function checkAnswer(raw, where) {
    object(raw, where);
    const state = raw.state === undefined ? "done" : raw.state;
    if (!STATES.has(state)) throw new Invalid(`${where}.state must be done, stopped or error`);
    return {
      model: text(raw.model, `${where}.model`, { max: 200 }),
      text: text(raw.text, `${where}.text`),
      state,
      error: text(raw.error, `${where}.error`, { optional: true, max: 2000 }) || null,
      ttft_ms: number(raw.ttft_ms, `${where}.ttft_ms`, "number"),
      tok_per_s: number(raw.tok_per_s, `${where}.tok_per_s`, "number"),
      tokens: number(raw.tokens, `${where}.tokens`, "int"),
      reasoning: text(raw.reasoning, `${where}.reasoning`, { optional: true }),
    };
  }

  function checkTurn(raw, where) {
    object(raw, where);
    const answers = list(raw.answers === undefined ? [] : raw.answers, `${where}.answers`, 8).map((a, i) =>
      checkAnswer(a, `${where}.answers[${i}]`)
    );
    const chosen = raw.chosen === undefined || raw.chosen === null ? null : text(raw.chosen, `${where}.chosen`);
    if (chosen !== null && !answers.some((a) => a.model === chosen))
      throw new Invalid(`${where}.chosen must name one of its answers`);
    return { user: text(raw.user, `${where}.user`), chosen, answers };
  }

  function checkConversation(raw, where) {
    object(raw, where);
    const settings = {};
    const rawSettings = raw.settings === undefined ? {} : object(raw.settings, `${where}.settings`);
    for (const [key, kind] of Object.entries(SETTINGS)) {
      const value = number(rawSettings[key], `${where}.settings.${key}`, kind);
      if (value !== null) settings[key] = value;
    }
    const now = Date.now();
    return {
      id: newId(),
      title: text(raw.title, `${where}.title`, { optional: true, max: 200 }) || "Imported chat",
      created: number(raw.created, `${where}.created`, "number") || now,
      updated: number(raw.updated, `${where}.updated`, "number") || now,
      system: text(raw.system, `${where}.system`, { optional: true }),
      models: list(raw.models === undefined ? [] : raw.models, `${where}.models`, LIMITS.models).map((m, i) =>
        text(m, `${where}.models[${i}]`, { max: 200 })
      ),
      settings,
      turns: list(raw.turns, `${where}.turns`, LIMITS.turns).map((t, i) => checkTurn(t, `${where}.turns[${i}]`)),
    };
  }

  // The conversations of an exported file, checked and with fresh ids; throws an Error whose
  // message says what is wrong (nothing is imported then).
  function parseExport(source) {
    if (source.length > LIMITS.file) throw new Invalid(`the file is larger than ${LIMITS.file} bytes`);
    let data;
    try {
      data = JSON.parse(source);
    } catch (e) {
      throw new Invalid("the file is not JSON");
    }
    object(data, "the file");
    if (data.format !== FORMAT) throw new Invalid(`the file is not a ${FORMAT} export (no "format": "${FORMAT}")`);
    if (data.version !== 1) throw new Invalid("only version 1 exports can be imported");
    return list(data.conversations, "conversations", LIMITS.conversations).map((c, i) =>
      checkConversation(c, `conversations[${i}]`)
    );
  }

  function exportJson(conversations) {
    return JSON.stringify({ format: FORMAT, version: 1, exported: new Date().toISOString(), conversations }, null, 1);
  }

  window.chatStore = { store, newId, parseExport, exportJson, LIMITS };
})();
