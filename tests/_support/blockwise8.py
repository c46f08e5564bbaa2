"""An exact NumPy emulation of bitsandbytes' 8-bit blockwise format, the reference that fastopt's
8-bit optimizer states are tested against (it imports neither fastopt nor bitsandbytes).

The format (Dettmers et al., "8-bit Optimizers via Block-wise Quantization", 2022; bitsandbytes
``functional.create_dynamic_map`` and the CUDA kernels ``kQuantizeBlockwise`` and
``kOptimizerStatic8bit{1,2}StateBlockwise``):

* a state is cut into blocks of ``BLOCK`` (256) elements; each block keeps its absolute maximum
  (float32) and one uint8 code per element;
* a code indexes the *dynamic map*, 256 sorted float32 values in [-1, 1] (signed, for first
  moments) or [0, 1] (unsigned, for second moments): a sign bit, then an exponent in unary (the
  run of zero bits before the first one) and a linear fraction in the bits left;
* an element's value is ``map[code] * absmax``; quantizing ``v`` divides it by the block's absmax
  (float32 division, as the kernels do) and finds the code by the kernels' binary search over the
  map, which ends on the nearer of the two codes around the quotient (compared through their
  float32 midpoint; a quotient exactly on a midpoint goes to the code the search stood on).

bitsandbytes' CPU quantizer does not do that search: it looks the quotient up in a 65,536-entry
table, whose codes are not always the nearest (up to 3.0e-5 of the block's maximum farther, measured
with 0.50.2) and which gives an exact zero the code of 2.125e-5 (signed map) or 1.5625e-5 (unsigned)
of the block's maximum. So the tests compare bitsandbytes with this emulation where the two agree by
design (the maps, the block maxima, dequantization) and pin where they differ
(tests/torch/test_bnb_blockwise_format.py).
"""
import numpy as np

BLOCK = 256


def dynamic_map(signed=True, max_exponent_bits=7, total_bits=8):
    """bitsandbytes' dynamic quantization map, computed as ``create_dynamic_map`` does (its linspace
    and midpoints in float32, the decades in Python floats), as a sorted float32 array of 256."""
    data = []
    non_sign_bits = total_bits - 1
    additional_items = 2 ** (non_sign_bits - max_exponent_bits) - 1
    for i in range(max_exponent_bits):
        fraction_items = int(2 ** (i + non_sign_bits - max_exponent_bits) + 1 if signed
                             else 2 ** (i + non_sign_bits - max_exponent_bits + 1) + 1)
        boundaries = _linspace32(0.1, 1, fraction_items)
        means = (boundaries[:-1] + boundaries[1:]) / np.float32(2.0)
        data += (means * (10 ** (-(max_exponent_bits - 1) + i))).tolist()
        if signed:
            data += (-(means * (10 ** (-(max_exponent_bits - 1) + i)))).tolist()
    if additional_items > 0:
        boundaries = _linspace32(0.1, 1, additional_items + 1)
        means = (boundaries[:-1] + boundaries[1:]) / np.float32(2.0)
        data += (means * (10 ** (-(max_exponent_bits - 1) + i))).tolist()
        if signed:
            data += (-(means * (10 ** (-(max_exponent_bits - 1) + i)))).tolist()
    data += [0.0, 1.0]
    assert len(data) == 2 ** total_bits
    data += [0.0] * (256 - len(data))
    return np.array(sorted(data), dtype=np.float32)


def _linspace32(start, end, steps):
    """``torch.linspace(start, end, steps, dtype=torch.float32)`` to the bit: a float32 step, each
    point taken from the nearer end (the first half from ``start``, the second from ``end``) in
    double precision and rounded once to float32, as torch's CPU kernel gives them."""
    start, end = np.float32(start), np.float32(end)
    step = np.float64((end - start) / np.float32(steps - 1))
    index = np.arange(steps, dtype=np.float64)
    out = np.where(index < steps // 2, np.float64(start) + step * index,
                   np.float64(end) - step * (steps - 1 - index))
    return out.astype(np.float32)


def search_codes(quotients, qmap, signed):
    """The code of each quotient (value / absmax, float32) as the CUDA kernels' binary search picks
    it, vectorized: seven halvings from the middle code, then the nearer neighbour by midpoint."""
    x = np.asarray(quotients, dtype=np.float32)
    pivot = np.full(x.shape, 127, dtype=np.int64)
    upper_pivot = np.full(x.shape, 255, dtype=np.int64)
    lower_pivot = np.zeros(x.shape, dtype=np.int64)
    lower = np.full(x.shape, -1.0 if signed else 0.0, dtype=np.float32)
    upper = np.ones(x.shape, dtype=np.float32)
    val = qmap[pivot]
    step = 64
    while step > 0:
        above = x > val
        lower_pivot = np.where(above, pivot, lower_pivot)
        lower = np.where(above, val, lower)
        upper_pivot = np.where(above, upper_pivot, pivot)
        upper = np.where(above, upper, val)
        pivot = np.where(above, pivot + step, pivot - step)
        val = qmap[pivot]
        step //= 2
    upper = np.where(upper_pivot == 255, qmap[255], upper)
    lower = np.where(lower_pivot == 0, qmap[0], lower)
    above = x > val
    up_mid = (upper + val) * np.float32(0.5)
    down_mid = (lower + val) * np.float32(0.5)
    code = np.where(above, np.where(x > up_mid, upper_pivot, pivot),
                    np.where(x < down_mid, lower_pivot, pivot))
    return code.astype(np.uint8)


def quantize(values, qmap, signed, block=BLOCK):
    """``(codes, absmax)`` of a flat float32 array in blocks of ``block`` elements (the last block
    may be short): absmax is each block's max |value| (float32), codes come from
    :func:`search_codes` on ``value / absmax``."""
    v = np.asarray(values, dtype=np.float32).reshape(-1)
    n_blocks = -(-v.size // block)
    padded = np.zeros(n_blocks * block, dtype=np.float32)
    padded[:v.size] = v
    blocks = padded.reshape(n_blocks, block)
    absmax = np.abs(blocks).max(axis=1).astype(np.float32)
    with np.errstate(invalid="ignore", divide="ignore"):
        quotients = blocks / absmax[:, None]
    codes = search_codes(quotients, qmap, signed).reshape(-1)[:v.size]
    return codes, absmax


def dequantize(codes, absmax, qmap, block=BLOCK):
    """The float32 values of ``codes``: ``qmap[code] * absmax[block of the code]``."""
    codes = np.asarray(codes, dtype=np.uint8).reshape(-1)
    scale = np.repeat(np.asarray(absmax, dtype=np.float32), block)[:codes.size]
    return (qmap[codes] * scale).astype(np.float32)


class AdamState8bit:
    """bitsandbytes' Adam/AdamW with 8-bit states as fastopt computes it, emulated exactly in NumPy
    float32 (the compiled loops round every operation once, in this order, without FMA): the moments
    dequantized, updated as torch's Adam does (``m + w1 (g - m)``, ``v b2 + (w2 g) g``), the param
    decayed after the update (bitsandbytes' CUDA rule, folded into the step size as fastopt does:
    ``p (1 - lr wd) + s (1 - lr wd) u``), and the moments requantized with :func:`quantize`.

    The per-step scalars are computed in double and rounded once to float32, as the kernels' per-array
    prologue does."""

    def __init__(self, n, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        self.lr, self.betas, self.eps, self.weight_decay = lr, betas, eps, weight_decay
        self.signed, self.unsigned = dynamic_map(True), dynamic_map(False)
        blocks = -(-n // BLOCK)
        self.m_codes, self.m_absmax = np.zeros(n, np.uint8), np.zeros(blocks, np.float32)
        self.v_codes, self.v_absmax = np.zeros(n, np.uint8), np.zeros(blocks, np.float32)
        self.step_count = 0

    def step(self, p, g):
        """One step: returns the new param (float32) and updates the codes and maxima."""
        self.step_count += 1
        t = self.step_count
        b1, b2 = self.betas
        f = np.float32
        w1, w2 = f(1.0 - b1), f(1.0 - b2)
        decay_scale = 1.0 - self.lr * self.weight_decay
        step_size = -(self.lr / (1.0 - b1 ** t))
        if self.weight_decay != 0:
            step_size *= decay_scale
        step_size, bc2_sqrt = f(step_size), f(np.sqrt(1.0 - b2 ** t))
        m = dequantize(self.m_codes, self.m_absmax, self.signed)
        v = dequantize(self.v_codes, self.v_absmax, self.unsigned)
        p = np.asarray(p, np.float32).copy()
        g = np.asarray(g, np.float32)
        if self.weight_decay != 0:
            p = p * f(decay_scale)
        m = m + w1 * (g - m)
        v = v * f(b2) + (w2 * g) * g
        denom = np.sqrt(v) / bc2_sqrt + f(self.eps)
        p = p + (step_size * m) / denom
        self.m_codes, self.m_absmax = quantize(m, self.signed, True)
        self.v_codes, self.v_absmax = quantize(v, self.unsigned, False)
        return p
