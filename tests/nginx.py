"""The nginx harness for the tests: tests/nginx_core.py (pytest-free, shared with bench/serve.py)
plus the pytest side, the skip and the fixture.

    from .nginx import served_site, require_nginx

    require_nginx()                       # skip (locally) or fail (CI) when nginx is missing
    with served_site(site_dir) as base:   # base = "http://127.0.0.1:<port>"
        ...

or, in a test module, `from .nginx import nginx_server  # noqa: F401` and take the fixture:
`base = nginx_server(site_dir)`; every server it started is stopped when the test ends. How nginx
is run (config, permissions, stopping) is described in tests/nginx_core.py.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import pytest

from .nginx_core import SHIPPED_CONF, check_config, nginx_available, served_site
from .tools import require

__all__ = ["SHIPPED_CONF", "check_config", "nginx_server", "require_nginx", "served_site"]


def require_nginx() -> None:
    """Skip when nginx is missing, except under CI (CI set), where a missing nginx is a failure:
    a CI image that silently skips these tests would never test the deploy config at all."""
    require(*nginx_available())


@pytest.fixture
def nginx_server() -> Iterator[Callable[..., str]]:
    """Fixture factory: `base = nginx_server(site_dir)`; skips/fails per require_nginx(), and
    stops every server it started when the test ends."""
    require_nginx()
    with contextlib.ExitStack() as stack:
        yield lambda site_dir, **options: stack.enter_context(served_site(site_dir, **options))
