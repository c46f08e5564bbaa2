# fastopt.minimize._lbfgs (_lbfgs.pyx) compiled for the "avx2" variant (x86-64-v3: AVX2, FMA, F16C, BMI1/2,
# LZCNT, MOVBE, POPCNT; fastopt/_core/_isa.py), in portable builds; fastopt._backend makes it
# fastopt.minimize's L-BFGS on CPUs that have those features.
include "_lbfgs.pyx"
