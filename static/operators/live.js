// Live timeline: while an operator reads a conversation, its new turns appear as they happen.
// The page says where to listen (data-live-path); frames are the chat's own, forwarded by the server.
// Text is only ever set with textContent: nothing a customer or the model writes becomes markup.
(function () {
  "use strict";
  var timeline = document.getElementById("timeline");
  var status = document.getElementById("live-status");
  if (!timeline || !timeline.dataset.livePath || !("WebSocket" in window)) return;

  var streaming = null; // the agent entry being streamed, until its "message" frame arrives
  var calls = {}; // tool call id -> its section, to add the result
  // The last stored row this page shows: the server sends what was stored after it when the socket
  // (re)connects. Steps shown live before they are stored (a tool step's end, the words of a reply that
  // calls tools) carry no number: a copy the server sends again ("replay") is known by its call ids.
  // Counted, not remembered once: models that give no call ids repeat "call_0".
  var lastSeq = Number(timeline.dataset.lastSeq) || 0;
  var shownLive = {}; // "tool <id>" / "calls <ids>" -> how many were shown live and not matched yet

  function shownBefore(key, frame) {
    if (!frame.replay) {
      shownLive[key] = (shownLive[key] || 0) + 1;
      return false;
    }
    if (!shownLive[key]) return false;
    shownLive[key] -= 1;
    return true;
  }

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function entry(kind, who) {
    var item = el("li", "entry entry--" + kind + " entry--live");
    var head = el("div", "entry-head");
    head.appendChild(el("span", "who", who));
    var time = el("time", "", new Date().toLocaleTimeString());
    time.dateTime = new Date().toISOString();
    head.appendChild(time);
    head.appendChild(el("span", "meta", "live"));
    item.appendChild(head);
    timeline.appendChild(item);
    return item;
  }

  function pretty(value) {
    try { return JSON.stringify(value, null, 2); } catch (error) { return String(value); }
  }

  var pending = []; // customer entries waiting for their stored, masked text

  function message(frame) {
    if (frame.role === "user" && frame.pending) {
      var waiting = entry("customer", "Customer");
      waiting.classList.add("entry--pending");
      waiting.appendChild(el("p", "text muted", "Message received; shown once stored, with any secret masked."));
      pending.push(waiting);
      return;
    }
    if (frame.role === "user" && frame.masked && pending.length) {
      var filled = pending.shift();
      filled.classList.remove("entry--pending");
      var text = filled.querySelector(".text");
      text.className = "text";
      text.textContent = frame.text;
      return;
    }
    if (frame.calls && frame.calls.length && shownBefore("calls " + frame.calls.join(" "), frame)) return;
    if (frame.role === "staff") {
      var reply = entry("staff", String(frame.name || "Staff") + " (Support)");
      reply.appendChild(el("p", "text", frame.text));
      return;
    }
    if (frame.role === "assistant" && streaming) {
      streaming.querySelector(".text").textContent = frame.text;
      streaming = null;
      return;
    }
    var item = entry(frame.role === "user" ? "customer" : "agent", frame.role === "user" ? "Customer" : "Agent");
    item.appendChild(el("p", "text", frame.text));
  }

  function delta(frame) {
    if (!streaming) {
      streaming = entry("agent", "Agent");
      streaming.appendChild(el("p", "text", ""));
    }
    streaming.querySelector(".text").textContent += frame.text;
  }

  function tool(frame) {
    var ends = frame.status === "done" || frame.status === "error";
    if (ends && shownBefore("tool " + frame.id, frame)) return; // its end is shown: a copy caught up
    var section = calls[frame.id];
    if (!section) {
      var item = entry("agent", "Agent");
      section = el("section", "tool-call");
      var title = el("h2", "tool-name");
      title.appendChild(el("code", "", frame.name));
      title.appendChild(el("span", "muted tool-state", "running"));
      section.appendChild(title);
      var io = el("div", "tool-io");
      var args = el("div");
      args.appendChild(el("h3", "", "Arguments"));
      args.appendChild(el("pre", "json", pretty(frame.arguments)));
      io.appendChild(args);
      section.appendChild(io);
      item.appendChild(section);
      calls[frame.id] = section;
    }
    if (ends) {
      var state = section.querySelector(".tool-state");
      state.textContent = frame.status;
      state.className = frame.status === "done" ? "ok tool-state" : "failed tool-state";
      if (frame.status === "error") section.classList.add("tool-call--error");
      var result = el("div");
      result.appendChild(el("h3", "", "Result"));
      result.appendChild(el("pre", "json", pretty(frame.result)));
      section.querySelector(".tool-io").appendChild(result);
    }
  }

  function error(frame) {
    var item = entry("error", "Error");
    item.querySelector(".entry-head").appendChild(el("code", "", frame.code));
    item.appendChild(el("p", "text", frame.message));
  }

  function handoff(frame) {
    var item = entry("handoff", "Handoff");
    item.querySelector(".entry-head").appendChild(el("span", "tag", frame.state));
    item.appendChild(el("p", "text", frame.message));
  }

  var handlers = { message: message, delta: delta, tool: tool, error: error, handoff: handoff };
  var retry = 1000;

  function connect() {
    var scheme = location.protocol === "https:" ? "wss://" : "ws://";
    var socket = new WebSocket(scheme + location.host + timeline.dataset.livePath + "?after=" + lastSeq);
    socket.addEventListener("open", function () {
      retry = 1000;
      status.textContent = "Live: new turns appear here as they happen.";
      timeline.dataset.live = "open";
    });
    socket.addEventListener("message", function (event) {
      var frame;
      try { frame = JSON.parse(event.data); } catch (problem) { return; }
      if (frame && typeof frame.seq === "number" && frame.seq > lastSeq) lastSeq = frame.seq;
      if (frame && handlers[frame.type]) handlers[frame.type](frame);
      // Other scripts of the page (the inbox's composer) follow the same frames.
      if (frame) timeline.dispatchEvent(new CustomEvent("live:frame", { detail: frame }));
    });
    socket.addEventListener("close", function (event) {
      timeline.dataset.live = "closed";
      if (event.code === 4403 || event.code === 4404) {
        status.textContent = "Live updates are not available for this conversation.";
        return;
      }
      status.textContent = "Live updates paused; reconnecting…";
      setTimeout(connect, retry);
      retry = Math.min(retry * 2, 30000);
    });
  }

  connect();
})();
