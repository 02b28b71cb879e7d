/*
 * The customer chat: one WebSocket to /ws/chat/, rendered into #chat-log.
 *
 * Contract with the page (templates/chat/index.html): configuration comes from data- attributes on
 * #chat (data-ws-path, data-max-chars); chat.js keeps data-connection ("connecting" | "online" |
 * "reconnecting"), data-turn ("busy" | "idle") and data-conversation-id up to date on #chat, and
 * dispatches CustomEvent("chat:conversation", {detail: {id, resumed}}) on document for each
 * conversation frame, so other widgets (feedback) can follow along.
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

  const maxChars = Number.parseInt(root.dataset.maxChars, 10) || 4000;
  const wsPath = root.dataset.wsPath || "/ws/chat/";
  const BACKOFF_START_MS = 500;
  const BACKOFF_MAX_MS = 10000;
  const RATE_LIMITED_RETRY_MS = 60000;
  const NEAR_BOTTOM_PX = 96;
  const CONNECTION_LABELS = {
    connecting: "Connecting…",
    online: "Online",
    reconnecting: "Reconnecting…",
  };

  const state = {
    socket: null,
    attached: false, // the current socket has sent its conversation frame
    wantNew: false, // the next handshake asks for a new conversation
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
    statusText.textContent = CONNECTION_LABELS[kind];
  }

  function updateTyping() {
    root.dataset.turn = state.busy ? "busy" : "idle";
    typing.hidden = !(state.busy && !state.streaming);
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
    log.replaceChildren();
    state.waiting = [];
    state.turnsToSkip = 0;
    setBusy(false);
  }

  // TOOL STEPS

  function ticketOf(args, result) {
    const id = args?.ticket_id ?? result?.ticket_id;
    return id === undefined || id === null ? "" : String(id);
  }

  /** The friendly line for a tool step, and whether it failed. */
  function describeTool(name, status, args, result) {
    const failed = status === "error" || (result !== null && typeof result === "object" && "error" in result);
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

  // SERVER FRAMES

  function onConversation(frame) {
    state.attached = true;
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
      default:
        break; // newer servers may send more; ignoring them keeps this page working
    }
  }

  // CONNECTION

  function socketUrl() {
    const scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
    return `${scheme}//${window.location.host}${wsPath}${state.wantNew ? "?new=1" : ""}`;
  }

  function connect() {
    clearTimeout(state.reconnectTimer);
    state.reconnectTimer = null;
    state.attached = false;
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
  window.addEventListener("online", reconnectNow);
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "visible") reconnectNow();
  });

  onInput();
  setConnection("connecting");
  connect();
  if (window.matchMedia("(pointer: fine)").matches) input.focus();
})();
