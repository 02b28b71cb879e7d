/*
 * The chat inside the company's page (loaded by /embed/ only, before chat.js).
 *
 * 1. A signed-in customer: widget.js puts `user` and `signature` in this frame's URL fragment (never sent
 *    to a server); they go onto #chat for chat.js's session POST, and leave the address bar at once.
 * 2. Talks to the parent page only at data-parent-origin (the server puts it there only when
 *    CHAT_WIDGET_ORIGINS lists it), and only listens to that origin's window: "open" / "close" from the
 *    launcher, and in return "ready" and "unread" counts for the badge.
 */
"use strict";

(() => {
  const root = document.getElementById("chat");
  if (!root || root.dataset.embed !== "1") return;

  const fragment = new URLSearchParams(window.location.hash.slice(1));
  if (fragment.get("user")) {
    root.dataset.signedUser = fragment.get("user");
    root.dataset.signature = fragment.get("signature") || "";
  }
  if (window.location.hash) {
    window.history.replaceState(null, "", window.location.pathname + window.location.search);
  }

  const parentOrigin = root.dataset.parentOrigin || "";
  if (!parentOrigin || window.parent === window) return;

  let open = new URLSearchParams(window.location.search).get("start") === "1";
  let unread = 0;

  function tell(message) {
    window.parent.postMessage({ source: "support-chat", ...message }, parentOrigin);
  }

  window.addEventListener("message", (event) => {
    if (event.origin !== parentOrigin || event.source !== window.parent) return;
    const data = event.data;
    if (!data || typeof data !== "object" || data.source !== "support-widget") return;
    if (data.type === "open") {
      open = true;
      unread = 0;
      tell({ type: "unread", count: 0 });
      document.dispatchEvent(new CustomEvent("chat:start"));
      if (data.focus) document.getElementById("chat-input")?.focus();
    } else if (data.type === "close") {
      open = false;
    }
  });

  // Replies that arrive while the widget is closed (or the host tab hidden) are counted for the badge.
  document.addEventListener("chat:message", () => {
    if (open && document.visibilityState === "visible") return;
    unread += 1;
    tell({ type: "unread", count: unread });
  });

  tell({ type: "ready" });
})();
