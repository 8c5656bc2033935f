"""`pipeline init [DIR]`: a working starter site, copied from pipeline/scaffold/.

The scaffold is data, not code: site.toml (every key, with its type, range and default),
icon_map.yaml (two icons whose sources are in icons/, so `pipeline build --offline` works at
once), codes.yaml (every field), and the templates. They are shipped as package data and written
byte for byte, so what a user reads is what the package holds.

It never overwrites. Every target is looked at first: one that exists (a file, a folder, a
symlink, even a dangling one), or a parent that exists and is not a folder, stops the run before
anything is written, and the error names each. Files are then created with O_EXCL, so one that
appears in between is refused too; whatever this run had written by then is removed again.
Exit code: 73 (EX_CANTCREAT, "a user-specified output file cannot be created").
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path

from .errors import PipelineError
from .files import write_new

SKIPPED = ("__pycache__", "__init__.py")  # never scaffold files; dotfiles are skipped too


class WouldOverwrite(PipelineError):
    """The folder already holds some of the files `init` writes."""

    exit_code = 73  # EX_CANTCREAT


@dataclass(frozen=True)
class Initialised:
    root: Path  # absolute
    files: tuple[str, ...]  # written, relative to root, "/"-separated


def scaffold() -> dict[str, bytes]:
    """The starter site: relative path ("templates/index.html") -> bytes, in a stable order."""
    found: dict[str, bytes] = {}
    _walk(files("pipeline") / "scaffold", "", found)
    return dict(sorted(found.items()))


def _walk(folder: Traversable, prefix: str, found: dict[str, bytes]) -> None:
    for entry in folder.iterdir():
        if entry.name in SKIPPED or entry.name.startswith("."):
            continue
        if entry.is_dir():
            _walk(entry, f"{prefix}{entry.name}/", found)
        else:
            found[prefix + entry.name] = entry.read_bytes()


def init_site(directory: Path) -> Initialised:
    """Write the starter site into `directory` (created if missing); all of it or nothing."""
    root = directory.absolute()
    content = scaffold()
    taken = _taken(root, content)
    if taken:
        raise WouldOverwrite(
            f"{root} already has {len(taken)} of the files `pipeline init` writes; nothing was written "
            "(init never overwrites): move them away, or choose an empty or new folder",
            tuple(taken),
        )
    made: list[Path] = []  # files and folders this run created, in order, for the undo
    try:
        _mkdirs(root, made)
        for relative, data in content.items():
            path = root / relative
            _mkdirs(path.parent, made)
            write_new(path, data)
            made.append(path)
    except BaseException as error:
        for path in reversed(made):
            with contextlib.suppress(OSError):
                if path.is_dir() and not path.is_symlink():
                    path.rmdir()  # only if still empty: never what someone else put there
                else:
                    path.unlink()
        if isinstance(error, FileExistsError):
            name = Path(error.filename).relative_to(root).as_posix() if error.filename else "a file"
            raise WouldOverwrite(
                f"{root}: {name} appeared while `pipeline init` was writing; nothing was written", (name,)
            ) from None
        raise
    return Initialised(root, tuple(content))


def _taken(root: Path, content: dict[str, bytes]) -> list[str]:
    """What stands in the way, relative to root: an existing target, or a parent folder that is
    a file. `root` itself must be a folder if it exists."""
    if os.path.lexists(root) and not root.is_dir():
        return [f"{root} (not a folder)"]
    taken: dict[str, None] = {}
    for relative in content:
        parts = relative.split("/")
        for depth in range(1, len(parts)):
            parent = root.joinpath(*parts[:depth])
            if os.path.lexists(parent) and not parent.is_dir():
                taken["/".join(parts[:depth]) + " (a file where a folder goes)"] = None
        if os.path.lexists(root / relative):
            taken[relative] = None
    return list(taken)


def _mkdirs(folder: Path, made: list[Path]) -> None:
    missing = []
    while not folder.is_dir():
        missing.append(folder)
        folder = folder.parent
    for path in reversed(missing):
        path.mkdir()
        made.append(path)
