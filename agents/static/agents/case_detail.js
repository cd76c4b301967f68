// One click puts a suggested reply into the reply box, ready to edit or send.
// (A static file, not an inline script: pages are served with script-src 'self'.)
document.addEventListener("DOMContentLoaded", function () {
  document.querySelectorAll(".use-suggestion").forEach(function (button) {
    button.addEventListener("click", function () {
      var box = document.getElementById("reply-body");
      box.value = button.parentElement.querySelector(".suggestion-text").textContent;
      box.focus();
    });
  });
});
