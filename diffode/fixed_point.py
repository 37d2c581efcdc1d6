"""Solving a sampling step's implicit equation: safeguarded Anderson-accelerated fixed points.

Exact inversion (:class:`~diffode.solvers.InverseOf`, and the inverse of the step into σ = 0 in
:mod:`diffode.boundary`) asks for the y that a sampling step maps onto a given state.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def default_tolerance(dtype: torch.dtype) -> float:
    """The fixed-point tolerance used when none is given: 4 units of round-off of ``dtype``
    (4.8e-7 in float32), but 1e-12 in float64.

    Converged iterations reach 4 ulps on the oracles and random networks of the test suite
    (below about 2 the residual's own round-off stalls the iteration). A real network's float64
    evaluation carries more round-off than that: the bundled digits UNet stalls at a residual of
    about 4e-14 (180 ulps), so float64 gets a fixed 1e-12, still far below any sampling error."""
    if dtype == torch.float64:
        return 1e-12
    return 4 * torch.finfo(dtype).eps


def _anderson_correction(dy: list[Tensor], dg: list[Tensor], g: Tensor, beta: Tensor) -> Tensor:
    """Anderson's correction (ΔY + βΔG)γ with γ = argmin ‖g - ΔG γ‖ per sample (type II).

    The small least-squares problems are solved through their normal equations in float64 with
    a relative ridge; a sample whose history was cleared has zero columns and gets γ = 0.
    """
    big_y = torch.stack(dy, -1).to(torch.float64)
    big_g = torch.stack(dg, -1).to(torch.float64)
    gram = big_g.mT @ big_g
    ridge = 1e-12 * gram.diagonal(dim1=-2, dim2=-1).sum(-1) + torch.finfo(torch.float64).tiny
    eye = torch.eye(gram.shape[-1], dtype=torch.float64, device=gram.device)
    gamma = torch.linalg.solve(gram + ridge[:, None, None] * eye, big_g.mT @ g.to(torch.float64)[..., None])
    return ((big_y + beta[:, None, None] * big_g) @ gamma)[..., 0].to(g.dtype)


def solve_fixed_point(
    forward: Callable[[Tensor], Tensor],
    target: Tensor,
    guess: Tensor,
    *,
    tol: float,
    max_iter: int,
    memory: int = 3,
) -> tuple[Tensor, int, Tensor]:
    """Solve ``forward(y) = target`` for y, per sample, by safeguarded Anderson acceleration.

    The underlying iteration is y ← y + β (target - forward(y)), which converges when the map
    ``forward`` is close to the identity (a sampling step with a small step size). Anderson
    acceleration (type II, Walker & Ni 2011) with the last ``memory`` differences turns a near
    linear problem into a few iterations. Safeguard: a sample whose new residual is not finite
    or exceeds 4 times the best it has reached keeps its previous iterate, forgets its history
    and halves its β; otherwise the step is taken and β doubles back up to 1. (Requiring a
    decrease at every iteration stalls on the Gaussian-mixture oracle, where the residual of a
    converging iteration is not monotone.) Each iteration evaluates ``forward`` once and
    synchronises with the device to test convergence.

    Args:
        forward: the map to invert, applied to a batch of shape ``target.shape``.
        target: the right-hand side, shape ``(batch, ...)``.
        guess: the starting iterate, shape of ``target``.
        tol: convergence when every sample's residual (see below) is at most ``tol``.
        max_iter: iterations allowed after the first evaluation.
        memory: Anderson history length; 0 gives the damped plain iteration.

    Returns:
        (y, iterations, residual): the last accepted iterate, the iterations made, and each
        sample's residual ‖target - forward(y)‖∞ / max(1, ‖target‖∞, ‖guess‖∞) as float64
        ``(batch,)``: absolute for small states, relative to the magnitudes the step works with for
        large ones (the guess stands for y, whose own size must not excuse a runaway iterate).
        Convergence is not asserted here: compare ``residual`` with ``tol``.
    """
    shape, batch = target.shape, target.shape[0]
    flat_target = target.reshape(batch, -1)
    y = guess.reshape(batch, -1)
    scale = torch.maximum(flat_target.abs().amax(1), y.abs().amax(1)).clamp(min=1.0).to(torch.float64)

    def evaluate(y: Tensor) -> tuple[Tensor, Tensor]:
        g = flat_target - forward(y.reshape(shape)).reshape(batch, -1)
        return g, g.abs().amax(1).to(torch.float64) / scale

    g, res = evaluate(y)
    best = res
    beta = torch.ones(batch, dtype=torch.float64, device=target.device)
    dy: list[Tensor] = []
    dg: list[Tensor] = []
    iterations = 0
    while iterations < max_iter and not bool((res <= tol).all()):
        iterations += 1
        y_new = y + beta[:, None].to(y.dtype) * g
        if dy:
            y_new = y_new - _anderson_correction(dy, dg, g, beta)
        g_new, res_new = evaluate(y_new)
        accept = res_new < 4 * best  # False where the new residual is NaN
        keep = accept[:, None]
        zero = torch.zeros((), dtype=y.dtype, device=y.device)
        if memory > 0:
            start = max(0, len(dy) + 1 - memory)
            dy = [torch.where(keep, d, zero) for d in dy[start:]] + [torch.where(keep, y_new - y, zero)]
            dg = [torch.where(keep, d, zero) for d in dg[start:]] + [torch.where(keep, g_new - g, zero)]
        y = torch.where(keep, y_new, y)
        g = torch.where(keep, g_new, g)
        res = torch.where(accept, res_new, res)
        best = torch.minimum(best, res)
        beta = torch.where(accept, (2 * beta).clamp(max=1.0), 0.5 * beta)
    return y.reshape(shape), iterations, res


__all__ = ["default_tolerance", "solve_fixed_point"]
