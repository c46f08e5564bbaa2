# fastopt._lbfgs (_lbfgs.pyx) compiled for the "avx512" variant (AVX2, FMA, F16C and AVX-512
# F/CD/VL/BW/DQ; fastopt/_core/_isa.py), in portable builds; fastopt._backend makes it
# fastopt._lbfgs on CPUs that have them.
include "_lbfgs.pyx"
