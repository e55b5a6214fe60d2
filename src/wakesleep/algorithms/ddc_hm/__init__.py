"""The Distributed Distributional Code Helmholtz Machine (Vertes & Sahani; paper §5, Algorithm 1, appendix).

How the wake gradient is computed
---------------------------------
Every function of the latents that the free-energy gradient (appendix eqs. 19-21) needs is regressed, in
the sleep phase, on the encoding functions T(z_l) of sleep samples (eqs. 31-35), and its posterior
expectation is read off as ``alpha . r_l(x)`` (eq. 5). With ridge regression (unpenalised intercept)

    alpha . r = F^T T (T^T T + n Lambda)^{-1} r = sum_s w_s(r) F_s,     w(r) = T (T^T T + n Lambda)^{-1} r,

so each regression is a *weighted sum over sleep samples* of the per-sample target F_s. Because the targets
are gradients, ``sum_s w_s grad_theta f_s(theta) = grad_theta sum_s w_s f_s(theta)``: autodiff of one scalar
surrogate gives the whole of eq. 36 without ever forming alpha (whose size is K x dim(theta)). And
``w(r)`` is linear in r, so the minibatch average of r is taken before the solve. The sleep phase keeps
C_l = (T_l^T T_l / n + Lambda)^{-1} / n (K x K) and never forms the N x K matrix T_l C_l. Per wake step the cost
is a few K x K x B and N x K x B products, an ``N x B x D_x`` product for the observation layer (its integrand
depends on x through S_0(x); ``B x K x D_1 + D_x x B x D_1`` instead when its natural parameters are linear in
theta, as in a sigmoid belief network), and one backward pass through the links at the N sleep samples: O(N (K B + cost
of evaluating the model)), independent of dim(theta) apart from the backward pass. The links' forward pass at
the sleep samples is the one the sleep phase already made to draw them (its autograd graph is kept), as long
as theta has not changed since.

The posterior is never assumed to factorise across layers: the cross-layer term of eq. 20 is regressed on
T(z_l) using the sleep pair (z_l, z_{l+1}), which is a draw from p(z_{l+1} | z_l) (appendix eqs. 26-30).

Package layout
--------------
``algorithm.py`` (:class:`DDCHelmholtzMachine`: construction, data parallelism, checkpoints), ``options.py``
(its :class:`~wakesleep.algorithms.ddc_hm.options.DDCOptions`), ``sleep.py`` (sampling, the recognition fit,
the gradient systems), ``wake.py`` (posterior expectations and the wake gradient), and the pieces they use:
``features.py`` (encoding functions, random ReLU layer), ``recognition.py`` (closed-form recognition),
``trained_recognition.py`` (MLP and deep recognition), ``ridge.py`` (ridge regressions, running statistics).
"""

from wakesleep.algorithms.ddc_hm.algorithm import DDCHelmholtzMachine
from wakesleep.algorithms.ddc_hm.options import DDCOptions

__all__ = ["DDCHelmholtzMachine", "DDCOptions"]
