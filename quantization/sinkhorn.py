"""Sinkhorn-Knopp assignment: entropic optimal transport with uniform marginals (RepCONC's constrained clustering).

Used only while training: a batch of ``B`` points is spread over ``K`` centroids so that every centroid receives about
``B / K`` of them, then each point takes the centroid of largest transport mass (hard argmax, so the balance is
approximate). The transport plan is ``P = diag(u) G diag(v)`` with ``G = exp(-D / eps)``; Sinkhorn alternately scales
``u`` (points) and ``v`` (centroids) to the target marginals. The argmax over a row of ``P`` is the argmin of
``D - eps * log v``, i.e. a nearest-centroid rule with one additive bias per centroid: :func:`sinkhorn_assign`
returns that bias too, so an encoder can reproduce the balanced rule for new points without a batch.
"""

from __future__ import annotations

import numpy as np

#: floor for scaling denominators: a centroid no point can reach gets a huge but finite scale, never inf/nan
_TINY = 1e-300


def sinkhorn_assign(dist: np.ndarray, *, eps: float = 0.2, n_iter: int = 30, init_bias: np.ndarray | None = None,
                    tol: float = 1e-2) -> tuple[np.ndarray, np.ndarray]:
    """Balanced hard assignment of points to centroids.

    Parameters
    ----------
    dist : float (B, K)
        Squared distances (any cost, smaller is better) between ``B`` points and ``K`` centroids.
    eps : float
        Entropic temperature, in units of the batch's mean distance to the nearest centroid, so one ``eps`` fits any
        data scale. Smaller is closer to exact optimal transport (and slower to converge).
    n_iter : int
        Maximum Sinkhorn iterations (each scales points, then centroids).
    init_bias : float (K,), optional
        A previous batch's ``bias``: warm-starts the centroid scaling, so later batches converge in a few iterations.
    tol : float
        Stop once the points' transport masses are within ``tol`` (mean relative error) of their target ``1 / B``.

    Returns
    -------
    codes : int64 (B,)
        Assigned centroid of each point.
    bias : float64 (K,)
        ``eps * scale * log v`` in the units of ``dist``, centred to mean 0: ``codes == argmin(dist - bias, axis=1)``.

    Notes
    -----
    Computed in float64 with a per-row shift (each point's nearest centroid has kernel value 1), so ``exp`` cannot
    overflow and every row keeps a non-zero entry for any ``eps``. Falls back to plain nearest centroid if the
    scaling still goes non-finite.
    """
    if eps <= 0:
        raise ValueError(f"eps must be positive, got {eps}")
    D = np.asarray(dist, dtype=np.float64)
    B, K = D.shape
    # unit of cost: the batch's mean distance to the nearest centroid (the quantisation error), so eps is relative
    # to the distance gaps that decide assignments, whatever the data's scale or dimension
    rowmin = D.min(axis=1, keepdims=True)
    scale = float(rowmin.mean())
    if not scale > 0:
        scale = float(D.mean()) or 1.0
    G = np.exp(-(D - rowmin) / (eps * scale))
    r = 1.0 / B
    c = 1.0 / K
    v = np.ones(K) if init_bias is None else np.exp(np.clip(init_bias / (eps * scale), -600.0, 600.0))
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for it in range(n_iter):
            Gv = np.maximum(G @ v, _TINY)
            if it and np.mean(np.abs(u * Gv * B - 1.0)) < tol:
                break
            u = r / Gv
            v = c / np.maximum(G.T @ u, _TINY)
        logv = np.log(v)
    if not np.all(np.isfinite(logv)):
        return np.argmin(D, axis=1).astype(np.int64), np.zeros(K)
    logv -= logv.mean()
    bias = eps * scale * logv
    codes = np.argmin(D - bias[None, :], axis=1).astype(np.int64)
    return codes, bias


def imbalance(codes: np.ndarray, k: int) -> float:
    """RepCONC's balance metric ``mean_k |1 - count_k / (n / k)|`` (0 = perfectly uniform)."""
    codes = np.asarray(codes).ravel()
    if codes.size == 0:
        return 0.0
    counts = np.bincount(codes, minlength=k).astype(np.float64)
    return float(np.mean(np.abs(1.0 - counts / (codes.size / k))))
