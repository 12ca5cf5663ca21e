"""cli/readers.py: every format on small files written here, and the errors for bad ones."""

import builtins
import json
import struct

import numpy as np
import pytest

from shoal.cli import readers
from shoal.cli.readers import MissingDependency, read_attributes, read_ids, read_tenants, read_vectors, read_texmex
from shoal.errors import InvalidArgument, NotFound

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
h5py = pytest.importorskip("h5py")


@pytest.fixture
def x(rng):
    return rng.standard_normal((13, 5)).astype(np.float32)


def write_texmex(path, arr, dtype):
    arr = np.asarray(arr, dtype=dtype)
    with open(path, "wb") as f:
        for row in arr:
            f.write(struct.pack("<i", row.shape[0]))
            f.write(row.astype(np.dtype(dtype).newbyteorder("<")).tobytes())


# ---------------------------------------------------------------------------------------------------- vectors
def test_npy(tmp_path, x):
    np.save(tmp_path / "v.npy", x.astype(np.float64))
    out = read_vectors(tmp_path / "v.npy")
    assert out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, x)
    np.save(tmp_path / "m.npy", x)
    mm = read_vectors(tmp_path / "m.npy", mmap=True)
    assert isinstance(mm, np.memmap)
    np.testing.assert_array_equal(mm, x)
    np.save(tmp_path / "three.npy", np.zeros((2, 2, 2)))
    with pytest.raises(InvalidArgument, match="2-d"):
        read_vectors(tmp_path / "three.npy")
    np.save(tmp_path / "obj.npy", np.array([["a", "b"]]))
    with pytest.raises(InvalidArgument, match="numeric"):
        read_vectors(tmp_path / "obj.npy")


@pytest.mark.parametrize("ext,dtype", [(".fvecs", np.float32), (".bvecs", np.uint8), (".ivecs", np.int32)])
def test_texmex_formats(tmp_path, rng, ext, dtype):
    arr = rng.integers(0, 200, (9, 7)).astype(dtype)
    write_texmex(tmp_path / f"a{ext}", arr, dtype)
    native = read_texmex(tmp_path / f"a{ext}")
    assert native.dtype == dtype and native.shape == (9, 7)
    np.testing.assert_array_equal(native, arr)
    as_f32 = read_vectors(tmp_path / f"a{ext}")
    assert as_f32.dtype == np.float32
    np.testing.assert_array_equal(as_f32, arr.astype(np.float32))
    np.testing.assert_array_equal(read_vectors(tmp_path / f"a{ext}", mmap=True, dtype=None), arr)


def test_corrupt_fvecs_is_explained(tmp_path, x):
    path = tmp_path / "v.fvecs"
    write_texmex(path, x, np.float32)
    good = path.read_bytes()
    path.write_bytes(good[:-3])  # truncated
    with pytest.raises(InvalidArgument, match="not a whole number of 24-byte records"):
        read_vectors(path)
    # a whole number of records, but the last header says 3 (a file that mixes dimensions)
    path.write_bytes(good + struct.pack("<i", 3) + np.zeros(5, np.float32).tobytes())
    with pytest.raises(InvalidArgument, match="record 13 has dimension 3, record 0 has 5"):
        read_vectors(path)
    path.write_bytes(struct.pack("<i", -4) + b"\0" * 16)
    with pytest.raises(InvalidArgument, match="dimension is -4"):
        read_vectors(path)
    path.write_bytes(b"\1\0")
    with pytest.raises(InvalidArgument, match="shorter than one record header"):
        read_vectors(path)
    path.write_bytes(b"")
    assert read_vectors(path).shape == (0, 0)


def test_hdf5_train_default_and_key(tmp_path, x):
    path = tmp_path / "ann.hdf5"
    with h5py.File(path, "w") as f:
        f["train"] = x
        f["test"] = x[:3] * 2
        f["neighbors"] = np.arange(6).reshape(3, 2)
        f.attrs["distance"] = "euclidean"
    np.testing.assert_array_equal(read_vectors(path), x)
    np.testing.assert_array_equal(read_vectors(path, key="test"), x[:3] * 2)
    with pytest.raises(InvalidArgument, match="no dataset 'queries'; datasets in the file: neighbors, test, train"):
        read_vectors(path, key="queries")
    (tmp_path / "bad.h5").write_bytes(b"not hdf5 at all")
    with pytest.raises(InvalidArgument, match="not a readable HDF5"):
        read_vectors(tmp_path / "bad.h5")
    with pytest.raises(InvalidArgument, match="key= selects an HDF5 dataset"):
        np.save(tmp_path / "v.npy", x)
        read_vectors(tmp_path / "v.npy", key="train")


def test_parquet_list_fixed_and_numeric_columns(tmp_path, x):
    ids = list(range(100, 113))
    t = pa.table({"id": ids, "embedding": pa.array(x.tolist(), type=pa.list_(pa.float32())),
                  "other": pa.array([[1.0]] * 13), "price": [1.5] * 13})
    pq.write_table(t, tmp_path / "a.parquet")
    np.testing.assert_array_equal(read_vectors(tmp_path / "a.parquet"), x)
    fixed = pa.table({"v": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), 5)})
    pq.write_table(fixed, tmp_path / "f.parquet")
    np.testing.assert_array_equal(read_vectors(tmp_path / "f.parquet"), x)
    cols = pa.table({"id": ids, **{f"c{j}": x[:, j] for j in range(5)}})
    pq.write_table(cols, tmp_path / "c.parquet")
    np.testing.assert_array_equal(read_vectors(tmp_path / "c.parquet"), x)  # id column left out
    np.testing.assert_array_equal(read_vectors(tmp_path / "a.parquet", column="other"), np.ones((13, 1)))
    with pytest.raises(InvalidArgument, match="no column 'nope'; columns: id, embedding, other, price"):
        read_vectors(tmp_path / "a.parquet", column="nope")
    with pytest.raises(InvalidArgument, match="not a list of numbers"):
        read_vectors(tmp_path / "a.parquet", column="price")
    ragged = pa.table({"v": pa.array([[1.0, 2.0], [3.0]])})
    pq.write_table(ragged, tmp_path / "r.parquet")
    with pytest.raises(InvalidArgument, match="row 1 has 1 values, row 0 has 2"):
        read_vectors(tmp_path / "r.parquet")
    two = pa.table({"a": pa.array([[1.0]]), "b": pa.array([[2.0]])})
    pq.write_table(two, tmp_path / "two.parquet")
    with pytest.raises(InvalidArgument, match="several list columns"):
        read_vectors(tmp_path / "two.parquet")
    (tmp_path / "junk.parquet").write_bytes(b"PAR1 nonsense")
    with pytest.raises(InvalidArgument, match="not a readable parquet"):
        read_vectors(tmp_path / "junk.parquet")


def test_csv_and_jsonl_vectors(tmp_path, x):
    lines = ["id,a,b,c,d,e"] + [",".join([str(i)] + [repr(float(v)) for v in row]) for i, row in enumerate(x)]
    (tmp_path / "v.csv").write_text("\n".join(lines) + "\n")
    np.testing.assert_array_equal(read_vectors(tmp_path / "v.csv"), x)
    (tmp_path / "nohead.tsv").write_text("\n".join("\t".join(repr(float(v)) for v in row) for row in x))
    np.testing.assert_array_equal(read_vectors(tmp_path / "nohead.tsv"), x)
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n3,x\n")
    with pytest.raises(InvalidArgument, match="line 3, column 'b': 'x' is not a number"):
        read_vectors(tmp_path / "bad.csv")
    with open(tmp_path / "v.jsonl", "w") as f:
        for i, row in enumerate(x):
            f.write(json.dumps({"id": i, "vector": row.tolist(), "color": "red"}) + "\n")
    np.testing.assert_array_equal(read_vectors(tmp_path / "v.jsonl"), x)
    (tmp_path / "r.jsonl").write_text('{"vector": [1, 2]}\n{"vector": [1]}\n')
    with pytest.raises(InvalidArgument, match="row 1 has 1 values, row 0 has 2"):
        read_vectors(tmp_path / "r.jsonl")
    (tmp_path / "broken.jsonl").write_text('{"vector": [1, 2]}\n{"vector": [1,\n')
    with pytest.raises(InvalidArgument, match=r"broken.jsonl:2: not valid JSON"):
        read_vectors(tmp_path / "broken.jsonl")
    (tmp_path / "nofield.jsonl").write_text('{"v": [1, 2]}\n')
    with pytest.raises(InvalidArgument, match="no vector field"):
        read_vectors(tmp_path / "nofield.jsonl")


def test_unknown_extension_and_missing_file(tmp_path):
    (tmp_path / "v.xyz").write_text("1")
    with pytest.raises(InvalidArgument, match=r"unknown vectors file extension '\.xyz'; supported: \.npy, \.fvecs"):
        read_vectors(tmp_path / "v.xyz")
    with pytest.raises(NotFound, match="no such file"):
        read_vectors(tmp_path / "absent.npy")
    with pytest.raises(InvalidArgument, match="supported: .parquet, .csv, .tsv, .jsonl"):
        read_attributes(tmp_path / "v.xyz")


def test_missing_optional_dependency_names_the_extra(tmp_path, monkeypatch, x):
    pq.write_table(pa.table({"v": pa.array(x.tolist())}), tmp_path / "a.parquet")
    with h5py.File(tmp_path / "a.hdf5", "w") as f:
        f["train"] = x
    real_import = builtins.__import__

    def no_io(name, *args, **kwargs):
        if name.split(".")[0] in ("pyarrow", "h5py"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_io)
    with pytest.raises(MissingDependency, match=r"pip install 'shoal\[io\]'"):
        read_vectors(tmp_path / "a.parquet")
    with pytest.raises(MissingDependency, match=r"h5py: pip install 'shoal\[io\]'"):
        read_vectors(tmp_path / "a.hdf5")
    with pytest.raises(MissingDependency):
        read_attributes(tmp_path / "a.parquet")


# ---------------------------------------------------------------------------------------------------- attributes
def test_attributes_from_csv_jsonl_parquet_agree(tmp_path):
    (tmp_path / "a.csv").write_text("id,price,color,year,tags\n"
                                    "7,1.5,red,2001,a;b\n"
                                    "8,,blue,,\n"
                                    "9,3,\"dark, green\",2003,c\n")
    ids, attrs = read_attributes(tmp_path / "a.csv", schema={"tags": "tags"})
    np.testing.assert_array_equal(ids, [7, 8, 9])
    assert ids.dtype == np.int64
    assert attrs == {"price": [1.5, None, 3.0], "color": ["red", "blue", "dark, green"], "year": [2001, None, 2003],
                     "tags": [["a", "b"], None, ["c"]]}
    with open(tmp_path / "a.jsonl", "w") as f:
        f.write(json.dumps({"id": 7, "price": 1.5, "color": "red", "year": 2001, "tags": ["a", "b"]}) + "\n")
        f.write(json.dumps({"id": 8, "color": "blue"}) + "\n")
        f.write(json.dumps({"id": 9, "price": 3.0, "color": "dark, green", "year": 2003, "tags": ["c"],
                            "vector": [1, 2]}) + "\n")
    ids_j, attrs_j = read_attributes(tmp_path / "a.jsonl")
    np.testing.assert_array_equal(ids_j, ids)
    assert attrs_j == attrs  # the vector field is not an attribute
    pq.write_table(pa.table({"id": [7, 8, 9], "price": [1.5, None, 3.0], "color": ["red", "blue", "dark, green"],
                             "year": [2001, None, 2003], "tags": [["a", "b"], None, ["c"]]}), tmp_path / "a.parquet")
    ids_p, attrs_p = read_attributes(tmp_path / "a.parquet")
    np.testing.assert_array_equal(ids_p, ids)
    assert attrs_p == attrs
    only, sub = read_attributes(tmp_path / "a.parquet", columns=["year"])
    assert sub == {"year": [2001, None, 2003]} and list(only) == [7, 8, 9]
    none_ids, _ = read_attributes(tmp_path / "a.csv", id_column=None)
    assert none_ids is None


def test_attribute_errors(tmp_path):
    (tmp_path / "a.csv").write_text("id,n\n1,x\n-2,3\n")
    with pytest.raises(InvalidArgument, match="'id' of row 1 is -2"):
        read_attributes(tmp_path / "a.csv")
    (tmp_path / "b.csv").write_text("id,n\n1,x\n2,3\n")
    with pytest.raises(InvalidArgument, match="attribute 'n', row 0: 'x' is not a valid int"):
        read_attributes(tmp_path / "b.csv", schema={"n": "int"})
    with pytest.raises(InvalidArgument, match="schema names attribute 'm'"):
        read_attributes(tmp_path / "b.csv", schema={"m": "int"})
    with pytest.raises(InvalidArgument, match="no column.*zzz"):
        read_attributes(tmp_path / "b.csv", columns=["zzz"])
    (tmp_path / "c.csv").write_text("id,n\n1,2,3\n")
    with pytest.raises(InvalidArgument, match="line 2 has 3 fields, the header has 2"):
        read_attributes(tmp_path / "c.csv")
    (tmp_path / "d.jsonl").write_text("[1, 2]\n")
    with pytest.raises(InvalidArgument, match="expected a JSON object per line"):
        read_attributes(tmp_path / "d.jsonl")


# ---------------------------------------------------------------------------------------------------- tenants, ids
def test_tenants_from_each_format(tmp_path):
    want = [["acme", "globex"], [], ["initech"]]
    (tmp_path / "t.csv").write_text("id,tenants\n1,acme;globex\n2,\n3, initech \n")
    assert read_tenants(tmp_path / "t.csv") == want
    ids, lists = read_tenants(tmp_path / "t.csv", with_ids=True)
    assert list(ids) == [1, 2, 3] and lists == want
    with open(tmp_path / "t.jsonl", "w") as f:
        for i, t in enumerate([["acme", "globex"], None, "initech"]):
            f.write(json.dumps({"id": i, "tenants": t} if t is not None else {"id": i}) + "\n")
    assert read_tenants(tmp_path / "t.jsonl") == want
    pq.write_table(pa.table({"id": [1, 2, 3], "owners": [["acme", "globex"], [], ["initech"]]}), tmp_path / "t.parquet")
    assert read_tenants(tmp_path / "t.parquet", column="owners") == want
    with pytest.raises(InvalidArgument, match="no tenants column 'tenants'; columns: id, owners"):
        read_tenants(tmp_path / "t.parquet")
    (tmp_path / "bad.jsonl").write_text('{"tenants": [1.5]}\n')
    with pytest.raises(InvalidArgument, match="must be names"):
        read_tenants(tmp_path / "bad.jsonl")


def test_read_ids_each_format(tmp_path):
    np.save(tmp_path / "i.npy", np.array([3, 1, 2], np.int32))
    assert read_ids(tmp_path / "i.npy").tolist() == [3, 1, 2]
    np.save(tmp_path / "f.npy", np.array([3.0, 1.5]))
    with pytest.raises(InvalidArgument, match="integers"):
        read_ids(tmp_path / "f.npy")
    np.save(tmp_path / "neg.npy", np.array([3, -1]))
    with pytest.raises(InvalidArgument, match="non-negative"):
        read_ids(tmp_path / "neg.npy")
    write_texmex(tmp_path / "i.ivecs", np.array([[5], [6]]), np.int32)
    assert read_ids(tmp_path / "i.ivecs").tolist() == [5, 6]
    (tmp_path / "i.txt").write_text("10\n\n11\n12\n")
    assert read_ids(tmp_path / "i.txt").tolist() == [10, 11, 12]
    (tmp_path / "bad.txt").write_text("10\nabc\n")
    with pytest.raises(InvalidArgument, match="bad.txt:2: 'abc' is not an integer id"):
        read_ids(tmp_path / "bad.txt")
    (tmp_path / "i.csv").write_text("key,x\n4,a\n5,b\n")
    assert read_ids(tmp_path / "i.csv", column="key").tolist() == [4, 5]
    with pytest.raises(InvalidArgument, match="no id column 'id'"):
        read_ids(tmp_path / "i.csv")
    pq.write_table(pa.table({"id": [9, 8]}), tmp_path / "i.parquet")
    assert read_ids(tmp_path / "i.parquet").dtype == np.int64
    assert readers.ID_FORMATS[0] == ".npy"
