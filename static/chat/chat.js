/*
 * The customer chat: one WebSocket to /ws/chat/, rendered into #chat-log.
 *
 * Contract with the page (templates/chat/index.html): configuration comes from data- attributes on
 * #chat (data-ws-path, data-max-chars, data-session-url, data-csrf-token, data-autostart, data-model, and
 * data-signed-user / data-signature that embed.js sets); chat.js keeps data-connection ("ready" before the
 * conversation starts | "connecting" | "online" | "reconnecting"), data-model ("up" | "down"), data-turn ("busy" | "idle") and data-conversation-id up to date on #chat, and
 * dispatches CustomEvent("chat:conversation", {detail: {id, resumed}}) on document for each
 * conversation frame, so other widgets (feedback) can follow along.
 *
 * Handing over to a person: "Talk to a person" (#chat-human) sends {"type": "human"}; "handoff" frames
 * ({state: waiting | human | agent | closed, message, name, position}) update #chat-handoff and add a line
 * to the log; staff replies are "message" frames with role "staff" and the staff member's name. While a
 * person is awaited or answers, a sent message starts no turn (the server makes no model call).
 *
 * Every piece of customer or model text goes through textContent / text nodes, never innerHTML.
 */
"use strict";

(() => {
  const root = document.getElementById("chat");
  if (!root) return;

  const log = document.getElementById("chat-log");
  const scroller = document.getElementById("chat-scroll");
  const typing = document.getElementById("chat-typing");
  const form = document.getElementById("chat-form");
  const input = document.getElementById("chat-input");
  const sendButton = document.getElementById("chat-send");
  const counter = document.getElementById("chat-counter");
  const notice = document.getElementById("chat-notice");
  const statusText = document.getElementById("chat-status-text");
  const newButton = document.getElementById("chat-new");
  const humanButton = document.getElementById("chat-human");
  const handoffBanner = document.getElementById("chat-handoff");

  const maxChars = Number.parseInt(root.dataset.maxChars, 10) || 4000;
  const wsPath = root.dataset.wsPath || "/ws/chat/";
  const sessionUrl = root.dataset.sessionUrl || "/";
  const BACKOFF_START_MS = 500;
  const BACKOFF_MAX_MS = 10000;
  const RATE_LIMITED_RETRY_MS = 60000;
  const NEAR_BOTTOM_PX = 96;
  const CONNECTION_LABELS = {
    connecting: "Connecting…",
    online: "Online",
    reconnecting: "Reconnecting…",
    ready: "Online", // not started yet: the conversation starts when the customer writes
  };

  const state = {
    socket: null,
    attached: false, // the current socket has sent its conversation frame
    wantNew: false, // the next handshake asks for a new conversation
    opening: 0, // connect() calls so far; only the latest opens its socket
    attempt: 0,
    reconnectTimer: null,
    busy: false,
    queue: [], // {text, node}: typed, not yet handed to an open socket
    streaming: null, // {node, bubble}: the assistant reply being streamed
    tools: new Map(), // tool call id -> {node, label, args}
    // Replayed history goes before this node: the customer's queued messages stay below it.
    replayAnchor: null,
    // The customer's sent messages whose turn has not started yet (the agent is still answering an
    // earlier one): what the agent says now goes above them, so the page shows the stored order.
    waiting: [],
    turnsToSkip: 0, // "typing" frames that start turns other than the customer's own (greeting, other tabs)
    // The view sticks to the newest message until the customer scrolls up to read older ones.
    following: true,
    cards: new Map(), // confirm id -> {node, yes, no, status}: changes waiting for the customer's click
    holder: "agent", // who answers: "agent", "waiting" (for a person), "human" or "closed"
  };

  // RENDERING

  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function messageNode(role, text) {
    const node = element("div", `message message--${role === "user" ? "user" : "assistant"}`);
    if (role !== "user") node.append(element("span", "avatar avatar--small", "S"));
    node.lastChild?.setAttribute("aria-hidden", "true");
    node.append(element("span", "visually-hidden", role === "user" ? "You:" : "Support:"));
    const bubble = element("div", "bubble", text);
    node.append(bubble);
    return node;
  }

  function staffMessageNode(name, text) {
    const node = element("div", "message message--assistant message--staff");
    const who = `${name || "Support"} (Support)`;
    node.append(element("span", "avatar avatar--small", (name || "S").slice(0, 1).toUpperCase()));
    node.lastChild.setAttribute("aria-hidden", "true");
    node.append(element("span", "visually-hidden", `${who}:`));
    const bubble = element("div", "bubble");
    bubble.append(element("span", "staff-name", who), document.createTextNode(text));
    node.append(bubble);
    return node;
  }

  function isNearBottom() {
    return scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < NEAR_BOTTOM_PX;
  }

  function scrollToBottom() {
    scroller.scrollTop = scroller.scrollHeight;
    state.following = true;
  }

  /** Add a node to the log; a replayed one goes above the customer's still-queued messages. */
  function append(node, { replay = false, force = false } = {}) {
    const anchor = replay ? (state.replayAnchor?.isConnected ? state.replayAnchor : null) : waitingAnchor();
    log.insertBefore(node, anchor);
    if (force || state.following) scrollToBottom();
  }

  function waitingAnchor() {
    state.waiting = state.waiting.filter((node) => node.isConnected);
    return state.waiting[0] ?? null;
  }

  /** A turn starts: the customer's oldest waiting message, unless the turn is someone else's. */
  function onTurnStarted() {
    if (state.turnsToSkip > 0) state.turnsToSkip -= 1;
    else state.waiting.shift();
    setBusy(true);
  }

  function setConnection(kind) {
    root.dataset.connection = kind;
    showStatus();
  }

  /** The header tells the truth: connected, and whether the assistant can answer (a "status" frame). */
  function showStatus() {
    const kind = root.dataset.connection;
    const down = root.dataset.model === "down" && (kind === "online" || kind === "ready");
    statusText.textContent = down ? "Assistant unavailable" : CONNECTION_LABELS[kind];
  }

  function updateTyping() {
    root.dataset.turn = state.busy ? "busy" : "idle";
    typing.hidden = !(state.busy && !state.streaming && !pendingCard());
    if (state.following) scrollToBottom();
  }

  function setBusy(busy) {
    state.busy = busy;
    updateTyping();
  }

  function discardStreaming() {
    state.streaming?.node.remove();
    state.streaming = null;
  }

  function clearConversation() {
    discardStreaming();
    state.tools.clear();
    state.cards.clear();
    log.replaceChildren();
    state.waiting = [];
    state.turnsToSkip = 0;
    setHolder("agent", "");
    setBusy(false);
  }

  // A PERSON FROM SUPPORT

  function held() {
    return state.holder === "waiting" || state.holder === "human";
  }

  function setHolder(holder, message) {
    state.holder = holder;
    root.dataset.holder = holder;
    handoffBanner.dataset.state = holder;
    handoffBanner.textContent = message;
    handoffBanner.hidden = !(held() || holder === "closed") || !message;
    humanButton.disabled = holder !== "agent";
  }

  function onHandoff(frame) {
    const holder = String(frame.state || "agent");
    const message = typeof frame.message === "string" ? frame.message : "";
    const changed = holder !== state.holder;
    setHolder(holder, message);
    if (held()) {
      state.waiting = []; // no turn will start for what the customer sent: nothing waits for one
      if (!frame.replay) setBusy(false);
    }
    if (!changed || !message) return; // a waiting customer's place moved: the banner says it
    const node = element("div", "handoff-event", message);
    node.dataset.state = holder;
    append(node, { replay: frame.replay });
  }

  function askForHuman() {
    const socket = state.socket;
    if (state.holder !== "agent") return;
    if (!socket || !state.attached || socket.readyState !== WebSocket.OPEN) {
      // Asked before the conversation started (or while reconnecting): asked as soon as it is attached.
      state.wantHuman = true;
      humanButton.disabled = true;
      start();
      return;
    }
    state.wantHuman = false;
    socket.send(JSON.stringify({ type: "human" }));
    humanButton.disabled = true;
  }

  // TOOL STEPS

  function ticketOf(args, result) {
    const id = args?.ticket_id ?? result?.ticket_id;
    return id === undefined || id === null ? "" : String(id);
  }

  /** The friendly line for a tool step, and whether it failed. */
  function describeTool(name, status, args, result) {
    const failed = status === "error";
    if (name === "verify_user") {
      if (status === "started") return ["started", "Verifying your identity…"];
      return result?.success === true && !failed
        ? ["done", "Identity verified"]
        : ["error", "Couldn't verify your identity"];
    }
    if (name === "get_ticket_status") {
      const ticket = ticketOf(args, result);
      if (status === "started") return ["started", ticket ? `Looking up ticket ${ticket}…` : "Looking up your ticket…"];
      if (failed) return ["error", ticket ? `Couldn't find ticket ${ticket}` : "Couldn't find that ticket"];
      return ["done", ticket ? `Found ticket ${ticket}` : "Found your ticket"];
    }
    if (name === "request_human") {
      if (status === "started") return ["started", "Asking for a person from our support team…"];
      return failed ? ["error", "Couldn't reach a person just now"] : ["done", "Asked for a person"];
    }
    const write = describeWriteTool(name, status, args, result);
    if (write) return write;
    if (status === "started") return ["started", "Working on it…"];
    if (failed) return ["error", `Something went wrong with ${String(name || "that step").replaceAll("_", " ")}`];
    return ["done", "Done"];
  }

  function onTool(frame) {
    let step = state.tools.get(frame.id);
    if (!step) {
      const node = element("div", "status-line");
      node.append(element("span", "status-icon"));
      node.firstChild.setAttribute("aria-hidden", "true");
      const label = element("span", "status-text");
      node.append(label);
      step = { node, label, args: null };
      if (frame.id) state.tools.set(frame.id, step);
      append(node, { replay: frame.replay });
    }
    if (frame.arguments) step.args = frame.arguments;
    const [status, text] = describeTool(frame.name, frame.status, step.args, frame.result);
    step.node.dataset.status = status;
    step.node.dataset.tool = String(frame.name || "");
    step.label.textContent = text;
  }

  const NOT_CONFIRMED = {
    refused: "you said no",
    expired: "no answer in time",
    superseded: "you wrote instead",
    unavailable: "could not ask you",
  };

  /** The lines of the ticket tools (listing, and the two that change data after the customer's yes). */
  function describeWriteTool(name, status, args, result) {
    const failed = status === "error";
    const ticket = ticketOf(args, result);
    if (name === "list_my_tickets") {
      if (status === "started") return ["started", "Looking up your tickets…"];
      return failed ? ["error", "Couldn't list your tickets"] : ["done", "Found your tickets"];
    }
    if (name !== "create_ticket" && name !== "add_ticket_comment") return null;
    const opening = name === "create_ticket";
    if (failed && NOT_CONFIRMED[result?.confirmation]) {
      return ["error", `Not done: ${NOT_CONFIRMED[result.confirmation]}`];
    }
    if (status === "started") return ["started", opening ? "Opening a new ticket…" : `Adding your comment to ticket ${ticket}…`];
    if (failed) return ["error", opening ? "Couldn't open the ticket" : `Couldn't add your comment to ticket ${ticket}`];
    return ["done", opening ? `Opened ticket ${ticket}` : `Added your comment to ticket ${ticket}`];
  }

  // CONFIRMATION CARDS: a change (opening a ticket, adding a comment) runs only after the customer's own
  // click here. Text only; native buttons, so Tab, Enter and Space work; Escape on the card means "No".
  // Focus is never moved onto the card: an Enter meant for the message box must not approve anything.

  const CARD_STATES = {
    approved: "Approved: doing it now.",
    refused: "Declined: nothing was done.",
    expired: "No answer in time: nothing was done.",
    superseded: "Cancelled: you wrote a new message instead. Nothing was done.",
  };

  function pendingCard() {
    for (const card of state.cards.values()) if (card.node.dataset.state === "pending") return true;
    return false;
  }

  function argumentList(args) {
    const list = element("dl", "confirm-args");
    for (const [key, value] of Object.entries(args)) {
      list.append(element("dt", "", key.replaceAll("_", " ")));
      list.append(element("dd", "", typeof value === "string" ? value : JSON.stringify(value)));
    }
    return list;
  }

  function onConfirm(frame) {
    const id = String(frame.id || "");
    if (!id || state.cards.has(id)) return;
    const node = element("div", "confirm-card");
    node.dataset.state = "pending";
    node.dataset.tool = String(frame.tool || "");
    node.setAttribute("role", "group");
    node.setAttribute("aria-labelledby", `confirm-${id}`);
    node.append(element("p", "confirm-lead", "Please confirm before I do this:"));
    const summary = element("p", "confirm-summary", String(frame.summary || "Shall I go ahead?"));
    summary.id = `confirm-${id}`;
    node.append(summary);
    if (frame.arguments && typeof frame.arguments === "object") node.append(argumentList(frame.arguments));
    const actions = element("div", "confirm-actions");
    const yes = element("button", "button button--primary confirm-yes", "Yes, do it");
    const no = element("button", "button confirm-no", "No");
    yes.type = "button";
    no.type = "button";
    actions.append(yes, no);
    const status = element("p", "confirm-status");
    status.setAttribute("role", "status");
    node.append(actions, status);
    yes.addEventListener("click", () => answerCard(id, true));
    no.addEventListener("click", () => answerCard(id, false));
    node.addEventListener("keydown", (event) => {
      if (event.key === "Escape") answerCard(id, false);
    });
    state.cards.set(id, { node, yes, no, status });
    append(node, { replay: frame.replay, force: true });
    updateTyping();
  }

  function answerCard(id, approve) {
    const card = state.cards.get(id);
    if (!card || card.node.dataset.state !== "pending") return;
    const socket = state.socket;
    if (!socket || !state.attached || socket.readyState !== WebSocket.OPEN) {
      card.status.textContent = "Not connected right now: please try again in a moment.";
      return;
    }
    socket.send(JSON.stringify({ type: "confirm", id, approve }));
    card.node.dataset.state = "answered";
    card.yes.disabled = true;
    card.no.disabled = true;
    card.status.textContent = approve ? "Sending your yes…" : "Sending your no…";
    updateTyping();
  }

  function onConfirmation(frame) {
    const card = state.cards.get(String(frame.id || ""));
    if (!card) return;
    const decided = String(frame.state || "");
    card.node.dataset.state = decided;
    card.yes.disabled = true;
    card.no.disabled = true;
    card.status.textContent = CARD_STATES[decided] || "Closed.";
    updateTyping();
  }

  // SERVER FRAMES

  function onConversation(frame) {
    state.attached = true;
    if (state.wantHuman) queueMicrotask(askForHuman);
    state.wantNew = false;
    state.attempt = 0;
    root.dataset.conversationId = frame.id;
    setConnection("online");
    // The server replays the whole history now: start from an empty log so nothing shows twice.
    clearConversation();
    for (const item of state.queue) log.append(item.node);
    state.replayAnchor = state.queue[0]?.node ?? null;
    document.dispatchEvent(
      new CustomEvent("chat:conversation", { detail: { id: frame.id, resumed: Boolean(frame.resumed) } }),
    );
    if (!frame.resumed) state.turnsToSkip = 1; // the greeting
    flushQueue();
  }

  function onMessage(frame) {
    const text = typeof frame.text === "string" ? frame.text : "";
    if (frame.role === "user") {
      if (!frame.replay) state.turnsToSkip += 1; // another tab's message: the next turn is its

      append(messageNode("user", text), { replay: frame.replay });
      return;
    }
    if (frame.role === "staff") {
      append(staffMessageNode(String(frame.name || ""), text), { replay: frame.replay });
      return;
    }
    const node = messageNode("assistant", text);
    if (frame.fallback) node.classList.add("is-fallback");
    if (state.streaming) {
      // A fresh node, not an edited one, so screen readers hear the finished reply once.
      state.streaming.node.replaceWith(node);
      state.streaming = null;
      updateTyping();
    } else {
      append(node, { replay: frame.replay });
    }
    if (!frame.replay) document.dispatchEvent(new CustomEvent("chat:message", { detail: { role: frame.role } }));
  }

  function onDelta(frame) {
    if (!state.streaming) {
      const node = messageNode("assistant", "");
      node.classList.add("is-streaming");
      node.setAttribute("aria-hidden", "true"); // announced once, when complete
      state.streaming = { node, bubble: node.querySelector(".bubble") };
      append(node);
      state.busy = true;
      updateTyping();
    }
    state.streaming.bubble.append(document.createTextNode(String(frame.text ?? "")));
    if (state.following) scrollToBottom();
  }

  function onError(frame) {
    discardStreaming();
    if (frame.refused && !frame.replay) state.waiting.pop(); // that message gets no turn
    const message = typeof frame.message === "string" && frame.message ? frame.message : "Something went wrong.";
    const last = log.lastElementChild;
    const repeated = !frame.replay && last?.classList.contains("notice") && last.textContent === message;
    if (!repeated) {
      const node = element("div", "notice", message);
      node.dataset.code = String(frame.code || "");
      append(node, { replay: frame.replay });
    }
    // A failed turn's error ends it. A refusal ("refused": true: a bad frame, a rate limit) does not:
    // the server follows it with "idle" unless a turn is running, which goes on.
    if (!frame.replay && !frame.refused) setBusy(false);
  }

  function handleFrame(frame) {
    if (!frame || typeof frame !== "object") return;
    if (frame.type !== "conversation" && !frame.replay) state.replayAnchor = null;
    switch (frame.type) {
      case "conversation":
        onConversation(frame);
        break;
      case "message":
        onMessage(frame);
        break;
      case "typing":
        onTurnStarted();
        break;
      case "delta":
        onDelta(frame);
        break;
      case "tool":
        if (!frame.replay && !state.busy) setBusy(true);
        onTool(frame);
        break;
      case "error":
        onError(frame);
        break;
      case "idle":
        setBusy(false);
        break;
      case "confirm":
        onConfirm(frame);
        break;
      case "confirmation":
        onConfirmation(frame);
        break;
      case "status":
        root.dataset.model = frame.model === "down" ? "down" : "up";
        showStatus();
        break;
      case "handoff":
        onHandoff(frame);
        break;
      default:
        break; // newer servers may send more; ignoring them keeps this page working
    }
  }

  // CONNECTION

  function socketUrl() {
    const scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
    return `${scheme}//${window.location.host}${wsPath}${state.wantNew ? "?new=1" : ""}`;
  }

  // The browser session the conversation belongs to is made by this POST before the first socket (a
  // WebSocket handshake cannot set a cookie): a page view alone stores nothing on the server. Once made,
  // every reconnection carries the same cookie, so it resumes the same conversation.
  let sessionReady = null;
  function ensureSession() {
    sessionReady ??= fetch(sessionUrl, {
      method: "POST",
      credentials: "same-origin",
      headers: { "X-CSRFToken": root.dataset.csrfToken || "" },
      body: signedInBody(),
    }).then((response) => {
      if (!response.ok) throw new Error(`the chat session was refused (${response.status})`);
    });
    sessionReady.catch(() => {
      sessionReady = null; // asked again at the next connection attempt
    });
    return sessionReady;
  }

  /** A customer the website signed in (embed.js puts them on #chat): checked by the server, never here. */
  function signedInBody() {
    const { signedUser, signature } = root.dataset;
    return signedUser ? new URLSearchParams({ user: signedUser, signature: signature || "" }) : undefined;
  }

  // The conversation (its row, its greeting's model call) starts only when the customer writes, or opens
  // the widget (data-autostart, or the "chat:start" event); a returning customer's is resumed at once.
  let started = false;
  function start() {
    if (started) return;
    started = true;
    setConnection("connecting");
    connect();
  }

  function connect() {
    clearTimeout(state.reconnectTimer);
    state.reconnectTimer = null;
    state.attached = false;
    const opening = ++state.opening; // a later connect() supersedes this one
    ensureSession().then(
      () => {
        if (opening === state.opening) openSocket();
      },
      () => {
        if (opening === state.opening) scheduleReconnect();
      },
    );
  }

  function openSocket() {
    const socket = new WebSocket(socketUrl());
    state.socket = socket;
    socket.addEventListener("message", (event) => {
      if (socket !== state.socket) return;
      let frame;
      try {
        frame = JSON.parse(event.data);
      } catch {
        return;
      }
      handleFrame(frame);
    });
    socket.addEventListener("close", (event) => {
      if (socket !== state.socket) return; // a socket we replaced on purpose
      state.socket = null;
      state.attached = false;
      discardStreaming();
      setBusy(false);
      // 4429: the server refused this client for now (too many sockets); ask again in a minute, not at once.
      scheduleReconnect(event.code === 4429 ? RATE_LIMITED_RETRY_MS : null);
    });
  }

  function scheduleReconnect(wait = null) {
    setConnection("reconnecting");
    // Exponential backoff with jitter, so a restarted server is not hit by every tab at once.
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_START_MS * 2 ** state.attempt);
    const delay = wait ?? Math.min(BACKOFF_MAX_MS, base * (0.8 + Math.random() * 0.4));
    state.attempt += 1;
    clearTimeout(state.reconnectTimer);
    state.reconnectTimer = setTimeout(connect, delay);
  }

  function reconnectNow() {
    if (state.socket || !state.reconnectTimer) return;
    state.attempt = 0;
    connect();
  }

  function startNewConversation() {
    started = true;
    const old = state.socket;
    state.socket = null; // its close event is ours, not a dropped connection
    old?.close(1000, "new conversation");
    state.wantNew = true;
    state.attempt = 0;
    state.replayAnchor = null;
    clearConversation();
    for (const item of state.queue) log.append(item.node);
    setConnection("connecting");
    connect();
    input.focus();
  }

  // SENDING

  function flushQueue() {
    const socket = state.socket;
    while (state.queue.length && socket && state.attached && socket.readyState === WebSocket.OPEN) {
      const item = state.queue[0];
      socket.send(JSON.stringify({ type: "message", text: item.text }));
      state.queue.shift();
      item.node.classList.remove("is-queued");
      item.node.querySelector(".message-meta")?.remove();
      if (held()) continue; // a person reads it: no turn starts, nothing to wait for
      state.waiting.push(item.node);
      setBusy(true); // the agent answers every message; show it working right away
    }
  }

  function send() {
    const text = input.value.trim();
    if (!text) {
      input.focus();
      return;
    }
    if (text.length > maxChars) {
      notice.textContent = tooLong(text.length);
      return;
    }
    start();
    const node = messageNode("user", text);
    node.classList.add("is-queued");
    node.querySelector(".bubble").append(element("span", "message-meta", "Sending when reconnected…"));
    state.queue.push({ text, node });
    log.append(node); // the newest thing on the page, below anything still waiting
    scrollToBottom();
    input.value = "";
    onInput();
    flushQueue();
  }

  function tooLong(length) {
    const excess = length - maxChars;
    return `Your message is ${excess} ${excess === 1 ? "character" : "characters"} too long.`;
  }

  function autoGrow() {
    // CSSOM writes, not style attributes: allowed under a CSP without 'unsafe-inline'.
    // The stylesheet's max-height caps the growth; past it the field scrolls.
    input.style.height = "auto";
    input.style.height = `${input.scrollHeight}px`;
  }

  function onInput() {
    const length = input.value.trim().length;
    const over = length > maxChars;
    counter.textContent = `${length} / ${maxChars}`;
    counter.classList.toggle("is-over", over);
    sendButton.disabled = over;
    notice.textContent = over ? tooLong(length) : "";
    autoGrow();
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    send();
  });
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      send();
    }
  });
  input.addEventListener("input", onInput);
  scroller.addEventListener("scroll", () => {
    state.following = isNearBottom();
  }, { passive: true });
  // A phone keyboard opening, a rotation or a growing composer shrinks the log: keep the end in view.
  new ResizeObserver(() => {
    if (state.following) scrollToBottom();
  }).observe(scroller);
  newButton.addEventListener("click", startNewConversation);
  humanButton.addEventListener("click", askForHuman);
  window.addEventListener("online", reconnectNow);
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "visible") reconnectNow();
  });

  onInput();
  input.addEventListener("input", start, { once: true });
  document.addEventListener("chat:start", start);
  if (root.dataset.autostart === "0") setConnection("ready");
  else start();
  if (window.matchMedia("(pointer: fine)").matches) input.focus();
})();
