"""Muon: momentum orthogonalized by a Newton-Schulz iteration (Jordan et al., 2024), as
torch.optim.Muon defines it (matrices only; the iteration in bfloat16)."""
from ._spec import Algorithm, Hyper, Rule, State, Switch, choice, flag, integer, real, tuple_of

MUON = Algorithm(
    name="Muon",
    torch_name="Muon",
    title="Muon, as ``torch.optim.Muon``: for 2-D params (the weights of hidden layers) only.",
    reference="Jordan et al., *Muon: An optimizer for hidden layers in neural networks*, 2024 "
              "(kellerjordan.github.io/posts/muon); Liu et al., *Muon is Scalable for LLM "
              "Training*, arXiv:2502.16982, 2025 (``adjust_lr_fn='match_rms_adamw'``).",
    formula=r"""
        B &\leftarrow B + (1 - \mu)(g - B), \quad
             \tilde B = g + \mu (B - g) \text{ if nesterov else } B \\
        X &\leftarrow \operatorname{bf16}(\tilde B)^{(\top \text{ if rows > cols})}, \quad
             X \leftarrow X / \max(\lVert X \rVert_F, \epsilon) \\
        X &\leftarrow a X + (b\, X X^\top + c\, (X X^\top)^2)\, X
             \qquad (\text{ns\_steps times, each product rounded to bfloat16}) \\
        p &\leftarrow p\,(1 - \eta\lambda) - \eta\, s\, X^{(\top)}, \quad
             s = \sqrt{\max(1, A/B)} \text{ (original) or } 0.2 \sqrt{\max(A, B)}
             \text{ (match\_rms\_adamw)},\ (A, B) = \text{p.shape}""",
    hyperparameters=[
        Hyper("lr", 1e-3, real(low=0), r"Learning rate :math:`\eta`."),
        Hyper("weight_decay", 0.1, real(low=0), r"Decoupled weight decay :math:`\lambda`."),
        Hyper("momentum", 0.95, real(low=0), r"Momentum factor :math:`\mu`."),
        Hyper("nesterov", True, flag(), "Nesterov momentum: orthogonalize :math:`g + \\mu (B - g)`."),
        Hyper("ns_coefficients", (3.4445, -4.7750, 2.0315), tuple_of(real(), real(), real()),
              r":math:`(a, b, c)`, the coefficients of the Newton-Schulz polynomial.",
              fields=("ns_a", "ns_b", "ns_c")),
        Hyper("eps", 1e-7, real(low=0), r":math:`\epsilon`, the floor of :math:`\lVert X \rVert_F`."),
        Hyper("ns_steps", 5, integer(0, 99), "Newton-Schulz iterations (fewer than 100, as torch)."),
        Hyper("adjust_lr_fn", None, choice(None, "original", "match_rms_adamw"),
              "How the learning rate scales with the param's shape: None or ``'original'`` "
              r"(:math:`\sqrt{\max(1, A/B)}`), ``'match_rms_adamw'`` (:math:`0.2\sqrt{\max(A, B)}`)."),
    ],
    param_rules=[Rule(lambda shape: len(shape) == 2, "Muon only supports 2D parameters")],
    # lazy: the buffer marks its param as having state (torch's Muon keeps no step count)
    state=[State("momentum_buffer", r":math:`B`", lazy=True)],
    has_step=False,
    per_array="""
        w = 1.0 - momentum
        decay_scale = 1.0 - lr * weight_decay
    """,
    scalars=("w", "decay_scale", "lr_neg"),
    # lr_neg = -lr * s depends on the param's shape: the driver computes it
    driver="MuonBucket",
    driver_scalars=("lr_neg",),
    # momentum: B, and X = bf16(update) into the driver's workspace (through p);
    # apply: the update, with the orthogonalized X (through g, gmul 1)
    phases=("momentum", "apply"),
    # torch.lerp takes its second form when |weight| >= 0.5 (in the tensor's dtype)
    switches=[Switch("lerp", "fabs(<{{T}}>w) >= 0.5", ("low", "high")),
              Switch("nesterov_lerp", "fabs(<{{T}}>momentum) >= 0.5", ("low", "high")),
              Switch("nesterov", "nesterov"), Switch("decay", "weight_decay != 0")],
    update="""
        {{if phase == "momentum"}}
        momentum_buffer = _lerp_{{lerp}}(momentum_buffer, g, w)
        {{if nesterov}}
        p = _bf16(_lerp_{{nesterov_lerp}}(g, momentum_buffer, momentum))
        {{else}}
        p = _bf16(momentum_buffer)
        {{endif}}
        {{else}}
        {{if decay}}
        p = p * decay_scale
        {{endif}}
        p = p + lr_neg * g
        {{endif}}
    """,
    weight=1,
    numpy_signature="lr, weight_decay, momentum, nesterov, ns_coefficients, eps, ns_steps, "
                    "adjust_lr_fn, *, maximize",
    torch_signature="lr, weight_decay, momentum, nesterov, ns_coefficients, eps, ns_steps, "
                    "adjust_lr_fn, *, maximize",
    torch_rejects_complex=True,
)

ALGORITHMS = (MUON,)
