// The page that sets a new password. The reset token arrives in the URL fragment (#pwr_...),
// which the browser never sends to the server; this copies it into the form's hidden "token"
// field and removes it from the address bar and history.
(function () {
  "use strict";
  var PREFIX = "pwr_";

  function start() {
    var form = document.getElementById("reset-form");
    if (!form) { return; }
    var field = form.querySelector('input[name="token"]');
    var hash = window.location.hash.slice(1);
    if (hash.indexOf(PREFIX) === 0) {
      field.value = hash;
      window.history.replaceState(null, "", window.location.pathname + window.location.search);
    }
    if (!field.value) {
      document.getElementById("no-token").hidden = false;
      Array.prototype.forEach.call(form.querySelectorAll("button, input"), function (el) {
        el.disabled = true;
      });
    }
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
