"""Writing files without losing any: atomic writes (a crash mid-write leaves the previous file
intact), and output folders that a command replaces only its own files in."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

from .errors import InputError


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, flush it to disk, then rename it
    over ``path`` (an atomic replace on POSIX and Windows)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def check_output_folder(out: Path, marker: str, command: str) -> None:
    """Refuse ``out`` unless it is missing, empty, or a previous output of ``command`` (which
    holds ``marker``, the list of the files it wrote). Changes nothing."""
    if not out.exists():
        return
    if not out.is_dir():
        raise InputError(f"--out {out} is a file; give a folder for the output of {command}")
    if not (out / marker).is_file() and any(out.iterdir()):
        raise InputError(f"--out {out} already holds files that {command} did not write; give a new or empty "
                         "folder (nothing was changed)")


def claim_output_folder(out: Path, marker: str, command: str) -> None:
    """Make ``out`` ready for ``command`` without deleting anything it did not write: a previous
    output loses exactly the files its marker lists (and the folders they leave empty)."""
    check_output_folder(out, marker, command)
    if not (out / marker).is_file():
        return
    for name in json.loads((out / marker).read_text())["files"]:
        (out / name).unlink(missing_ok=True)
    for folder in sorted((p for p in out.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        if not any(folder.iterdir()):
            folder.rmdir()
    (out / marker).unlink()


def record_output_folder(out: Path, marker: str, command: str, before: set[Path]) -> None:
    """Write ``marker``: every file under ``out`` that was not there before ``command`` ran."""
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and p not in before)
    (out / marker).write_text(json.dumps({"written_by": command, "files": written}, indent=1) + "\n")
