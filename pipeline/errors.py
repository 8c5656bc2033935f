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
