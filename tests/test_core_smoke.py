import numpy as np
import pytest

from shoal.index import index_factory, load_index
from shoal.storage import LocalStore, S3Store


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


def test_aws_client_region_and_local_credentials(monkeypatch, tmp_path):
    """No region: a clear error against AWS; a loopback endpoint defaults region and placeholder credentials."""
    from shoal.storage import aws_client
    from shoal.errors import InvalidArgument

    for var in ("AWS_DEFAULT_REGION", "AWS_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    with pytest.raises(InvalidArgument, match="no AWS region for lambda: set AWS_DEFAULT_REGION"):
        aws_client("lambda")
    c = aws_client("lambda", "http://127.0.0.1:9001")
    assert c.meta.region_name == "us-east-1"
    assert c._request_signer._credentials.access_key == "local"
    assert aws_client("s3", "https://s3.example.com", "eu-west-1").meta.region_name == "eu-west-1"
