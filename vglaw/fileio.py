"""Writing files without losing any: atomic writes (a crash mid-write leaves the previous file
intact), JSON that is always valid JSON, output folders that a command replaces only its own
files in, and input paths that are regular files (not a FIFO that would block forever)."""
from __future__ import annotations

import csv
import json
import math
import os
import stat
from pathlib import Path
from typing import Callable

from .errors import InputError, MissingFileError


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


def json_text(value, *, indent: int | None = None) -> str:
    """``value`` as JSON text (``json.dumps``), the one way vglaw's result files are written. NaN
    and infinity are not JSON (Python's ``json`` would write bare ``NaN``, which strict readers
    refuse), so they are an error here, a ValueError naming the first one, never a broken file."""
    try:
        return json.dumps(value, indent=indent, allow_nan=False)
    except ValueError:
        where = _non_finite(value, "")
        if where is None:  # another ValueError (a circular reference): json's own message
            raise
        raise ValueError(f"{where or 'the value'} is not a finite number; JSON cannot hold it") from None


def _non_finite(value, where: str) -> str | None:
    """Where the first NaN or infinity in ``value`` is ("predictions[0].box_xyxy[1]"), or None."""
    if isinstance(value, float):
        return where if not math.isfinite(value) else None
    if isinstance(value, dict):
        items = ((f"{where}.{k}" if where else str(k), v) for k, v in value.items())
    elif isinstance(value, (list, tuple)):
        items = ((f"{where}[{i}]", v) for i, v in enumerate(value))
    else:
        return None
    return next((found for w, v in items if (found := _non_finite(v, w)) is not None), None)


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


SPECIAL_FILES = {stat.S_ISDIR: "a folder", stat.S_ISFIFO: "a FIFO (named pipe)", stat.S_ISCHR: "a character device",
                 stat.S_ISBLK: "a block device", stat.S_ISSOCK: "a socket"}


def special_file(path: str | os.PathLike) -> str | None:
    """What ``path`` is ("a FIFO (named pipe)", "a folder", ...) when it is there but is not a
    regular file, from ``os.stat`` (links followed), before anything opens it: opening a FIFO
    waits for a writer forever and a device may never end. None for a regular file, or where
    ``stat`` fails (a missing file: opening it says so)."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):  # ValueError: a NUL in the path
        return None
    if stat.S_ISREG(mode):
        return None
    return next((kind for test, kind in SPECIAL_FILES.items() if test(mode)), "a special file")


TABLE_FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet"}


def read_table(path: str | os.PathLike, what: str, kind: str | None = None) -> list[dict]:
    """The rows of a JSONL, CSV or parquet file (``kind``: "jsonl", "csv" or "parquet"; None: by its
    suffix), each a dict, in file order: a pairs file, your own annotations. What cannot be read (not there, not a regular file, another
    suffix, not UTF-8, a line that is not a JSON object, a broken CSV or parquet file) is one line,
    an :class:`InputError` naming the file as ``what``."""
    path = Path(path)
    kind = special_file(path)
    if kind is not None:
        raise InputError(f"{what} {path} is {kind}, not a regular file")
    if not path.is_file():
        raise MissingFileError(f"{what} {path} not found")
    kind = kind or TABLE_FORMATS.get(path.suffix.lower())
    if kind is None:
        raise InputError(f"{what} {path}: give it as .jsonl, .csv or .parquet (got {path.suffix or 'no suffix'!r})")
    return _rows(path, kind)


def _rows(path: Path, kind: str) -> list[dict]:
    """The rows of a table file of ``kind``; what cannot be read is one line naming the file."""
    try:
        if kind == "csv":
            with open(path, newline="", encoding="utf-8-sig") as f:
                return list(csv.DictReader(f))
        if kind == "parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path).to_pylist()
        rows = []
        with open(path, encoding="utf-8-sig") as f:
            for number, line in enumerate(f, start=1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except (ValueError, RecursionError) as e:  # JSONDecodeError, an int of 4300+ digits, deep nesting
                        raise InputError(f"{path}, line {number}: not JSON ({' '.join(str(e).split())})") from None
                    if not isinstance(rows[-1], dict):
                        raise InputError(f"{path}, line {number}: expected a JSON object")
        return rows
    except UnicodeDecodeError as e:
        raise InputError(f"{path} is not UTF-8 text (byte {e.start}: {e.reason})") from None
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - csv.Error, and whatever pyarrow raises on a broken parquet file
        raise InputError(f"{path}: not a {kind} file that can be read ({' '.join(str(e).split())})") from None
