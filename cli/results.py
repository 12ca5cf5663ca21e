"""Search results as the CLI prints them: one JSON shape and one table for every way of searching.

``shoal search`` (a local collection, ``--server`` over gRPC, ``--serverless`` through Lambda) and the demos build a
payload with :func:`payload` and print it with :func:`print_json` or :func:`print_table`, so ``--json`` always has
the same keys::

    {"collection": name or null, "source": {"kind": "local" | "grpc" | "serverless", ...},
     "score_kind": "distance" | "similarity",
     "stats": {"plan", "ndis", "nscanned", "elapsed_ms", "matched", "exact_fallback"},
     "results": [{"query": label, "hits": [{"id", "score", "attrs"?}]}]}

Statistics a source does not report are ``null``; ``attrs`` is present on every hit exactly when attributes were
asked for.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Sequence

import numpy as np

#: the keys of SearchStats.to_dict(), in order: every payload's "stats" has exactly these
STATS_KEYS = ("plan", "ndis", "nscanned", "elapsed_ms", "matched", "exact_fallback")


def plural(n: int, word: str, many: str | None = None) -> str:
    """``"1 query"``, ``"3 queries"``, ``"1,200 results"``."""
    if n == 1:
        return f"1 {word}"
    return f"{n:,} {many or (word[:-1] + 'ies' if word.endswith('y') else word + 's')}"


def payload(labels: Sequence[str], ids: np.ndarray, scores: np.ndarray, score_kind: str, stats: dict[str, Any], *,
            collection: str | None, source: dict[str, Any], attrs=None) -> dict[str, Any]:
    """The JSON-ready result of one batch.

    Parameters
    ----------
    labels : one str per query (``"query 0"``, ``"id 7"``, ``"vector 1"``)
    ids : int64 (nq, k), ``-1`` padding (left out of ``hits``)
    scores : float32 (nq, k), user-facing scores (``score_kind`` says which way is better)
    stats : any of :data:`STATS_KEYS` (missing ones become ``None``)
    attrs : list of nq lists of k dicts, or None (no ``attrs`` key on hits)
    """
    results = []
    for qi, label in enumerate(labels):
        hits = []
        for j in range(ids.shape[1]):
            uid = int(ids[qi, j])
            if uid < 0:
                continue
            hit: dict[str, Any] = {"id": uid, "score": float(scores[qi, j])}
            if attrs is not None:
                hit["attrs"] = attrs[qi][j]
            hits.append(hit)
        results.append({"query": label, "hits": hits})
    return {"collection": collection, "source": source, "score_kind": score_kind,
            "stats": {key: stats.get(key) for key in STATS_KEYS}, "results": results}


def from_search_result(res, labels: Sequence[str], *, collection: str, source: dict[str, Any]) -> dict[str, Any]:
    """The payload of an engine / client :class:`~shoal.engine.results.SearchResult`."""
    return payload(labels, res.ids, res.scores, res.score_kind, res.stats.to_dict(), collection=collection,
                   source=source, attrs=res.attrs)


def print_json(data: dict[str, Any], out=None) -> None:
    print(json.dumps(data, indent=1, ensure_ascii=False, default=str), file=out or sys.stdout)


def print_table(data: dict[str, Any], out=None, *, footer: str = "") -> None:
    """One table per query (rank, id, score[, attributes]) and a line: score direction, plan, time, ``footer``."""
    out = out or sys.stdout
    kind = data["score_kind"]
    for row in data["results"]:
        hits = row["hits"]
        print(f"{row['query']}: {plural(len(hits), 'result')}", file=out)
        if not hits:
            continue
        show_attrs = "attrs" in hits[0]
        print(f"  {'rank':>4}  {'id':>12}  {kind:>10}" + ("  attributes" if show_attrs else ""), file=out)
        for rank, h in enumerate(hits, 1):
            extra = "  " + json.dumps(h["attrs"], ensure_ascii=False) if show_attrs else ""
            print(f"  {rank:>4}  {h['id']:>12}  {h['score']:>10.4f}{extra}", file=out)
    better = "smaller is better" if kind == "distance" else "larger is better"
    st = data["stats"]
    parts = [f"{kind}: {better}", f"plan {st['plan']}"]
    if footer:
        parts.append(footer)
    elapsed = st.get("elapsed_ms")
    timing = f"{elapsed:.2f} ms for " if elapsed is not None else ""
    parts.append(timing + plural(len(data["results"]), "query"))
    print("(" + "; ".join(parts) + ")", file=out)
