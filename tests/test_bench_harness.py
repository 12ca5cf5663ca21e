"""The benchmark harness (bench/common.py) and data set objects (bench/datasets.py), on synthetic data only."""

import gzip
import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # bench/ is not installed; it runs from the repo root
    sys.path.insert(0, str(ROOT))

from bench import common, datasets  # noqa: E402
from bench.common import (ProgressBar, append_result, bench_parser, dataset_from_args, measure_qps,  # noqa: E402
                          read_results, recall_at_k, recall_at_k_ties, rss_bytes, rss_delta)
from bench.datasets import DatasetUnavailable, FashionMNIST, Synthetic, load_dataset  # noqa: E402


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setattr(datasets, "CACHE_DIR", d)
    return d


def brute_force(xb, xq, k, metric):
    xb64, xq64 = xb.astype(np.float64), xq.astype(np.float64)
    if metric == "l2":
        keys = ((xq64[:, None, :] - xb64[None]) ** 2).sum(-1)
    else:
        keys = -(xq64 @ xb64.T)
    order = np.lexsort((np.broadcast_to(np.arange(xb.shape[0]), keys.shape), keys), axis=1)[:, :k]
    return np.take_along_axis(keys, order, 1), order


# ---------------------------------------------------------------------------------------------------- datasets
def test_synthetic_is_deterministic_and_shaped():
    a, b, c = Synthetic(500, 12, 20, "l2", seed=3), Synthetic(500, 12, 20, "l2", seed=3), Synthetic(500, 12, 20, seed=4)
    assert a.get_database().shape == (500, 12) and a.get_database().dtype == np.float32
    assert a.get_queries().shape == (20, 12) and a.d == 12 and a.nb == 500 and a.nq == 20
    np.testing.assert_array_equal(a.get_database(), b.get_database())
    np.testing.assert_array_equal(a.get_queries(), b.get_queries())
    assert not np.array_equal(a.get_database(), c.get_database())
    attrs = a.attributes()
    assert set(attrs) == {"cluster", "uniform", "category"} and all(v.shape == (500,) for v in attrs.values())
    # Zipf-like cluster sizes: the first cluster is clearly the biggest
    sizes = np.bincount(attrs["cluster"])
    assert sizes[0] == sizes.max() and sizes[0] > 3 * np.median(sizes)
    cos = Synthetic(300, 8, 10, "cosine", seed=0)
    np.testing.assert_allclose(np.linalg.norm(cos.get_database(), axis=1), 1, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(cos.get_queries(), axis=1), 1, rtol=1e-5)


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_groundtruth_is_exact_and_cached(metric, cache_dir, monkeypatch):
    ds = Synthetic(700, 10, 25, metric, seed=1, clusters=5)
    D, I = ds.get_groundtruth(7, return_distances=True, verbose=False)
    refD, refI = brute_force(ds.get_database(), ds.get_queries(), 7, metric)
    np.testing.assert_array_equal(I, refI)
    np.testing.assert_allclose(D, refD, rtol=1e-5, atol=1e-5)
    assert I.dtype == np.int64 and D.dtype == np.float32 and I.shape == (25, 7)
    files = list(cache_dir.glob("gt-*.npz"))
    assert len(files) == 1 and metric in files[0].name and "k100" in files[0].name

    def boom(*a, **k):
        raise AssertionError("ground truth recomputed despite the cache")

    monkeypatch.setattr(datasets, "compute_groundtruth", boom)
    again = Synthetic(700, 10, 25, metric, seed=1, clusters=5)
    np.testing.assert_array_equal(again.get_groundtruth(3), I[:, :3])
    # another configuration is another cache entry
    with pytest.raises(AssertionError, match="recomputed"):
        Synthetic(700, 10, 25, metric, seed=2, clusters=5).get_groundtruth(3)


def test_groundtruth_ties_go_to_the_smaller_row():
    ds = Synthetic(50, 4, 3, "l2", seed=0)
    xb = ds.get_database()
    xb[10] = xb[40] = xb[25]  # three identical rows
    q = ds.get_queries()
    q[0] = xb[25]
    I = ds.get_groundtruth(3, verbose=False)
    assert list(I[0]) == [10, 25, 40]


def test_subsetting_and_keys(cache_dir):
    full = Synthetic(400, 6, 30, seed=5)
    sub = Synthetic(400, 6, 30, seed=5, nb=100)
    assert sub.nb == 100 and full.key != sub.key and "nb100" in sub.key
    np.testing.assert_array_equal(sub.get_database(), full.get_database()[:100])
    I = sub.get_groundtruth(5, verbose=False)
    assert I.max() < 100
    with pytest.raises(ValueError, match="exceeds"):
        Synthetic(400, 6, 30, nb=1000).get_database()
    with pytest.raises(ValueError, match="k="):
        sub.get_groundtruth(101)


def test_database_iterator_splits_in_order():
    ds = Synthetic(1003, 5, 4, seed=2)
    xb = ds.get_database()
    blocks = list(ds.database_iterator(bs=100))
    assert [b.shape[0] for b in blocks[:2]] == [100, 100]
    np.testing.assert_array_equal(np.concatenate(blocks), xb)
    shards = [np.concatenate(list(ds.database_iterator(bs=64, split=(3, r)))) for r in range(3)]
    np.testing.assert_array_equal(np.concatenate(shards), xb)
    assert [s.shape[0] for s in shards] == [334, 334, 335]
    with pytest.raises(ValueError, match="split"):
        list(ds.database_iterator(split=(3, 3)))


def test_load_dataset_specs_and_errors():
    ds = load_dataset("synthetic:n=300,d=7,nq=11,metric=ip,clusters=0,seed=9")
    assert (ds.nb, ds.d, ds.nq, ds.metric, ds.clusters) == (300, 7, 11, "ip", 0)
    with pytest.raises(ValueError, match="valid: fashion-mnist, glove-50, synthetic"):
        load_dataset("sift1m")
    with pytest.raises(ValueError, match="valid keys"):
        load_dataset("synthetic:n=10,color=3")
    with pytest.raises(ValueError, match="metric"):
        load_dataset("synthetic:metric=hamming")


def _write_idx(path, payload: bytes, header_len: int):
    with gzip.open(path, "wb") as f:
        f.write(b"\0" * header_len + payload)


def test_fashion_mnist_reads_idx_files_and_explains_missing_package(tmp_path):
    with pytest.raises(DatasetUnavailable, match="apt-get install -y dataset-fashion-mnist"):
        FashionMNIST(directory=tmp_path / "nowhere").get_database()
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (30, 784), dtype=np.uint8)
    test = rng.integers(0, 256, (6, 784), dtype=np.uint8)
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", train.tobytes(), 16)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", test.tobytes(), 16)
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", bytes(range(10)) * 3, 8)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", bytes([1, 2, 3, 4, 5, 6]), 8)
    ds = FashionMNIST(directory=tmp_path, nq=4)
    np.testing.assert_array_equal(ds.get_database(), train.astype(np.float32))
    np.testing.assert_array_equal(ds.get_queries(), test[:4].astype(np.float32))
    assert list(ds.attributes()["label"][:3]) == [0, 1, 2]
    assert list(ds.query_attributes()["label"]) == [1, 2, 3, 4]
    assert ds.metric == "l2" and ds.d == 784


# ---------------------------------------------------------------------------------------------------- recall
def test_recall_at_k_intersection():
    gt = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    assert recall_at_k(gt, gt, 4) == 1.0
    I = np.array([[4, 3, 9, -1], [8, 8, 8, 5]])  # -1 never counts, duplicates count once
    assert recall_at_k(I, gt, 4) == pytest.approx((2 + 2) / 8)
    assert recall_at_k(np.array([[2, 1], [0, 0]]), gt, 2) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="k=5"):
        recall_at_k(I, gt, 5)


def test_recall_with_ties_credits_equal_distances():
    ds = Synthetic(60, 3, 2, "l2", seed=4)
    xb = ds.get_database()
    q = ds.get_queries()
    gt = ds.get_groundtruth(2, verbose=False)
    twin = 59 if gt[0, 1] != 59 and gt[0, 0] != 59 else 58
    xb[twin] = xb[gt[0, 1]]  # a copy of the 2nd neighbour: an equally good answer
    ds2 = Synthetic(60, 3, 2, "l2", seed=4)
    ds2._xb, ds2._xq = xb, q
    gt2 = ds2.get_groundtruth(2, verbose=False)
    other = [twin if gt2[0, 1] != twin else gt[0, 1]]
    I = np.array([[gt2[0, 0], other[0]], list(gt2[1])])
    assert recall_at_k(I, gt2, 2) == pytest.approx(0.75)
    assert recall_at_k_ties(I, ds2, 2) == pytest.approx(1.0)
    wrong = np.array([[gt2[0, 0], gt2[0, 0]], [-1, gt2[1, 1]]])
    assert recall_at_k_ties(wrong, ds2, 2) == pytest.approx(0.5)


# ---------------------------------------------------------------------------------------------------- timing, memory
def test_measure_qps_restores_threads():
    before = common.get_threads()
    seen = []

    def search(q):
        seen.append(common.get_threads())
        return q.sum()

    t = measure_qps(search, np.ones((50, 4), np.float32), threads=1, repeat=2)
    assert t.qps > 0 and t.nq == 50 and len(t.runs) == 2 and t.threads == 1
    assert seen[-1].get("faiss", 1) == 1 and seen[-1].get("numba", 1) == 1
    assert all(b == 1 for b in seen[-1]["blas"])
    assert common.get_threads() == before
    tb = measure_qps(lambda q: q.shape[0], np.ones((10, 2), np.float32), batch=3, repeat=1, warmup=0)
    assert tb.result == [3, 3, 3, 1]


def test_rss_delta_sees_an_allocation():
    assert rss_bytes() > 0
    with rss_delta() as m:
        big = np.ones(40 << 20, dtype=np.uint8)  # 40 MiB, touched
    assert m["bytes"] > 30 << 20
    del big


# ---------------------------------------------------------------------------------------------------- results
def test_append_result_writes_json_lines(tmp_path):
    out = tmp_path / "r" / "x.jsonl"
    append_result(out, {"method": "a", "qps": np.float32(12.5), "recall": float("nan")}, echo=False)
    append_result(out, {"method": "b", "qps": 3}, echo=False)
    lines = out.read_text().splitlines()
    assert len(lines) == 2
    first = json.loads(lines[0])
    assert first["method"] == "a" and first["qps"] == 12.5 and first["recall"] is None
    assert first["machine"]["cores"] >= 1 and "numpy" in first["machine"]["libs"]
    assert first["timestamp"].endswith("+00:00")
    assert "commit" in first
    assert [r["method"] for r in read_results(out)] == ["a", "b"]
    assert common.results_path("flat") == common.RESULTS_DIR / "flat.jsonl"
    out.write_text(out.read_text() + "{oops\n")
    with pytest.raises(ValueError, match=":3:"):
        read_results(out)


def test_progress_bar_logs_deciles():
    buf = io.StringIO()
    with ProgressBar(20, "work", stream=buf) as bar:
        for _ in range(20):
            bar.update(1)
    lines = buf.getvalue().splitlines()
    assert 2 <= len(lines) <= 11 and "20/20" in lines[-1] and "100.0%" in lines[-1]


def test_bench_parser_and_quick_mode():
    p = bench_parser("t", name="flat")
    a = p.parse_args(["--dataset", "synthetic:n=500,d=4,nq=300", "--quick", "--k", "5"])
    assert a.k == 5 and a.out == "flat"
    ds = dataset_from_args(a)
    assert ds.nq == 200 and ds.nb == 500
    a2 = p.parse_args([])
    assert common.dataset_names(a2) == ["fashion-mnist", "glove-50"]
    assert common.dataset_names(p.parse_args(["--dataset", "all"])) == ["fashion-mnist", "glove-50"]


def test_plot_writes_png_for_bars_and_curves(tmp_path):
    pytest.importorskip("matplotlib")
    from bench import plot

    res = tmp_path / "r.jsonl"
    for ds in ("a", "b"):
        for th in (1, 2):
            for m, q in (("ours", 100.0 * th), ("theirs", 50.0 * th)):
                append_result(res, {"bench": "t", "dataset_name": ds, "method": m, "threads": th, "qps": q,
                                    "recall": 1.0}, echo=False)
    append_result(res, {"bench": "t", "dataset_name": "a", "method": "ours", "threads": 1, "qps": 120.0,
                        "recall": 1.0}, echo=False)  # a re-run replaces the earlier point
    recs = plot.latest(read_results(res))
    assert len(recs) == 8 and [r["qps"] for r in recs if r["method"] == "ours" and r["dataset_name"] == "a"] \
        == [120.0, 200.0]
    assert plot.choose_mode(recs, "method") == "bar"
    assert plot.main([str(res)]) == 0
    png = res.with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    curve = tmp_path / "c.jsonl"
    for nprobe, (rec, q) in enumerate([(0.5, 900.0), (0.8, 500.0), (0.95, 200.0)]):
        append_result(curve, {"dataset_name": "a", "method": "ivf", "params": {"nprobe": nprobe}, "qps": q,
                              "recall": rec}, echo=False)
    assert plot.choose_mode(read_results(curve), "method") == "curve"
    assert plot.main([str(curve), "--out", str(tmp_path / "c.png"), "--where", "dataset_name=a"]) == 0
    assert (tmp_path / "c.png").stat().st_size > 1000
    assert plot.main([str(curve), "--where", "dataset_name=zzz"]) == 1
