"""Typed, frozen search results (user-facing scores, not distance keys)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import numpy as np

from ..errors import InvalidArgument


@dataclass(frozen=True)
class SearchStats:
    """How a search was answered.

    Attributes
    ----------
    plan : str
        e.g. ``"index(Flat)+tail"``, ``"tail"``, ``"exact(filter)"``: which parts were searched and how.
    ndis : int
        Distance computations the engine knows of (exact parts; the index's own count when it reports one).
    nscanned : int
        Rows considered (tail rows + index rows eligible for the queries), summed over queries.
    elapsed_ms : float
    matched : int or None
        Live records the query may return (those matching its filter and tenant): a result holds
        ``min(k, matched)`` ids, never fewer. ``None`` when the plan had no need to count them (an index that applies
        the filter itself returned full lists), or from older servers.
    exact_fallback : int
        Queries the index answered with fewer than ``min(k, matched)`` results and the planner completed with an
        exact scan of the matching records.
    """

    plan: str
    ndis: int
    nscanned: int
    elapsed_ms: float
    matched: int | None = None
    exact_fallback: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"plan": self.plan, "ndis": self.ndis, "nscanned": self.nscanned, "elapsed_ms": self.elapsed_ms,
                "matched": self.matched, "exact_fallback": self.exact_fallback}


@dataclass(frozen=True)
class SearchResult:
    """Results of a batch of queries.

    Attributes
    ----------
    ids : int64 (nq, k)
        ``-1`` pads rows with fewer than k matches.
    scores : float32 (nq, k)
        ``score_kind == "distance"`` (metric l2): Euclidean distance, smaller is better, padding ``+inf``;
        ``score_kind == "similarity"`` (ip, cosine): inner product / cosine similarity, larger is better,
        padding ``-inf``.
    score_kind : {"distance", "similarity"}
    stats : SearchStats
    attrs : list of list of dict, or None
        With ``attributes=True`` (or a list of names): the attributes of each result (``{}`` for padding).
    """

    ids: np.ndarray
    scores: np.ndarray
    score_kind: str
    stats: SearchStats
    attrs: list[list[dict[str, Any]]] | None = field(default=None)

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def to_list(self) -> list[list[dict[str, Any]]]:
        """Per query, the non-padding results as ``{"id", "score"[, "attrs"]}`` dicts."""
        out = []
        for qi in range(self.ids.shape[0]):
            row = []
            for j in range(self.ids.shape[1]):
                uid = int(self.ids[qi, j])
                if uid < 0:
                    continue
                item = {"id": uid, "score": float(self.scores[qi, j])}
                if self.attrs is not None:
                    item["attrs"] = self.attrs[qi][j]
                row.append(item)
            out.append(row)
        return out


def attribute_selection(attributes) -> bool | tuple[str, ...]:
    """The ``attributes=`` argument of every search (embedded, ``Client.search``): ``False``/``None`` -> no
    attributes, ``True`` -> all, a name or a sequence of names -> those (as a tuple; an empty sequence means none).

    Raises InvalidArgument for anything else (names are checked against the schema by whoever has it).
    """
    if attributes is None or attributes is False:
        return False
    if attributes is True:
        return True
    if isinstance(attributes, str):
        attributes = [attributes]
    try:
        names = tuple(attributes)
    except TypeError:
        raise InvalidArgument(f"attributes must be True, False or a list of attribute names, got {attributes!r}") \
            from None
    bad = [a for a in names if not isinstance(a, str) or not a]
    if bad:
        raise InvalidArgument(f"attributes: expected attribute names (non-empty strings), got {bad[0]!r}")
    return names or False


def select_attributes(res: SearchResult, names: Sequence[str]) -> SearchResult:
    """``res`` with each result's attributes restricted to ``names``."""
    if res.attrs is None:
        return res
    keep = set(names)
    return replace(res, attrs=[[{k: v for k, v in a.items() if k in keep} for a in row] for row in res.attrs])


def keys_to_scores(D: np.ndarray, metric: str) -> tuple[np.ndarray, str]:
    """Convert distance keys (smaller is better) to user-facing scores. Padding keys are ``+inf`` (the index
    contract), so padding becomes ``+inf`` distances or ``-inf`` similarities with no mask."""
    D = np.asarray(D, dtype=np.float32)
    if metric == "l2":
        scores = np.maximum(D, 0.0)
        return np.sqrt(scores, out=scores), "distance"
    return np.negative(D), "similarity"
