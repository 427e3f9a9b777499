"""Progress bars (tqdm), written to stderr and silenced with ``enable=False``."""
from __future__ import annotations

from typing import Iterable, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress_bar(items: Iterable[T], desc: str, enable: bool = True,
                 unit_scale: int = 1, total: int | None = None) -> Iterable[T]:
    """Wraps ``items`` in a tqdm bar with ETA when ``enable``."""
    if not enable:
        return items
    return tqdm(items, desc=desc, leave=False, dynamic_ncols=True, total=total,
                unit="batch" if unit_scale > 1 else "it")
