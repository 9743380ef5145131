"""The checks the command line makes on the paths it is given, before it imports torch or loads a
model: a missing file, a folder where a file belongs (or the reverse), an unreadable file or a
checkpoint that is not there is one line naming the option and the path, at once. None (an
option not given) passes every check."""
from __future__ import annotations

import os

from ..errors import InputError, MissingFileError, UnreadableFileError
from ..fileio import special_file
from ..hub import local_checkpoint


def input_file(option: str, path: str | os.PathLike | None, what: str) -> None:
    """``path`` is a file that can be opened for reading; ``what`` it should be ("a pairs file")."""
    if path is None:
        return
    if not os.path.exists(path):
        raise MissingFileError(f"{option} {path}: no such file")
    kind = special_file(path)
    if kind is not None:
        raise InputError(f"{option} {path} is {kind}, not {what}")
    try:
        with open(path, "rb"):
            pass
    except OSError as e:
        raise UnreadableFileError(f"{option} {path}: cannot read it ({e.strerror or e})") from None


def input_folder(option: str, path: str | os.PathLike | None, what: str) -> None:
    """``path`` is a folder whose files can be listed and read; ``what`` it should be."""
    if path is None:
        return
    if not os.path.exists(path):
        raise MissingFileError(f"{option} {path}: no such folder")
    if not os.path.isdir(path):
        raise InputError(f"{option} {path} is a file, not {what}")
    if not os.access(path, os.R_OK | os.X_OK):
        raise UnreadableFileError(f"{option} {path}: cannot read the folder (permission denied)")


def output_file(option: str, path: str | os.PathLike | None, what: str) -> None:
    """``path``, where a file will be written, is not a folder."""
    if path is not None and os.path.isdir(path):
        raise InputError(f"{option} {path} is a folder, not {what}; name the file to write")


def output_folder(option: str, path: str | os.PathLike | None) -> None:
    """``path``, where files will be written, is not a file."""
    if path is not None and os.path.exists(path) and not os.path.isdir(path):
        raise InputError(f"{option} {path} is a file; give a folder to write into")


def input_checkpoint(checkpoint: str | os.PathLike | None) -> None:
    """A local ``--checkpoint`` is there; a Hub repo id is left to the loader (the Hub cache)."""
    if checkpoint is not None:
        local_checkpoint(checkpoint)

