/*
 * The support chat on the company's own pages: one script tag, nothing else to build or fetch.
 *
 *   <script src="https://support.example.com/static/chat/widget.js" defer
 *           data-user="john_doe" data-signature="HMAC-SHA256 hex of the username"></script>
 *
 * It adds a launcher button (bottom right) that opens the chat of the script's own origin in an iframe
 * (/embed/), remembers open/closed across the page's loads (localStorage), and shows a badge with the
 * replies that arrived while closed. data-user / data-signature (optional) sign the customer in; they
 * travel in the frame URL's fragment, which no server receives. Messages with the frame are exchanged
 * with the chat's origin only, and only from the frame's own window. Styles live in a shadow root: the
 * page's CSS cannot break the launcher, and it adds none to the page.
 */
"use strict";

(() => {
  const script = document.currentScript;
  if (!script || window.__supportChatWidget) return;
  window.__supportChatWidget = true;

  const chatOrigin = new URL(script.src, window.location.href).origin;
  const user = script.dataset.user || "";
  const signature = script.dataset.signature || "";
  const STORE = `support-chat-widget:${chatOrigin}`;
  const SVG = "http://www.w3.org/2000/svg";
  const CHAT_ICON = "M4 5.5A2.5 2.5 0 0 1 6.5 3h11A2.5 2.5 0 0 1 20 5.5v9a2.5 2.5 0 0 1-2.5 2.5H10l-4.2 3.4A.5.5 0 0 1 5 20v-3a2.5 2.5 0 0 1-1-2V5.5Z";
  const CLOSE_ICON = "M6.7 5.3 12 10.6l5.3-5.3 1.4 1.4-5.3 5.3 5.3 5.3-1.4 1.4-5.3-5.3-5.3 5.3-1.4-1.4 5.3-5.3-5.3-5.3z";
  const STYLES = `
    :host { all: initial; }
    .launcher {
      position: fixed; right: 20px; bottom: 20px; z-index: 2147483000;
      display: flex; align-items: center; justify-content: center;
      width: 56px; height: 56px; padding: 0; border: 0; border-radius: 50%;
      color: #fff; background: #2556d9; cursor: pointer;
      box-shadow: 0 4px 12px rgb(16 24 40 / 25%), 0 12px 32px rgb(16 24 40 / 18%);
      transition: transform 120ms ease, background-color 120ms ease;
    }
    .launcher:hover { background: #1c45b5; transform: scale(1.04); }
    .launcher:focus-visible { outline: 3px solid #fff; box-shadow: 0 0 0 6px #2556d9; }
    .badge {
      position: absolute; top: -4px; right: -4px; min-width: 22px; height: 22px; padding: 0 6px;
      box-sizing: border-box; border: 2px solid #fff; border-radius: 11px;
      font: 700 12px/18px system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; text-align: center;
      color: #fff; background: #b42318;
    }
    .frame {
      position: fixed; right: 20px; bottom: 88px; z-index: 2147483000;
      width: 400px; height: min(640px, calc(100vh - 108px)); height: min(640px, calc(100dvh - 108px));
      border: 0; border-radius: 16px; background: #fff;
      box-shadow: 0 4px 12px rgb(16 24 40 / 18%), 0 24px 48px rgb(16 24 40 / 22%);
    }
    [hidden] { display: none !important; }
    @media (max-width: 480px) {
      .frame {
        top: 0; right: 0; bottom: auto; left: 0; width: 100%; border-radius: 0 0 16px 16px;
        height: calc(100vh - 76px); height: calc(100dvh - 76px);
      }
      .launcher { right: 12px; bottom: 10px; }
    }
    @media (prefers-reduced-motion: reduce) { .launcher { transition: none; } }
  `;

  const state = { open: false, started: false, unread: 0, frame: null, frameReady: false };

  function remembered() {
    try {
      return JSON.parse(window.localStorage.getItem(STORE)) || {};
    } catch {
      return {};
    }
  }

  function remember() {
    try {
      window.localStorage.setItem(STORE, JSON.stringify({ open: state.open, started: state.started }));
    } catch {
      // storage refused (private mode): the widget still works, it just forgets
    }
  }

  function icon(path) {
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("viewBox", "0 0 24 24");
    svg.setAttribute("width", "26");
    svg.setAttribute("height", "26");
    svg.setAttribute("aria-hidden", "true");
    svg.setAttribute("focusable", "false");
    const shape = document.createElementNS(SVG, "path");
    shape.setAttribute("fill", "currentColor");
    shape.setAttribute("d", path);
    svg.append(shape);
    return svg;
  }

  // THE ELEMENTS

  const host = document.createElement("div");
  host.id = "support-chat-widget";
  const shadow = host.attachShadow({ mode: "open" });
  if ("adoptedStyleSheets" in shadow) {
    const sheet = new CSSStyleSheet();
    sheet.replaceSync(STYLES);
    shadow.adoptedStyleSheets = [sheet];
  } else {
    const style = document.createElement("style");
    style.textContent = STYLES;
    shadow.append(style);
  }
  const launcher = document.createElement("button");
  launcher.type = "button";
  launcher.className = "launcher";
  launcher.setAttribute("aria-haspopup", "dialog");
  const badge = document.createElement("span");
  badge.className = "badge";
  badge.hidden = true;
  badge.setAttribute("aria-hidden", "true");
  launcher.append(icon(CHAT_ICON), badge);
  shadow.append(launcher);

  function frameUrl(opening) {
    const url = new URL("/embed/", chatOrigin);
    url.searchParams.set("parent", window.location.origin);
    if (opening) url.searchParams.set("start", "1");
    if (user) url.hash = new URLSearchParams({ user, signature }).toString();
    return url.toString();
  }

  function createFrame(opening) {
    const frame = document.createElement("iframe");
    frame.className = "frame";
    frame.title = "Support chat";
    frame.referrerPolicy = "origin";
    frame.hidden = !opening;
    frame.src = frameUrl(opening);
    state.frame = frame;
    state.frameReady = false;
    shadow.prepend(frame);
  }

  function tellFrame(message) {
    if (state.frame?.contentWindow && state.frameReady) {
      state.frame.contentWindow.postMessage({ source: "support-widget", ...message }, chatOrigin);
    }
  }

  function render() {
    launcher.replaceChildren(icon(state.open ? CLOSE_ICON : CHAT_ICON), badge);
    launcher.setAttribute("aria-expanded", String(state.open));
    const unread = state.open ? 0 : state.unread;
    badge.hidden = unread === 0;
    badge.textContent = unread > 9 ? "9+" : String(unread);
    const more = unread ? ` (${unread} unread)` : "";
    launcher.setAttribute("aria-label", state.open ? "Close support chat" : `Open support chat${more}`);
    host.dataset.state = state.open ? "open" : "closed"; // for the page and its tests
    host.dataset.unread = String(unread);
  }

  function setOpen(open, { focus = false } = {}) {
    state.open = open;
    if (open) {
      state.started = true;
      state.unread = 0;
      if (!state.frame) createFrame(true);
      state.frame.hidden = false;
    } else if (state.frame) {
      state.frame.hidden = true;
    }
    tellFrame({ type: open ? "open" : "close", focus });
    remember();
    render();
  }

  // MESSAGES FROM THE FRAME: its origin and its window only.

  window.addEventListener("message", (event) => {
    if (event.origin !== chatOrigin || !state.frame || event.source !== state.frame.contentWindow) return;
    const data = event.data;
    if (!data || typeof data !== "object" || data.source !== "support-chat") return;
    if (data.type === "ready") {
      state.frameReady = true;
      tellFrame({ type: state.open ? "open" : "close" });
    } else if (data.type === "unread" && Number.isInteger(data.count) && data.count >= 0) {
      state.unread = state.open ? 0 : Math.min(data.count, 999);
      render();
    }
  });

  launcher.addEventListener("click", () => setOpen(!state.open, { focus: true }));
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && state.open) setOpen(false);
  });

  function mount() {
    document.body.append(host);
    const saved = remembered();
    state.started = Boolean(saved.started);
    if (saved.open) setOpen(true);
    else {
      // A conversation already begun is loaded hidden, so replies arriving while closed show on the badge.
      if (state.started) createFrame(false);
      render();
    }
  }

  if (document.body) mount();
  else document.addEventListener("DOMContentLoaded", mount, { once: true });
})();
