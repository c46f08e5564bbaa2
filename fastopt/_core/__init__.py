"""fastopt's compiled core (Cython): threads, gathering, the bucket driver, reductions, and the
element loops generated from the algorithm declarations. See the design notes at the top of each
module; ``_kernels.pyx`` describes how the pieces fit together."""
