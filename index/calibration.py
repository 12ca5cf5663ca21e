"""Calibrated default search settings: the table an index keeps after a build (ARCHITECTURE.md, *Copy and
calibration*), and how a search picks from it.

A :class:`Calibration` holds, per *band* of queries, the search settings its kind's ladder tried on the index's own
vectors (:mod:`.calibrate` measures them) with the recall@k and the cost each reached. A search that leaves a
setting out takes it from the cheapest row of its band whose recall's lower confidence bound reaches the target:
the collection's ``target_recall`` (default 0.95), or ``params={"recall": r}`` per call. Explicit settings always
override what the table would pick.

Bands are chosen by one number per call, the calibration's ``axis``:

* ``fraction`` (IVF-PQ, OSQ): the share of the index's live rows the call may return (its filter, tenant or
  ``allowed`` mask; 1.0 without any). A band calibrated at fraction ``lo`` serves calls from ``lo`` up to the next
  band's ``lo``: a call never uses settings measured at a larger fraction than its own (smaller fractions need more
  probing for the same recall).
* ``tenant_size`` (Curator): rows visible to the queried tenant; a band calibrated on tenants of ``lo`` rows and
  more serves tenants from ``lo`` up to the next band.

Below the smallest band the smallest band serves. Saved in the index's ``meta.json`` (``to_json``/``from_json``),
so ``copy()`` and ``load`` keep it.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidArgument

#: recall@k the defaults aim at when nothing else is said (the collection setting ``target_recall``)
DEFAULT_TARGET = 0.95
#: the per-call parameter that picks a target from the table
RECALL_PARAM = "recall"
AXES = ("fraction", "tenant_size")


def check_target(value, name: str = "recall") -> float:
    """A recall target: a number in (0, 1]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0.0 < float(value) <= 1.0) \
            or math.isnan(float(value)):
        raise InvalidArgument(f"{name} must be a number in (0, 1], got {value!r}")
    return float(value)


@dataclass
class Rung:
    """One measured setting of a band.

    Attributes
    ----------
    params : dict
        The search settings (e.g. ``{"nprobe": 24, "rerank": 50}``); ``{}`` for the exact scan.
    recall : float
        Mean recall@k over the band's queries; with several query families, the smallest family mean.
    lcb : float
        Lower confidence bound of ``recall`` (mean - 2 standard errors, smallest over families): what the choice
        is made on, so the defaults hold on queries the calibration did not see.
    cost : float
        Estimated work per query in the kind's units (deterministic: codes scanned, candidates scored, exact
        distances; not a timing, so the same build always chooses the same setting), including the exact scans
        of the queries that came back short (``short``).
    ms : float
        Measured milliseconds per query (informative: this machine is noisy).
    short : float
        Share of queries that came back with fewer than ``min(k, matches)`` results (answered exactly by the
        engine's planner, which the recall counts as found).
    exact : bool
        The exact scan of the rows the call may return (offered to callers that can run it: the engine's planner).
    """

    params: dict[str, Any]
    recall: float
    lcb: float
    cost: float
    ms: float = 0.0
    short: float = 0.0
    exact: bool = False

    def to_json(self) -> dict[str, Any]:
        out = {"params": dict(self.params), "recall": round(float(self.recall), 4), "lcb": round(float(self.lcb), 4),
               "cost": round(float(self.cost), 1), "ms": round(float(self.ms), 4)}
        if self.short:
            out["short"] = round(float(self.short), 4)
        if self.exact:
            out["exact"] = True
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Rung":
        return cls(dict(d["params"]), float(d["recall"]), float(d["lcb"]), float(d["cost"]), float(d.get("ms", 0.0)),
                   float(d.get("short", 0.0)), bool(d.get("exact", False)))

    def describe(self) -> str:
        return "exact" if self.exact else ",".join(f"{k}={v}" for k, v in self.params.items())


@dataclass
class Band:
    """The rungs measured for calls whose band value is at least ``lo`` (up to the next band's ``lo``).

    Attributes
    ----------
    lo : float
    label : str
        e.g. ``"fraction>=0.1"``, ``"tenant_size>=4096"``.
    nq : int
        Queries measured (over every family).
    families : list of str
        The query families measured (e.g. ``all``; ``random`` and ``slab`` masks; ``attr:price``; ``members``).
    rungs : list of Rung
        In the order measured (cheap to expensive along the kind's ladder).
    exact : Rung or None
        The exact scan of the rows a call may return, its cost converted to the kind's units through the measured
        time per unit of the band's most expensive rungs; ``None`` where the caller cannot run it.
    """

    lo: float
    label: str
    nq: int
    families: list[str]
    rungs: list[Rung] = field(default_factory=list)
    exact: Rung | None = None

    def pick(self, target: float, exact_ok: bool = False) -> tuple[Rung, bool]:
        """The cheapest rung whose ``lcb`` reaches ``target`` (the exact scan too with ``exact_ok``) and ``True``;
        else the most accurate index rung (``False``)."""
        ok = [r for r in self.rungs if r.lcb >= target]
        if exact_ok and self.exact is not None:
            ok.append(self.exact)
        if ok:
            return min(ok, key=lambda r: (r.cost, -r.recall)), True
        return max(self.rungs, key=lambda r: (r.lcb, r.recall, -r.cost)), False

    def frontier(self) -> list[Rung]:
        """The rungs no other rung beats on both cost and ``lcb`` (ascending cost): the table worth showing."""
        out: list[Rung] = []
        for r in sorted(self.rungs, key=lambda r: (r.cost, -r.lcb)):
            if not out or r.lcb > out[-1].lcb:
                out.append(r)
        return out

    def to_json(self) -> dict[str, Any]:
        out = {"lo": self.lo, "label": self.label, "nq": self.nq, "families": list(self.families),
               "rungs": [r.to_json() for r in self.rungs]}
        if self.exact is not None:
            out["exact"] = self.exact.to_json()
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Band":
        return cls(float(d["lo"]), str(d["label"]), int(d["nq"]), list(d["families"]),
                   [Rung.from_json(r) for r in d["rungs"]], Rung.from_json(d["exact"]) if d.get("exact") else None)


@dataclass
class Calibration:
    """Calibrated default search settings of one index.

    Attributes
    ----------
    axis : {"fraction", "tenant_size"}
    k : int
        The k recall was measured at (10).
    target : float
        The target the build asked for; the sweep went at least until it was reached (``reached``).
    keys : tuple of str
        The settings the table chooses (e.g. ``("nprobe", "rerank")``); a call that gives all of them explicitly
        bypasses the table.
    bands : list of Band
        Ascending ``lo``.
    nrows : int
        Live rows of the index when it was calibrated (an extend build recalibrates once the index has grown past
        ``REFRESH_GROWTH`` times this).
    seconds : float
        Time the calibration took.
    """

    axis: str
    k: int
    target: float
    keys: tuple[str, ...]
    bands: list[Band]
    nrows: int
    seconds: float = 0.0
    _picks: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self):
        if self.axis not in AXES:
            raise InvalidArgument(f"calibration axis must be one of {AXES}, got {self.axis!r}")
        self.bands = sorted(self.bands, key=lambda b: b.lo)
        self._los = [b.lo for b in self.bands]

    @property
    def reached(self) -> bool:
        """Whether every band reached ``target``."""
        return all(b.pick(self.target, exact_ok=True)[1] for b in self.bands)

    def band_index(self, value: float | None) -> int:
        """Band serving a call whose band value is ``value`` (``None``: the whole index, i.e. the last band for
        ``fraction`` and the largest for ``tenant_size``)."""
        if value is None:
            return len(self.bands) - 1
        return max(0, bisect.bisect_right(self._los, float(value)) - 1)

    def choose(self, target: float, value: float | None, exact_ok: bool = False) -> tuple[str, Rung, bool]:
        """``(band label, rung, reached)`` for a call with band value ``value`` aiming at ``target`` (remembered: a
        search pays for a dict look-up, not a scan of the table).

        On the ``fraction`` axis the bands are measured at single fractions, and recall need not move the same way
        with the fraction for every kind (IVF probes a fixed number of lists, so it finds fewer passing rows at
        smaller fractions; OSQ visits clusters until it has seen as many passing rows, so it covers more ground
        at smaller ones): a call between two measured fractions takes, setting by setting, the larger of the two
        bands' choices (every calibrated setting buys recall as it grows), or the exact scan where both chose it.
        Where only the lower band chose the scan, the call takes it too while the scan, whose cost grows with the
        rows it reads (``exact.cost * value / lo``), stays cheaper than the combined index setting: a correlated
        filter between two bands can defeat an index setting both bands' own queries were content with (IVF-PQ on
        GloVe, frequency rank < 10%, recall 0.79), never an exact scan.
        ``tenant_size`` bands are measured on their largest tenants and serve their range as they are.
        """
        b = self.band_index(value)
        nxt = b + 1 if (self.axis == "fraction" and value is not None and b + 1 < len(self.bands)
                        and float(value) > self.bands[b].lo) else None
        key = (target, b, nxt, exact_ok)
        hit = self._picks.get(key)
        if hit is None:
            band = self.bands[b]
            rung, ok = band.pick(target, exact_ok)
            label = band.label
            scan_below = -1.0  # band values up to which the lower band's exact scan serves instead of ``rung``
            lower_exact = rung if rung.exact else None
            if nxt is not None:
                upper = self.bands[nxt]
                other, ok2 = upper.pick(target, exact_ok)
                label = f"{self.axis}:{band.lo:g}..{upper.lo:g}"
                if not (rung.exact and other.exact):
                    a, a_ok = (rung, ok) if not rung.exact else band.pick(target, False)
                    c, c_ok = (other, ok2) if not other.exact else upper.pick(target, False)
                    if (rung.exact and not a_ok) or (other.exact and not c_ok):
                        rung = rung if rung.exact else other  # no index setting known to reach it on that side
                    else:
                        rung = Rung({k: max(a.params.get(k, v), v) for k, v in c.params.items()} | {
                            k: v for k, v in a.params.items() if k not in c.params},
                            min(a.recall, c.recall), min(a.lcb, c.lcb), max(a.cost, c.cost))
                        ok = a_ok and c_ok
                        if lower_exact is not None and lower_exact.cost > 0:
                            scan_below = band.lo * rung.cost / lower_exact.cost
            if len(self._picks) > 256:
                self._picks.clear()
            hit = self._picks[key] = (label, rung, ok, scan_below, lower_exact)
        label, rung, ok, scan_below, lower_exact = hit
        if lower_exact is not None and value is not None and float(value) <= scan_below:
            return label, lower_exact, True
        return label, rung, ok

    def settings(self, params: dict[str, Any], value: float | None, target: float | None = None,
                 exact_ok: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
        """Search settings for one call: the band's choice for ``target`` (default: this calibration's), with
        ``params`` (explicit settings, already validated, without ``recall``) on top.

        Returns
        -------
        (params, info) : info holds ``band`` (label), ``recall`` (the calibrated recall of the chosen row, or
        ``None`` when an explicit setting overrode part of it), ``params`` (the chosen row), ``reached`` and
        ``exact`` (the exact scan was chosen: only with ``exact_ok`` and no explicit setting).
        """
        explicit = any(k in params for k in self.keys)
        label, rung, ok = self.choose(self.target if target is None else target, value, exact_ok and not explicit)
        out = {**rung.params, **params}
        return out, {"band": label, "recall": None if explicit else rung.recall, "params": rung.params,
                     "reached": ok, "exact": rung.exact}

    def summary(self, target: float | None = None) -> dict[str, Any]:
        """JSON-able view for ``info()``: per band, the chosen settings and the table's frontier."""
        t = self.target if target is None else target
        bands = []
        for band in self.bands:
            rung, ok = band.pick(t, exact_ok=True)
            table = [[r.describe(), round(r.recall, 4), round(r.cost, 1)] for r in band.frontier()]
            if band.exact is not None:
                table.append(["exact", 1.0, round(band.exact.cost, 1)])
            bands.append({"band": band.label, "nq": band.nq, "families": band.families, "choice": rung.describe(),
                          "params": rung.params, "exact": rung.exact, "recall": round(rung.recall, 4),
                          "lcb": round(rung.lcb, 4), "reached": ok, "table": table})
        return {"axis": self.axis, "k": self.k, "target": t, "seconds": round(self.seconds, 3), "rows": self.nrows,
                "bands": bands}

    def to_json(self) -> dict[str, Any]:
        return {"axis": self.axis, "k": self.k, "target": self.target, "keys": list(self.keys),
                "bands": [b.to_json() for b in self.bands], "nrows": self.nrows, "seconds": round(self.seconds, 3)}

    @classmethod
    def from_json(cls, d: dict[str, Any] | None) -> "Calibration | None":
        if not d:
            return None
        return cls(str(d["axis"]), int(d["k"]), float(d["target"]), tuple(d["keys"]),
                   [Band.from_json(b) for b in d["bands"]], int(d["nrows"]), float(d.get("seconds", 0.0)))


def format_table(summary: dict[str, Any], width: int = 100) -> list[str]:
    """Lines of a plain-text table of :meth:`Calibration.summary` (for ``shoal info``)."""
    lines = [f"calibrated for recall@{summary['k']} >= {summary['target']} by {summary['axis']} "
             f"({summary['rows']:,} rows, {summary['seconds']:.1f} s)"]
    for b in summary["bands"]:
        flag = "" if b["reached"] else "  (target not reached: most accurate setting)"
        lines.append(f"  {b['band']:<24} {b['choice']:<28} recall {b['recall']:.3f} (lcb {b['lcb']:.3f}){flag}")
        cells = [f"{p}:{r:.3f}" for p, r, _ in b["table"]]
        row = "    table "
        for c in cells:
            if len(row) + len(c) + 1 > width:
                lines.append(row)
                row = "          "
            row += c + " "
        lines.append(row.rstrip())
    return lines


def ladder_values(lo: int, hi: int, step: float = 1.5) -> list[int]:
    """Integers from ``lo`` to ``hi`` (both included) growing by about ``step`` (1, 2, 3, 4, 6, 8, 12, 16, 24, ...):
    fine enough that the cheapest setting reaching a target is rarely a third above the one needed."""
    out = [int(lo)]
    while out[-1] < hi:
        nxt = max(out[-1] + 1, int(round(out[-1] * step)))
        # keep to the round values 2^i and 1.5 * 2^i
        p = 1 << (nxt.bit_length() - 1)
        nxt = p if nxt < p * 1.25 else (p * 3) // 2 if nxt < p * 1.75 else 2 * p
        out.append(min(int(hi), max(out[-1] + 1, nxt)))
    return out


def split_recall(params: dict[str, Any] | None) -> tuple[dict[str, Any], float | None]:
    """Split the ``recall`` entry off validated ``params``: ``(the rest, recall target or None)``."""
    p = dict(params or {})
    want = p.pop(RECALL_PARAM, None)
    return p, None if want is None else check_target(want)
