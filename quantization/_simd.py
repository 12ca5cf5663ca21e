"""Explicit SIMD for numba kernels: the 4-bit fast-scan block sum, written as LLVM vector IR.

numba cannot express a byte shuffle with a run-time index vector (``pshufb``), which is what makes 4-bit PQ scans
fast: a 16-entry look-up table fits in one 128-bit lane, and one instruction looks up 16 (SSSE3), 32 (AVX2) or 64
(AVX-512BW) codes at once. Written as plain numba loops the same look-ups compile to scalar loads (or gathers), about
10x slower. So :func:`pq4_block_sums` is a numba ``@intrinsic``: its code generator emits the LLVM vector operations
directly (``<64 x i8>`` lanes, the x86 ``pshufb`` intrinsic of the widest instruction set the compiling CPU has) and
numba inlines it into the calling kernel like any other function.

The arithmetic is integer (uint8 table entries summed in uint16 lanes), so every variant (AVX-512, AVX2, and the
portable element-by-element form for other CPUs) gives bit-identical sums; ``SIMD_LEVEL`` says which one this
process compiles.

Block layout (see ``quantization/fastscan.py``): 32 rows per block, ``16 * Mp`` bytes, sub-quantizer major; byte
``16 m + i`` holds row ``i``'s code of sub-quantizer ``m`` in its low nibble and row ``i + 16``'s in its high nibble.
Look-up tables use the same order: ``16 m + j`` is entry ``j`` of sub-quantizer ``m``. Four sub-quantizers (64 bytes)
are one group.
"""

from __future__ import annotations

import llvmlite.binding as llvm_binding
import numba
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

_I8, _I16, _I32, _I64 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64)
_V8 = ir.VectorType(_I8, 64)
_V16 = ir.VectorType(_I16, 32)
LEVELS = ("avx512", "avx2", "portable")


def _target_features() -> dict[str, bool]:
    """CPU features numba compiles for: the host's, unless ``NUMBA_CPU_NAME`` / ``NUMBA_CPU_FEATURES`` pin a target."""
    name = numba.config.CPU_NAME
    if name in (None, "", "host"):
        return {k: bool(v) for k, v in llvm_binding.get_host_cpu_features().items()}
    feats = numba.config.CPU_FEATURES or ""
    return {f[1:]: f[0] == "+" for f in feats.split(",") if f[:1] in "+-" and len(f) > 1}


def _level() -> str:
    f = _target_features()
    if f.get("avx512bw"):
        return "avx512"
    if f.get("avx2"):
        return "avx2"
    return "portable"


#: instruction set of the block sums compiled in this process: "avx512", "avx2" or "portable"
SIMD_LEVEL = _level()


def _const_vec(ty: ir.VectorType, value: int) -> ir.Constant:
    return ir.Constant(ty, [value] * ty.count)


def _shuffle(builder, a, b, idx):
    return builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(_I32, len(idx)), idx))


def _lane_lookup(builder, level: str, table, index):
    """``out[j] = table[16 * (j // 16) + index[j]]`` for ``<64 x i8>`` vectors with indices in 0..15."""
    if level == "avx512":
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_V8, [_V8, _V8]),
                                            "llvm.x86.avx512.pshuf.b.512")
        return builder.call(fn, [table, index])
    if level == "avx2":
        v32 = ir.VectorType(_I8, 32)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(v32, [v32, v32]), "llvm.x86.avx2.pshuf.b")
        halves = []
        for part in (range(32), range(32, 64)):
            halves.append(builder.call(fn, [_shuffle(builder, table, table, list(part)),
                                            _shuffle(builder, index, index, list(part))]))
        return _shuffle(builder, halves[0], halves[1], list(range(64)))
    out = ir.Constant(_V8, None)
    for j in range(64):
        src = builder.add(builder.zext(builder.extract_element(index, _I32(j)), _I32), _I32(j & ~15))
        out = builder.insert_element(out, builder.extract_element(table, src), _I32(j))
    return out


def _byte_pointer(context, builder, aryty, ary, offset):
    """An ``i8*`` to byte ``offset`` (intp value) of the buffer of array value ``ary`` (numba type ``aryty``)."""
    data = context.make_array(aryty)(context, builder, ary).data
    return builder.gep(builder.bitcast(data, _I8.as_pointer()), [offset])


def _make_block_sums(level: str):
    @intrinsic
    def block_sums(typingctx, codes, offset, lut, ngroups, threshold, out):
        sig = types.uint32(codes, offset, lut, ngroups, threshold, out)

        def codegen(context, builder, signature, args):
            ta = signature.args
            intp = context.get_value_type(types.intp)
            off = context.cast(builder, args[1], ta[1], types.intp)
            ng = context.cast(builder, args[3], ta[3], types.intp)
            thr = builder.trunc(context.cast(builder, args[4], ta[4], types.int64), _I16)
            cp = _byte_pointer(context, builder, ta[0], args[0], off)
            lp = _byte_pointer(context, builder, ta[2], args[2], ir.Constant(intp, 0))
            # four uint16 accumulators: (low nibbles, high nibbles) x (whole uint16 lanes, their high bytes)
            accs = [cgutils.alloca_once_value(builder, _const_vec(_V16, 0)) for _ in range(4)]
            m15, s4, s8 = _const_vec(_V8, 15), _const_vec(_V8, 4), _const_vec(_V16, 8)
            with cgutils.for_range(builder, ng) as loop:
                boff = builder.mul(loop.index, ir.Constant(intp, 64))
                v = builder.load(builder.bitcast(builder.gep(cp, [boff]), _V8.as_pointer()), align=1)
                table = builder.load(builder.bitcast(builder.gep(lp, [boff]), _V8.as_pointer()), align=1)
                for n, nib in ((0, builder.and_(v, m15)), (2, builder.and_(builder.lshr(v, s4), m15))):
                    # a looked-up byte pair read as one uint16 is even + 256 * odd: adding whole lanes and their
                    # high bytes separately accumulates both bytes without widening (even = sum - 256 * odd, mod 2^16)
                    r = builder.bitcast(_lane_lookup(builder, level, table, nib), _V16)
                    builder.store(builder.add(builder.load(accs[n]), r), accs[n])
                    builder.store(builder.add(builder.load(accs[n + 1]), builder.lshr(r, s8)), accs[n + 1])
            acc = [builder.load(a) for a in accs]
            halves = []
            for n in (0, 2):
                odd = acc[n + 1]
                even = builder.sub(acc[n], builder.shl(odd, s8))
                folded = []
                for w in (even, odd):
                    # uint16 lane 8 j + p holds sub-quantizer j's sum of row 2 p (+1 if odd): add the four lanes
                    t = builder.add(_shuffle(builder, w, w, list(range(16))), _shuffle(builder, w, w, list(range(16, 32))))
                    folded.append(builder.add(_shuffle(builder, t, t, list(range(8))),
                                              _shuffle(builder, t, t, list(range(8, 16)))))
                halves.append(_shuffle(builder, folded[0], folded[1], [v for p in range(8) for v in (p, 8 + p)]))
            sums = _shuffle(builder, halves[0], halves[1], list(range(32)))
            op = _byte_pointer(context, builder, ta[5], args[5], ir.Constant(intp, 0))
            builder.store(sums, builder.bitcast(op, _V16.as_pointer()), align=2)
            splat = _shuffle(builder, builder.insert_element(ir.Constant(_V16, None), thr, _I32(0)),
                             ir.Constant(_V16, None), [0] * 32)
            return builder.bitcast(builder.icmp_unsigned("<=", sums, splat), _I32)

        return sig, codegen

    block_sums.__doc__ = f"""Sums of the 32 rows of one 4-bit block ({level} code), and which are ``<= threshold``.

    Parameters
    ----------
    codes : uint8 (nbytes,)
        Blocked codes (module doc); the block starts at byte ``offset`` and spans ``64 * ngroups`` bytes.
    offset : int
    lut : uint8 (64 * ngroups,)
        Quantized look-up table of the query, same sub-quantizer order.
    ngroups : int
        Groups of four sub-quantizers (``Mp / 4``).
    threshold : int
        0..65535.
    out : uint16 (>= 32,)
        Receives the 32 sums (row ``i`` of the block in ``out[i]``). Sums must fit in 16 bits (tables of at most
        ``65535 // M`` per entry).

    Returns
    -------
    uint32
        Bit ``i`` set where ``out[i] <= threshold``.
    """
    return block_sums


_BLOCK_SUMS = {level: _make_block_sums(level) for level in LEVELS}
#: the block sum of this process's instruction set (:data:`SIMD_LEVEL`)
pq4_block_sums = _BLOCK_SUMS[SIMD_LEVEL]


def block_sums_at(level: str):
    """The block sum compiled for ``level`` (tests compare the variants this CPU can run)."""
    return _BLOCK_SUMS[level]


@intrinsic
def trailing_zeros(typingctx, x):
    """Index of the lowest set bit of a uint32 (32 for zero)."""
    sig = types.uint32(x)

    def codegen(context, builder, signature, args):
        v = context.cast(builder, args[0], signature.args[0], types.uint32)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_I32, [_I32, ir.IntType(1)]),
                                            "llvm.cttz.i32")
        return builder.call(fn, [v, ir.Constant(ir.IntType(1), 0)])

    return sig, codegen


@intrinsic
def f32_bits(typingctx, x):
    """The IEEE-754 bits of a float32 as a uint32."""
    sig = types.uint32(types.float32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], _I32)

    return sig, codegen


@intrinsic
def bits_f32(typingctx, u):
    """The float32 whose IEEE-754 bits are the uint32 ``u``."""
    sig = types.float32(types.uint32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return sig, codegen


def _prefetch_span(builder, context, start_ptr, nbytes):
    """Prefetch (read, keep in all cache levels) every 64-byte line of ``nbytes`` bytes from ``start_ptr``."""
    intp = context.get_value_type(types.intp)
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [_I8.as_pointer(), _I32,
                                                                                     _I32, _I32]),
                                        "llvm.prefetch.p0")
    with cgutils.for_range_slice(builder, ir.Constant(intp, 0), nbytes, ir.Constant(intp, 64)) as (off, _):
        builder.call(fn, [builder.gep(start_ptr, [off]), _I32(0), _I32(3), _I32(1)])
    # the span's last byte may sit one line beyond the last 64-byte step
    with builder.if_then(builder.icmp_signed(">", nbytes, ir.Constant(intp, 0))):
        last = builder.gep(start_ptr, [builder.sub(nbytes, ir.Constant(intp, 1))])
        builder.call(fn, [last, _I32(0), _I32(3), _I32(1)])


@intrinsic
def prefetch_row(typingctx, arr, row):
    """Hint the CPU to fetch every cache line of row ``row`` of a C-contiguous 2-d array for reading.

    Re-ranked rows are scattered over the stored vectors (mostly not in cache): asking for all of a query's
    candidates before computing any distance keeps their memory loads in flight together.
    """
    sig = types.void(arr, row)

    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        intp = context.get_value_type(types.intp)
        r = context.cast(builder, args[1], signature.args[1], types.intp)
        ncols = builder.extract_value(ary.shape, 1)
        nbytes = builder.mul(ncols, ir.Constant(intp, aryty.dtype.bitwidth // 8))
        rowp = builder.gep(builder.bitcast(ary.data, _I8.as_pointer()), [builder.mul(r, nbytes)])
        _prefetch_span(builder, context, rowp, nbytes)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def prefetch_bytes(typingctx, arr, start, nbytes):
    """Hint the CPU to fetch bytes ``start : start + nbytes`` of a contiguous array's buffer for reading.

    The scan reads each probed list's blocks sequentially, which the hardware prefetcher follows once started; the
    first lines of every list are a cold miss. Asking for the next list's first bytes while scanning the current
    one overlaps that miss with work.
    """
    sig = types.void(arr, start, nbytes)

    def codegen(context, builder, signature, args):
        s = context.cast(builder, args[1], signature.args[1], types.intp)
        n = context.cast(builder, args[2], signature.args[2], types.intp)
        _prefetch_span(builder, context, _byte_pointer(context, builder, signature.args[0], args[0], s), n)
        return context.get_dummy_value()

    return sig, codegen
