# The update loops and reductions, compiled for the build's baseline: any x86-64 CPU in a portable
# build (the default), the building CPU in a native one. The code is _kernels_body.pxi, shared with
# the instruction-set variants (_kernels_avx2.pyx, _kernels_avx512.pyx).
include "_kernels_body.pxi"
