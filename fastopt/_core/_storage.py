"""The storage formats of params, gradients and states: their codes, declared once.

Everything else follows from this table: :mod:`fastopt._dtypes` imports the codes and names, and at
build time ``build_tools/codegen.py`` (which loads this file by path) writes ``_storage.h`` (the
``ST_*`` constants ``_kernel_api.pxd`` declares to Cython) and the C types of the generated loops.
Pure Python without imports, so the build can read it before anything is compiled.
"""

#: (code, short name of the generated loops, NumPy dtype name, C type of a stored element); the
#: code is the position in this tuple.
STORAGES = (
    (0, "f32", "float32", "float"),
    (1, "f64", "float64", "double"),
    (2, "bf16", "bfloat16", "uint16_t"),
    (3, "f16", "float16", "fo_half"),
    # 8-bit blockwise codes of a state (never a param): a uint8 code per element and a float32
    # absmax per block, in bitsandbytes' format (fastopt/_core/_dynamic_map.py)
    (4, "q8", "uint8", "uint8_t"),
)

F32, F64, BF16, F16, Q8 = (code for code, _, _, _ in STORAGES)
#: code -> NumPy dtype name
NAMES = {code: dtype for code, _, dtype, _ in STORAGES}
#: code -> short name (the generated loops' and the build's)
SHORT_NAMES = {code: short for code, short, _, _ in STORAGES}
#: the half-precision storages: their loops compute in float32 and may keep a float32 master copy
HALF = (BF16, F16)
