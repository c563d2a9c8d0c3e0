"""Page diversity: the top passages come from several pages when several match."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar


class _OnAPage(Protocol):
    @property
    def doc_id(self) -> str: ...


T = TypeVar("T", bound=_OnAPage)


def diversify(ranked: Sequence[T], top_k: int, per_page: int) -> list[T]:
    """The best `top_k` of `ranked`, at most `per_page` from one page until every page had its
    turn.

    Order is kept within each pass: a page's second passage ranks after every page's first.
    """
    kept: list[T] = []
    later: list[T] = []
    taken: dict[str, int] = {}
    for item in ranked:
        if taken.get(item.doc_id, 0) < per_page:
            taken[item.doc_id] = taken.get(item.doc_id, 0) + 1
            kept.append(item)
        else:
            later.append(item)
    return (kept + later)[:top_k]


__all__ = ["diversify"]
