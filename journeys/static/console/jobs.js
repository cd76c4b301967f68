/* A background job's page: polls the job's JSON status and moves the progress bar in place;
   when the job has finished, the page is loaded once more to show the result. */
(function () {
  "use strict";

  function poll(box) {
    fetch(box.dataset.statusUrl, {credentials: "same-origin", headers: {"Accept": "application/json"}, cache: "no-store"})
      .then(function (response) { return response.json(); })
      .then(function (data) {
        document.getElementById("job-progress").value = data.percent;
        document.getElementById("job-percent").textContent = data.percent + "%";
        document.getElementById("job-status").textContent = data.status_label;
        document.getElementById("job-message").textContent = data.message;
        box.dataset.polls = String(Number(box.dataset.polls || "0") + 1);
        if (data.finished) { window.location.reload(); } else { setTimeout(function () { poll(box); }, 700); }
      })
      .catch(function () { setTimeout(function () { poll(box); }, 3000); });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var box = document.getElementById("job");
    if (box && box.dataset.status !== "succeeded" && box.dataset.status !== "failed") { poll(box); }
  });
})();
