# fastopt._core._bucket (_bucket.pyx: the bucket driver and the compiled drivers' own loops)
# compiled for the "avx512" variant (x86-64-v4: the avx2 variant's features and AVX-512
# F/CD/VL/BW/DQ; fastopt/_core/_isa.py), in portable builds; fastopt._backend uses it on CPUs that
# have them.
include "_bucket.pyx"
