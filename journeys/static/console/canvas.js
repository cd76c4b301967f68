/* The canvas: a draft's graph built and changed by drawing it.

   The server draws the graph (SVG) and validates it; this script turns pointer and keyboard
   gestures into small JSON commands (POST /console/versions/<id>/canvas/) and swaps in the
   drawing the server answers with. Changes are sent one at a time, each with the token of the
   drawing it was made on ("loaded"): the server refuses a change made on a drawing older than
   the draft (another tab, another editor) and answers with the draft as it is. A step's own
   form opens in the side panel (editor.js wires its rule editor and template preview); it
   carries a token of the step it was opened with. An answer that is not JSON (an expired
   session, a refused security token) is said in the status line, the form kept as typed.
   The reason for the session's changes is asked once.
   No library, nothing from the internet, no inline script or handler (Content-Security-Policy). */
(function () {
  "use strict";

  var root = document.getElementById("canvas");
  if (!root) { return; }
  var data = JSON.parse(document.getElementById("canvas-data").textContent);
  var urls = data.urls;
  var surface = document.getElementById("canvas-surface");
  var panel = document.getElementById("canvas-panel-body");
  var statusLine = document.getElementById("canvas-status");
  var undoButton = document.getElementById("canvas-undo");
  var reasonLine = document.getElementById("canvas-reason");
  var dialog = document.getElementById("canvas-reason-dialog");
  var reasonInput = document.getElementById("canvas-reason-input");
  var reasonKey = "canvas-reason:" + data.version;
  var reason = window.sessionStorage.getItem(reasonKey) || "";
  var help = panel.innerHTML;  // what the panel says while nothing is selected
  var selected = null;  // {type: "step", key} | {type: "edge", id} | {type: "start"}
  var GAP = 70;
  var DRAG_START = 4;  // pixels before a press becomes a drag

  // ------------------------------------------------------------------ small helpers

  function say(text, isError) {
    statusLine.textContent = text || "";
    statusLine.classList.toggle("error", !!isError);
  }

  function svg() { return surface.querySelector("svg.workflow-graph"); }

  function nodeData(key) {
    for (var i = 0; i < data.nodes.length; i++) { if (data.nodes[i].key === key) { return data.nodes[i]; } }
    return null;
  }

  function edgeData(id) {
    for (var i = 0; i < data.edges.length; i++) { if (String(data.edges[i].id) === String(id)) { return data.edges[i]; } }
    return null;
  }

  function nodeElement(key) {
    var found = null;
    surface.querySelectorAll("g.node").forEach(function (g) { if (g.dataset.key === key) { found = g; } });
    return found;
  }

  function toSvg(clientX, clientY) {
    var s = svg();
    var point = s.createSVGPoint();
    point.x = clientX;
    point.y = clientY;
    return point.matrixTransform(s.getScreenCTM().inverse());
  }

  function positions() {
    var out = {};
    data.nodes.forEach(function (n) { out[n.key] = [n.x, n.y]; });
    return out;
  }

  function el(tag, attrs, text) {
    var e = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) { e.setAttribute(k, attrs[k]); });
    if (text !== undefined) { e.textContent = text; }
    return e;
  }

  // ------------------------------------------------------------------ the reason, asked once

  function showReason() {
    reasonLine.textContent = "";
    reasonLine.appendChild(document.createTextNode("Reason for this session's changes: "));
    reasonLine.appendChild(el("b", {id: "canvas-reason-text"}, reason || "asked at the first change"));
    if (reason) {
      var change = el("button", {type: "button", id: "canvas-reason-change", "class": "link"}, "change");
      change.addEventListener("click", function () { askReason(true).catch(function () {}); });
      reasonLine.appendChild(document.createTextNode(" "));
      reasonLine.appendChild(change);
    }
  }

  function askReason(again) {
    if (reason && !again) { return Promise.resolve(reason); }
    return new Promise(function (resolve, reject) {
      reasonInput.value = reason;
      function closed() {
        dialog.removeEventListener("close", closed);
        var value = reasonInput.value.trim();
        if (dialog.returnValue === "ok" && value) {
          reason = value;
          window.sessionStorage.setItem(reasonKey, reason);
          showReason();
          resolve(reason);
        } else {
          say("Nothing changed: a reason is needed for changes (it goes into the history).", true);
          reject(new Error("no reason"));
        }
      }
      dialog.addEventListener("close", closed);
      dialog.showModal();
      reasonInput.focus();
    });
  }

  // ------------------------------------------------------------------ talking to the server

  // Why an answer is not the JSON the canvas expects: an expired session is sent to the sign-in
  // page, a refused security token (CSRF) is a 403 page, a deleted step a 404.
  function unreadable(response, what) {
    if (response.redirected && /\/login\//.test(response.url)) {
      return what + ": the server answered with its sign-in page — your session has expired; " +
        "reload the page and sign in";
    }
    if (response.status === 403) {
      return what + ": the server answered 403 — your session may have expired or the security token was refused; " +
        "reload the page and sign in";
    }
    if (response.status === 404) {
      return what + ": the server answered 404 — it is no longer there " +
        "(deleted in another tab or by another editor?); reload the page";
    }
    return what + ": the server answered " + response.status + " without details; reload the page and try again";
  }

  // Send a request; its answer as an object whatever came back: the endpoint's JSON, or
  // {ok: false, message} saying why there is none (no connection, the sign-in page, a 403 page).
  function send(url, options, what) {
    return fetch(url, options).then(function (response) {
      var json = !response.redirected && /json/.test(response.headers.get("Content-Type") || "");
      return (json ? response.json() : Promise.reject(null)).catch(function () {
        return {ok: false, field: "", message: unreadable(response, what)};
      });
    }, function () {
      return {ok: false, field: "", message: what + ": the server could not be reached (connection lost?); try again"};
    });
  }

  // One change at a time: each is sent once the one before it is answered, so that it carries
  // the token of the drawing as the server last drew it.
  var queue = Promise.resolve();

  function inTurn(work) {
    var turn = queue.then(work);
    queue = turn.catch(function () { return null; });
    return turn;
  }

  function answered(answer) {
    if (!answer.ok) {
      if (answer.conflict && answer.svg) { apply(answer); }  // the draft as it is now
      say(answer.message || "refused", true);
      if (answer.field === "reason") { reason = ""; window.sessionStorage.removeItem(reasonKey); showReason(); }
      return Promise.reject(answer);
    }
    apply(answer);
    return answer;
  }

  // The drawing as the server last drew it: put back when a change is refused (a dragged box
  // returns to where it is stored).
  var drawn = {svg: surface.innerHTML, graph: JSON.stringify(data)};

  function restore() {
    surface.innerHTML = drawn.svg;
    data = JSON.parse(drawn.graph);
    decorate();
    markSelected();
  }

  function command(body) {
    return inTurn(function () {
      return askReason().then(function (why) {
        body.reason = why;
        body.loaded = data.loaded;
        say("saving…");
        return send(urls.command, {
          method: "POST", credentials: "same-origin", cache: "no-store",
          headers: {"Content-Type": "application/json", "Accept": "application/json", "X-CSRFToken": root.dataset.csrf},
          body: JSON.stringify(body)
        }, "Nothing changed");
      }).then(answered);
    }).catch(function (refusal) {
      restore();
      return Promise.reject(refusal);
    });
  }

  function quietly(promise) { return promise.catch(function () { return null; }); }

  function apply(answer) {
    surface.innerHTML = answer.svg;
    data = answer.graph;
    data.urls = urls;
    data.loaded = answer.loaded;
    drawn = {svg: answer.svg, graph: JSON.stringify(data)};
    undoButton.disabled = !answer.undo;
    showIssues(answer.issues);
    decorate();
    say(answer.message);
    if (answer.focus && nodeElement(answer.focus)) { select({type: "step", key: answer.focus}, true); }
    else if (selected && selected.type === "step" && !nodeData(selected.key)) { select(null); }
    else { markSelected(); }
  }

  function showIssues(issues) {
    var list = document.getElementById("canvas-issue-list");
    list.textContent = "";
    if (!issues.length) { list.appendChild(el("li", {"class": "ok"}, "No problems found.")); }
    issues.forEach(function (issue) {
      var item = el("li", {"class": issue.level});
      if (issue.step) {
        var link = el("button", {type: "button", "class": "link issue-step"}, issue.step);
        link.addEventListener("click", function () { select({type: "step", key: issue.step}, true); });
        item.appendChild(link);
        item.appendChild(document.createTextNode(": " + issue.message));
      } else {
        item.textContent = issue.text;
      }
      list.appendChild(item);
    });
  }

  // Steps are focusable buttons; arrow labels too (the server draws plain SVG).
  function decorate() {
    surface.querySelectorAll("g.node").forEach(function (g) {
      var n = nodeData(g.dataset.key);
      g.setAttribute("tabindex", "0");
      g.setAttribute("role", "button");
      g.setAttribute("aria-label", "step " + n.key + ", " + n.label + (n.summary ? ": " + n.summary : "") +
        (n.issues.length ? ", " + n.issues.length + " problem(s): " + n.issues.map(function (i) { return i.message; }).join("; ") : ""));
    });
    surface.querySelectorAll("g.edge").forEach(function (g) {
      g.setAttribute("tabindex", "0");
      g.setAttribute("role", "button");
      g.setAttribute("aria-label", g.dataset.edge === "start" ? "start: entry step" :
        "edge " + g.dataset.source + " " + g.dataset.outcome + " to " + g.dataset.target);
    });
    var start = surface.querySelector("g.start");
    if (start) {
      start.setAttribute("tabindex", "0");
      start.setAttribute("role", "button");
      start.setAttribute("aria-label", "start: trigger and entry settings");
    }
  }

  function markSelected() {
    surface.querySelectorAll(".selected").forEach(function (g) { g.classList.remove("selected"); });
    if (!selected) { return; }
    var target = selected.type === "step" ? nodeElement(selected.key) :
      selected.type === "start" ? surface.querySelector("g.start") :
      surface.querySelector('g.edge[data-edge="' + selected.id + '"]');
    if (target) { target.classList.add("selected"); }
  }

  // ------------------------------------------------------------------ the side panel

  function showPanel(html) {
    delete panel.dataset.url;
    panel.innerHTML = html;
    if (window.consoleEditor) { window.consoleEditor.init(panel); }
  }

  var loading = {url: "", promise: null};

  // The panel for `url`; a second ask while it loads (a click on the step just added) waits for the first.
  function loadPanel(url, again) {
    if (loading.url === url && (loading.promise || (!again && panel.dataset.url === url))) {
      return loading.promise || Promise.resolve();
    }
    loading.url = url;
    loading.promise = fetch(url, {credentials: "same-origin", cache: "no-store", headers: {"Accept": "text/html"}})
      .then(function (response) {
        // a panel answers 200 HTML from its own address; anything else (the sign-in page of an
        // expired session, a 404 of a deleted step) is said, not shown as the panel
        if (!response.ok || response.redirected) { return {problem: unreadable(response, "Could not open it")}; }
        return response.text().then(function (html) { return {html: html}; });
      }, function () {
        return {problem: "Could not open it: the server could not be reached (connection lost?); try again"};
      })
      .then(function (got) {
        loading.promise = null;
        if (loading.url !== url) { return; }  // another panel was asked for meanwhile
        if (got.problem) {
          loading.url = "";  // asking again tries again
          panel.textContent = "";
          delete panel.dataset.url;
          panel.appendChild(el("p", {"class": "errornote", id: "canvas-panel-problem"}, got.problem));
          say(got.problem, true);
          return;
        }
        showPanel(got.html);
        panel.dataset.url = url;
        wirePanel(url);
      });
    return loading.promise;
  }

  function stepUrl(n) { return urls.step.replace(/\/steps\/0\/$/, "/steps/" + n.id + "/"); }

  function select(what, open, again) {
    selected = what;
    markSelected();
    if (!what) { panel.innerHTML = help; delete panel.dataset.url; loading.url = ""; return Promise.resolve(); }
    if (what.type === "step") {
      var n = nodeData(what.key);
      var g = nodeElement(what.key);
      if (g && open !== false) { g.focus(); }
      return loadPanel(stepUrl(n), again);
    }
    if (what.type === "start") { return loadPanel(urls.settings, again); }
    return edgePanel(edgeData(what.id));
  }

  // A side-panel form saved; when it is not (refused, a stale form, an expired session), the
  // status line says why and the form keeps what was typed in it.
  function submitForm(form, url) {
    return inTurn(function () {
      return askReason().then(function (why) {
        var field = form.querySelector("input[name=change_reason]");
        if (field) { field.value = why; }
        say("saving…");
        return send(url, {method: "POST", credentials: "same-origin", body: new FormData(form),
                          headers: {"Accept": "application/json", "X-CSRFToken": root.dataset.csrf}}, "Not saved");
      }).then(function (answer) {
        if (answer.panel) { showPanel(answer.panel); panel.dataset.url = url; wirePanel(url); }
        if (!answer.ok) {
          if (answer.field === "reason") { reason = ""; window.sessionStorage.removeItem(reasonKey); showReason(); }
          if (answer.conflict) { delete panel.dataset.url; }  // opening it again loads it as it is now
          var kept = answer.panel || /your text is still in the form/.test(answer.message || "");
          say((answer.message || "Not saved") + (kept ? "" : " (your text is still in the form)"), true);
          return null;
        }
        var holder = form.closest("[data-step-id]");
        if (holder && selected && selected.type === "step") {  // the key may have changed: follow the step's id
          var renamed = answer.graph.nodes.filter(function (n) { return String(n.id) === holder.dataset.stepId; })[0];
          if (renamed) { selected = {type: "step", key: renamed.key}; }
        }
        apply(answer);
        return answer;
      });
    });
  }

  function wirePanel(url) {
    var form = panel.querySelector("form.canvas-form");
    if (form) {
      form.addEventListener("submit", function (event) {
        event.preventDefault();
        quietly(submitForm(form, url));
      });
    }
    panel.querySelectorAll("select.connect-select").forEach(function (choice) {
      choice.addEventListener("change", function () {
        var key = panel.querySelector("[data-step]").dataset.step;
        var outcome = choice.dataset.outcome;
        var done = choice.value ? command({op: "connect", source: key, outcome: outcome, target: choice.value}) :
          disconnect(key, outcome);
        quietly(done.then(function () { return select({type: "step", key: key}, false, true); }));
      });
    });
    var remove = panel.querySelector("#canvas-delete-step");
    if (remove) {
      remove.addEventListener("click", function () {
        deleteStep(panel.querySelector("[data-step]").dataset.step);
      });
    }
  }

  function disconnect(key, outcome) {
    var edge = data.edges.filter(function (e) { return e.source === key && e.outcome === outcome; })[0];
    return edge ? command({op: "disconnect", edge: edge.id}) : Promise.resolve(null);
  }

  function deleteStep(key) {
    var edges = data.edges.filter(function (e) { return e.source === key || e.target === key; }).length;
    if (!window.confirm("Delete step " + key + (edges ? " and its " + edges + " edge(s)" : "") + "?")) { return; }
    quietly(command({op: "delete_step", step: key}).then(function () { select(null); }));
  }

  function edgePanel(edge) {
    panel.textContent = "";
    delete panel.dataset.url;
    loading.url = "";
    if (!edge) { return; }
    var source = nodeData(edge.source);
    var box = el("div", {"class": "canvas-edge", id: "canvas-edge", "data-edge": edge.id});
    box.appendChild(el("h2", {}, edge.source + " → " + edge.target));
    var row = el("div", {"class": "form-row"});
    row.appendChild(el("label", {"for": "edge-outcome"}, "Leaves " + edge.source + " when "));
    var choice = el("select", {id: "edge-outcome"});
    var outcomes = source.outcomes.indexOf(edge.outcome) < 0 ? source.outcomes.concat([edge.outcome]) : source.outcomes;
    outcomes.forEach(function (o) {
      var option = el("option", {value: o}, o);
      if (o === edge.outcome) { option.selected = true; }
      choice.appendChild(option);
    });
    row.appendChild(choice);
    box.appendChild(row);
    var buttons = el("div", {"class": "submit-row"});
    var save = el("button", {type: "button", "class": "default", id: "edge-relabel"}, "Change outcome");
    var remove = el("button", {type: "button", "class": "deletelink", id: "edge-delete"}, "Delete edge");
    save.addEventListener("click", function () {
      quietly(command({op: "relabel", edge: edge.id, outcome: choice.value}).then(function () {
        select({type: "edge", id: edge.id});
      }));
    });
    remove.addEventListener("click", function () {
      quietly(command({op: "disconnect", edge: edge.id}).then(function () { select(null); }));
    });
    buttons.appendChild(save);
    buttons.appendChild(remove);
    box.appendChild(buttons);
    panel.appendChild(box);
    choice.focus();
  }

  // ------------------------------------------------------------------ adding steps from the palette

  // Where a new step goes: after `after` ("key:outcome"), on edge `insert`, or free at (x, y).
  function addStep(kind, where) {
    where = spot(where);
    var body = {op: "add_step", kind: kind, x: Math.max(0, Math.round(where.x)), y: Math.max(0, Math.round(where.y)),
                positions: data.nodes.length ? positions() : undefined};
    if (where.after) { body.after = where.after; }
    if (where.insert) { body.insert = where.insert; }
    return quietly(command(body));
  }

  function below(n) { return {x: n.x, y: n.y + n.h + GAP}; }

  // The nearest place right of (x, y) where a new box overlaps no other.
  function spot(where) {
    var w = 180;
    var h = 84;
    var clash = function (x, y) {
      return data.nodes.some(function (n) { return x < n.x + n.w + 20 && n.x < x + w + 20 && y < n.y + n.h + 20 && n.y < y + h + 20; });
    };
    var x = Math.max(0, where.x);
    while (clash(x, where.y)) { x += w + 40; }
    return Object.assign({}, where, {x: x});
  }

  // Below a step, under the outcome it hangs from: its outcomes fan out left to right.
  function underPort(n, outcome) {
    var i = Math.max(0, n.outcomes.indexOf(outcome));
    var count = Math.max(1, n.outcomes.length);
    return {x: n.x + (i - (count - 1) / 2) * (n.w + 40), y: n.y + n.h + GAP};
  }

  function freeSpot() {
    if (!data.nodes.length) { return {x: 30 + 120 - 90, y: 30 + 40 + GAP}; }
    var lowest = data.nodes.reduce(function (a, b) { return b.y > a.y ? b : a; });
    return below(lowest);
  }

  // A click (or Enter) on a kind: after the selected step's first free outcome, else below the rest.
  function addByClick(kind) {
    var n = selected && selected.type === "step" ? nodeData(selected.key) : null;
    if (n) {
      var used = data.edges.filter(function (e) { return e.source === n.key; }).map(function (e) { return e.outcome; });
      var free = n.outcomes.filter(function (o) { return used.indexOf(o) < 0; })[0];
      if (free) { return addStep(kind, Object.assign(underPort(n, free), {after: n.key + ":" + free})); }
    }
    return addStep(kind, freeSpot());
  }

  function dropTarget(clientX, clientY) {
    var hit = document.elementFromPoint(clientX, clientY);
    if (!hit || !surface.contains(hit)) { return null; }
    var p = toSvg(clientX, clientY);
    var port = hit.closest("g.port");
    if (port) {
      var parent = nodeData(port.dataset.step);
      return Object.assign(underPort(parent, port.dataset.outcome), {after: port.dataset.step + ":" + port.dataset.outcome});
    }
    var edge = hit.closest("g.edge");
    var where = {x: p.x - 90, y: p.y - 30};
    if (edge) { where.insert = edge.dataset.edge; }
    return where;
  }

  function paletteDrag(button, event) {
    var startX = event.clientX;
    var startY = event.clientY;
    var ghost = null;
    button.setPointerCapture(event.pointerId);
    function move(e) {
      if (!ghost && Math.abs(e.clientX - startX) + Math.abs(e.clientY - startY) < DRAG_START) { return; }
      if (!ghost) {
        ghost = el("div", {"class": "palette-ghost", "aria-hidden": "true"}, button.textContent);
        ghost.style.background = button.dataset.colour;
        document.body.appendChild(ghost);
      }
      ghost.style.left = e.clientX + 8 + "px";
      ghost.style.top = e.clientY + 8 + "px";
    }
    function up(e) {
      button.removeEventListener("pointermove", move);
      button.removeEventListener("pointerup", up);
      button.removeEventListener("pointercancel", up);
      if (!ghost) { return; }  // a click: the click handler adds it
      ghost.remove();
      button.dataset.dragged = "1";
      var where = dropTarget(e.clientX, e.clientY);
      if (where) { addStep(button.dataset.kind, where); } else { say("Drop it on the drawing (an arrow, an outcome or empty space)."); }
    }
    button.addEventListener("pointermove", move);
    button.addEventListener("pointerup", up);
    button.addEventListener("pointercancel", up);
  }

  document.querySelectorAll(".palette-item").forEach(function (button) {
    var swatch = el("span", {"class": "swatch", "aria-hidden": "true"});
    swatch.style.background = button.dataset.colour;
    button.insertBefore(swatch, button.firstChild);
    button.addEventListener("pointerdown", function (event) {
      if (event.button === 0) { paletteDrag(button, event); }
    });
    button.addEventListener("click", function () {
      if (button.dataset.dragged) { delete button.dataset.dragged; return; }
      addByClick(button.dataset.kind);
    });
  });

  // ------------------------------------------------------------------ moving steps, connecting outcomes

  function place(key, x, y) {
    var n = nodeData(key);
    n.x = Math.max(0, Math.round(x));
    n.y = Math.max(0, Math.round(y));
    return quietly(command({op: "place", positions: positions()}));
  }

  function dragNode(g, event) {
    var n = nodeData(g.dataset.key);
    var start = toSvg(event.clientX, event.clientY);
    var moved = false;
    surface.setPointerCapture(event.pointerId);
    function move(e) {
      var p = toSvg(e.clientX, e.clientY);
      if (!moved && Math.abs(p.x - start.x) + Math.abs(p.y - start.y) < DRAG_START) { return; }
      moved = true;
      g.classList.add("dragging");
      g.setAttribute("transform", "translate(" + (p.x - start.x) + "," + (p.y - start.y) + ")");
    }
    function up(e) {
      surface.removeEventListener("pointermove", move);
      surface.removeEventListener("pointerup", up);
      if (!moved) { select({type: "step", key: n.key}); return; }
      var p = toSvg(e.clientX, e.clientY);
      place(n.key, n.x + p.x - start.x, n.y + p.y - start.y);
    }
    surface.addEventListener("pointermove", move);
    surface.addEventListener("pointerup", up);
  }

  function dragPort(port, event) {
    var from = port.getBBox();
    var line = document.createElementNS("http://www.w3.org/2000/svg", "line");
    line.setAttribute("class", "drag-line");
    line.setAttribute("x1", from.x + from.width / 2);
    line.setAttribute("y1", from.y + from.height / 2);
    line.setAttribute("x2", from.x + from.width / 2);
    line.setAttribute("y2", from.y + from.height / 2);
    svg().appendChild(line);
    surface.setPointerCapture(event.pointerId);
    function move(e) {
      var p = toSvg(e.clientX, e.clientY);
      line.setAttribute("x2", p.x);
      line.setAttribute("y2", p.y);
    }
    function up(e) {
      surface.removeEventListener("pointermove", move);
      surface.removeEventListener("pointerup", up);
      line.remove();
      var hit = document.elementFromPoint(e.clientX, e.clientY);
      var target = hit && hit.closest("g.node");
      if (!target) { say("Drop the outcome on a step to connect it."); return; }
      quietly(command({op: "connect", source: port.dataset.step, outcome: port.dataset.outcome,
                       target: target.dataset.key}));
    }
    surface.addEventListener("pointermove", move);
    surface.addEventListener("pointerup", up);
  }

  var pressed = null;  // what the last press was on (a captured pointer's click lands on the surface)

  surface.addEventListener("pointerdown", function (event) {
    pressed = event.target.closest("g.node, g.port, g.start, g.edge");
    if (event.button !== 0) { return; }
    var port = event.target.closest("g.port");
    if (port) { event.preventDefault(); dragPort(port, event); return; }
    var g = event.target.closest("g.node");
    if (g) { event.preventDefault(); dragNode(g, event); }
  });

  surface.addEventListener("click", function (event) {
    if (event.target.closest("a")) { event.preventDefault(); }  // the drawing's links open the panel here
    if (event.target.closest("g.start")) { select({type: "start"}); return; }
    var edge = event.target.closest("g.edge");
    if (edge && edge.dataset.edge !== "start") { select({type: "edge", id: edge.dataset.edge}); return; }
    if (!pressed && event.target.closest("svg") && selected) { select(null); }  // empty space: nothing selected
  });

  // ------------------------------------------------------------------ keyboard

  var moveTimer = null;

  function nudge(g, dx, dy) {
    var n = nodeData(g.dataset.key);
    n.x = Math.max(0, n.x + dx);
    n.y = Math.max(0, n.y + dy);
    var shift = (g.dataset.dx ? Number(g.dataset.dx) : 0) + dx;
    var down = (g.dataset.dy ? Number(g.dataset.dy) : 0) + dy;
    g.dataset.dx = shift;
    g.dataset.dy = down;
    g.setAttribute("transform", "translate(" + shift + "," + down + ")");
    clearTimeout(moveTimer);
    moveTimer = setTimeout(function () {
      quietly(command({op: "place", positions: positions()}).then(function () {
        var again = nodeElement(n.key);
        if (again) { again.focus(); }
      }));
    }, 600);
  }

  surface.addEventListener("keydown", function (event) {
    var g = event.target.closest("g.node");
    var key = event.key;
    if (event.target.closest("g.start") && (key === "Enter" || key === " ")) {
      event.preventDefault();
      select({type: "start"});
      return;
    }
    var edge = event.target.closest("g.edge");
    if (edge && edge.dataset.edge !== "start" && (key === "Enter" || key === " ")) {
      event.preventDefault();
      select({type: "edge", id: edge.dataset.edge});
      return;
    }
    if (!g) { return; }
    var step = event.shiftKey ? 50 : 10;
    var moves = {ArrowLeft: [-step, 0], ArrowRight: [step, 0], ArrowUp: [0, -step], ArrowDown: [0, step]};
    if (moves[key]) {
      event.preventDefault();
      nudge(g, moves[key][0], moves[key][1]);
    } else if (key === "Enter" || key === " ") {
      event.preventDefault();
      select({type: "step", key: g.dataset.key});
    } else if (key === "Delete" || key === "Backspace") {
      event.preventDefault();
      deleteStep(g.dataset.key);
    } else if (key === "c" || key === "C") {
      event.preventDefault();
      quietly(select({type: "step", key: g.dataset.key}, false).then(function () {
        var first = panel.querySelector("select.connect-select");
        if (first) { first.focus(); }
      }));
    }
  });

  function undo() { return quietly(command({op: "undo"})); }

  undoButton.addEventListener("click", undo);
  document.getElementById("canvas-settings-button").addEventListener("click", function () { select({type: "start"}); });
  document.addEventListener("keydown", function (event) {
    var typing = event.target.closest("input, textarea, select, [contenteditable]");
    if ((event.ctrlKey || event.metaKey) && (event.key === "z" || event.key === "Z") && !typing) {
      event.preventDefault();
      if (!undoButton.disabled) { undo(); }
    } else if (event.key === "Escape" && !typing && selected) {
      select(null);
    }
  });

  showReason();
  decorate();
})();
