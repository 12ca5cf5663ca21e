"""The benchmark harness: thread control, timing, recall, memory, result files, progress and shared arguments.

A benchmark script typically does::

    from bench.common import bench_parser, dataset_from_args, measure_qps, recall_at_k, append_result

    args = bench_parser("my benchmark").parse_args()
    ds = dataset_from_args(args)
    gt = ds.get_groundtruth(args.k)
    ...
    t = measure_qps(lambda q: index.search(q, args.k), ds.get_queries(), threads=1)
    append_result(args.out, {"method": "...", "dataset": ds.key, "qps": t.qps,
                             "recall": recall_at_k(I, gt, args.k), ...})

Results go to ``bench/results/NAME.jsonl``, one JSON object per configuration, with machine information, a UTC
timestamp and the git commit, so runs from different days and machines can be told apart; ``bench/plot.py`` reads
them.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime as _dt
import json
import os
import platform
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
REPO_DIR = BENCH_DIR.parent


# ---------------------------------------------------------------------------------------------------- threads
def _openblas_setters() -> list[tuple[Callable[[int], None], Callable[[], int]]]:
    """(set, get) pairs for every OpenBLAS loaded in this process (numpy's and faiss's).

    Used when threadpoolctl is not installed: the libraries are found in /proc/self/maps and their
    ``*openblas_set_num_threads*`` symbols called through ctypes, which is what threadpoolctl does for OpenBLAS.
    """
    found = []
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "openblas" in line.lower() and "/" in line}
    except OSError:
        return found
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for suffix in ("64_", ""):
            for prefix in ("scipy_openblas", "openblas"):
                try:
                    setter = getattr(lib, f"{prefix}_set_num_threads{suffix}")
                    getter = getattr(lib, f"{prefix}_get_num_threads{suffix}")
                except AttributeError:
                    continue
                setter.argtypes, setter.restype = [ctypes.c_int], None
                getter.argtypes, getter.restype = [], ctypes.c_int
                found.append((setter, getter))
                break
            else:
                continue
            break
    return found


def get_threads() -> dict:
    """Current thread settings: ``{"faiss": n, "numba": n, "blas": [n, ...]}`` (blas: one per library)."""
    out: dict = {}
    with contextlib.suppress(ImportError):
        import faiss
        out["faiss"] = faiss.omp_get_max_threads()
    with contextlib.suppress(ImportError):
        import numba
        out["numba"] = numba.get_num_threads()
    try:
        from threadpoolctl import threadpool_info
        out["blas"] = [p["num_threads"] for p in threadpool_info() if p.get("user_api") == "blas"]
    except ImportError:
        out["blas"] = [g() for _, g in _openblas_setters()]
    return out


def set_threads(n: int | None) -> None:
    """Set faiss (OpenMP), numba and BLAS threads to ``n`` (``None`` = all cores)."""
    n = max(1, int(n or os.cpu_count() or 1))
    with contextlib.suppress(ImportError):
        import faiss
        faiss.omp_set_num_threads(n)
    with contextlib.suppress(ImportError):
        import numba
        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(n)
    except ImportError:
        for setter, _ in _openblas_setters():
            setter(n)
    # for libraries loaded later (and child processes)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        if var != "NUMBA_NUM_THREADS" or "numba" not in sys.modules:
            os.environ[var] = str(n)


@contextlib.contextmanager
def thread_limit(n: int | None) -> Iterator[None]:
    """Context manager: run the block with ``n`` threads everywhere (see :func:`set_threads`), then restore.

    Also available as ``threads``."""
    before = get_threads()
    env = {v: os.environ.get(v) for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                                           "NUMBA_NUM_THREADS")}
    set_threads(n)
    try:
        yield
    finally:
        with contextlib.suppress(ImportError):
            import faiss
            faiss.omp_set_num_threads(before.get("faiss", os.cpu_count() or 1))
        with contextlib.suppress(ImportError):
            import numba
            numba.set_num_threads(before.get("numba", numba.config.NUMBA_NUM_THREADS))
        blas = before.get("blas") or []
        try:
            from threadpoolctl import threadpool_limits
            if blas:
                threadpool_limits(max(blas))
        except ImportError:
            for (setter, _), m in zip(_openblas_setters(), blas):
                setter(m)
        for var, val in env.items():
            if val is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = val


#: short alias: ``with threads(1): ...``
threads = thread_limit


def single_thread():
    """Shorthand for ``thread_limit(1)``: single-thread QPS, as ann-benchmarks reports it."""
    return thread_limit(1)


# ---------------------------------------------------------------------------------------------------- timing
@dataclass
class Timing:
    """Result of :func:`measure_qps`: best-of-``runs`` wall time for all queries."""

    seconds: float
    nq: int
    threads: int
    runs: list[float] = field(default_factory=list)
    result: object = None

    @property
    def qps(self) -> float:
        return self.nq / self.seconds if self.seconds > 0 else float("inf")

    @property
    def ms_per_query(self) -> float:
        return 1000.0 * self.seconds / max(self.nq, 1)


def measure_qps(search: Callable[[np.ndarray], object], queries: np.ndarray, *, threads: int | None = 1,
                repeat: int = 3, warmup: int | None = None, batch: int | None = None,
                min_seconds: float = 0.0) -> Timing:
    """Time ``search(queries)`` and report queries per second (best of ``repeat`` runs).

    Parameters
    ----------
    search : callable (float32 (m, d)) -> anything
        Called with the whole query set, or with slices of ``batch`` queries.
    queries : float32 (nq, d)
    threads : int or None
        Threads for faiss, numba and BLAS during the timing (1 = single-thread QPS; None = all cores).
    repeat : int
        Timed runs; the fastest is kept (the least disturbed by other processes on a shared machine).
    warmup : int, optional
        Queries run once untimed first (JIT compilation, page faults); default ``min(nq, 32)``, 0 to skip.
    batch : int, optional
        Queries per call; ``None`` = one call with all queries (batch mode), 1 = one query at a time.
    min_seconds : float
        Keep running (beyond ``repeat``) until this much time has been timed in total, for very fast searches.

    Returns
    -------
    Timing, whose ``result`` is the return value of the last run (whole-set call) or a list of per-batch results.
    """
    nq = int(queries.shape[0])
    nthreads = max(1, int(threads or os.cpu_count() or 1))
    with thread_limit(nthreads):
        w = min(nq, 32) if warmup is None else warmup
        if w:
            search(queries[:w])
        runs: list[float] = []
        result = None
        while len(runs) < max(1, repeat) or sum(runs) < min_seconds:
            t0 = time.perf_counter()
            if batch is None:
                result = search(queries)
            else:
                result = [search(queries[s:s + batch]) for s in range(0, nq, batch)]
            runs.append(time.perf_counter() - t0)
    return Timing(seconds=min(runs), nq=nq, threads=nthreads, runs=runs, result=result)


def measure_interleaved(searches: dict[str, Callable[[np.ndarray], object]], queries: np.ndarray, *,
                        threads: int | None = 1, rounds: int = 3, warmup: int | None = None,
                        setup: dict[str, Callable[[], Callable[[], None]]] | None = None) -> dict[str, Timing]:
    """Time several methods on the same queries in alternation (A B C A B C ...), best of ``rounds`` each.

    On a shared, noisy machine this is fairer than timing each method in one go: a burst of load from other
    processes hits every method instead of one. Arguments are as for :func:`measure_qps`.

    Parameters
    ----------
    searches : {name: callable (float32 (m, d)) -> anything}
    setup : {name: callable () -> undo callable}, optional
        Run before each timing of that method (e.g. set a library switch); the returned callable undoes it.

    Returns
    -------
    {name: Timing}
    """
    nq = int(queries.shape[0])
    nthreads = max(1, int(threads or os.cpu_count() or 1))
    setup = setup or {}
    runs: dict[str, list[float]] = {name: [] for name in searches}
    results: dict[str, object] = {}
    with thread_limit(nthreads):
        w = min(nq, 32) if warmup is None else warmup
        for rnd in range(-1 if w else 0, max(1, rounds)):
            for name, fn in searches.items():
                undo = setup[name]() if name in setup else None
                try:
                    if rnd < 0:
                        fn(queries[:w])
                        continue
                    t0 = time.perf_counter()
                    results[name] = fn(queries)
                    runs[name].append(time.perf_counter() - t0)
                finally:
                    if undo is not None:
                        undo()
    return {name: Timing(seconds=min(r), nq=nq, threads=nthreads, runs=r, result=results[name])
            for name, r in runs.items()}


@contextlib.contextmanager
def stopwatch() -> Iterator[dict]:
    """``with stopwatch() as t: ...`` then ``t["seconds"]`` holds the elapsed wall time."""
    out = {"seconds": float("nan")}
    t0 = time.perf_counter()
    try:
        yield out
    finally:
        out["seconds"] = time.perf_counter() - t0


# ---------------------------------------------------------------------------------------------------- recall
def recall_at_k(I: np.ndarray, gt: np.ndarray, k: int) -> float:
    """Set-intersection recall@k: mean over queries of ``|I[:, :k] ∩ gt[:, :k]| / k``.

    Parameters
    ----------
    I : int (nq, >= k)
        Returned ids (``-1`` = no result, never counted). Ids must be in the same space as ``gt`` (base rows).
    gt : int (nq, >= k)
        Exact neighbours, e.g. ``ds.get_groundtruth(k)``.

    Notes
    -----
    Not tie-tolerant: when several base rows share the k-th distance, a method that returns another of them loses
    credit. :func:`recall_at_k_ties` gives that credit back; on the real sets the two differ by well under 0.1%.
    """
    I, gt = np.asarray(I), np.asarray(gt)
    if I.shape[0] != gt.shape[0]:
        raise ValueError(f"recall_at_k: {I.shape[0]} result rows for {gt.shape[0]} ground-truth rows")
    if I.shape[1] < k or gt.shape[1] < k:
        raise ValueError(f"recall_at_k: k={k} but results have {I.shape[1]} and ground truth {gt.shape[1]} columns")
    if I.shape[0] == 0:
        return float("nan")
    a = np.sort(I[:, :k], axis=1)
    b = np.sort(gt[:, :k], axis=1)
    hits = 0
    # per row intersection of sorted arrays, vectorised through searchsorted on row-offset keys
    offs = np.arange(a.shape[0], dtype=np.int64)[:, None] * (max(int(b.max(initial=0)), int(a.max(initial=0))) + 2)
    fa = (a + 1 + offs).ravel()
    fb = (b + 1 + offs).ravel()
    valid = (a >= 0).ravel()
    # duplicates in a row of I must not count twice
    first = np.ones_like(valid)
    first[1:] = fa[1:] != fa[:-1]
    pos = np.searchsorted(fb, fa)
    pos = np.minimum(pos, fb.size - 1)
    hits = int(np.count_nonzero((fb[pos] == fa) & valid & first))
    return hits / (I.shape[0] * k)


def recall_at_k_ties(I: np.ndarray, ds, k: int, *, rel_eps: float = 1e-6) -> float:
    """Tie-tolerant recall@k: a returned id counts when its exact distance is at most the k-th true distance.

    Distances are recomputed in float64 from the data set's vectors, both for the returned ids and for the ground
    truth's k-th neighbour, with a relative tolerance ``rel_eps`` (scaled by the key's magnitude). Each distinct valid
    id counts once and at most ``k`` per query, so the value is in [0, 1] and equals :func:`recall_at_k` when there are
    no ties.

    Parameters
    ----------
    I : int (nq, >= k)  base rows, ``-1`` = none
    ds : bench.datasets.Dataset
    """
    from .datasets import exact_keys64

    I = np.asarray(I)[:, :k]
    gt = ds.get_groundtruth(k)
    xb, xq = ds.get_database(), ds.get_queries()
    if I.shape[0] != xq.shape[0]:
        raise ValueError(f"recall_at_k_ties: {I.shape[0]} result rows for {xq.shape[0]} queries")
    kth = exact_keys64(xq, xb[gt[:, k - 1:k]], ds.metric)[:, 0]
    valid = I >= 0
    keys = exact_keys64(xq, xb[np.where(valid, I, 0)], ds.metric)
    tol = rel_eps * np.maximum(np.abs(kth), 1e-12)
    ok = valid & (keys <= (kth + tol)[:, None])
    srt = np.sort(np.where(ok, I, -1), axis=1)
    distinct = (srt >= 0) & np.concatenate([np.ones((srt.shape[0], 1), bool), srt[:, 1:] != srt[:, :-1]], axis=1)
    return float(np.minimum(distinct.sum(axis=1), k).sum() / (I.shape[0] * k))


# ---------------------------------------------------------------------------------------------------- memory
def rss_bytes() -> int:
    """Resident set size of this process in bytes (VmRSS from /proc/self/status; 0 where unavailable)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


@contextlib.contextmanager
def rss_delta() -> Iterator[dict]:
    """``with rss_delta() as m: load()`` then ``m["bytes"]`` is the growth of the RSS over the block.

    Keep a reference to what was loaded, or the memory may be freed before the measurement.
    """
    import gc

    gc.collect()
    out = {"bytes": 0, "before": rss_bytes()}
    try:
        yield out
    finally:
        gc.collect()
        out["after"] = rss_bytes()
        out["bytes"] = out["after"] - out["before"]


# ---------------------------------------------------------------------------------------------------- results
_MACHINE: dict | None = None


def machine_info() -> dict:
    """Host, CPU model, core count, OS, Python and library versions (computed once per process)."""
    global _MACHINE
    if _MACHINE is None:
        cpu = platform.processor() or platform.machine()
        with contextlib.suppress(OSError):
            with open("/proc/cpuinfo") as f:
                for line in f:
                    if line.startswith("model name"):
                        cpu = line.split(":", 1)[1].strip()
                        break
        libs = {"numpy": np.__version__}
        for mod in ("faiss", "numba", "hnswlib"):
            with contextlib.suppress(Exception):
                libs[mod] = getattr(__import__(mod), "__version__", "?")
        _MACHINE = {"host": socket.gethostname(), "cpu": cpu, "cores": os.cpu_count(),
                    "os": platform.platform(), "python": platform.python_version(), "libs": libs,
                    "blas_cores": blas_core_names(),
                    "env": {v: os.environ[v] for v in ("OPENBLAS_CORETYPE", "OMP_NUM_THREADS", "NUMBA_NUM_THREADS")
                            if v in os.environ}}
    return dict(_MACHINE)


def blas_core_names() -> dict[str, str]:
    """The kernel family each loaded OpenBLAS picked for this CPU, e.g. ``{"libscipy_openblas64_...so": "SkylakeX"}``.

    An old OpenBLAS that does not know the CPU falls back to generic SSE kernels ("Prescott"), several times slower;
    faiss-cpu wheels bundle their own OpenBLAS, so this can differ between numpy and faiss (see bench/README.md).
    """
    out = {}
    try:
        with open("/proc/self/maps") as f:
            paths = sorted({line.split()[-1] for line in f if "openblas" in line.lower() and "/" in line})
    except OSError:
        return out
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name in ("openblas_get_corename", "scipy_openblas_get_corename64_", "openblas_get_corename64_"):
            fn = getattr(lib, name, None)
            if fn is not None:
                fn.restype = ctypes.c_char_p
                out[os.path.basename(path)] = fn().decode(errors="replace")
                break
    return out


def git_commit() -> str | None:
    """HEAD commit of the repository (with ``+dirty`` when tracked files differ), or None outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_DIR, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        if not head:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_DIR,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def results_path(name: str | os.PathLike) -> Path:
    """``bench/results/NAME.jsonl`` for a bare name; a path with a folder or suffix is used as given."""
    p = Path(name)
    if p.suffix or p.parent != Path("."):
        return p
    return RESULTS_DIR / f"{p.name}.jsonl"


def _jsonable(v):
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, float) and not np.isfinite(v):
        return None
    return v


def append_result(name: str | os.PathLike, record: dict, *, echo: bool = True) -> dict:
    """Append one configuration's result as a JSON line to ``bench/results/NAME.jsonl``.

    ``machine``, ``timestamp`` (UTC, ISO 8601) and ``commit`` are added unless ``record`` has them. Returns the line
    written (as a dict). NaN/inf become ``null``.
    """
    path = results_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = {"timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "commit": git_commit(), "machine": machine_info()}
    line.update(record)
    line = _jsonable(line)
    text = json.dumps(line, sort_keys=False)
    with open(path, "a") as f:
        f.write(text + "\n")
    if echo:
        short = {k: v for k, v in line.items() if k not in ("machine", "timestamp", "commit")}
        print(json.dumps(short), file=sys.stderr)
    return line


def read_results(path: str | os.PathLike) -> list[dict]:
    """All records of a JSONL results file (blank lines skipped; a malformed line is an error naming it)."""
    out = []
    with open(results_path(path)) as f:
        for no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{no}: not a JSON line ({exc.msg})") from None
    return out


# ---------------------------------------------------------------------------------------------------- progress
class ProgressBar:
    """A text progress bar on stderr: redrawn in place on a terminal, one line per 10% otherwise (logs)."""

    def __init__(self, total: int, desc: str = "", *, width: int = 30, stream=None):
        self.total, self.desc, self.width = max(int(total), 0), desc, width
        self.stream = stream if stream is not None else sys.stderr
        self.done = 0
        self.t0 = time.perf_counter()
        self._tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._last_decile = -1
        self._last_draw = 0.0
        self._closed = False

    def update(self, n: int = 1) -> None:
        self.done = min(self.total, self.done + n) if self.total else self.done + n
        now = time.perf_counter()
        if self._tty:
            if now - self._last_draw > 0.1 or self.done >= self.total:
                self._last_draw = now
                self.stream.write("\r" + self.render())
                self.stream.flush()
        else:
            decile = int(10 * self.done / self.total) if self.total else 0
            if decile > self._last_decile:
                self._last_decile = decile
                self.stream.write(self.render() + "\n")
                self.stream.flush()

    def render(self) -> str:
        frac = self.done / self.total if self.total else 1.0
        filled = int(round(frac * self.width))
        el = time.perf_counter() - self.t0
        eta = el * (1 - frac) / frac if frac > 0 else float("nan")
        bar = "#" * filled + "-" * (self.width - filled)
        eta_s = f" eta {eta:.0f}s" if frac < 1 and np.isfinite(eta) else ""
        return f"{self.desc} [{bar}] {self.done}/{self.total} {100 * frac:5.1f}% {el:.1f}s{eta_s}"

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._tty:
            self.stream.write("\n")
            self.stream.flush()

    def __enter__(self) -> "ProgressBar":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress(items: Iterable, total: int | None = None, desc: str = "") -> Iterator:
    """Wrap an iterable with a :class:`ProgressBar`."""
    if total is None:
        total = len(items)  # type: ignore[arg-type]
    with ProgressBar(total, desc) as bar:
        for item in items:
            yield item
            bar.update(1)


# ---------------------------------------------------------------------------------------------------- arguments
def bench_parser(description: str, *, datasets: Iterable[str] = ("fashion-mnist", "glove-50"),
                 default_k: int = 10, default_nq: int | None = None,
                 name: str | None = None) -> argparse.ArgumentParser:
    """An argparse parser with the options every benchmark shares; scripts add their own.

    Options: ``--dataset`` (repeatable, or ``all``; ``synthetic:n=...,d=...`` accepted), ``--nq``, ``--nb``, ``--k``,
    ``--out`` (results name or path), ``--quick`` (small nq/nb for a smoke run), ``--threads`` (threads for the
    multi-thread measurements; QPS is also measured single-threaded), ``--gpu`` (ground truth and k-means training
    on the GPU).
    """
    datasets = list(datasets)
    p = argparse.ArgumentParser(description=description,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--dataset", action="append", default=None, metavar="NAME",
                   help=f"data set(s) to run, repeatable; 'all' = {', '.join(datasets)}; "
                        f"also synthetic:n=...,d=...,metric=...")
    g.add_argument("--nq", type=int, default=default_nq, help="use the first NQ queries")
    g.add_argument("--nb", type=int, default=None, help="use the first NB base vectors")
    g.add_argument("--k", type=int, default=default_k, help="neighbours per query (recall@k)")
    o = p.add_argument_group("run")
    o.add_argument("--out", default=name, help="results: a name under bench/results/ (NAME.jsonl) or a path")
    o.add_argument("--quick", action="store_true", help="small smoke run (nq <= 200, nb <= 20000)")
    o.add_argument("--threads", type=int, default=None, help="threads for the multi-thread runs (default: all)")
    o.add_argument("--gpu", action="store_true", help="exact ground truth (and IVF-PQ k-means training) on the GPU: "
                                                     "needs faiss-gpu-cu12 (`make gpu`); timed searches stay on CPU")
    p.set_defaults(_all_datasets=datasets)
    return p


def dataset_names(args: argparse.Namespace) -> list[str]:
    """The data sets an argparse namespace from :func:`bench_parser` asks for."""
    names = args.dataset or list(args._all_datasets)
    if "all" in names:
        names = list(args._all_datasets)
    return names


def dataset_from_args(args: argparse.Namespace, name: str | None = None):
    """Instantiate a data set for a parsed namespace, applying ``--nq``, ``--nb`` and ``--quick``."""
    from .datasets import load_dataset

    name = name or dataset_names(args)[0]
    nq, nb = args.nq, args.nb
    if args.quick:
        nq = min(nq or 200, 200)
        nb = min(nb or 20000, 20000)
        if name.startswith("synthetic"):
            nb = None  # synthetic sizes come from the spec
    ds = load_dataset(name, nb=nb, nq=nq, force_nq=args.quick)
    ds.gpu = bool(getattr(args, "gpu", False))
    return ds
