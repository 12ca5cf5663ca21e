import numpy as np

from shoal.engine.store import LocalStore, S3Store
from shoal.index import index_factory, load_index


def test_flat_roundtrip_on_s3(s3_bucket, rng):
    endpoint, bucket = s3_bucket
    store = S3Store(bucket, "p", endpoint_url=endpoint)
    ix = index_factory(6, "Flat", metric="ip")
    x = rng.standard_normal((50, 6)).astype(np.float32)
    ix.add(x, np.arange(50))
    ix.save(store, "flat")
    back = load_index(store, "flat")
    for a, b in zip(ix.search(x[:5], 3), back.search(x[:5], 3)):
        np.testing.assert_array_equal(a, b)


def test_local_store_atomic_put_and_list(tmp_path):
    st = LocalStore(tmp_path)
    st.put("a/b.bin", b"123")
    st.put("a/b.bin", b"45")
    assert st.get("a/b.bin") == b"45"
    assert st.get_range("a/b.bin", 1, 2) == b"5"
    assert st.list("a/") == ["a/b.bin"]
