# The compiled step kernels for the build's target ISA (native by default; baseline in a portable
# build). The code lives in _kernels.pxi, shared with _step_avx2.pyx.
include "_kernels.pxi"
