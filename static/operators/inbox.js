// The staff console. On /operators/inbox/: the waiting list, live over /ws/operators/inbox/ (the tab's
// title shows how many wait), "Claim" as a POST. On a conversation: the actions (claim, return to the
// assistant, close) and the composer as POSTs; the conversation's frames come through live.js, which
// re-dispatches each one as a "live:frame" event on #timeline.
// Text is only ever set with textContent: nothing a customer or staff member writes becomes markup.
(function () {
  "use strict";
  var baseTitle = document.title;

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function showError(message) {
    var box = document.getElementById("inbox-error");
    if (!box) return;
    box.textContent = message || "";
    box.hidden = !message;
  }

  function csrfToken(form) {
    var field = form.querySelector("input[name=csrfmiddlewaretoken]");
    return field ? field.value : "";
  }

  // A form POSTed with fetch; resolves to the JSON answer ({ok, frame} or {ok: false, code, message}).
  function post(form, body) {
    return fetch(form.action, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Accept": "application/json", "X-CSRFToken": csrfToken(form) },
      body: body || new FormData(form),
    }).then(function (response) {
      return response.json().catch(function () {
        return { ok: false, message: "The server refused that (" + response.status + ")." };
      });
    });
  }

  function waitText(seconds) {
    if (seconds < 60) return "waiting " + seconds + " s";
    return "waiting " + Math.floor(seconds / 60) + " min " + String(seconds % 60).padStart(2, "0") + " s";
  }

  // THE INBOX

  function inboxPage(root) {
    var list = document.getElementById("waiting-list");
    var mine = document.getElementById("mine-list");
    var count = document.getElementById("waiting-count");
    var status = document.getElementById("inbox-status");
    var base = root.dataset.conversationUrl;
    var token = root.dataset.csrfToken;

    function claimForm(id) {
      var form = el("form", "claim-form");
      form.method = "post";
      form.action = base + id + "/claim/";
      var field = el("input");
      field.type = "hidden";
      field.name = "csrfmiddlewaretoken";
      field.value = token;
      form.appendChild(field);
      var button = el("button", "button", "Claim");
      button.type = "submit";
      form.appendChild(button);
      return form;
    }

    function item(entry, claimable) {
      var node = el("li", "queue-item");
      node.dataset.id = entry.id;
      if (entry.since) node.dataset.since = entry.since;
      var main = el("div", "queue-main");
      if (claimable) {
        main.appendChild(el("span", "queue-who", entry.customer || "Not verified"));
      } else {
        var link = el("a", "", entry.customer || "Not verified customer");
        link.href = base + entry.id + "/";
        main.appendChild(link);
      }
      main.appendChild(el("span", "queue-reason", entry.reason));
      node.appendChild(main);
      if (claimable) {
        var wait = el("span", "queue-wait", waitText(entry.wait_seconds || 0));
        wait.dataset.wait = "";
        node.appendChild(wait);
        node.appendChild(claimForm(entry.id));
      }
      return node;
    }

    function render(frame) {
      var waiting = frame.waiting || [];
      list.replaceChildren();
      waiting.forEach(function (entry) { list.appendChild(item(entry, true)); });
      if (!waiting.length) list.appendChild(el("li", "queue-empty muted", "Nobody is waiting."));
      mine.replaceChildren();
      (frame.mine || []).forEach(function (entry) { mine.appendChild(item(entry, false)); });
      if (!(frame.mine || []).length) mine.appendChild(el("li", "queue-empty muted", "You hold no conversation."));
      count.textContent = String(waiting.length);
      document.title = (waiting.length ? "(" + waiting.length + ") " : "") + baseTitle;
      root.dataset.waiting = String(waiting.length);
    }

    function tick() {
      list.querySelectorAll(".queue-item").forEach(function (node) {
        if (!node.dataset.since) return;
        var seconds = Math.max(0, Math.round((Date.now() - Date.parse(node.dataset.since)) / 1000));
        var wait = node.querySelector("[data-wait]");
        if (wait) wait.textContent = waitText(seconds);
      });
    }

    list.addEventListener("submit", function (event) {
      var form = event.target;
      if (!form.classList.contains("claim-form")) return;
      event.preventDefault();
      form.querySelector("button").disabled = true;
      var id = form.closest(".queue-item").dataset.id;
      post(form).then(function (answer) {
        if (answer.ok) {
          window.location.assign(base + id + "/");
        } else {
          showError(answer.message);
          form.querySelector("button").disabled = false;
        }
      });
    });

    var retry = 1000;
    function connect() {
      var scheme = location.protocol === "https:" ? "wss://" : "ws://";
      var socket = new WebSocket(scheme + location.host + root.dataset.livePath);
      socket.addEventListener("open", function () {
        retry = 1000;
        status.textContent = "Live: new requests appear here as they arrive.";
        root.dataset.live = "open";
      });
      socket.addEventListener("message", function (event) {
        var frame;
        try { frame = JSON.parse(event.data); } catch (problem) { return; }
        if (frame && frame.type === "queue") render(frame);
      });
      socket.addEventListener("close", function (event) {
        root.dataset.live = "closed";
        if (event.code === 4403) {
          status.textContent = "You no longer have access to the inbox.";
          return;
        }
        status.textContent = "Live updates paused; reconnecting…";
        setTimeout(connect, retry);
        retry = Math.min(retry * 2, 30000);
      });
    }

    setInterval(tick, 1000);
    connect();
  }

  // ONE CONVERSATION

  function conversationPage(panel) {
    var timeline = document.getElementById("timeline");
    var state = document.getElementById("handoff-state");
    var composer = document.getElementById("staff-composer");
    var input = document.getElementById("staff-reply");

    function show(action, visible) {
      var form = panel.querySelector('[data-action="' + action + '"]');
      if (form) form.hidden = !visible;
    }

    function setHolder(holder, mine, text) {
      panel.dataset.holder = holder;
      panel.dataset.mine = mine ? "1" : "0";
      show("claim", holder === "waiting");
      show("return", mine);
      show("close", mine);
      composer.hidden = !mine;
      if (text) state.textContent = text;
      if (mine) input.focus();
    }

    panel.addEventListener("submit", function (event) {
      var form = event.target;
      if (!form.classList.contains("action-form")) return;
      event.preventDefault();
      showError("");
      var action = form.dataset.action;
      post(form).then(function (answer) {
        if (!answer.ok) {
          showError(answer.message);
          return;
        }
        if (action === "claim") setHolder("human", true, "You hold this conversation: the assistant is silent.");
        else if (action === "return") setHolder("agent", false, "Returned to the assistant.");
        else setHolder("closed", false, "Closed.");
      });
    });

    composer.addEventListener("submit", function (event) {
      event.preventDefault();
      var text = input.value.trim();
      if (!text) return;
      var body = new FormData(composer);
      body.set("text", text);
      var button = composer.querySelector("button");
      button.disabled = true;
      post(composer, body).then(function (answer) {
        button.disabled = false;
        if (answer.ok) {
          input.value = "";
          showError("");
        } else {
          showError(answer.message);
        }
        input.focus();
      });
    });
    input.addEventListener("keydown", function (event) {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        composer.requestSubmit();
      }
    });

    function toNewest() {
      window.scrollTo(0, document.documentElement.scrollHeight);
    }

    // Someone else's action (or this staff member's in another tab) arrives as a handoff frame.
    timeline.addEventListener("live:frame", function (event) {
      var frame = event.detail;
      if (panel.dataset.mine === "1") toNewest(); // answering: the newest message and the composer in view
      if (frame.type !== "handoff") return;
      var mine = frame.state === "human" && panel.dataset.mine === "1";
      var text = frame.state === "human" && !mine ? "Held by " + (frame.name || "someone else") + "." : null;
      if (frame.state !== "human") text = frame.state === "waiting" ? "Waiting for a person." :
        frame.state === "closed" ? "Closed." : "The assistant holds this conversation.";
      if (!mine || frame.state !== "human") setHolder(frame.state, mine, text);
    });
    if (panel.dataset.mine === "1") toNewest();
  }

  var inbox = document.getElementById("inbox");
  if (inbox) inboxPage(inbox);
  var panel = document.getElementById("handoff");
  if (panel) conversationPage(panel);
})();
