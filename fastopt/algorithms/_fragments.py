"""Pieces that several declarations share, spelled once: the weight-decay switches, the Adam-style
moment averages and bias corrections, their hyperparameters and their lines of the formula.

A code piece is a few lines without indentation; :func:`code` joins pieces (and a declaration's
own lines, dedented) into one ``per_array`` or ``update`` fragment. Joined, the pieces are the
lines each declaration spelled before, so the generated loops are the same.

Like the rest of this package, this module imports nothing from fastopt outside
``fastopt.algorithms`` (the build loads the package by path).
"""
import textwrap

from ._spec import Hyper, Switch, flag, pair, real

__all__ = ["code", "lerp_switch", "L2_SWITCH", "L2_DECAY", "DECAY_SWITCH", "DECAY", "DECAY_AFTER",
           "DECAY_AFTER_UPDATE", "bitsandbytes_variant",
           "MOMENT_WEIGHTS", "DECAY_SCALE", "BIAS_CORRECTION2", "FIRST_MOMENT", "SECOND_MOMENT",
           "BETAS", "EPS", "WEIGHT_DECAY", "DECOUPLED_WEIGHT_DECAY", "DECAY_FORMULA",
           "MOMENTS_FORMULA"]


def code(*pieces):
    """One code fragment of ``pieces`` (each dedented), one line after the other."""
    return "\n".join(textwrap.dedent(piece).strip("\n") for piece in pieces) + "\n"


def lerp_switch(weight):
    """torch.lerp switches formula at ``|weight| < 0.5`` (compared in the tensor's dtype): the
    switch ``lerp`` (``"low"`` or ``"high"``) of a moment averaged with the per-array scalar
    ``weight``, for the helpers ``_lerp_low``/``_lerp_high``. The magnitude matters: RMSprop's
    weight ``1 - alpha`` is negative for ``alpha > 1``, and torch takes the high form from
    ``alpha >= 1.5`` on."""
    return Switch("lerp", "abs(<{{T}}>%s) >= 0.5" % weight, ("low", "high"))


# -- L2 weight decay only (torch's weight_decay of SGD, Adagrad, RMSprop, ...) --------------------

#: Whether an L2 penalty is added to the gradient.
L2_SWITCH = Switch("l2", "weight_decay != 0")
#: The gradient with the L2 penalty (under ``L2_SWITCH``).
L2_DECAY = """
{{if l2}}
g = g + weight_decay * p
{{endif}}
"""

# -- L2 or decoupled weight decay (Adam's decoupled_weight_decay, AdamW) -------------------------

#: No decay, an L2 penalty added to the gradient, or the param itself decayed (AdamW).
DECAY_SWITCH = Switch("decay", "0 if weight_decay == 0 else (2 if decoupled_weight_decay else 1)",
                      ("none", "l2", "decoupled"))
#: The update's first lines under ``DECAY_SWITCH`` (``decay_scale`` from ``DECAY_SCALE``).
DECAY = """
{{if decay == "l2"}}
g = g + weight_decay * p
{{elif decay == "decoupled"}}
p = p * decay_scale
{{endif}}
"""
DECAY_SCALE = "decay_scale = 1.0 - lr * weight_decay"
#: bitsandbytes' rule (its CUDA kernels): the param decays after the update instead of before,
#: ``p <- (p - update) (1 - lr wd)``: pinned by its variants (``Algorithm.constants``).
DECAY_AFTER = Hyper("decay_after_update", False, flag(),
                    "Decay the param after the update (bitsandbytes' CUDA kernels) rather than "
                    "before (torch).")
#: With ``DECAY_AFTER`` on, the update's step is decayed too: ``p (1 - lr wd) + s (1 - lr wd) u``
#: is ``(p + s u)(1 - lr wd)`` (``step`` names the per-array step size; ``decay_scale`` from
#: ``DECAY_SCALE``).
DECAY_AFTER_UPDATE = """
if decay_after_update:
    {step} = {step} * decay_scale
"""

# -- Adam's moments -------------------------------------------------------------------------------

#: The weights of the new gradient in the two moment averages.
MOMENT_WEIGHTS = """
w1 = 1.0 - beta1
w2 = 1.0 - beta2
"""
BIAS_CORRECTION2 = "bias_correction2 = 1.0 - pow(beta2, step)"
#: m <- m + (1 - beta1)(g - m), as torch's lerp (under ``lerp_switch("w1")``).
FIRST_MOMENT = "exp_avg = _lerp_{{lerp}}(exp_avg, g, w1)"
#: v <- beta2 v + (1 - beta2) g^2, in torch's order.
SECOND_MOMENT = "exp_avg_sq = exp_avg_sq * beta2 + (w2 * g) * g"

# -- Their hyperparameters ------------------------------------------------------------------------

BETAS = Hyper("betas", (0.9, 0.999), pair(real(0, 1, high_inclusive=False)),
              r":math:`(\beta_1, \beta_2)`, the decay rates of the moment averages.",
              fields=("beta1", "beta2"))
EPS = Hyper("eps", 1e-8, real(low=0), r":math:`\epsilon`, added to the denominator.")
WEIGHT_DECAY = Hyper("weight_decay", 0.0, real(low=0),
                     r":math:`\lambda`: an L2 penalty added to the gradient, or decoupled.")
DECOUPLED_WEIGHT_DECAY = Hyper("decoupled_weight_decay", False, flag(),
                               "Decay the param itself (as AdamW does) instead of adding an L2 term.")

# -- Their lines of the formula (reStructuredText math, as in the declarations) -----------------

DECAY_FORMULA = r"""
        g &\leftarrow g + \lambda p \qquad \text{(L2 weight decay; with decoupled\_weight\_decay }
             p \leftarrow p (1 - \eta\lambda) \text{ instead)} \\"""
MOMENTS_FORMULA = r"""
        m &\leftarrow m + (1 - \beta_1)(g - m), \quad v \leftarrow \beta_2 v + (1 - \beta_2) g^2 \\"""


# -- bitsandbytes' classes ------------------------------------------------------------------------

def bitsandbytes_variant(base, name, what, states, *, signature, defaults=None, fixed=None,
                         decay_after=False, notes="", groups=None):
    """The variant of ``base`` that follows ``bitsandbytes.optim.<name>``: its arguments and
    defaults (``signature``, ``defaults``; fastopt's options such as ``optim_bits`` and
    ``min_8bit_size`` are keyword arguments of every class), its update rule (``decay_after``: the
    param decays after the update, as its CUDA kernels do), states in 8 bits by default, and
    checkpoints in its format (``states``: the states bitsandbytes keeps as ``state1`` and
    ``state2``; ``groups``: the group keys it keeps that this class does not, see
    ``Algorithm.bitsandbytes_groups``). Its state counts steps, as bitsandbytes' does (SGD's
    too)."""
    # (SGD, RMSprop and LARS cite no paper: their reference is empty)
    reference = ((f"{base.reference} " if base.reference else "") + "Arguments, defaults and checkpoint format of "
                 + f"``bitsandbytes.optim.{name}`` (bitsandbytes 0.50); the 8-bit format of Dettmers "
                 "et al., *8-bit Optimizers via Block-wise Quantization*, ICLR 2022."
                 + (" As bitsandbytes' CUDA kernels, the param decays after the update "
                    "(bitsandbytes' CPU path decays it before)." if decay_after else "")
                 + (" " + notes if notes else ""))
    variant = base.variant(
        name, f"{what}, as ``bitsandbytes.optim.{name}``: states in 8 bits by default.",
        defaults=defaults, fixed=fixed, numpy_signature=signature, torch_signature=signature,
        torch_name="", constants={"decay_after_update": True} if decay_after else None,
        reference=reference, option_defaults={"optim_bits": 8}, bitsandbytes_states=states,
        torch_extras={}, bitsandbytes_groups=groups, has_step=True)
    variant.torch_name = None        # (no torch.optim class)
    return variant
