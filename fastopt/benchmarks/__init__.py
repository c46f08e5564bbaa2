"""fastopt's benchmark (``fastopt bench``): fastopt's steps against torch.optim, in-place NumPy and
this machine's memory-traffic bound, and its L-BFGS against SciPy's L-BFGS-B.

Modules, one job each:

* :mod:`.settings` -- the algorithms (class, hyperparameters, memory traffic: from their
  declarations in :mod:`fastopt.algorithms`), sizes and defaults, as data.
* :mod:`.numpy_reference` -- the fastest in-place NumPy updates (the ``numpy`` column).
* :mod:`.ceiling` with ``ceiling.c`` -- the C references, compiled at bench time: a plain fused
  float32 Adam step and the streaming kernel that measures an algorithm's memory-traffic bound.
* :mod:`.cases` -- the data of a size and the contenders of a cell; :mod:`.timing` -- round-robin
  timing.
* :mod:`.summary` -- the default run's compact table and figure; :mod:`.report` -- the full
  run's tables, its plot, the JSON; :mod:`.progress` -- progress on stderr; :mod:`.targets` --
  ``--check TARGETS.json``.
* :mod:`.eight_bit` -- AdamW with 8-bit states against float32 AdamW, torch and bitsandbytes, and
  the state bytes per param.
* :mod:`.lbfgs_vs_scipy` -- L-BFGS overhead per iteration against SciPy's L-BFGS-B.
* :mod:`.cli` -- the command line.
"""
