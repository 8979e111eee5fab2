// @jupyter-widgets/html-manager 1.0.6 typesets widget labels with the MathJax 2 API
// (MathJax.Hub.Queue(["Typeset", MathJax.Hub, el])), but the book loads MathJax 3, so every
// widget with a description threw "Cannot read properties of undefined (reading 'Queue')".
// Map that call onto MathJax 3. The deferred MathJax script has run by DOMContentLoaded, and
// the widgets render later, on window "load".
document.addEventListener("DOMContentLoaded", function () {
  var mj = window.MathJax;
  if (!mj || mj.Hub) return;
  mj.Hub = {
    Queue: function () {
      var elements = [];
      for (var i = 0; i < arguments.length; i++) {
        var cmd = arguments[i];
        if (Array.isArray(cmd) && cmd[0] === "Typeset" && cmd[2]) elements.push(cmd[2]);
      }
      if (!elements.length) return;
      var ready = (mj.startup && mj.startup.promise) || Promise.resolve();
      ready
        .then(function () { return mj.typesetPromise ? mj.typesetPromise(elements) : null; })
        .catch(function (err) { console.warn("MathJax could not typeset a widget label:", err); });
    }
  };
});
