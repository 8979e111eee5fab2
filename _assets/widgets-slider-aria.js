// ipywidgets' selection sliders announce their option index ("3") to screen readers, while a
// sighted reader sees the readout ("30%"). Copy the readout into the handle's aria-valuetext
// whenever either changes (only when they differ, so the observers settle at once).
(function () {
  function sync(slider) {
    var readout = slider.querySelector(".widget-readout");
    var handle = slider.querySelector("[role=slider]");
    if (!readout || !handle) return;
    var text = readout.textContent.trim();
    if (text && handle.getAttribute("aria-valuetext") !== text) {
      handle.setAttribute("aria-valuetext", text);
    }
  }
  function watch(slider) {
    var readout = slider.querySelector(".widget-readout");
    var handle = slider.querySelector("[role=slider]");
    if (!readout || !handle || slider.dataset.pnormAria) return;
    slider.dataset.pnormAria = "1";
    var update = function () { sync(slider); };
    new MutationObserver(update).observe(readout, {childList: true, characterData: true, subtree: true});
    new MutationObserver(update).observe(handle, {attributes: true, attributeFilter: ["aria-valuetext"]});
    update();
  }
  function scan() {
    document.querySelectorAll(".widget-slider").forEach(watch);
  }
  document.addEventListener("DOMContentLoaded", function () {
    new MutationObserver(scan).observe(document.body, {childList: true, subtree: true});
    scan();
  });
})();
