"""Which optimizer the engine tests' workers run as "fastopt".

``FASTOPT_ENGINE_CANDIDATE=torch`` makes the workers run ``torch.optim``'s class where they would
run fastopt's, which proves a harness with the reference on both sides (every comparison must then
hold exactly); the default, ``fastopt``, is what the tests are for.
"""
import os

#: "fastopt" (the tests' point) or "torch" (the harness checked against itself).
CANDIDATE = os.environ.get("FASTOPT_ENGINE_CANDIDATE", "fastopt")
#: The two sides a worker trains: the candidate, and torch.optim's reference.
KINDS = ("fastopt", "torch")


def optimizer_class(kind, algorithm="AdamW"):
    """``(class, extra arguments)`` of ``algorithm`` for side ``kind``: fastopt.torch's, or its
    reference, torch.optim's per-parameter loop (``foreach=False``, as fastopt's parity tests)."""
    import torch
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if kind == "fastopt" and CANDIDATE == "fastopt":
        import fastopt.torch
        return getattr(fastopt.torch, algorithm), {}
    return getattr(torch.optim, algorithm), dict(foreach=False)
