/* The pages' one script, fingerprinted and served immutable like style.css (pipeline/build.py
   picks up every templates/*.js). No page has an inline script: the Content-Security-Policy
   allows only this origin's files (script-src 'self'). Loaded at the end of <body>, after the
   data block below, which index.html writes. */

/* ICON_MAP: icon name -> {alt, width, height, png, webp, avif (where kept), srcset: {format:
   "url 1x, url 2x"}}, the hashed URLs of this release. The page carries it as a JSON data block,
   <script type="application/json" id="icon-map">, which is data, never run, so the policy needs
   no exception for it; here it becomes the constant page scripts use. */
const ICON_MAP = (function () {
  var data = document.getElementById("icon-map");
  return data ? JSON.parse(data.textContent) : {};
})();

/* Copy buttons: <button class="copy" data-code="..."> puts its code on the clipboard. */
document.addEventListener("click", function (event) {
  var button = event.target.closest("button.copy");
  if (!button || !navigator.clipboard) return;
  navigator.clipboard.writeText(button.dataset.code).then(function () {
    button.textContent = "Copied";
    setTimeout(function () { button.textContent = "Copy"; }, 1500);
  });
});
