/* Step editor: rules are checked by the server's rule parser as you type (the error position is
   marked under the field); a delay shows only the fields of the chosen kind of wait; a
   send_message step previews its template in place. Everything works without this file too:
   the form validates on save and the Preview button renders on the server. */
(function () {
  "use strict";

  function getJSON(url, params) {
    var query = new URLSearchParams(params).toString();
    return fetch(url + "?" + query, {credentials: "same-origin", headers: {"Accept": "application/json"},
                                     cache: "no-store"})
      .then(function (response) { return response.json(); });
  }

  function text(tag, content, cls) {
    var el = document.createElement(tag);
    if (cls) { el.className = cls; }
    el.textContent = content;
    return el;
  }

  function showRule(box, rule, data) {
    box.textContent = "";
    box.className = "rule-feedback";
    if (data.empty) { return; }
    if (!data.ok) {
      box.classList.add("rule-error");
      if (data.field) { box.appendChild(text("div", data.error, "rule-message")); return; }  // a bad request, not a rule error
      var where = text("code", "", "rule-where");
      var at = Math.min(data.position, rule.length);
      where.appendChild(document.createTextNode(rule.slice(0, at)));
      where.appendChild(text("mark", rule.slice(at, at + 1) || " "));
      where.appendChild(document.createTextNode(rule.slice(at + 1)));
      box.appendChild(where);
      box.appendChild(text("div", "column " + data.column + ": " + data.error, "rule-message"));
      return;
    }
    box.classList.add("rule-ok");
    box.appendChild(text("span", "✓ valid rule" + (data.references.length ? " · reads " + data.references.join(", ") : ""),
                         "rule-message"));
    data.warnings.forEach(function (w) { box.appendChild(text("div", "⚠ " + w, "rule-warning")); });
  }

  function watchRule(input) {
    var box = document.getElementById(input.id + "-feedback");
    var timer = null;
    var sequence = 0;
    var when = input.dataset.ruleWhen ? document.getElementById(input.dataset.ruleWhen) : null;
    function check() {
      var mine = ++sequence;
      if (when && when.value !== "rule") { box.textContent = ""; box.className = "rule-feedback"; return; }
      var rule = input.value;
      var params = {rule: rule, version: input.dataset.version || "", event: input.dataset.event || "",
                    profile: input.dataset.ruleProfile || ""};
      var eventField = document.getElementById("id_event");
      if (eventField && !params.event) { params.event = eventField.value; }
      getJSON(input.dataset.ruleCheck, params).then(function (data) {
        if (mine === sequence) { showRule(box, rule, data); input.dataset.ruleState = data.ok ? "ok" : "error"; }
      }).catch(function () { box.textContent = ""; });
    }
    input.addEventListener("input", function () { clearTimeout(timer); timer = setTimeout(check, 250); });
    if (when) { when.addEventListener("change", check); }
    if (input.value) { check(); }
  }

  function delayModes(form) {
    var radios = form.querySelectorAll("input[name=mode]");
    if (!radios.length) { return; }
    var owned = {duration: ["duration"], until_local_time: ["until_local_time"],
                 until_attribute: ["until_attribute", "offset"]};
    function update() {
      var chosen = form.querySelector("input[name=mode]:checked");
      Object.keys(owned).forEach(function (mode) {
        owned[mode].forEach(function (name) {
          var row = document.getElementById("row-" + name);
          if (row) { row.hidden = !chosen || chosen.value !== mode; }
        });
      });
    }
    radios.forEach(function (r) { r.addEventListener("change", update); });
    update();
  }

  function preview(panel) {
    var button = document.getElementById("preview-button");
    var result = document.getElementById("preview-result");
    button.addEventListener("click", function (event) {
      event.preventDefault();
      var params = {template: document.getElementById("id_template").value,
                    locale: document.getElementById("id_preview_locale").value,
                    customer: document.getElementById("id_preview_customer").value,
                    event: panel.dataset.event || ""};
      result.textContent = "rendering…";
      getJSON(panel.dataset.previewUrl, params).then(function (data) {
        result.textContent = "";
        if (!data.ok) { result.appendChild(text("p", data.error, "errornote")).id = "preview-error"; return; }
        var card = document.createElement("div");
        card.className = "preview-card";
        card.id = "preview-card";
        card.appendChild(text("p", "For " + data.customer + ", locale " + data.locale, "muted"));
        var subject = text("p", "");
        subject.appendChild(text("b", "Subject: "));
        subject.appendChild(text("span", data.subject)).id = "preview-subject";
        card.appendChild(subject);
        card.appendChild(text("pre", data.body)).id = "preview-body";
        if (data.html) {
          var frame = document.createElement("iframe");
          frame.setAttribute("sandbox", "");
          frame.className = "preview-html";
          frame.title = "HTML preview";
          frame.srcdoc = data.html;
          card.appendChild(frame);
        }
        if (data.missing.length) { card.appendChild(text("p", "Missing variables (rendered empty): " + data.missing.join(", "), "warning")); }
        if (data.errors.length) { card.appendChild(text("p", data.errors.join("; "), "errornote")); }
        result.appendChild(card);
      }).catch(function (error) { result.textContent = "preview failed: " + error.message; });
    });
  }

  // Wire the editors inside `root` (the page, or a form the canvas just put in its side panel).
  function init(root) {
    root.querySelectorAll("[data-rule-check]").forEach(watchRule);
    var form = root.querySelector("#step-form");
    if (form) { delayModes(form); }
    var panel = root.querySelector("#template-preview");
    if (panel) { preview(panel); }
  }

  window.consoleEditor = {init: init};
  document.addEventListener("DOMContentLoaded", function () {
    if (!document.getElementById("canvas")) { init(document); }  // the canvas inits its panel itself
  });
})();
