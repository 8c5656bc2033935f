"""An OSError is not always "disk full or permissions": each cause gets its own words."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from pipeline.errors import PublishError, describe_os_error
from pipeline.model import PublishSettings
from pipeline.publish import publish


@pytest.mark.parametrize(
    ("code", "advice"),
    [
        (errno.ENOSPC, "out of space or of inodes"),
        (errno.EDQUOT, "quota"),
        (errno.EROFS, "remount it read-write"),
        (errno.EACCES, "permission denied"),
        (errno.EPERM, "not permitted"),
        (errno.ENAMETOOLONG, "name is too long"),
        (errno.EMLINK, "too many hard links"),
        (errno.EIO, "I/O error"),
    ],
)
def test_each_cause_has_its_own_advice(code: int, advice: str) -> None:
    message = describe_os_error(OSError(code, os.strerror(code), "/srv/site/dist/x"))
    assert advice in message and os.strerror(code) in message and "/srv/site/dist/x" in message
    others = {c for c in (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.ENAMETOOLONG) if c != code}
    assert all(describe_os_error(OSError(c, os.strerror(c))) != message for c in others)


def test_a_name_too_long_for_the_file_system_says_so_and_publishes_nothing(tmp_path: Path) -> None:
    name = "p" * 300 + ".html"  # a real ENAMETOOLONG from the kernel: 305 bytes > NAME_MAX
    files = {"index.html": b'<a href="/">home</a>', name: b"<p>long</p>"}
    with pytest.raises(PublishError) as caught:
        publish(tmp_path / "dist", files, PublishSettings(), now=1.0)
    assert "name is too long" in str(caught.value) and "the live site is unchanged" in str(caught.value)
    assert not (tmp_path / "dist" / "current").exists()
