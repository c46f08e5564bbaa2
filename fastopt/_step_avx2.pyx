# The same kernels compiled with -mavx2 -mfma; built only when FASTOPT_PORTABLE=1 and chosen at run
# time on CPUs that have AVX2 and FMA (fastopt._backend).
include "_kernels.pxi"
