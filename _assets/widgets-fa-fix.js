// Loaded as a plain synchronous <script>, so it runs before the theme's deferred fontawesome.js.
// "nest" puts the SVG icon inside <i class="fa ..."> instead of replacing the <i>, which
// ipywidgets' Play view looks up on every update.
window.FontAwesomeConfig = Object.assign({}, window.FontAwesomeConfig, { autoReplaceSvg: "nest" });
