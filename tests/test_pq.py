"""Product quantizer: shapes, packing, ADC tables, balanced training, OPQ, errors; supervised centroid tuning."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.errors import FailedPrecondition, InvalidArgument
from shoal.quantization.kmeans import usage_entropy
from shoal.quantization.pq import ProductQuantizer, byte_tables, pack_codes, unpack_codes


def data(n=3000, d=16, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(30, d)) * 2
    return (centers[rng.integers(0, 30, n)] + rng.normal(size=(n, d))).astype(np.float32)


@settings(deadline=None, max_examples=40)
@given(st.integers(1, 9), st.integers(0, 20), st.sampled_from([4, 8]), st.integers(0, 2**32 - 1))
def test_pack_unpack_roundtrip(M, n, nbits, seed):
    sub = np.random.default_rng(seed).integers(0, 1 << nbits, size=(n, M)).astype(np.uint8)
    packed = pack_codes(sub, nbits)
    assert packed.shape == (n, M if nbits == 8 else (M + 1) // 2)
    np.testing.assert_array_equal(unpack_codes(packed, M, nbits), sub)


@pytest.mark.parametrize("nbits", [4, 8])
@pytest.mark.parametrize("mode", ["kmeans", "balanced"])
def test_encode_decode_and_adc_tables_agree(nbits, mode):
    x = data()
    pq = ProductQuantizer(16, 4, nbits, mode=mode).train(x)
    codes = pq.encode(x)
    assert codes.dtype == np.uint8 and codes.shape == (3000, pq.code_size)
    rec = pq.decode(codes)
    mse = float(((x - rec) ** 2).sum(1).mean())
    assert mse < float(((x - x.mean(0)) ** 2).sum(1).mean()) * 0.6
    q = data(20, seed=1)
    for metric in ("l2", "ip"):
        t = byte_tables(pq.adc_tables(q, metric), nbits)
        adc = sum(t[:, j, codes[:50, j]] for j in range(pq.code_size))  # (nq, 50)
        if metric == "l2":
            exact = ((q[:, None, :] - rec[None, :50]) ** 2).sum(-1)
        else:
            exact = -(q @ rec[:50].T)
        np.testing.assert_allclose(adc, exact, rtol=1e-4, atol=1e-3)
    D, I = pq.search(q, codes, 5)
    assert I.shape == (20, 5) and np.all(np.diff(D, axis=1) >= 0)


def test_balanced_pq_has_near_uniform_codeword_usage_on_skewed_data():
    rng = np.random.default_rng(3)
    w = 1.0 / np.arange(1, 41) ** 1.2
    centers = rng.normal(size=(40, 8)) * 3
    x = (centers[rng.choice(40, 8000, p=w / w.sum())] + rng.normal(size=(8000, 8)) * 0.5).astype(np.float32)
    plain = ProductQuantizer(8, 2, 4, mode="kmeans").train(x)
    bal = ProductQuantizer(8, 2, 4, mode="balanced").train(x)
    h_plain = usage_entropy(unpack_codes(plain.encode(x), 2, 4), 16)
    h_bal = usage_entropy(unpack_codes(bal.encode(x), 2, 4), 16)
    assert np.all(h_plain < 0.97 * 4)
    assert np.all(h_bal >= 0.97 * 4)


def test_opq_rotation_is_orthonormal_and_decoding_undoes_it():
    x = data(2000, 16)
    pq = ProductQuantizer(16, 4, 8, opq=True).train(x)
    R = pq.rotation
    np.testing.assert_allclose(R @ R.T, np.eye(16), atol=1e-4)
    rec = pq.decode(pq.encode(x))
    plain = ProductQuantizer(16, 4, 8).train(x)
    assert ((x - rec) ** 2).sum() <= ((x - plain.decode(plain.encode(x))) ** 2).sum() * 1.05


def test_errors():
    with pytest.raises(InvalidArgument, match="does not divide"):
        ProductQuantizer(10, 3)
    with pytest.raises(InvalidArgument, match="nbits must be 4 or 8"):
        ProductQuantizer(16, 4, 6)
    with pytest.raises(InvalidArgument, match="unknown training mode"):
        ProductQuantizer(16, 4, mode="fancy")
    pq = ProductQuantizer(16, 4, 8)
    with pytest.raises(FailedPrecondition, match="not trained"):
        pq.encode(np.zeros((2, 16), np.float32))
    with pytest.raises(InvalidArgument, match="at least 256 training vectors"):
        pq.train(np.zeros((100, 16), np.float32))
