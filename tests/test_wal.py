"""WAL: framing, checksums, torn tails and mid-log damage at every byte offset, repair, rollback of failed appends."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from shoal.engine import Database
from shoal.engine.wal import WALDamaged, WALWarning, WriteAheadLog, encode_record, repair, scan


def write_log(path, n):
    wal = WriteAheadLog(str(path))
    for i in range(n):
        wal.append("upsert", {"i": i, "s": "x" * (i % 5)}, {"ids": np.arange(i + 1, dtype=np.int64),
                                                          "v": np.full((i % 3 + 1, 2), i, np.float32)})
    wal.close()
    return path.read_bytes()


def record_bounds(data):
    """Start offset of every record, plus the end."""
    bounds, pos = [0], 0
    while pos < len(data):
        length = int.from_bytes(data[pos:pos + 4], "little")
        pos += 8 + length
        bounds.append(pos)
    return bounds


def test_roundtrip_and_lsns(tmp_path):
    data = write_log(tmp_path / "w", 6)
    recs, end, problem = scan(data)
    assert problem is None and end == len(data)
    assert [r.lsn for r in recs] == [1, 2, 3, 4, 5, 6]
    assert recs[3].fields == {"i": 3, "s": "xxx"}
    np.testing.assert_array_equal(recs[3].arrays["ids"], np.arange(4))
    assert recs[4].arrays["v"].shape == (2, 2)
    # after_lsn skips what a snapshot already covers
    assert [r.lsn for r in scan(data, after_lsn=4)[0]] == [5, 6]


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_every_byte_of_last_records(tmp_path, damage):
    data = write_log(tmp_path / "w", 5)
    bounds = record_bounds(data)
    first_damaged = 3  # damage every byte of records 4..5
    path = tmp_path / "x"
    for off in range(bounds[first_damaged], len(data)):
        j = max(i for i in range(len(bounds) - 1) if bounds[i] <= off)  # record holding the byte
        if damage == "truncate":
            bad = data[:off]
        else:
            bad = bytearray(data)
            bad[off] ^= 0x5A
            bad = bytes(bad)
        path.write_bytes(bad)
        wal = WriteAheadLog(str(path))
        if damage == "flip" and j < 4:
            # damage before an intact, acknowledged record: refuse, change nothing, say where and how much follows
            with pytest.raises(WALDamaged) as err:
                wal.recover(0)
            assert err.value.offset == bounds[j] and err.value.intact_after == 4 - j, off
            assert f"byte {bounds[j]}" in str(err.value) and "shoal repair" in str(err.value)
            assert path.read_bytes() == bad
            wal.close()
            continue
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            recs = wal.recover(0)
        at_boundary = damage == "truncate" and off == bounds[j]
        assert [r.lsn for r in recs] == list(range(1, j + 1)), (damage, off)
        assert any(issubclass(w.category, WALWarning) for w in caught) != at_boundary, (damage, off)
        assert path.stat().st_size == bounds[j]  # torn final record truncated
        # appends continue the sequence after the last good record
        assert wal.append("delete", {}, {}) == j + 1
        wal.close()
        assert [r.lsn for r in scan(path.read_bytes())[0]] == list(range(1, j + 2))


def test_repair_keeps_every_intact_record_and_moves_the_bytes_aside(tmp_path):
    data = write_log(tmp_path / "w", 6)
    bounds = record_bounds(data)
    for off in (bounds[0] + 2, bounds[1] + 9, bounds[2] + 30):  # length field, CRC, payload
        bad = bytearray(data)
        bad[off] ^= 0xFF
        path = tmp_path / f"r{off}"
        path.write_bytes(bytes(bad))
        j = max(i for i in range(len(bounds) - 1) if bounds[i] <= off)
        report = repair(str(path), 0)
        assert report["kept"] == 5
        assert report["damaged_bytes"] == bounds[j + 1] - bounds[j]
        with open(report["moved_to"], "rb") as f:
            assert f.read() == bytes(bad)  # the original bytes, untouched
        recs, end, problem = scan(path.read_bytes())
        assert problem is None and [r.lsn for r in recs] == [1, 2, 3, 4, 5]
        expected = [i for i in range(6) if i != j]
        assert [r.fields["i"] for r in recs] == expected
        # records already in a snapshot (lsn <= after_lsn) are left out, the rest renumbered after it
        path.write_bytes(bytes(bad))
        report = repair(str(path), 2)
        recs = scan(path.read_bytes(), after_lsn=2)[0]
        assert [r.lsn for r in recs] == list(range(3, 3 + report["kept"]))
        assert [r.fields["i"] for r in recs] == [i for i in range(2, 6) if i != j]
    assert repair(str(tmp_path / "w"), 0) == {"kept": 6, "damaged_bytes": 0, "moved_to": None}


def test_lsn_gap_and_read_only(tmp_path):
    a = encode_record(1, "x", {}, {})
    c = encode_record(3, "x", {}, {})
    recs, end, problem = scan(a + c)
    assert [r.lsn for r in recs] == [1] and end == len(a) and "lsn" in problem
    # a log that starts past the snapshot's lsn + 1 lost records: refuse to apply it
    assert scan(c, after_lsn=1)[0] == []
    path = tmp_path / "ro"
    path.write_bytes(a + c[:-3])
    wal = WriteAheadLog(str(path), read_only=True)
    with pytest.warns(WALWarning):
        assert [r.lsn for r in wal.recover(0)] == [1]
    assert path.stat().st_size == len(a) + len(c) - 3  # read-only never truncates


def test_failed_append_rolls_back(tmp_path):
    wal = WriteAheadLog(str(tmp_path / "w"))
    wal.append("a", {}, {})
    size = wal.size
    with pytest.raises(TypeError):
        wal.append("b", {"bad": object()}, {})  # not JSON-serialisable: nothing written
    assert wal.size == size and wal.last_lsn == 1
    wal.close()


def test_collection_recovers_exactly_the_records_before_damage(tmp_path, rng):
    root = tmp_path / "d"
    db = Database(root)
    col = db.create_collection("c", dim=3, schema={"k": "int"})
    x = rng.standard_normal((6, 3)).astype(np.float32)
    for i in range(6):
        col.upsert([i], x[i:i + 1], attrs={"k": [i]})
    wal_path = Path(col.wal_path)
    col._abandon()  # simulate a crash: no snapshot, WAL only
    data = wal_path.read_bytes()
    bounds = record_bounds(data)
    saved = tmp_path / "saved"
    shutil.copytree(root, saved)
    for damage in ("truncate", "flip"):
        for off in range(bounds[5], len(data)):  # every byte of the last record
            shutil.rmtree(root)
            shutil.copytree(saved, root)
            if damage == "flip":
                bad = bytearray(data)
                bad[off] ^= 0xFF
            else:
                bad = data[:off]
            wal_path.write_bytes(bytes(bad))
            expect_warning = not (damage == "truncate" and off == bounds[5])
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                c2 = Database(root).collection("c")
            assert any(issubclass(w.category, WALWarning) for w in caught) == expect_warning
            got = c2.get(np.arange(10))
            assert [r["id"] for r in got] == list(range(5))
            for r in got:
                np.testing.assert_array_equal(r["vector"], x[r["id"]])
                assert r["attrs"] == {"k": r["id"]}
            c2._abandon()
    db._closed = True
