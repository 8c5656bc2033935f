"""Stage 5: htmlmin and rcssmin shrink, and leave <pre>, <textarea> and inline JSON intact."""

from __future__ import annotations

import json

from pipeline.minify import minify_css, minify_html

GOLDEN_IN = """<!doctype html>
<html>
  <head>
    <!-- a comment that goes -->
    <script type="application/ld+json">{"name":  "A  B",
      "text": "line\\nbreak </p>"}</script>
    <script>const ICON_MAP = {"Gem":  {"png": "/a.png"}};</script>
  </head>
  <body>
    <p>   many    spaces   </p>
    <pre>  keep
      this  </pre>
    <textarea>  and
   this </textarea>
    <!--[if IE]><p>old IE</p><![endif]-->
  </body>
</html>
"""

GOLDEN_OUT = (
    '<!doctype html><html><head><script type="application/ld+json">{"name":  "A  B",\n'
    '      "text": "line\\nbreak </p>"}</script><script>const ICON_MAP = {"Gem":  {"png": "/a.png"}};</script>'
    "</head><body><p> many spaces </p><pre>  keep\n      this  </pre><textarea>  and\n   this </textarea>"
    "<!--[if IE]><p>old IE</p><![endif]--></body></html>"
)


def test_html_golden() -> None:
    assert minify_html(GOLDEN_IN) == GOLDEN_OUT


def test_inline_json_survives_byte_for_byte() -> None:
    out = minify_html(GOLDEN_IN)
    body = out.split('<script type="application/ld+json">')[1].split("</script>")[0]
    assert json.loads(body) == {"name": "A  B", "text": "line\nbreak </p>"}


def test_css_minified() -> None:
    css = "/* c */\n.a  {  color : red ;  }\n\n.b > .c { margin: 0 0 0 0; }\n"
    assert minify_css(css) == ".a{color:red}.b>.c{margin:0 0 0 0}"
