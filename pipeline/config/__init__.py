"""The three input files -> frozen values: one reader per file; the YAML ones share a line-aware loader.

Every problem is reported with FILE:LINE, and all of them at once: a user fixing a config file
should see the whole list in one run, as MkDocs does.
"""

from __future__ import annotations

from .codes import load_content
from .icons import load_icon_map, slugify
from .loader import name_problem, url_problem
from .site import load_site

__all__ = ["load_content", "load_icon_map", "load_site", "name_problem", "slugify", "url_problem"]
