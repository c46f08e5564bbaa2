# fastopt.minimize._lbfgs (_lbfgs.pyx) compiled for the "avx512" variant (x86-64-v4: the avx2 variant's
# features and AVX-512 F/CD/VL/BW/DQ; fastopt/_core/_isa.py), in portable builds; fastopt._backend
# makes it fastopt.minimize's L-BFGS on CPUs that have them.
include "_lbfgs.pyx"
