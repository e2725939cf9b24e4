"""How the prox's threshold :math:`\\tau` follows from the learning rate, the decay and momentum.

.. math::
  \\tau_t = \\frac{\\lambda_t \\, \\gamma_t}{1 - \\beta} \\ (\\texttt{"fixed_point"}),
  \\qquad \\tau_t = \\lambda_t \\, \\gamma_t \\ (\\texttt{"paper"}).

"fixed_point" makes the iteration stop at a stationary point of :math:`L + \\lambda R`: a
heavy-ball trace (``optax.sgd`` with ``momentum=β``, Nesterov too) settles at
:math:`\\nabla L / (1 - \\beta)`, and with :math:`\\tau = \\lambda\\gamma` the fixed point would be
that of :math:`L + \\lambda (1 - \\beta) R`. "paper" is the reference code's rule, whatever the
optimiser. The two agree at :math:`\\beta = 0`, as after Adam: its first moment settles at the
gradient, and AdamW's decoupled decay is the proximal step of :math:`(\\lambda/2)\\|\\theta\\|^2`
with step :math:`\\gamma_t`, so :math:`\\tau = \\lambda\\gamma_t` is the same decay with PathProx's
regulariser in place of the squared norm.

Under a FLOPs budget (:func:`pathprox_jax.with_budget`), the units kept at a step are
thresholded at :math:`c_g \\tau` (``"cost"``: the cost-aware objective) or :math:`\\tau`
(``"uniform"``: plain PathProx's objective on what stays; the costs only rank the units).

This module imports nothing, not even JAX, so that command lines can check a rule's name
without loading the library's numerics.
"""

from typing import Literal

ThresholdRule = Literal["fixed_point", "paper"]
THRESHOLD_RULES: tuple[ThresholdRule, ...] = ("fixed_point", "paper")
KeptThreshold = Literal["cost", "uniform"]
KEPT_THRESHOLDS: tuple[KeptThreshold, ...] = ("cost", "uniform")
