// Sessions list and session page: the Approvals badge of the navigation follows the count
// that each refreshed part of the page carries (data-pending-approvals), so a session that
// starts waiting is counted without a reload. Loaded as a file: the CSP allows no inline script.
(function () {
  "use strict";

  function showCount(value) {
    if (value === null || value === "") { return; }  // this role does not see approvals
    var slot = document.querySelector(".nav-count");
    if (!slot) { return; }
    var count = parseInt(value, 10) || 0;
    var badge = slot.querySelector(".badge");
    if (count <= 0) {
      if (badge) { badge.remove(); }
      return;
    }
    if (!badge) {
      badge = document.createElement("span");
      badge.className = "badge";
      slot.appendChild(badge);
    }
    badge.textContent = String(count);
    badge.title = count + " pending approval" + (count === 1 ? "" : "s");
  }

  // htmx:load fires on every element htmx inserts (the refreshed table or session header).
  document.addEventListener("htmx:load", function (event) {
    var part = event.target;
    if (part && part.hasAttribute && part.hasAttribute("data-pending-approvals")) {
      showCount(part.getAttribute("data-pending-approvals"));
    }
  });

  // Start form: "Read … from a file" puts the chosen text file into its field, where it can
  // still be edited; the file itself is not sent. Shown only when this script runs.
  function say(status, message, bad) {
    status.textContent = message;
    status.classList.toggle("field-error", !!bad);
  }

  function setUpFileFill(box) {
    var field = document.getElementById(box.getAttribute("data-file-fill"));
    var picker = box.querySelector("input[type=file]");
    var status = box.querySelector(".file-status");
    if (!field || !picker || !status || !window.FileReader) { return; }
    box.hidden = false;
    picker.addEventListener("change", function () {
      var file = picker.files && picker.files[0];
      if (!file) { return; }
      var limit = parseInt(field.getAttribute("data-max-chars") || "0", 10) || 0;
      if (limit && file.size > limit * 4) {
        say(status, file.name + " is too large: this input takes up to " + limit +
            " characters. Choose a smaller file.", true);
        picker.value = "";
        return;
      }
      var reader = new FileReader();
      reader.addEventListener("load", function () {
        var content = String(reader.result || "");
        picker.value = "";
        if (content.indexOf("\u0000") !== -1 || content.indexOf("\uFFFD") !== -1) {
          say(status, file.name + " is not a text file in UTF-8. Save it as text (CSV UTF-8) " +
              "and choose it again.", true);
          return;
        }
        if (limit && content.length > limit) {
          say(status, file.name + " has " + content.length + " characters; this input takes " +
              "up to " + limit + ". Choose a smaller file.", true);
          return;
        }
        field.value = content.replace(/\r\n/g, "\n");
        var lines = content ? content.split(/\r?\n/).filter(function (l) { return l; }).length : 0;
        say(status, "Read " + file.name + " (" + lines + " line" + (lines === 1 ? "" : "s") +
            ") into the field.", false);
        field.dispatchEvent(new Event("input", { bubbles: true }));
      });
      reader.addEventListener("error", function () {
        picker.value = "";
        say(status, "Could not read " + file.name + "; choose it again.", true);
      });
      reader.readAsText(file);
    });
  }

  Array.prototype.forEach.call(document.querySelectorAll("[data-file-fill]"), setUpFileFill);
})();
