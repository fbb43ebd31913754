// The chat page: configs, model, challenges, and a conversation streamed from railguard.
// Everything the person or the model wrote is put in the page as text, never as HTML.

import { ApiError, getJSON, streamChat } from "./api.js";
import { clear, el } from "./dom.js";
import { railsPanel, summarize } from "./rails.js";

const $ = (id) => document.getElementById(id);
const KEY = `railguard.chat:${location.pathname}`;

// ---- state, kept across reloads ------------------------------------------------------

function newThreadId() {
  // 32 random hex digits (crypto.randomUUID needs a secure context; this doesn't).
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return "rg-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function freshConversation() {
  // threadMode: "unknown" until the server answers; "on" (it keeps the thread: only the
  // new message is sent) or "off" (it doesn't: the page sends the whole conversation).
  return { threadId: newThreadId(), threadMode: "unknown", turns: [] };
}

function load() {
  let saved = null;
  try {
    saved = JSON.parse(localStorage.getItem(KEY) || "null");
  } catch {
    saved = null;
  }
  const state = { configs: [], model: "", results: {}, ...freshConversation() };
  if (saved && typeof saved === "object") {
    if (typeof saved.threadId === "string" && saved.threadId.length >= 16) state.threadId = saved.threadId;
    if (["on", "off"].includes(saved.threadMode)) state.threadMode = saved.threadMode;
    if (Array.isArray(saved.turns)) state.turns = saved.turns.filter((t) => t && typeof t.user === "string");
    if (Array.isArray(saved.configs)) state.configs = saved.configs.filter((c) => typeof c === "string");
    if (typeof saved.model === "string") state.model = saved.model;
    if (saved.results && typeof saved.results === "object") state.results = saved.results;
  }
  for (const turn of state.turns) {
    if (turn.status === "pending") turn.status = "stopped"; // the page was left mid-answer
  }
  return state;
}

const state = load();

function save() {
  try {
    localStorage.setItem(KEY, JSON.stringify(state));
  } catch {
    // storage full or disabled: the page still works, it just won't remember
  }
}

// ---- notices -------------------------------------------------------------------------

function notice(text) {
  const box = $("notice");
  box.textContent = text;
  box.hidden = !text;
}

// ---- configs -------------------------------------------------------------------------

let challenges = [];

function renderConfigs(ids) {
  const box = $("configs");
  clear(box);
  box.append(el("legend", { class: "visually-hidden" }, "Guardrails configurations to use"));
  state.configs = state.configs.filter((id) => ids.includes(id));
  if (ids.length === 1 && state.configs.length === 0) state.configs = [ids[0]];
  if (ids.length === 0) box.append(el("p", { class: "muted" }, "The server has no configurations."));
  for (const id of ids) {
    const input = el("input", { type: "checkbox", value: id, id: `config-${id}`, name: "config" });
    input.checked = state.configs.includes(id);
    input.addEventListener("change", () => {
      state.configs = state.configs.filter((c) => c !== id);
      if (input.checked) state.configs.push(id);
      save();
      markConfigOrder();
    });
    box.append(el("label", { class: "check", for: `config-${id}` }, input, " ", el("span", {}, id), el("span", { class: "order" })));
  }
  markConfigOrder();
}

function markConfigOrder() {
  for (const label of $("configs").querySelectorAll("label.check")) {
    const id = label.querySelector("input").value;
    const index = state.configs.indexOf(id);
    label.querySelector(".order").textContent = state.configs.length > 1 && index >= 0 ? ` #${index + 1}` : "";
  }
}

// ---- models --------------------------------------------------------------------------

function renderModels(ids) {
  const list = $("models");
  clear(list);
  for (const id of ids) list.append(el("option", { value: id }));
  const input = $("model");
  if (!input.value) input.value = state.model || ids[0] || "";
  $("models-note").textContent = ids.length ? `${ids.length} model${ids.length === 1 ? "" : "s"} offered; any name may be typed.` : "The upstreams list no models; type a name.";
}

// ---- challenges ----------------------------------------------------------------------

let pendingChallenge = null;

function challengeText(challenge) {
  for (const key of ["content", "prompt", "message", "description"]) {
    if (typeof challenge[key] === "string" && challenge[key]) return challenge[key];
  }
  return "";
}

function challengeName(challenge) {
  return String(challenge.name || challenge.id || "challenge");
}

function renderChallenges() {
  const list = $("challenges");
  clear(list);
  if (!challenges.length) {
    list.append(el("li", { class: "muted" }, "No challenges on this server (challenges.json)."));
    return;
  }
  challenges.forEach((challenge, index) => {
    const id = String(challenge.id ?? index);
    const result = state.results[id];
    const button = el("button", { type: "button", class: "challenge", "data-challenge": id }, el("span", { class: "name" }, challengeName(challenge)));
    if (challenge.category) button.append(el("span", { class: "category" }, String(challenge.category)));
    if (challenge.description && challenge.description !== challengeText(challenge)) {
      button.append(el("span", { class: "description" }, String(challenge.description)));
    }
    if (result) button.append(el("span", { class: `result ${result}` }, result === "held" ? "held" : "broken through"));
    button.addEventListener("click", () => pickChallenge(id, challenge));
    list.append(el("li", {}, button));
  });
}

function pickChallenge(id, challenge) {
  pendingChallenge = { id, name: challengeName(challenge) };
  const message = $("message");
  message.value = challengeText(challenge);
  showChallengeTag();
  message.focus();
}

function showChallengeTag() {
  const tag = $("challenge-tag");
  tag.hidden = !pendingChallenge;
  tag.textContent = pendingChallenge ? `Challenge: ${pendingChallenge.name}` : "";
}

// ---- the conversation ----------------------------------------------------------------

const views = new Map(); // turn id -> its DOM nodes

/** The element that scrolls the conversation: the log on wide screens, else the page. */
function scroller() {
  const log = $("log");
  return log.scrollHeight > log.clientHeight + 1 ? log : document.scrollingElement;
}

function nearBottom() {
  const box = scroller();
  return box.scrollHeight - box.scrollTop - box.clientHeight < 120;
}

function toBottom() {
  const box = scroller();
  box.scrollTop = box.scrollHeight;
}

function renderThread() {
  $("thread-id").textContent = state.threadId;
  const mode = {
    unknown: "",
    on: "(kept by the server)",
    off: "(the server keeps no threads: the page sends the history)",
  }[state.threadMode];
  $("thread-mode").textContent = mode;
}

function renderLog() {
  const log = $("log");
  clear(log);
  views.clear();
  if (!state.turns.length) {
    log.append(el("li", { class: "empty muted" }, "Send a message, or pick a challenge, to start."));
  }
  for (const turn of state.turns) addTurnView(turn);
}

function addTurnView(turn) {
  const log = $("log");
  log.querySelector(".empty")?.remove();
  const answer = el("div", { class: "text" });
  const mark = el("p", { class: "mark" });
  const rails = el("div", { class: "rails-box" });
  const bot = el("div", { class: "bubble bot", "aria-label": "Answer" }, el("div", { class: "who" }, "railguard"), answer, mark, rails);
  const user = el("div", { class: "bubble user", "aria-label": "Your message" }, el("div", { class: "who" }, "you"), el("div", { class: "text" }, turn.user));
  const item = el("li", { class: "turn", "data-turn": turn.id }, user, bot);
  log.append(item);
  const view = { item, bot, answer, mark, rails };
  views.set(turn.id, view);
  updateTurnView(turn);
  toBottom();
  return view;
}

function updateTurnView(turn) {
  const view = views.get(turn.id);
  if (!view) return;
  const follow = nearBottom();
  view.answer.textContent = turn.answer;
  view.bot.dataset.status = turn.status;
  view.item.dataset.status = turn.status;
  const marks = []; // [badge, sentence]
  if (turn.status === "pending" && !turn.answer) marks.push(["", "…"]);
  if (turn.status === "blocked") {
    const stage = turn.blockStage ? `${turn.blockStage} rail` : "rail";
    const rail = turn.blockedBy ? ` “${turn.blockedBy}”` : "";
    let sentence = `Blocked by the ${stage}${rail}.`;
    if (turn.midStream && turn.answer) {
      sentence = `Blocked mid-stream by the ${stage}${rail}: the text above had already arrived when it stopped the stream.`;
    } else if (turn.midStream) {
      sentence = `Blocked by the ${stage}${rail}: the stream was stopped before any text was shown.`;
    }
    marks.push(["blocked", sentence]);
  }
  if (turn.status === "passed" && turn.rewrittenBy) marks.push(["rewritten", `Rewritten by ${turn.rewrittenBy}.`]);
  if (turn.status === "error") marks.push(["error", turn.error || "The request failed."]);
  if (turn.status === "stopped") marks.push(["stopped", "Stopped before the answer was complete."]);
  if (turn.challenge && turn.result) {
    const held = turn.result === "held";
    marks.push([held ? "held" : "broken through", `Challenge “${turn.challenge.name}” ${held ? "held" : "broke through"}.`]);
  }
  clear(view.mark);
  for (const [badge, sentence] of marks) {
    const part = el("span", { class: "mark-part" });
    if (badge) part.append(el("span", { class: `badge ${badge.replace(" ", "-")}` }, badge));
    part.append(sentence, " ");
    view.mark.append(part);
  }
  view.mark.hidden = marks.length === 0;
  clear(view.rails);
  if (turn.guardrails) view.rails.append(railsPanel(summarize(turn.guardrails)));
  if (follow) toBottom();
}

/**
 * The messages to send when the server keeps no thread: every answered turn, then this
 * one. As in railguard's own threads, a blocked message is never sent to the model again
 * (nor the text a rail stopped mid-stream); failed and stopped turns are left out too.
 */
function history(upTo) {
  const messages = [];
  for (const turn of state.turns) {
    if (turn === upTo) break;
    if (turn.status !== "passed") continue;
    messages.push({ role: "user", content: turn.user });
    messages.push({ role: "assistant", content: turn.answer });
  }
  messages.push({ role: "user", content: upTo.user });
  return messages;
}

function requestBody(turn, useThread) {
  const guardrails = { options: { log: { activated_rails: true } } };
  if (state.configs.length === 1) guardrails.config_id = state.configs[0];
  if (state.configs.length > 1) guardrails.config_ids = [...state.configs];
  let messages;
  if (useThread) {
    guardrails.thread_id = state.threadId;
    messages = [{ role: "user", content: turn.user }];
  } else {
    messages = history(turn);
  }
  return { model: $("model").value.trim(), messages, stream: true, guardrails };
}

function onEvent(turn, event) {
  if (!event || typeof event !== "object") return;
  if (event.guardrails) turn.guardrails = event.guardrails;
  const error = event.error;
  if (error && typeof error === "object") {
    if (error.type === "guardrails_violation") {
      turn.status = "blocked";
      turn.blockedBy = error.param || null;
      turn.blockStage = "output";
      turn.midStream = true;
    } else {
      turn.status = "error";
      turn.error = `The answer stopped: ${error.message || error.type || "stream error"}`;
    }
  }
  const choice = Array.isArray(event.choices) ? event.choices[0] : null;
  if (choice && typeof choice === "object") {
    const delta = choice.delta || {};
    if (typeof delta.content === "string") turn.answer += delta.content;
    const message = choice.message;
    if (message && typeof message.content === "string") turn.answer = message.content;
  }
  updateTurnView(turn);
}

function settle(turn) {
  const summary = summarize(turn.guardrails);
  if (turn.status === "pending") {
    if (summary.blocked) {
      turn.status = "blocked";
      turn.blockedBy = summary.blocked.name;
      turn.blockStage = summary.blocked.stage;
    } else {
      turn.status = "passed";
    }
  }
  if (turn.status === "blocked" && !turn.blockedBy && summary.blocked) turn.blockedBy = summary.blocked.name;
  if (summary.rewrote.length) turn.rewrittenBy = summary.rewrote.map((r) => r.name).join(", ");
  if (turn.challenge && (turn.status === "passed" || turn.status === "blocked")) {
    turn.result = turn.status === "blocked" || turn.rewrittenBy ? "held" : "broken";
    state.results[turn.challenge.id] = turn.result;
    renderChallenges();
  }
}

let controller = null;

async function runTurn(turn) {
  const useThread = state.threadMode !== "off";
  let started = false;
  const completed = await streamChat(
    requestBody(turn, useThread),
    (event) => {
      if (!started && useThread && state.threadMode === "unknown") {
        state.threadMode = "on";
        renderThread();
      }
      started = true;
      onEvent(turn, event);
    },
    controller.signal,
  ).catch((error) => {
    if (useThread && error instanceof ApiError && error.threadsDisabled) {
      state.threadMode = "off";
      renderThread();
      return "retry";
    }
    throw error;
  });
  if (completed === "retry") return runTurn(turn);
  if (completed === false && turn.status === "pending") {
    turn.status = "error";
    turn.error = "The stream ended before it was complete.";
  }
  return completed;
}

async function send(text) {
  const turn = { id: `t${Date.now()}${Math.random().toString(16).slice(2, 6)}`, user: text, answer: "", status: "pending" };
  if (pendingChallenge) turn.challenge = pendingChallenge;
  pendingChallenge = null;
  showChallengeTag();
  state.turns.push(turn);
  addTurnView(turn);
  notice("");
  setBusy(true);
  controller = new AbortController();
  try {
    await runTurn(turn);
    settle(turn);
  } catch (error) {
    if (error.name === "AbortError") {
      turn.status = "stopped";
    } else {
      turn.status = "error";
      turn.error = error instanceof ApiError ? error.message : `Something went wrong: ${error.message || error}`;
      if (error.code === "thread_config_mismatch") turn.error += " “New conversation” starts a new thread.";
    }
  } finally {
    controller = null;
    state.model = $("model").value.trim();
    save();
    updateTurnView(turn);
    setBusy(false);
  }
}

function setBusy(busy) {
  document.body.classList.toggle("busy", busy);
  $("send").disabled = busy;
  $("stop").disabled = !busy;
  $("composer").setAttribute("aria-busy", String(busy));
}

// ---- wiring --------------------------------------------------------------------------

function submit() {
  const message = $("message");
  const text = message.value;
  if (!text.trim() || controller) return;
  message.value = "";
  send(text);
}

function wire() {
  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    submit();
  });
  $("message").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      submit();
    } else if (event.key === "Escape" && controller) {
      controller.abort();
    }
  });
  $("message").addEventListener("input", () => {
    if (!$("message").value && pendingChallenge) {
      pendingChallenge = null;
      showChallengeTag();
    }
  });
  $("stop").addEventListener("click", () => controller?.abort());
  $("model").addEventListener("change", () => {
    state.model = $("model").value.trim();
    save();
  });
  $("new-chat").addEventListener("click", () => {
    controller?.abort();
    Object.assign(state, freshConversation());
    save();
    renderThread();
    renderLog();
    $("message").focus();
  });
}

async function start() {
  wire();
  renderThread();
  renderLog();
  if (state.model) $("model").value = state.model;
  const problems = [];
  const [configs, models, found] = await Promise.allSettled([
    getJSON("v1/rails/configs"),
    getJSON("v1/models"),
    getJSON("v1/challenges"),
  ]);
  if (configs.status === "fulfilled" && Array.isArray(configs.value)) {
    renderConfigs(configs.value.map((c) => String(c && c.id)).filter(Boolean));
  } else {
    const box = $("configs");
    clear(box);
    box.append(el("p", { class: "muted" }, "Not available: the server's default configuration is used."));
    problems.push(`Configurations could not be listed: ${configs.reason?.message || "unexpected answer"}`);
  }
  if (models.status === "fulfilled" && Array.isArray(models.value?.data)) {
    renderModels(models.value.data.map((m) => String(m && m.id)).filter(Boolean));
  } else {
    renderModels([]);
    $("models-note").textContent = `Models could not be listed (${models.reason?.message || "unexpected answer"}); type a name.`;
  }
  if (found.status === "fulfilled" && Array.isArray(found.value)) {
    challenges = found.value.filter((c) => c && typeof c === "object");
  } else {
    problems.push(`Challenges could not be loaded: ${found.reason?.message || "unexpected answer"}`);
  }
  renderChallenges();
  if (problems.length) notice(problems.join(" "));
  save();
  document.body.dataset.ready = "true";
}

start().catch((error) => notice(`The page could not start: ${error.message || error}`));
