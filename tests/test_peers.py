"""Published solvers against independent peer implementations, same grid, float64.

Each diffode solver that carries a published name is run next to diffusers' scheduler loop or
k-diffusion's sampler on the ring-mixture oracle (its exact ε, so any difference is the
algorithm's). Both sides read the scheduler's own ᾱ table; diffusers computes its grid's σ
values from it in float32 (relative round-off 6e-8 per value; the loop here then keeps them in
float64), amplified by the O(1) Lipschitz constant of six to twenty steps, so the two loops may
differ by about 1e-6 of the sample's scale (measured: 2e-8 … 3e-7); a wrong coefficient
anywhere (e.g. the 2hφ₃ weight of the exact 3M) shows as 1e-3 … 1e-1. Hence 1e-5 relative.
k-diffusion and the iPNDM reference loop run on diffode's own float64 grid: 1e-12.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import Tensor

from diffode import EpsField, Schedule, oracles, sigma_grid, solve
from diffode.solvers import DEIS, IPNDM, DPMSolverPP, Solver, UniPC, get_solver
from tests.peer_loops import diffusers_sample, diffusers_schedule, k_diffusion_sample, k_diffusion_sampling

diffusers = pytest.importorskip("diffusers")
# diffusers' set_timesteps converts a torch tensor with numpy (its own deprecation, not ours)
pytestmark = [
    pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:__array_wrap__ must accept:DeprecationWarning"),
]

F64 = torch.float64
MIXTURE = oracles.GaussianMixture.ring()
PEER_RTOL = 1e-5
SAME_GRID_RTOL = 1e-12


def noise(n: int = 16, seed: int = 0) -> Tensor:
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=F64)


def relative(a: Tensor, b: Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def scheduler(kind: str, steps: int, spacing: str, **config: object):
    cls = getattr(diffusers, kind)
    sched = cls(beta_schedule="linear", beta_start=1e-4, beta_end=0.02, timestep_spacing=spacing, **config)
    sched.set_timesteps(steps)
    return sched


def diffode_run(solver: Solver, sched, z: Tensor, *, final_zero: bool = True) -> Tensor:
    """diffode on the scheduler's own timesteps (and table); ``final_zero=False`` ends at σ(t=0),
    as diffusers' DEIS does."""
    schedule = diffusers_schedule(sched)
    ts = sched.timesteps.to(torch.int64)
    grid = sigma_grid(schedule, None, ts)
    if not final_zero:
        grid = torch.cat([grid[:-1], schedule.sigmas[:1]])
    x = z * math.sqrt(1 + float(grid[0]) ** 2)
    return solve(field(schedule), x, grid, solver).x


def field(schedule: Schedule) -> EpsField:
    return EpsField(MIXTURE.model(schedule), schedule)


def peer_run(sched, z: Tensor) -> Tensor:
    return diffusers_sample(sched, MIXTURE.model(diffusers_schedule(sched)), z)


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("steps", [8, 20])
@pytest.mark.parametrize("order", [2, 3])
def test_dpmpp_multistep_is_diffusers_dpm_solver_multistep(order, steps, spacing):
    # 8 steps exercise diffusers' lower_order_final (fewer than 15 steps), 20 the full order
    sched = scheduler(
        "DPMSolverMultistepScheduler", steps, spacing, solver_order=order, algorithm_type="dpmsolver++"
    )
    z = noise()
    assert relative(diffode_run(DPMSolverPP(order), sched, z), peer_run(sched, z)) <= PEER_RTOL


def test_the_exact_third_order_variant_is_not_the_published_update():
    sched = scheduler("DPMSolverMultistepScheduler", 20, "trailing", solver_order=3)
    z = noise()
    assert relative(diffode_run(DPMSolverPP(3, exact=True), sched, z), peer_run(sched, z)) > 100 * PEER_RTOL


@pytest.mark.parametrize("variant", ["bh1", "bh2"])
@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("steps", [6, 20])
def test_unipc_is_diffusers_unipc_multistep(order, variant, steps):
    sched = scheduler("UniPCMultistepScheduler", steps, "trailing", solver_order=order, solver_type=variant)
    z = noise()
    solver = UniPC(order, variant)
    if variant == "bh2":
        assert relative(diffode_run(solver, sched, z), peer_run(sched, z)) <= PEER_RTOL
    # diffusers' bh1 step into σ = 0 computes B(h)·0 with B(h) = -∞ (NaN); compare every step
    # but that one: the states at the last positive σ (UniPC-3's lower-order step included)
    schedule = diffusers_schedule(sched)
    grid = sigma_grid(schedule, None, sched.timesteps.to(torch.int64))
    x = z * math.sqrt(1 + float(grid[0]) ** 2)
    ours = solve(field(schedule), x, grid, solver, save=True).xs
    theirs = diffusers_sample(sched, MIXTURE.model(schedule), z, stop=steps - 1)
    theirs = theirs * math.sqrt(1 + float(grid[-2]) ** 2)  # diffusers' x to x̄
    assert ours is not None
    assert relative(ours[-2], theirs) <= PEER_RTOL


@pytest.mark.parametrize("order", [1, 2, 3])
def test_deis_is_diffusers_deis_multistep(order):
    # diffusers' DEIS ends its grid at σ(t = 0) instead of 0, and lowers the order of its last
    # two steps below 15 steps; with 20 steps every step is comparable on the same grid
    sched = scheduler("DEISMultistepScheduler", 20, "trailing", solver_order=order)
    z = noise()
    got = diffode_run(DEIS(order), sched, z, final_zero=False)
    x_got = got / math.sqrt(1 + float(diffusers_schedule(sched).sigmas[0]) ** 2)  # x̄ to x at σ(t = 0)
    assert relative(x_got, peer_run(sched, z)) <= PEER_RTOL


def test_euler_is_diffusers_ddim():
    sched = scheduler("DDIMScheduler", 10, "trailing", clip_sample=False)
    z = noise()
    assert relative(diffode_run(get_solver("euler"), sched, z), peer_run(sched, z)) <= PEER_RTOL


# ---------------------------------------------------------------------------------------------
# k-diffusion, on diffode's own float64 grid
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("timesteps", ["karras", "trailing"])
@pytest.mark.parametrize(
    "name, sampler, kwargs",
    [
        ("euler", "euler", {}),
        ("heun", "heun", {}),
        ("dpmpp-2m", "dpmpp_2m", {}),
        ("dpmpp-2s", "dpmpp_2s_ancestral", {"eta": 0.0}),
    ],
)
def test_solver_is_its_k_diffusion_sampler(name, sampler, kwargs, timesteps):
    if k_diffusion_sampling() is None:
        pytest.skip("k-diffusion is not installed")
    schedule = Schedule.linear()
    grid = sigma_grid(schedule, 10, timesteps)
    z = noise()
    ours = solve(field(schedule), z * math.sqrt(1 + float(grid[0]) ** 2), grid, name).x
    theirs = k_diffusion_sample(sampler, MIXTURE.model(schedule), schedule, z, grid, **kwargs)
    assert relative(ours, theirs) <= SAME_GRID_RTOL


def test_heun_is_karras_algorithm_1_without_churn():
    # written from Karras et al. (2022), Algorithm 1 with S_churn = 0: d = (x - D(x; σ))/σ, an Euler
    # step, and the trapezoidal correction unless the step ends at σ = 0 (here without k-diffusion,
    # which CI does not install)
    schedule = Schedule.linear()
    f = field(schedule)
    grid = sigma_grid(schedule, 20, "karras")
    x = noise() * math.sqrt(1 + float(grid[0]) ** 2)
    expected = x.clone()
    for s0, s1 in zip(grid[:-1].tolist(), grid[1:].tolist(), strict=True):
        d = f(s0, expected)
        euler = expected + (s1 - s0) * d
        expected = euler if s1 == 0 else expected + (s1 - s0) * (d + f(s1, euler)) / 2
    assert relative(solve(f, x, grid, "heun").x, expected) <= SAME_GRID_RTOL


def test_dpmpp_2s_is_the_published_singlestep_update():
    # DPM-Solver++(2S) with r = 1/2 (Lu et al., 2022, Algorithm 1) in the data-prediction form, in
    # x̄ with λ = -log σ: u = (σ_s/σ₀) x̄ - expm1(-r h) D(x̄, σ₀), then
    # x̄₁ = (σ₁/σ₀) x̄ - expm1(-h) D(u, σ_s), σ_s = √(σ₀σ₁); the step into σ = 0 is x̂₀. The same
    # loop as k-diffusion's sample_dpmpp_2s_ancestral(eta=0), checked here without it (CI does
    # not install k-diffusion)
    schedule = Schedule.linear()
    f = field(schedule)
    grid = sigma_grid(schedule, 10, "karras")
    x = noise() * math.sqrt(1 + float(grid[0]) ** 2)

    def denoised(sigma: float, y: Tensor) -> Tensor:
        return y - sigma * f(sigma, y)

    expected = x.clone()
    for s0, s1 in zip(grid[:-1].tolist(), grid[1:].tolist(), strict=True):
        if s1 == 0:
            expected = denoised(s0, expected)
            continue
        h = math.log(s0 / s1)
        s_mid = math.sqrt(s0 * s1)
        u = (s_mid / s0) * expected - math.expm1(-h / 2) * denoised(s0, expected)
        expected = (s1 / s0) * expected - math.expm1(-h) * denoised(s_mid, u)
    assert relative(solve(f, x, grid, "dpmpp-2s").x, expected) <= SAME_GRID_RTOL


# ---------------------------------------------------------------------------------------------
# iPNDM against a loop written from the published formulas
# ---------------------------------------------------------------------------------------------


def ipndm_reference(denoiser, x: Tensor, t_steps: list[float], max_order: int = 4) -> Tensor:
    """AMED's ``ipndm`` sampler loop (Zhou et al., 2024, solvers.py), with its fixed
    Adams–Bashforth coefficients and warm start, on a grid that does not end at 0."""
    buffer: list[Tensor] = []
    for i, (t_cur, t_next) in enumerate(itertools.pairwise(t_steps)):
        d_cur = (x - denoiser(x, t_cur)) / t_cur
        order = min(max_order, i + 1)
        if order == 1:
            x = x + (t_next - t_cur) * d_cur
        elif order == 2:
            x = x + (t_next - t_cur) * (3 * d_cur - buffer[-1]) / 2
        elif order == 3:
            x = x + (t_next - t_cur) * (23 * d_cur - 16 * buffer[-1] + 5 * buffer[-2]) / 12
        else:
            x = x + (t_next - t_cur) * (55 * d_cur - 59 * buffer[-1] + 37 * buffer[-2] - 9 * buffer[-3]) / 24
        buffer = [*buffer, d_cur][-(max_order - 1) :]
    return x


def deis_tab_reference(eps, schedule: Schedule, x: Tensor, ts: list[int], order: int) -> Tensor:
    """DEIS's tAB in x-space from the paper's formulas (Zhang & Chen, 2023, the exponential
    integrator with a polynomial in t): x_{i+1} = Ψ(t_{i+1}, t_i) x_i + Σ_j C_ij ε_{i-j}, with
    Ψ(t, s) = α_t/α_s and C_ij = ∫_{t_i}^{t_{i+1}} Ψ(t_{i+1}, τ) α_τ σ'(τ) Π_{k≠j} (τ - t_{i-k}) /
    (t_{i-j} - t_{i-k}) dτ over the last ``order`` integer times (fewer at the start), α = √ᾱ.
    σ(τ) is log-linear between training steps; the integral is the midpoint rule on 256 points
    per training step (its error about 1e-9 of the weights here)."""
    log_sigma = schedule.sigmas.log()
    past: list[tuple[int, Tensor]] = []
    for t_cur, t_next in itertools.pairwise(ts):
        alpha = 1 / math.sqrt(1 + float(schedule.sigmas[t_cur]) ** 2)
        past = [*past, (t_cur, eps(x, t_cur))][-order:]
        lo, hi = min(t_cur, t_next), max(t_cur, t_next)
        tau = lo + (torch.arange((hi - lo) * 256, dtype=F64) + 0.5) / 256
        k = tau.floor().long()
        sigma = torch.exp(torch.lerp(log_sigma[k], log_sigma[k + 1], tau - k))
        alpha_tau = 1 / torch.sqrt(1 + sigma**2)
        alpha_next = 1 / math.sqrt(1 + float(schedule.sigmas[t_next]) ** 2)
        integrand = (alpha_next / alpha_tau) * alpha_tau * sigma * (log_sigma[k + 1] - log_sigma[k])
        x = (alpha_next / alpha) * x
        for j, (tj, ej) in enumerate(past):
            basis = torch.ones_like(tau)
            for m, (tm, _) in enumerate(past):
                if m != j:
                    basis = basis * (tau - tm) / (tj - tm)
            direction = 1.0 if t_next > t_cur else -1.0
            x = x + direction * float((integrand * basis).sum()) / 256 * ej
    return x


@pytest.mark.parametrize("spacing", ["uniform", "quadratic"])
@pytest.mark.parametrize("order", [1, 2, 3])
def test_deis_tab_is_the_papers_exponential_integrator(order, spacing):
    schedule = Schedule.linear()
    model = MIXTURE.model(schedule)
    grid = sigma_grid(schedule, 12, spacing)[:-1]  # the paper's last step ends at t = 0, σ_min
    ts = [round(float(schedule.t(s))) for s in grid.tolist()]
    z = noise()
    ours = solve(field(schedule), z * math.sqrt(1 + float(grid[0]) ** 2), grid, f"deis-tab-{order}").x
    # x = α x̄ starts as the noise itself
    theirs = deis_tab_reference(
        lambda x, t: model(x, torch.full((x.shape[0],), float(t), dtype=F64)), schedule, z, ts, order
    )
    # ours is in x̄ = x/α: back to x at σ_min. The reference's midpoint rule is the error here:
    # 1.3e-9 measured; the bound leaves it a factor of 8 (a moment without the integer pieces,
    # or another basis, is off by 7e-7 or more)
    assert relative(ours / math.sqrt(1 + float(grid[-1]) ** 2), theirs) <= 1e-8


@pytest.mark.parametrize("order", [2, 3])
def test_deis_tab_is_log_rho_deis_where_log_sigma_is_linear_in_t(order):
    # σ(t) = σ₀ e^{ct} makes t an affine function of log σ, and the two bases one polynomial space
    sigmas = 0.01 * torch.exp(torch.arange(1000, dtype=F64) * (math.log(150.0 / 0.01) / 999))
    schedule = Schedule.from_alphas_cumprod(1 / (1 + sigmas**2))
    grid = sigma_grid(schedule, 9, "quadratic")
    x = noise() * math.sqrt(1 + float(grid[0]) ** 2)
    tab = solve(field(schedule), x, grid, f"deis-tab-{order}").x
    rho = solve(field(schedule), x, grid, DEIS(order, lower_order_final=False)).x
    assert relative(tab, rho) <= 1e-13


@pytest.mark.parametrize("order", [2, 3, 4])
def test_ipndm_is_the_published_loop(order):
    schedule = Schedule.linear()
    eps_field = field(schedule)
    grid = sigma_grid(schedule, 12, "karras")[:-1]  # AMED's last step into 0 is not ours
    z = noise() * math.sqrt(1 + float(grid[0]) ** 2)
    ours = solve(eps_field, z, grid, IPNDM(order)).x
    theirs = ipndm_reference(lambda x, s: eps_field.denoised(s, x), z, grid.tolist(), order)
    assert relative(ours, theirs) <= SAME_GRID_RTOL
