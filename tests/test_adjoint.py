"""Gradients through the ODE with memory independent of the step count (issue 13, item 2)."""

from __future__ import annotations

import weakref

import pytest
import torch
from torch import nn

import diffode
from diffode import EpsField, Schedule, sample, solve
from diffode.models import MLP
from diffode.solvers import Dopri5, Torchdiffeq

F64 = torch.float64
LINEAR = Schedule.linear()


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = MLP(dim=3, hidden=16, depth=1, emb_dim=8)
    # the output layer starts at zero for training; a field that is 0 would make every check trivial
    nn.init.normal_(net.out.weight, std=0.3)
    return net.double()


def loss_and_grads(run, x, params):
    out = run(x)
    loss = (out * torch.linspace(-1, 1, out.numel(), dtype=F64).reshape(out.shape)).sum()
    return torch.autograd.grad(loss, [x, *params])


@pytest.mark.parametrize("solver", ["euler", "heun", "ab3", "dpmpp-2m", "bdia", "rk4"])
def test_the_discrete_adjoint_equals_autograd_through_the_loop(solver):
    # the exact gradient of the computed discrete solution: autograd through every step is the reference
    net = mlp()
    field = EpsField(net, LINEAR)
    params = list(net.parameters())
    grid = diffode.sigma_grid(LINEAR, 12, "karras")
    x = torch.randn(4, 3, dtype=F64, generator=torch.Generator().manual_seed(1), requires_grad=True)
    reference = loss_and_grads(lambda y: solve(field, y, grid, solver).x, x, params)
    adjoint = loss_and_grads(lambda y: solve(field, y, grid, solver, adjoint=True).x, x, params)
    for want, got in zip(reference, adjoint, strict=True):
        # the two compute the same arithmetic in another order: round-off of float64 only
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-12)


def test_the_discrete_adjoint_passes_gradcheck():
    field = EpsField(mlp(), LINEAR)
    grid = diffode.sigma_grid(LINEAR, 6, "logsnr")  # Heun refuses the uniform grid's last step
    x = torch.randn(2, 3, dtype=F64, generator=torch.Generator().manual_seed(2), requires_grad=True)
    assert torch.autograd.gradcheck(lambda y: solve(field, y, grid, "heun", adjoint=True).x, (x,))


def test_adjoint_params_default_to_the_fields_parameters_and_explicit_ones_work():
    net = mlp()
    field = EpsField(net, LINEAR)
    grid = diffode.sigma_grid(LINEAR, 4)
    x = torch.randn(2, 3, dtype=F64)
    solve(field, x, grid, "euler", adjoint=True).x.square().sum().backward()
    assert all(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in net.parameters())
    first = next(net.parameters())
    expected = first.grad.clone()
    net.zero_grad()
    plain = lambda s, y: field(s, y)  # noqa: E731  (not an nn.Module: parameters must be named)
    solve(plain, x, grid, "euler", adjoint=True, adjoint_params=[first]).x.square().sum().backward()
    torch.testing.assert_close(first.grad, expected, rtol=1e-12, atol=0)


def test_a_model_that_is_not_a_module_needs_its_adjoint_params_named():
    # its parameters cannot be found: they used to get no gradient, in silence
    net = mlp()
    wrapped = EpsField(lambda y, t: net(y, t), LINEAR)
    grid = diffode.sigma_grid(LINEAR, 4)
    x = torch.randn(2, 3, dtype=F64, requires_grad=True)
    for f in (wrapped, lambda s, y: wrapped(s, y)):
        with pytest.raises(ValueError, match=r"pass adjoint_params=\[\.\.\.\].*adjoint_params=\(\)"):
            solve(f, x, grid, "euler", adjoint=True)
    with pytest.raises(ValueError, match=r"pass adjoint_params"):
        sample(lambda y, t: net(y, t), LINEAR, x, steps=3, grad=True, adjoint=True)
    # x alone, said explicitly, and the named parameters through the front door
    solve(wrapped, x, grid, "euler", adjoint=True, adjoint_params=()).x.sum().backward()
    assert x.grad is not None and next(net.parameters()).grad is None
    params = list(net.parameters())
    sample(
        lambda y, t: net(y, t), LINEAR, x, steps=3, grad=True, adjoint=True, adjoint_params=params
    ).sum().backward()
    assert all(p.grad is not None for p in params)


class LiveSaved:
    """Tracks the bytes autograd holds for backward passes at any moment, and their peak."""

    def __init__(self) -> None:
        self.live = 0
        self.peak = 0

    def pack(self, t: torch.Tensor) -> object:
        holder = _Held(t)
        size = t.numel() * t.element_size()
        self.live += size
        self.peak = max(self.peak, self.live)
        weakref.finalize(holder, self._release, size)
        return holder

    def _release(self, size: int) -> None:
        self.live -= size

    @staticmethod
    def unpack(holder: object) -> torch.Tensor:
        return holder.tensor  # type: ignore[attr-defined]


class _Held:
    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor


def peak_saved_bytes(steps: int, adjoint: bool) -> int:
    net = mlp()
    noise = torch.randn(16, 3, dtype=F64, generator=torch.Generator().manual_seed(3), requires_grad=True)
    tracker = LiveSaved()
    with torch.autograd.graph.saved_tensors_hooks(tracker.pack, tracker.unpack):
        x = sample(net, LINEAR, noise, steps=steps, grad=True, adjoint=adjoint)
        x.square().sum().backward()
    return tracker.peak


def test_adjoint_memory_stays_flat_in_the_step_count():
    flat = [peak_saved_bytes(steps, adjoint=True) for steps in (10, 200)]
    grows = [peak_saved_bytes(steps, adjoint=False) for steps in (10, 200)]
    # one step's graph at a time against all of them: plain autograd grows with the step count
    assert flat[1] == flat[0]
    assert grows[1] > 15 * grows[0]
    assert flat[1] < grows[1] / 50


def test_the_continuous_adjoint_matches_autograd_through_a_tight_solve():
    net = mlp()
    field = EpsField(net, LINEAR)
    params = list(net.parameters())
    grid = torch.tensor([20.0, 0.5, 0.0], dtype=F64)
    x = torch.randn(3, 3, dtype=F64, generator=torch.Generator().manual_seed(4), requires_grad=True)
    tight = Dopri5(rtol=1e-10, atol=1e-10)
    reference = loss_and_grads(lambda y: solve(field, y, grid, tight).x, x, params)
    for solver in (Dopri5(rtol=1e-9, atol=1e-9), Torchdiffeq("dopri5", rtol=1e-9, atol=1e-9)):
        adjoint = loss_and_grads(lambda y, s=solver: solve(field, y, grid, s, adjoint=True).x, x, params)
        for want, got in zip(reference, adjoint, strict=True):
            # relative to the gradient's scale: entries near zero carry the same absolute error
            scale = float(want.abs().max())
            assert float((got - want).abs().max()) <= 1e-5 * scale, (
                solver,
                float((got - want).abs().max()) / scale,
            )


@pytest.mark.parametrize("grid", [[80.0, 0.002, 0.0], [0.002, 80.0]], ids=["sampling", "encoding"])
def test_the_continuous_adjoint_never_leaves_the_grid(grid):
    # the backward pass's steps were not clipped at the grid points of a decreasing grid:
    # a field was evaluated at σ = 107-115 on a grid from 80
    ring = diffode.oracles.GaussianMixture.ring()
    seen = []

    def f(s, y):
        seen.append(float(torch.as_tensor(s).detach().max()))
        return ring(s, y)

    x = (torch.randn(8, 2, dtype=F64, generator=torch.Generator().manual_seed(0)) * grid[0]).requires_grad_()
    out = solve(
        f, x, torch.tensor(grid, dtype=F64), Dopri5(rtol=1e-6, atol=1e-6), adjoint=True, adjoint_params=()
    )
    forward = len(seen)
    out.x.sum().backward()
    assert len(seen) > forward and max(seen[forward:]) <= 80.0 * (1 + 1e-12)


@pytest.mark.parametrize("solver", ["euler", "dopri5"])
def test_gradients_of_gradients_are_refused_not_lost(solver):
    # both adjoints recompute without a graph: a gradient penalty lost its terms in silence
    net = mlp()
    x = torch.randn(2, 3, dtype=F64, generator=torch.Generator().manual_seed(1), requires_grad=True)
    out = solve(EpsField(net, LINEAR), x, diffode.sigma_grid(LINEAR, 6, "karras"), solver, adjoint=True).x
    with pytest.raises(ValueError, match=r"first derivatives only.*create_graph=True.*adjoint=False"):
        torch.autograd.grad(out.pow(2).sum(), x, create_graph=True)
    (g,) = torch.autograd.grad(out.pow(2).sum(), x)
    assert not g.requires_grad


def test_conditioning_tensors_get_their_gradients_and_the_result_can_be_edited_in_place():
    # a learned embedding passed as cond got no gradient with adjoint=True, in silence
    class Conditional(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4).double()

        def forward(self, x, t, y=None):
            return 0.1 * self.lin(x) + 0.1 * y

    net = Conditional()
    emb = torch.randn(2, 4, dtype=F64, generator=torch.Generator().manual_seed(0), requires_grad=True)
    field = diffode.field_for(net, LINEAR, "epsilon", cond={"y": emb})
    x = torch.randn(2, 4, dtype=F64, generator=torch.Generator().manual_seed(1))
    grid = torch.tensor([5.0, 2.0, 1.0], dtype=F64)
    grads = []
    for adjoint in (False, True):
        emb.grad = None
        out = solve(field, x, grid, "euler", adjoint=adjoint).x
        # the adjoint's result is a tensor of its own, which clamp_ may edit
        out.clamp_(-10, 10).sum().backward()
        grads.append(emb.grad.clone())
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-12, atol=0)


def test_fields_are_modules_that_odeint_adjoint_accepts():
    from torchdiffeq import odeint_adjoint

    net = mlp()
    field = EpsField(net, LINEAR)
    assert isinstance(field, nn.Module) and set(field.parameters()) == set(net.parameters())
    t = torch.tensor([5.0, 1.0], dtype=F64)
    out = odeint_adjoint(field, torch.randn(2, 3, dtype=F64), t, rtol=1e-6, atol=1e-6)
    out[-1].sum().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_adjoint_refusals_name_the_fix():
    field = EpsField(mlp(), LINEAR)
    grid = diffode.sigma_grid(LINEAR, 4)
    x = torch.randn(2, 3, dtype=F64)
    with pytest.raises(ValueError, match="draws fresh noise"):
        solve(field, x, grid, diffode.DDIM(1.0), adjoint=True)
    with pytest.raises(ValueError, match="no continuous adjoint"):
        solve(field, x, grid, "scipy:RK45", adjoint=True)
    with pytest.raises(ValueError, match="leave callback and save out"):
        solve(field, x, grid, "dopri5", adjoint=True, save=True)
    with pytest.raises(ValueError, match="pass grad=True"):
        sample(mlp(), LINEAR, x, steps=3, adjoint=True)
    with pytest.raises(TypeError, match=r"adjoint_params\[0\] must be a floating tensor"):
        solve(field, x, grid, "euler", adjoint=True, adjoint_params=[3])
    frozen = torch.ones(3, dtype=F64)
    for solver in ("euler", "dopri5"):
        with pytest.raises(ValueError, match=r"adjoint_params\[0\] \(shape \(3,\)\) does not require grad"):
            solve(field, x, grid, solver, adjoint=True, adjoint_params=[frozen])


def test_max_nfe_bounds_the_forward_solve_not_the_backward_recomputation():
    net = mlp()
    field = EpsField(net, LINEAR)
    x = torch.randn(3, 3, dtype=F64, generator=torch.Generator().manual_seed(5), requires_grad=True)
    euler = diffode.solvers.Euler()
    euler.max_nfe = 8  # exactly the forward solve's evaluations
    solution = solve(field, x, diffode.sigma_grid(LINEAR, 8, "karras"), euler, adjoint=True)
    assert solution.nfe == 8
    solution.x.sum().backward()
    assert x.grad is not None and bool(torch.isfinite(x.grad).all())


def test_a_non_finite_continuous_adjoint_is_a_value_error():
    x = torch.ones(2, 2, dtype=F64, requires_grad=True)
    grid = torch.tensor([10.0, 0.5, 0.0], dtype=F64)
    solver = Dopri5(rtol=1e-3, atol=1e-3)

    # NaN inside the integral: torchdiffeq's assertion becomes diffode's error
    def inside(s, y):
        return torch.full_like(y, torch.nan) if float(torch.as_tensor(s).max()) < 1.0 else -y / (1 + s)

    with pytest.raises(ValueError, match="continuous adjoint\\) failed between σ = 10 and σ = 0.5"):
        solve(inside, x, grid, solver, adjoint=True, adjoint_params=[x])

    # NaN in the step into σ = 0 only (solve takes it itself, with a float σ): the result is
    # checked although the continuous adjoint reports no steps
    def last(s, y):
        return -y / (1 + s) * (torch.nan if isinstance(s, float) and s == 0.5 else 1.0)

    with pytest.raises(ValueError, match="the state became non-finite between σ 10 and 0"):
        solve(last, x, grid, solver, adjoint=True, adjoint_params=[x])


def test_the_continuous_adjoint_refuses_per_sample_step_control():
    # odeint_adjoint controls one step size for the batch: per_sample=True would be dropped
    field = EpsField(mlp(), Schedule.linear())
    x = torch.randn(3, 2, requires_grad=True)
    with pytest.raises(ValueError, match="per_sample=True would be ignored; pass per_sample=False"):
        solve(field, x, torch.tensor([5.0, 1.0]), Dopri5(rtol=1e-3, atol=1e-3, per_sample=True), adjoint=True)


def test_recomputed_steps_replay_the_networks_random_draws():
    # dropout in training mode drew new masks in each recomputed step: the forward results were
    # identical, the weight gradients 13 % off autograd's
    class Dropping(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.drop, self.b = nn.Linear(4, 32), nn.Dropout(0.3), nn.Linear(32, 3)

        def forward(self, x, t):
            return self.b(self.drop(torch.tanh(self.a(torch.cat([x, t[:, None] / 1000], 1)))))

    torch.manual_seed(0)
    net = Dropping().double()
    x = torch.randn(8, 3, dtype=F64, generator=torch.Generator().manual_seed(1))
    results = []
    for adjoint in (False, True):
        net.zero_grad()
        torch.manual_seed(123)
        out = sample(net, LINEAR, x, steps=9, grad=True, adjoint=adjoint)
        out.square().sum().backward()
        results.append((out.detach(), [p.grad.clone() for p in net.parameters()], torch.get_rng_state()))
    (out_a, grads_a, rng_a), (out_b, grads_b, rng_b) = results
    assert torch.equal(out_a, out_b)
    for want, got in zip(grads_a, grads_b, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-14)
    # the replay leaves the generator where the forward pass left it
    assert torch.equal(rng_a, rng_b)


def test_a_tensor_named_twice_gets_its_gradient_once_and_a_bare_tensor_is_refused():
    # a learned null embedding is a parameter of the model and guidance's unconditional input:
    # found twice, it received twice its gradient
    class Guided(nn.Module):
        cond_keyword = "y"

        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4).double()
            self.null = nn.Parameter(torch.randn(2, 4, dtype=F64, generator=torch.Generator().manual_seed(3)))

        def forward(self, x, t, y):
            return 0.1 * self.lin(x) + 0.1 * y

    net = Guided()
    cond = torch.randn(2, 4, dtype=F64, generator=torch.Generator().manual_seed(4))
    x = torch.randn(2, 4, dtype=F64, generator=torch.Generator().manual_seed(5))
    grid = torch.tensor([5.0, 2.0, 1.0], dtype=F64)
    field = diffode.field_for(net, LINEAR, cond={"y": cond}, guidance=2.0, uncond={"y": net.null})
    grads = []
    for options in ({}, {"adjoint": True}, {"adjoint": True, "adjoint_params": [net.null, net.null]}):
        net.zero_grad()
        solve(field, x, grid, "euler", **options).x.sum().backward()
        grads.append(net.null.grad.clone())
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-12, atol=0)
    torch.testing.assert_close(grads[2], grads[0], rtol=1e-12, atol=0)
    # iterating a tensor gives its rows, views the field never uses: no gradient, in silence
    with pytest.raises(TypeError, match=r"adjoint_params must be a list or tuple of tensors, got a tensor"):
        solve(field, x, grid, "euler", adjoint=True, adjoint_params=net.null)
