"""The repository's default site, copied for a test or a bench.

No pytest here: bench/serve.py imports it with only the bench extra installed; tests/conftest.py
re-exports REPO and copy_default_site for the tests.
"""

from __future__ import annotations

import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SITE_FILES = ("icon_map.yaml", "site.toml", "codes.yaml", "icons", "templates")


def copy_default_site(target: Path) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    for name in SITE_FILES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, target / name)
        else:
            shutil.copy2(source, target / name)
    return target
