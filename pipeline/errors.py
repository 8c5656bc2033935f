"""One base error; one subclass per concern, each with its own exit code.

Exit codes follow sysexits(3) so a wrapper (systemd, cron) can tell them apart:

    PipelineError            70 EX_SOFTWARE   (base; an unexpected internal failure)
    ├── ConfigError          78 EX_CONFIG     icon_map.yaml / site.toml / codes.yaml is wrong
    ├── SourceError          69 EX_UNAVAILABLE an icon or feed has no good copy at all
    │   └── FetchFailed                       one source failed (a run survives it: STALE)
    ├── ImageError           65 EX_DATAERR    an icon cannot be decoded safely
    ├── TemplateError        65 EX_DATAERR    a template fails to compile or render
    ├── PublishError         73 EX_CANTCREAT  the release could not be written or checked
    ├── LockedError          75 EX_TEMPFAIL   another build holds the lock
    └── Interrupted         143              SIGTERM/SIGINT arrived; nothing was switched
"""

from __future__ import annotations

import errno


class PipelineError(Exception):
    exit_code = 70

    def __init__(self, message: str, problems: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.problems = problems

    def __str__(self) -> str:
        head = super().__str__()
        return "\n".join([head, *("  " + p for p in self.problems)])


class ConfigError(PipelineError):
    exit_code = 78


class SourceError(PipelineError):
    exit_code = 69


class FetchFailed(SourceError):
    """One source could not be fetched; the message names the URL and the reason. The fetch
    stage turns it into a STALE source where a last good copy exists."""


class ImageError(PipelineError):
    exit_code = 65


class TemplateError(PipelineError):
    exit_code = 65


class PublishError(PipelineError):
    exit_code = 73


class LockedError(PipelineError):
    exit_code = 75


class Interrupted(PipelineError):
    exit_code = 143


_OS_ADVICE = {
    errno.ENOSPC: "the disk is out of space or of inodes (see df -h and df -i); free some, then run again",
    errno.EDQUOT: "the disk quota is used up; free space or raise the quota, then run again",
    errno.EROFS: "the file system is read-only; remount it read-write or point the site elsewhere",
    errno.EACCES: "permission denied; let the user running the pipeline write there (or run it as the owner)",
    errno.EPERM: "operation not permitted; check the owner, the mode and any immutable flag (lsattr)",
    errno.ENAMETOOLONG: "a file name is too long for this file system; shorten the icon or page name",
    errno.EMLINK: "too many hard links to one file; run again (or raise the file system's link limit)",
    errno.EIO: "the disk reported an I/O error; check the device (dmesg) before running again",
}


def describe_os_error(error: OSError) -> str:
    """What went wrong and what to do, in words that fit the cause: a full disk, a read-only
    mount and a name too long are different problems with different fixes."""
    where = f" ({error.filename})" if error.filename else ""
    advice = _OS_ADVICE.get(error.errno or 0, "check the disk and the permissions, then run again")
    return f"{error.strerror or error}{where}: {advice}"
