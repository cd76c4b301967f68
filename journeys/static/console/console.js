/* Live ops dashboard: fetches the server-rendered panels every N seconds, in place.
   No library and nothing from the internet: the charts are SVG drawn by the server. */
(function () {
  "use strict";

  function refresh(box) {
    var status = box.querySelector("[data-role=status]");
    var count = box.querySelector("[data-role=count]");
    if (box.dataset.busy === "1") { return; }
    box.dataset.busy = "1";
    fetch(box.dataset.src, {credentials: "same-origin", headers: {"Accept": "application/json"}, cache: "no-store"})
      .then(function (response) {
        if (!response.ok) { throw new Error("HTTP " + response.status); }
        return response.json();
      })
      .then(function (data) {
        box.querySelector("[data-role=panels]").innerHTML = data.html;
        box.dataset.generatedAt = data.generated_at;
        box.classList.remove("stale");
        if (status) { status.textContent = "updated " + data.generated_label; }
        if (count) { count.textContent = String(Number(count.textContent || "0") + 1); }
      })
      .catch(function (error) {
        box.classList.add("stale");
        if (status) { status.textContent = "refresh failed (" + error.message + "), showing older figures"; }
      })
      .finally(function () { box.dataset.busy = "0"; });
  }

  function start(box) {
    var seconds = Math.max(1, Number(box.dataset.refresh) || 15);
    if (box.hasAttribute("data-load-now")) { refresh(box); }
    window.setInterval(function () {
      if (!document.hidden) { refresh(box); }
    }, seconds * 1000);
    document.addEventListener("visibilitychange", function () {
      if (!document.hidden) { refresh(box); }
    });
  }

  document.querySelectorAll("[data-live-dashboard]").forEach(start);
})();
