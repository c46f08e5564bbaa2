"""Moved into the package: ``fastopt bench --deepspeed`` or ``python -m fastopt.benchmarks.deepspeed_offload``."""
from fastopt.benchmarks.deepspeed_offload import main

raise SystemExit(main())
