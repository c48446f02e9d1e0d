// The invitation acceptance page. The token arrives in the URL fragment (#inv_...), which the
// browser never sends to the server; this copies it into the form's hidden "token" field,
// keeps it in sessionStorage (this tab only) so it survives a detour through sign-in, and
// removes it from the address bar and history.
(function () {
  "use strict";
  var KEY = "enginex.invitation";
  var PREFIX = "inv_";

  function remember(value) {
    try {
      if (value) { window.sessionStorage.setItem(KEY, value); }
      else { window.sessionStorage.removeItem(KEY); }
    } catch (e) { /* storage disabled: the link still works when opened directly */ }
  }

  function remembered() {
    try { return window.sessionStorage.getItem(KEY) || ""; } catch (e) { return ""; }
  }

  function start() {
    var section = document.getElementById("invitation");
    if (!section) { return; }
    var fields = document.querySelectorAll('input[name="token"]');
    var token = "";
    var hash = window.location.hash.slice(1);
    if (hash.indexOf(PREFIX) === 0) {
      token = hash;
      window.history.replaceState(null, "", window.location.pathname + window.location.search);
    }
    if (!token && fields.length) { token = fields[0].value; }
    if (!token) { token = remembered(); }
    if (section.getAttribute("data-state") === "invalid") {
      remember("");  // used, expired or revoked: nothing to keep
      return;
    }
    remember(token);
    Array.prototype.forEach.call(fields, function (field) { field.value = token; });
    var form = document.getElementById("accept-form");
    if (!form) { return; }
    if (!token) {
      document.getElementById("no-token").hidden = false;
      Array.prototype.forEach.call(form.querySelectorAll("button, input"), function (el) {
        el.disabled = true;
      });
      return;
    }
    // Sent with the form; the server puts it back into the page if it refuses the form.
    form.addEventListener("submit", function () { remember(""); });
  }

  document.addEventListener("click", function (event) {
    var link = event.target.closest("[data-keeps-invitation]");
    var field = document.querySelector('input[name="token"]');
    if (link && field && field.value) { remember(field.value); }
  });

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
