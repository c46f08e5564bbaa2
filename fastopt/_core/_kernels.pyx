# The update loops and reductions, compiled for the build's target instruction set (the building
# CPU's by default; baseline x86-64 in a portable build). The code is _kernels_body.pxi, shared with
# the instruction-set variants (_kernels_avx2.pyx).
include "_kernels_body.pxi"
