"""The engine-overhead benchmark on small synthetic data: it runs end to end (JSON lines and a plot), and a large
regression of the collection path against the index call it wraps (more than 3x, far above the targets of 1.3x for
single queries and 1.1x for batches that bench/README reports) fails the suite."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import engine  # noqa: E402
from bench.common import read_results  # noqa: E402
from bench.datasets import load_dataset  # noqa: E402


def test_collection_path_costs_little_over_the_index_call(tmp_path):
    ds = load_dataset("synthetic:n=20000,d=32,nq=200,clusters=16")
    out = tmp_path / "engine.jsonl"
    records = engine.measure(ds, list(engine.KINDS), nq=200, rounds=3, out=str(out), ntenants=20)
    assert [(r["kind"], r["case"]) for r in records] == [
        ("Flat", "none"), ("IVF-PQ", "none"), ("Curator", "tenant"), ("OSQ", "filter 10%"), ("OSQ", "filter 50%")]
    assert len(read_results(out)) == len(records)
    engine.plot(records, tmp_path / "engine.png")
    assert (tmp_path / "engine.png").stat().st_size > 0
    for r in records:
        assert r["single_ratio"] < 3.0 and r["batch_ratio"] < 3.0, r
        assert r["plan"].startswith(("index(", "exact(")), r


def test_memory_records_each_kind_as_the_collection_serves_it(tmp_path):
    ds = load_dataset("synthetic:n=5000,d=16,nq=10,clusters=8")
    out = tmp_path / "memory.jsonl"
    records = engine.memory(ds, list(engine.KINDS), out=str(out), ntenants=5)
    assert [r["kind"] for r in records] == list(engine.KINDS)
    assert len(read_results(out)) == len(records)
    for r in records:
        assert r["case"] == "memory" and r["ivfflat_bytes_per_vector"] > 16 * 4, r
        # mapped from the snapshot by default: at least the float32 vectors are not counted as resident
        assert r["mapped_bytes_per_vector"] >= 16 * 4, r
        assert r["resident_bytes_per_vector"] > 0, r
