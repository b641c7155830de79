"""Q8_0, Q4_0, Q4_1, Q5_0, Q5_1: 32-value blocks with one fp16 scale (and a min for the _1 types).

Block layouts (little endian, ``d``/``m`` are fp16):

======  =====  ==================================================  ==============================
type    bytes  fields                                              value j
======  =====  ==================================================  ==============================
Q8_0    34     d, qs[32] int8                                      d * qs[j]
Q4_0    18     d, qs[16] (j in low nibble, j+16 in high nibble)    d * (q - 8)
Q4_1    20     d, m, qs[16]                                        d * q + m
Q5_0    22     d, qh uint32 (bit j = 5th bit of q_j), qs[16]       d * (q - 16)
Q5_1    24     d, m, qh, qs[16]                                    d * q + m
======  =====  ==================================================  ==============================

Without an importance matrix, the scale comes straight from the block's (absolute) max, as
llama.cpp's ``quantize_row_*_ref``. With one, Q4_0/Q5_0 search the scale as
``make_qx_quants`` and Q4_1/Q5_1 scale and min as ``make_qkx3_quants`` (run on many blocks side by
side: ``search.qx_lanes`` / ``search.qkx2_lanes``), each weight being
``imatrix[j] * sqrt(sigma2 + x[j]^2)`` with sigma2 the row's mean square (llama.cpp's
``quantize_row_*_impl``). Q8_0 ignores the imatrix, as llama.cpp does.
"""

import numba
import numpy as np

from ..types import known_type
from .checks import nonfinite_rows
from .numeric import bits_f32, get_fp16, put_fp16, roundf
from .search import ST_MN, ST_NST, ST_SC, qkx2_lanes, qx_lanes, to_lanes

QK = known_type("Q4_0").block_size  # 32 values per block, every legacy type
# kernel selector per type name
# ggml type ids: the kernels' type selector (compile-time constants in the reference-rule kernels)
Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 = (int(known_type(n).ggml) for n in ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"))
LANES = 32  # blocks searched side by side with an imatrix


@numba.njit(inline="always", cache=True)
def _put_u32(out, pos, value):
    for k in range(4):
        out[pos + k] = np.uint8((value >> (8 * k)) & 0xFF)


@numba.njit(inline="always", cache=True)
def _pack_nibbles(out, pos, L):
    """qs[j] = L[j] | L[j+16] << 4 (low 4 bits of each level)."""
    for j in range(QK // 2):
        out[pos + j] = np.uint8((L[j] & 0x0F) | ((L[j + QK // 2] & 0x0F) << 4))


@numba.njit(inline="always", cache=True)
def _pack_high_bits(L):
    """qh: bit j holds the 5th bit of level j."""
    qh = np.uint32(0)
    for j in range(QK):
        qh |= np.uint32((L[j] >> 4) & 1) << np.uint32(j)
    return qh


@numba.njit(inline="always", cache=True)
def _put_levels(kind, out, pos, L):
    """The level bytes of a block whose d (and m) are already written."""
    if kind == Q4_0:
        _pack_nibbles(out, pos + 2, L)
    elif kind == Q5_0:
        _put_u32(out, pos + 2, _pack_high_bits(L))
        _pack_nibbles(out, pos + 6, L)
    elif kind == Q4_1:
        _pack_nibbles(out, pos + 4, L)
    else:
        _put_u32(out, pos + 4, _pack_high_bits(L))
        _pack_nibbles(out, pos + 8, L)


@numba.njit(inline="always", cache=True)
def _scan_block(bits, base):
    """One pass over a block's float32 bit patterns: (key, non-finite seen).

    key = |x| bits << 5 | (31 - j), maximised: its high part is the largest |x| (for finite floats
    the order of |x| equals the order of its bits) and, among equal magnitudes, it picks the first
    index, as C's strict "amax < fabsf(v)" loop does. Integer max/or reductions vectorize where
    float ones (without fast-math) do not.
    """
    key = np.int64(0)
    special = np.uint32(0)
    for j in range(QK):
        a = bits[base + j] & np.uint32(0x7FFFFFFF)
        key = max(key, (np.int64(a) << 5) | np.int64(QK - 1 - j))
        special |= np.uint32(a >= np.uint32(0x7F800000))
    return key, special != 0


@numba.njit(inline="always", cache=True)
def _key_abs_bits(key):
    return np.uint32(key >> 5)


@numba.njit(inline="always", cache=True)
def _key_signed_max(x, base, key):
    """The first value of largest magnitude, with its sign (+0 when the block is all zeros, as C's
    loop leaves it)."""
    if (key >> 5) == 0:
        return np.float32(0.0)
    return x[base + QK - 1 - np.int64(key & (QK - 1))]


@numba.njit(inline="always", cache=True)
def _first_equal(x, base, value):
    """The first element equal to ``value`` (so a zero keeps the sign C's strict-compare loop keeps)."""
    for j in range(QK):
        if x[base + j] == value:
            return x[base + j]
    return value


@numba.njit(inline="always", cache=True)
def _order_key(u):
    """An int32 that orders finite float32 bit patterns as their values (-0 just below +0); an involution."""
    s = np.int32(u)  # int32 throughout (Numba widens int32 arithmetic to int64, which vectorizes worse)
    return np.int32(s ^ np.int32(np.int32(s >> np.int32(31)) & np.int32(0x7FFFFFFF)))


@numba.njit(inline="always", cache=True)
def _block_min_max(x, bits, base):
    """C's "if (v < min) min = v; if (v > max) max = v;" over a block, with integer (vectorizable) keys;
    returns (min, max, non-finite seen). The keys of +Inf/NaN lie above every finite one and those of
    -Inf/-NaN below, so the extremes tell whether the block holds one."""
    lo = np.int32(0x7FFFFFFF)
    hi = np.int32(-0x80000000)
    for j in range(QK):
        k = _order_key(bits[base + j])
        lo = k if k < lo else lo
        hi = k if k > hi else hi
    if hi >= _order_key(np.uint32(0x7F800000)) or lo <= _order_key(np.uint32(0xFF800000)):
        return np.float32(0.0), np.float32(0.0), True
    mn = bits_f32(_order_key(np.uint32(lo)))
    mx = bits_f32(_order_key(np.uint32(hi)))
    if mn == 0:  # C keeps the first of +0/-0
        mn = _first_equal(x, base, mn)
    if mx == 0:
        mx = _first_equal(x, base, mx)
    return mn, mx, False


@numba.njit(inline="always", cache=True)
def _ref_level(v, inv, shift, offset, top):
    """C's "(uint8)MIN(top, (int)((v - shift) * id + offset))" (shift 0 for the symmetric types)."""
    return min(top, np.int32((v - shift) * inv + offset))


@numba.njit(inline="always", cache=True)
def _put_ref_levels(x, base, out, qs, inv, shift, offset, top, five_bits):
    """Levels of a block straight into its nibbles out[qs:qs+16] (values j and j+16); returns qh
    (bit j: the 5th bit of level j) for the 5-bit types, else 0."""
    qh = np.uint32(0)
    for j in range(QK // 2):
        lo = _ref_level(x[base + j], inv, shift, offset, top)
        hi = _ref_level(x[base + j + QK // 2], inv, shift, offset, top)
        out[qs + j] = np.uint8((lo & 0x0F) | ((hi & 0x0F) << 4))
        if five_bits:
            qh |= (np.uint32((lo >> 4) & 1) << np.uint32(j)) | (np.uint32((hi >> 4) & 1) << np.uint32(j + QK // 2))
    return qh


@numba.njit(inline="always", cache=True)
def _block_ref(kind, x, bits, base, out, pos):
    """One block by llama.cpp's reference rule (no imatrix); returns True on NaN/Inf."""
    if kind == Q4_1 or kind == Q5_1:  # d = (max - min) / levels, m = min
        mn, mx, special = _block_min_max(x, bits, base)
        if special:
            return True
        five_bits = kind == Q5_1
        d = (mx - mn) / (np.float32(31.0) if five_bits else np.float32(15.0))
        inv = np.float32(1.0) / d if d != 0 else np.float32(0.0)
        put_fp16(out, pos, d)
        put_fp16(out, pos + 2, mn)
        # C: (uint8_t)(v + 0.5f) for Q5_1, MIN(15, (int8_t)(v + 0.5f)) for Q4_1
        qh = _put_ref_levels(x, base, out, pos + (8 if five_bits else 4), inv, mn, np.float32(0.5),
                             255 if five_bits else 15, five_bits)
        if five_bits:
            _put_u32(out, pos + 4, qh)
        return False
    key, special = _scan_block(bits, base)
    if special:
        return True
    if kind == Q8_0:
        d = bits_f32(_key_abs_bits(key)) / np.float32(127.0)
        inv = np.float32(1.0) / d if d != 0 else np.float32(0.0)
        put_fp16(out, pos, d)
        for j in range(QK):
            out[pos + 2 + j] = np.uint8(np.int32(roundf(x[base + j] * inv)) & 0xFF)
        return False
    # Q4_0, Q5_0: symmetric, d = max / -(half range)
    half = np.float32(8.0) if kind == Q4_0 else np.float32(16.0)
    d = _key_signed_max(x, base, key) / -half
    inv = np.float32(1.0) / d if d != 0 else np.float32(0.0)
    put_fp16(out, pos, d)
    five_bits = kind == Q5_0
    qh = _put_ref_levels(x, base, out, pos + (6 if five_bits else 2), inv, np.float32(0.0), half + np.float32(0.5),
                         31 if five_bits else 15, five_bits)
    if five_bits:
        _put_u32(out, pos + 2, qh)
    return False


@numba.njit(inline="always", cache=True)
def _row_ref(kind, x, xb, o, nblocks, block_bytes):
    """One row's blocks by the reference rule into ``o``; True (and the rest left) at the first NaN/Inf."""
    for b in range(nblocks):
        if _block_ref(kind, x, xb, b * QK, o, b * block_bytes):
            return True
    return False


def _ref_kernel(kind):
    """The reference-rule kernel of one type, ``kind`` a compile-time constant; it also returns per row
    whether a NaN/Inf was met.

    One kernel per type: with the kind a runtime argument the other types' branches stay in the block
    loop (Q4_1 ran at 0.7x C on cache-resident rows that way).
    """
    block_bytes = known_type(kind).type_size

    @numba.njit(parallel=True, cache=True)
    def kernel(rows, bits):
        nrows, n = rows.shape
        nblocks = n // QK
        out = np.empty((nrows, nblocks * block_bytes), dtype=np.uint8)
        nonfinite = np.zeros(nrows, dtype=np.bool_)
        for r in numba.prange(nrows):
            x = rows[r]
            xb = bits[r]
            nonfinite[r] = _row_ref(kind, x, xb, out[r], nblocks, block_bytes)
        return out, nonfinite

    return kernel


_REF_KERNELS = {kind: _ref_kernel(kind) for kind in (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1)}


def _ref_bf16_kernel(kind):
    """_ref_kernel on BF16 rows (uint16 bits): each row is widened to float32 in a row-sized buffer just
    before its blocks are quantized, so a BF16 model's rows are read once, from the file's pages, and
    no float32 copy of the chunk is written and read back (the widening is exact: the same bytes)."""
    block_bytes = known_type(kind).type_size

    @numba.njit(parallel=True, cache=True)
    def kernel(halves):
        nrows, n = halves.shape
        nblocks = n // QK
        out = np.empty((nrows, nblocks * block_bytes), dtype=np.uint8)
        nonfinite = np.zeros(nrows, dtype=np.bool_)
        for r in numba.prange(nrows):
            xb = np.empty(n, dtype=np.uint32)
            x = np.empty(n, dtype=np.float32)  # not xb.view(): a cached closure's view fails to box its arrays
            for j in range(n):
                xb[j] = np.uint32(halves[r, j]) << np.uint32(16)
                x[j] = bits_f32(xb[j])
            nonfinite[r] = _row_ref(kind, x, xb, out[r], nblocks, block_bytes)
        return out, nonfinite

    return kernel


_REF_BF16_KERNELS = {kind: _ref_bf16_kernel(kind) for kind in (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1)}


@numba.njit(parallel=True, cache=True, error_model="numpy")
def _quantize_weighted_kernel(rows, kind, block_bytes, imatrix):
    """imatrix-weighted search (Q4_0, Q4_1, Q5_0, Q5_1), LANES blocks of a row side by side (see search.py)."""
    nrows, n = rows.shape
    nblocks = n // QK
    out = np.empty((nrows, nblocks * block_bytes), dtype=np.uint8)
    lanes = min(LANES, nblocks)
    symmetric = kind == Q4_0 or kind == Q5_0
    nmax = (8 if kind == Q4_0 else 16) if symmetric else (15 if kind == Q4_1 else 31)
    for r in numba.prange(nrows):
        x = rows[r]
        o = out[r]
        X = np.empty(QK * lanes, dtype=np.float32)
        W = np.empty(QK * lanes, dtype=np.float32)
        L = np.empty(QK * lanes, dtype=np.int32)
        Laux = np.empty(QK * lanes, dtype=np.int32)
        st = np.empty((ST_NST, lanes), dtype=np.float32)
        Lb = np.empty(QK, dtype=np.int32)
        sum_x2 = np.float32(0.0)
        for j in range(n):
            sum_x2 += x[j] * x[j]
        sigma2 = sum_x2 / np.float32(n)
        for b0 in range(0, nblocks, lanes):
            G = min(lanes, nblocks - b0)
            base = b0 * QK
            to_lanes(x, base, G, QK, X)
            for i in range(QK):
                for g in range(G):
                    v = X[i * G + g]
                    W[i * G + g] = imatrix[base + QK * g + i] * np.sqrt(sigma2 + v * v)
            if symmetric:
                qx_lanes(G, QK, nmax, X, W, L, st)
            else:
                qkx2_lanes(G, QK, nmax, X, W, L, Laux, np.float32(-0.9), np.float32(0.05), 36, False, st)
            for g in range(G):
                pos = (b0 + g) * block_bytes
                for i in range(QK):
                    Lb[i] = L[i * G + g]
                put_fp16(o, pos, st[ST_SC, g])
                if not symmetric:
                    put_fp16(o, pos + 2, st[ST_MN, g])
                _put_levels(kind, o, pos, Lb)
    return out


@numba.njit(parallel=True, cache=True)
def _dequantize_kernel(data, kind, n):
    nrows = data.shape[0]
    nblocks = n // QK
    block_bytes = data.shape[1] // nblocks
    out = np.empty((nrows, n), dtype=np.float32)
    for r in numba.prange(nrows):
        src = data[r]
        y = out[r]
        for b in range(nblocks):
            pos = b * block_bytes
            base = b * QK
            d = get_fp16(src, pos)
            if kind == Q8_0:
                for j in range(QK):
                    y[base + j] = np.float32(np.int8(src[pos + 2 + j])) * d
                continue
            has_min = kind == Q4_1 or kind == Q5_1
            m = get_fp16(src, pos + 2) if has_min else np.float32(0.0)
            qh = np.uint32(0)
            qs = pos + (4 if has_min else 2)
            if kind == Q5_0 or kind == Q5_1:
                for k in range(4):
                    qh |= np.uint32(src[qs + k]) << np.uint32(8 * k)
                qs += 4
            offset = 8 if kind == Q4_0 else (16 if kind == Q5_0 else 0)
            for j in range(QK // 2):
                lo = np.int32(src[qs + j] & 0x0F) | np.int32(((qh >> np.uint32(j)) & 1) << 4)
                hi = np.int32(src[qs + j] >> 4) | np.int32(((qh >> np.uint32(j + 16)) & 1) << 4)
                if has_min:
                    y[base + j] = np.float32(lo) * d + m
                    y[base + j + 16] = np.float32(hi) * d + m
                else:
                    y[base + j] = np.float32(lo - offset) * d
                    y[base + j + 16] = np.float32(hi - offset) * d
    return out


# quantize_rows finds NaN/Inf itself (in the same pass as the block maxima) when it returns
# (data, per-row non-finite flags); the front API then skips its own scan.
CHECKS_FINITE = True


def _quantize(kind, rows, imatrix):
    if imatrix is None or kind == Q8_0:
        return _REF_KERNELS[kind](rows, rows.view(np.uint32))
    nonfinite = nonfinite_rows(rows)
    if nonfinite.any():
        return None, nonfinite
    return _quantize_weighted_kernel(rows, kind, known_type(kind).type_size, imatrix), nonfinite


def _functions(kind):
    """(quantize_<type>, dequantize_<type>, quantize_<type>_bf16) of the legacy type with ggml id ``kind``;
    the last takes BF16 rows as uint16 bits, without an imatrix (the reference rule)."""

    def quantize(rows, imatrix):
        return _quantize(kind, rows, imatrix)

    def dequantize(data, n_per_row):
        return _dequantize_kernel(data, kind, n_per_row)

    def quantize_bf16(halves):
        return _REF_BF16_KERNELS[kind](halves)

    return quantize, dequantize, quantize_bf16


quantize_q8_0, dequantize_q8_0, quantize_q8_0_bf16 = _functions(Q8_0)
quantize_q4_0, dequantize_q4_0, quantize_q4_0_bf16 = _functions(Q4_0)
quantize_q4_1, dequantize_q4_1, quantize_q4_1_bf16 = _functions(Q4_1)
quantize_q5_0, dequantize_q5_0, quantize_q5_0_bf16 = _functions(Q5_0)
quantize_q5_1, dequantize_q5_1, quantize_q5_1_bf16 = _functions(Q5_1)
