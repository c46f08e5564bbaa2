"""bitsandbytes' 8-bit blockwise format, declared once: the dynamic quantization maps, the block
size, and the table that finds a value's code in one lookup.

An 8-bit state (Dettmers et al., *8-bit Optimizers via Block-wise Quantization*, ICLR 2022) keeps
one uint8 code per element and one float32 absolute maximum per block of :data:`BLOCK` elements;
an element is ``MAPS[kind][code] * absmax``. The maps are bitsandbytes' ``create_dynamic_map``
(signed for first moments, unsigned for second moments), computed here to the bit as torch
computes them (float32 ``linspace`` and midpoints), so checkpoints interchange with bitsandbytes.

Quantizing ``v`` takes the code the CUDA kernels' binary search picks for ``v / absmax`` (the
nearest code; a quotient exactly on the float32 midpoint of two codes goes to the one the search
stood on). The compiled loops do it with one lookup: :func:`code_table` cuts the floats in
[-1, 1] into buckets by their top bits (sign, exponent, the first ``MANTISSA_BITS[kind]``
mantissa bits); every bucket holds at most one change of code, so an entry holds the bucket's
first code and the mantissa bits from which the next code (one up for positive values, one down
for negative ones) applies. The table is computed from the search itself, and checked, at build
time (``build_tools/codegen.py`` writes it into ``_q8_tables.h``).

Pure Python without imports beyond the standard library: the build loads this file by path.
"""
import struct

__all__ = ["BLOCK", "KINDS", "MAPS", "MANTISSA_BITS", "dynamic_map", "search_code",
           "code_table", "TINY_EXPONENT", "ROWS"]

#: Elements per block (one float32 absmax each): bitsandbytes' blocksize for optimizer states.
BLOCK = 256
#: The two maps: ``"signed"`` (first moments, bitsandbytes' ``qmap1``) and ``"unsigned"`` (second
#: moments, ``qmap2``).
KINDS = ("signed", "unsigned")
#: Mantissa bits of a lookup bucket per map: enough that no bucket holds two changes of code (the
#: codes of the signed map near 1 are 0.014 apart, the unsigned map's 0.007).
MANTISSA_BITS = {"signed": 6, "unsigned": 7}
#: Quotients of magnitude below 2**(TINY_EXPONENT - 127) all get the code of zero: the map's
#: smallest nonzero value is ~3e-7, 2**-24 is ~6e-8.
TINY_EXPONENT = 103
#: Rows of the table per sign: 0 for the tiny quotients, one per binade from TINY_EXPONENT up to
#: [1, 2), and a last one for NaN (0 / 0, an all-zero block) and anything larger.
ROWS = 127 - TINY_EXPONENT + 3


def _f32(x):
    """``x`` rounded to float32 (as a Python float)."""
    return struct.unpack("<f", struct.pack("<f", x))[0]


def _bits(x):
    return struct.unpack("<I", struct.pack("<f", x))[0]


def _from_bits(u):
    return struct.unpack("<f", struct.pack("<I", u))[0]


def _linspace32(start, end, steps):
    """``torch.linspace(start, end, steps)`` in float32, to the bit: a float32 step, each point taken
    from the nearer end in double precision and rounded once."""
    start, end = _f32(start), _f32(end)
    step = _f32(_f32(end - start) / _f32(steps - 1))
    return [_f32(start + step * i) if i < steps // 2 else _f32(end - step * (steps - 1 - i))
            for i in range(steps)]


def dynamic_map(signed=True, max_exponent_bits=7, total_bits=8):
    """bitsandbytes' ``create_dynamic_map(signed)``: 256 sorted float32 values (Python floats)."""
    data = []
    non_sign_bits = total_bits - 1
    for i in range(max_exponent_bits):
        items = (2 ** (i + non_sign_bits - max_exponent_bits) + 1 if signed
                 else 2 ** (i + non_sign_bits - max_exponent_bits + 1) + 1)
        bounds = _linspace32(0.1, 1, items)
        scale = _f32(10.0 ** (-(max_exponent_bits - 1) + i))
        for a, b in zip(bounds[:-1], bounds[1:]):
            value = _f32(_f32(_f32(a + b) / 2.0) * scale)
            data.append(value)
            if signed:
                data.append(-value)
    data += [0.0, 1.0]
    if len(data) != 2 ** total_bits:
        raise AssertionError("the dynamic map must have 256 values")
    return sorted(data)


#: ``{kind: the map's 256 values}``.
MAPS = {"signed": dynamic_map(True), "unsigned": dynamic_map(False)}


def search_code(x, qmap, signed):
    """The code of the float32 quotient ``x`` as the CUDA kernels' binary search picks it: seven
    halvings from the middle code, then the nearer neighbour through their float32 midpoint."""
    pivot, upper_pivot, lower_pivot = 127, 255, 0
    lower, upper = (-1.0 if signed else 0.0), 1.0
    val = qmap[pivot]
    step = 64
    while step > 0:
        if x > val:
            lower_pivot, lower, pivot = pivot, val, pivot + step
        else:
            upper_pivot, upper, pivot = pivot, val, pivot - step
        val = qmap[pivot]
        step //= 2
    if upper_pivot == 255:
        upper = qmap[255]
    if lower_pivot == 0:
        lower = qmap[0]
    if x > val:
        return upper_pivot if x > _f32(_f32(upper + val) * 0.5) else pivot
    return lower_pivot if x < _f32(_f32(lower + val) * 0.5) else pivot


def _row_bits(sign, row, bucket, low, mantissa_bits):
    """The float32 bits of the value at ``low`` in ``bucket`` of ``row`` (rows 1.. are binades)."""
    exponent = TINY_EXPONENT + row - 1
    return (sign << 31) | (exponent << 23) | (bucket << (23 - mantissa_bits)) | low


def code_table(kind):
    """The lookup table of map ``kind``: ``ROWS << MANTISSA_BITS[kind]`` entries per sign (both
    signs for the signed map, positive only for the unsigned one), each ``code | threshold << 8``:
    a quotient in the entry's bucket whose low mantissa bits are >= threshold takes the next code.

    Raises AssertionError if a bucket held more than one change of code (the table would not give
    the search's code for every float)."""
    qmap, signed = MAPS[kind], kind == "signed"
    m = MANTISSA_BITS[kind]
    low_bits = 23 - m
    never = 1 << low_bits

    def code(u):
        return search_code(_from_bits(u), qmap, signed)

    table = []
    for sign in ((0, 1) if signed else (0,)):
        direction = -1 if sign else 1
        tiny = code(sign << 31)
        if code((sign << 31) | ((TINY_EXPONENT << 23) - 1)) != tiny:
            raise AssertionError(f"{kind}: quotients below 2**-24 do not share one code")
        table += [tiny | never << 8] * (1 << m)
        for row in range(1, ROWS - 1):
            for bucket in range(1 << m):
                first = code(_row_bits(sign, row, bucket, 0, m))
                last = code(_row_bits(sign, row, bucket, never - 1, m))
                if first == last:
                    table.append(first | never << 8)
                    continue
                if last != first + direction:
                    raise AssertionError(f"{kind}: a bucket of row {row} spans codes {first}..{last}")
                lo, hi = 0, never - 1          # code(lo) == first, code(hi) == last
                while hi - lo > 1:
                    mid = (lo + hi) // 2
                    if code(_row_bits(sign, row, bucket, mid, m)) == first:
                        lo = mid
                    else:
                        hi = mid
                table.append(first | hi << 8)
        nan = code(_bits(float("nan")) | (sign << 31))
        table += [nan | never << 8] * (1 << m)
    if not signed and not (code(_bits(float("nan"))) == code(_bits(-1e-30)) == code(1 << 31)
                           == code(_bits(-1.0))):
        # the loops send a negative quotient (-0.0 only: a second moment is >= 0) to the NaN row
        raise AssertionError("unsigned: negative quotients and NaN do not share one code")
    return table
