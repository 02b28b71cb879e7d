// The customer's rating of the conversation (templates/chat/_feedback.html).
// chat.js announces the conversation with a "chat:conversation" event; a rating can then be given
// (and changed) at any time. POSTs JSON to /feedback/ with the CSRF token; text only via textContent.
(function () {
  "use strict";
  var root = document.getElementById("feedback");
  if (!root) return;
  var form = document.getElementById("feedback-form");
  var more = document.getElementById("feedback-more");
  var comment = document.getElementById("feedback-comment");
  var status = document.getElementById("feedback-status");
  var buttons = Array.prototype.slice.call(root.querySelectorAll(".feedback-button"));
  var conversation = null;
  var rating = null;

  function csrfToken() {
    var field = form.querySelector("input[name=csrfmiddlewaretoken]");
    if (field && field.value) return field.value;
    var match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
    return match ? decodeURIComponent(match[1]) : "";
  }

  function show(text, isError) {
    status.textContent = text;
    status.classList.toggle("is-error", Boolean(isError));
  }

  function press(chosen) {
    buttons.forEach(function (button) {
      button.setAttribute("aria-pressed", String(button.dataset.rating === chosen));
    });
  }

  function send() {
    if (!conversation || !rating) return;
    var sent = { conversation: conversation, rating: rating, comment: comment.value.trim() };
    fetch(root.dataset.feedbackUrl, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRFToken": csrfToken() },
      body: JSON.stringify(sent),
    })
      .then(function (response) {
        if (response.ok) {
          show(sent.comment ? "Thank you for your feedback and your comment!" : "Thank you for your feedback!");
          root.dataset.state = "sent";
        } else if (response.status === 404) {
          show("This conversation can't be rated any more. Start a new one to rate it.", true);
        } else {
          show("Sorry, your feedback could not be sent. Please try again.", true);
        }
      })
      .catch(function () {
        show("Sorry, your feedback could not be sent. Check your connection and try again.", true);
      });
  }

  buttons.forEach(function (button) {
    button.addEventListener("click", function () {
      rating = button.dataset.rating;
      press(rating);
      more.hidden = false;
      send();
    });
  });

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    if (!rating) {
      show("Choose Yes or No first.", true);
      return;
    }
    send();
  });

  document.addEventListener("chat:conversation", function (event) {
    var id = event.detail && event.detail.id;
    if (!id) return;
    if (id !== conversation) {
      conversation = id;
      rating = null;
      press(null);
      comment.value = "";
      more.hidden = true;
      show("");
      delete root.dataset.state;
    }
    root.hidden = false;
  });
})();
