"""Progress bars on a terminal only: redirected to a file, a command logs its one-line summaries
instead of carriage-return bars."""
from __future__ import annotations

from tqdm import tqdm


def progress(iterable, desc: str, *, show: bool = True, **kwargs) -> tqdm:
    """``tqdm`` over ``iterable`` when ``show`` and stderr is a terminal (``TQDM_DISABLE=1`` hides it too)."""
    return tqdm(iterable, desc=desc, disable=None if show else True, dynamic_ncols=True, **kwargs)
