# fastopt._core._bucket (_bucket.pyx: the bucket driver and the compiled drivers' own loops)
# compiled for the "avx2" variant (x86-64-v3: AVX2, FMA, F16C, BMI1/2, LZCNT, MOVBE, POPCNT;
# fastopt/_core/_isa.py), in portable builds; fastopt._backend uses it on CPUs that have them.
include "_bucket.pyx"
