# _kernels_body.pxi compiled for the "avx512" variant (AVX2, FMA, F16C and AVX-512 F/CD/VL/BW/DQ;
# fastopt/_core/_isa.py), in portable builds; fastopt._backend imports it on CPUs that have them.
include "_kernels_body.pxi"
