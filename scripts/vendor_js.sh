#!/usr/bin/env bash
# Vendor the JavaScript the book needs to work offline into _assets/vendor/ (gitignored):
#   require.js 2.3.4, @jupyter-widgets/html-manager 1.0.6 (embed-amd.js + fonts), MathJax 3.2.2.
# Uses only `npm pack` (the npm registry). Idempotent: does nothing when the folder is complete.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENDOR="$ROOT/_assets/vendor"
STAMP="$VENDOR/.complete"
PACKAGES=(requirejs@2.3.4 @jupyter-widgets/html-manager@1.0.6 mathjax@3.2.2)
STAMP_TEXT="${PACKAGES[*]}"
REQUIRED=(
  require.js
  html-manager/embed-amd.js
  mathjax/tex-mml-chtml.js
  mathjax/output/chtml.js
  mathjax/output/chtml/fonts/tex.js
  mathjax/ui/menu.js
  mathjax/a11y/assistive-mml.js
  mathjax/input/tex-full.js
)

complete() {
  [[ -f "$STAMP" ]] && [[ "$(cat "$STAMP")" == "$STAMP_TEXT" ]] || return 1
  local f
  for f in "${REQUIRED[@]}"; do
    [[ -s "$VENDOR/$f" ]] || return 1
  done
}

if complete; then
  echo "[vendor_js] $VENDOR is complete ($STAMP_TEXT); nothing to do."
  exit 0
fi

if ! command -v npm >/dev/null 2>&1; then
  echo "[vendor_js] ERROR: npm not found on PATH." >&2
  echo "[vendor_js] Install Node.js >= 18 with npm (e.g. 'apt-get install -y npm' or https://nodejs.org)," >&2
  echo "[vendor_js] then re-run: bash scripts/vendor_js.sh" >&2
  exit 1
fi

echo "[vendor_js] fetching ${PACKAGES[*]} from the npm registry ..."
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
(cd "$WORK" && npm pack --silent "${PACKAGES[@]}" >/dev/null)
for pkg in requirejs-2.3.4 jupyter-widgets-html-manager-1.0.6 mathjax-3.2.2; do
  mkdir -p "$WORK/$pkg"
  tar -xzf "$WORK/$pkg.tgz" -C "$WORK/$pkg"
done

# Assemble into a fresh folder, then swap it in, so an interrupted run never looks complete.
NEW="$WORK/vendor"
mkdir -p "$NEW/html-manager" "$NEW/mathjax"
cp "$WORK/requirejs-2.3.4/package/require.js" "$NEW/require.js"
# embed-amd.js plus the FontAwesome font files it references (no source maps, no other bundles).
HM="$WORK/jupyter-widgets-html-manager-1.0.6/package/dist"
cp "$HM/embed-amd.js" "$NEW/html-manager/"
for f in "$HM"/*.woff "$HM"/*.woff2 "$HM"/*.ttf "$HM"/*.eot "$HM"/*.svg; do
  [[ -e "$f" ]] && cp "$f" "$NEW/html-manager/"
done
MJ="$WORK/mathjax-3.2.2/package/es5"
cp "$MJ/tex-mml-chtml.js" "$NEW/mathjax/"
# Components MathJax loads on demand (extensions, fonts, menu, accessibility, speech rules).
cp -R "$MJ/input" "$MJ/output" "$MJ/ui" "$MJ/a11y" "$MJ/sre" "$NEW/mathjax/"
for lic in "$WORK/mathjax-3.2.2/package/LICENSE" "$WORK/jupyter-widgets-html-manager-1.0.6/package/LICENSE"; do
  [[ -f "$lic" ]] && cp "$lic" "$NEW/$(basename "$(dirname "$(dirname "$lic")")").LICENSE"
done
printf '%s' "$STAMP_TEXT" > "$NEW/.complete"

rm -rf "$VENDOR"
mkdir -p "$(dirname "$VENDOR")"
mv "$NEW" "$VENDOR"

if ! complete; then
  echo "[vendor_js] ERROR: $VENDOR is incomplete after vendoring; the npm packages changed layout?" >&2
  exit 1
fi
echo "[vendor_js] done: $VENDOR ($(du -sh "$VENDOR" | cut -f1))"
