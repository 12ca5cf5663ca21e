"""Supervised centroid tuning (JPQ / RepCONC stage 2): codes fixed, PQ centroids moved by gradient descent on a
softmax ranking loss computed from the codes.

For a training query ``q`` with a relevant document ``p`` and negatives ``n_1..n_N`` (the current top-N retrieved by
the codes, refreshed every epoch), the loss is ``-log softmax(-key / T)[p]`` where ``key`` is the ADC distance key of
``q`` to a document's reconstruction ``o + sum_m C[m, code_m]`` (``o`` is the document's coarse centroid for residual
codes, else 0). Its gradient for centroid ``C[m, j]`` is the sum, over scored documents whose code in sub-space ``m`` is
``j``, of ``dLoss/dkey`` times ``dkey/dC`` (``-q_m`` for inner product, ``-2 (q_m - o_m - C[m, j])`` for squared L2):
plain numpy. The step is Adam. A held-out part of the queries measures recall@k *of the codes* after every epoch; the
best centroids are kept and the original ones restored if no epoch beats them, so tuning never trades recall for loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from ..errors import InvalidArgument


@dataclass
class TuneReport:
    """What a tuning run did: validation recall@k of the codes before and after, epochs run, best epoch (0 = none)."""

    recall_before: float
    recall_after: float
    epochs: int
    best_epoch: int
    n_train_queries: int
    n_val_queries: int


def recall_at(found: np.ndarray, positives: Sequence[np.ndarray], k: int) -> float:
    """Mean over queries of ``|top-k found ∩ positives| / min(|positives|, k)``."""
    vals = []
    for row, pos in zip(found[:, :k], positives):
        if len(pos) == 0:
            continue
        vals.append(np.intersect1d(row[row >= 0], pos).size / min(len(pos), k))
    return float(np.mean(vals)) if vals else 0.0


def as_positives(positives, nq: int, ndocs: int) -> list[np.ndarray]:
    """Normalise ``positives`` (a (nq, p) int array with ``-1`` padding, or a list of id lists) to a list of arrays."""
    if isinstance(positives, np.ndarray) and positives.ndim == 1:
        positives = positives[:, None]
    if len(positives) != nq:
        raise InvalidArgument(f"tuning: got positives for {len(positives)} queries, expected {nq}")
    out = []
    for p in positives:
        arr = np.unique(np.asarray(p, dtype=np.int64).ravel())
        arr = arr[arr >= 0]
        if arr.size and arr.max() >= ndocs:
            raise InvalidArgument(f"tuning: positive row {int(arr.max())} is out of range (documents: {ndocs})")
        out.append(arr)
    return out


def tune_centroids(centroids: np.ndarray, sub_codes: np.ndarray, queries: np.ndarray, positives, *,
                   retrieve: Callable[[np.ndarray, np.ndarray, int], np.ndarray], metric: str = "l2",
                   doc_offsets: Callable[[np.ndarray], np.ndarray] | None = None, epochs: int = 8,
                   n_negatives: int = 50, lr: float = 0.002, batch_size: int = 128, val_fraction: float = 0.3,
                   min_gain: float = 0.005,
                   recall_k: int = 10, seed: int = 0, log: Callable[[str], None] | None = None
                   ) -> tuple[np.ndarray, TuneReport]:
    """Tune PQ centroids for ranking.

    Parameters
    ----------
    centroids : float32 (M, K, dsub)
        Starting (scoring) centroids; not modified.
    sub_codes : uint8 (n, M)
        Fixed sub-space codes of the documents.
    queries : float32 (nq, d)
        Training queries, in the space the centroids live in (rotated when OPQ is used).
    positives : (nq, p) int array with ``-1`` padding, or sequence of nq int arrays
        Relevant document rows of each query.
    retrieve : callable ``(centroids, queries, n) -> rows int64 (nq, n)``
        Top-n documents by the codes under the given centroids (the index's own scan).
    metric : {"l2", "ip", "cosine"}
    doc_offsets : callable ``rows int64 (...) -> float32 (..., d)``, optional
        Coarse centroid of each document (residual codes).
    epochs, n_negatives, batch_size : int
    lr : float
        Adam step size relative to the RMS of the centroid entries.
    val_fraction : float
        Share of the queries held out to measure recall (at least one query; all queries if fewer than 5).
    recall_k : int
    min_gain : float
        Validation recall must rise by more than this for tuned centroids to be kept (guards against noise on a small
        validation set).

    Returns
    -------
    centroids : float32 (M, K, dsub)
        The best centroids found (the input's copy when tuning did not raise validation recall).
    report : TuneReport
    """
    C0 = np.ascontiguousarray(centroids, dtype=np.float32)
    M, K, dsub = C0.shape
    d = M * dsub
    q = np.ascontiguousarray(queries, dtype=np.float32)
    if q.ndim != 2 or q.shape[1] != d:
        raise InvalidArgument(f"tuning: queries must have shape (nq, {d}), got {q.shape}")
    n = sub_codes.shape[0]
    pos = as_positives(positives, q.shape[0], n)
    keep = np.array([p.size > 0 for p in pos])
    if not keep.any():
        raise InvalidArgument("tuning: no query has a positive")
    q = q[keep]
    pos = [p for p, kp in zip(pos, keep) if kp]
    rng = np.random.default_rng(seed)
    nq = q.shape[0]
    perm = rng.permutation(nq)
    if nq < 5:
        tr_idx = val_idx = perm
    else:
        nval = max(1, int(round(nq * val_fraction)))
        val_idx, tr_idx = perm[:nval], perm[nval:]
    codes_flat = sub_codes.astype(np.int64) + (np.arange(M, dtype=np.int64) * K)[None, :]   # (n, M) into M*K
    l2 = metric == "l2"

    def val_recall(C):
        found = retrieve(C, q[val_idx], recall_k)
        return recall_at(found, [pos[i] for i in val_idx], recall_k)

    def keys_and_recon(C, qb, rows):
        # rows (B, c) -> keys (B, c), reconstructions minus offsets folded in (B, c, d)
        rec = C.reshape(M * K, dsub)[codes_flat[rows]].reshape(rows.shape[0], rows.shape[1], d)
        if doc_offsets is not None:
            rec_full = rec + doc_offsets(rows)
        else:
            rec_full = rec
        if l2:
            diff = qb[:, None, :] - rec_full
            return np.einsum("bcd,bcd->bc", diff, diff), diff
        return -np.einsum("bd,bcd->bc", qb, rec_full), None

    best_C = C0.copy()
    base_recall = best_recall = val_recall(C0)
    best_epoch = 0
    C = C0.copy()
    scale = float(np.sqrt(np.mean(C0.astype(np.float64) ** 2))) or 1.0
    step = lr * scale
    m1 = np.zeros_like(C, dtype=np.float64)
    m2 = np.zeros_like(C, dtype=np.float64)
    b1, b2, t = 0.9, 0.999, 0
    temperature = None
    pairs_q = np.concatenate([np.full(pos[i].size, i) for i in tr_idx])
    pairs_p = np.concatenate([pos[i] for i in tr_idx])
    for epoch in range(1, epochs + 1):
        cand = retrieve(C, q[tr_idx], n_negatives + max(len(p) for p in pos))
        cand_of = {int(i): c for i, c in zip(tr_idx, cand)}
        order = rng.permutation(pairs_q.size)
        for s in range(0, order.size, batch_size):
            sel = order[s:s + batch_size]
            qi, pi = pairs_q[sel], pairs_p[sel]
            rows = np.empty((sel.size, 1 + n_negatives), dtype=np.int64)
            valid = np.zeros(rows.shape, dtype=bool)
            for b, (i, p) in enumerate(zip(qi, pi)):
                c = cand_of[int(i)]
                c = c[(c >= 0) & ~np.isin(c, pos[i])][:n_negatives]
                rows[b, 0] = p
                rows[b, 1:1 + c.size] = c
                rows[b, 1 + c.size:] = p
                valid[b, :1 + c.size] = True
            qb = q[qi]
            keys, diff = keys_and_recon(C, qb, rows)
            if temperature is None:
                spread = np.std(np.where(valid, keys, np.nan), axis=1)
                temperature = float(np.nanmean(spread)) or 1.0
            logits = np.where(valid, -keys / temperature, -np.inf)
            logits -= logits.max(axis=1, keepdims=True)
            p_soft = np.exp(logits)
            p_soft /= p_soft.sum(axis=1, keepdims=True)
            p_soft[:, 0] -= 1.0                              # dL/dlogit
            g_key = -p_soft / temperature / sel.size          # dL/dkey, mean over the batch
            if l2:
                g_rec = g_key[:, :, None] * (-2.0) * diff     # (B, c, d)
            else:
                g_rec = g_key[:, :, None] * (-qb[:, None, :])
            grad = np.zeros((M * K, dsub), dtype=np.float64)
            np.add.at(grad, codes_flat[rows].ravel(), g_rec.reshape(-1, M, dsub).reshape(-1, dsub))
            grad = grad.reshape(M, K, dsub)
            t += 1
            m1 = b1 * m1 + (1 - b1) * grad
            m2 = b2 * m2 + (1 - b2) * grad * grad
            upd = (m1 / (1 - b1 ** t)) / (np.sqrt(m2 / (1 - b2 ** t)) + 1e-12)
            C = (C - step * upd).astype(np.float32)
        r = val_recall(C)
        if log is not None:
            log(f"tune epoch {epoch}: validation recall@{recall_k} {r:.4f} (start {base_recall:.4f})")
        if r > best_recall and r > base_recall + min_gain:
            best_recall, best_C, best_epoch = r, C.copy(), epoch
    report = TuneReport(base_recall, best_recall, epochs, best_epoch, int(tr_idx.size), int(val_idx.size))
    return best_C, report
