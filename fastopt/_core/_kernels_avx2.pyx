# _kernels_body.pxi compiled with -mavx2 -mfma; built only in portable builds and chosen at import
# on CPUs that have AVX2 and FMA (fastopt._backend).
include "_kernels_body.pxi"
