"""Conditioning and classifier-free guidance as fields (issue 11)."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

import diffode
from diffode import Guidance, Schedule, sample, solve
from diffode.data import digits as digits_data
from diffode.solvers import Dopri5

F64 = torch.float64
LINEAR = Schedule.linear()


class LabelledToy:
    """An analytic class-conditional ε-model: ε = tanh(x + 0.3·label·t/1000) with label -1 as the
    null class (unconditional: ε = tanh(x))."""

    cond_keyword = "class_labels"

    def __call__(self, x: Tensor, t: Tensor, *, class_labels: Tensor) -> Tensor:
        shift = 0.3 * class_labels.to(x.dtype).clamp(min=0) * (t.to(x.dtype) / 1000)
        return torch.tanh(x + shift.reshape(-1, *([1] * (x.ndim - 1))))

    def null_condition(self, cond: dict[str, Tensor]) -> dict[str, Tensor]:
        return {"class_labels": torch.full_like(cond["class_labels"], -1)}


def test_guidance_is_the_cfg_formula_on_an_analytic_model():
    model = LabelledToy()
    labels = torch.tensor([0, 3, 7])
    x = torch.randn(3, 4, dtype=F64)
    sigma = 2.0
    t = float(LINEAR.t(sigma))
    xin = x / (1 + sigma**2) ** 0.5
    tt = torch.full((3,), t, dtype=F64)
    eps_c = model(xin, tt, class_labels=labels)
    eps_u = model(xin, tt, class_labels=torch.full_like(labels, -1))
    for w in (0.0, 1.0, 3.0):
        for batched in (True, False):
            field = diffode.field_for(model, LINEAR, cond=labels, guidance=Guidance(w, batched=batched))
            expected = eps_u + w * (eps_c - eps_u)
            torch.testing.assert_close(field(sigma, x), expected, rtol=1e-14, atol=1e-14)
    unguided = diffode.field_for(model, LINEAR, cond={"class_labels": labels})
    torch.testing.assert_close(unguided(sigma, x), eps_c, rtol=1e-14, atol=1e-14)


def test_w1_is_the_conditional_model_and_w0_the_unconditional_one():
    model = LabelledToy()
    labels = torch.tensor([1, 2, 5, 9])
    noise = torch.randn(4, 3, dtype=F64, generator=torch.Generator().manual_seed(0))
    cond = sample(model, LINEAR, noise, steps=10, cond=labels)
    uncond = sample(model, LINEAR, noise, steps=10, cond=torch.full_like(labels, -1))
    torch.testing.assert_close(sample(model, LINEAR, noise, steps=10, cond=labels, guidance=1.0), cond)
    torch.testing.assert_close(sample(model, LINEAR, noise, steps=10, cond=labels, guidance=0.0), uncond)


def test_conditioning_follows_the_samples_under_per_sample_dopri5():
    model = LabelledToy()
    labels = torch.tensor([0, 9, 4, 2, 7])
    noise = torch.randn(5, 3, dtype=F64, generator=torch.Generator().manual_seed(1))
    solver = Dopri5(rtol=1e-6, atol=1e-6, per_sample=True)
    batch = sample(model, LINEAR, noise, solver=solver, cond=labels, guidance=2.0)
    for i in range(5):
        alone = sample(model, LINEAR, noise[i : i + 1], solver=solver, cond=labels[i : i + 1], guidance=2.0)
        torch.testing.assert_close(alone, batch[i : i + 1], rtol=1e-12, atol=1e-12)


def test_guidance_interval_and_rescale():
    model = LabelledToy()
    labels = torch.tensor([3, 8])
    x = torch.randn(2, 6, dtype=F64)
    cond_only = diffode.field_for(model, LINEAR, cond=labels)
    outside = diffode.field_for(model, LINEAR, cond=labels, guidance=Guidance(4.0, interval=(0.5, 1.0)))
    torch.testing.assert_close(outside(3.0, x), cond_only(3.0, x), rtol=0, atol=0)
    per_sample = torch.tensor([0.7, 3.0], dtype=F64)
    guided = diffode.field_for(model, LINEAR, cond=labels, guidance=4.0)
    mixed = outside(per_sample, x)
    torch.testing.assert_close(mixed[0], guided(per_sample, x)[0])
    torch.testing.assert_close(mixed[1], cond_only(per_sample, x)[1])
    # rescale φ = 1 gives the guided output the per-sample standard deviation of the conditional one
    rescaled = diffode.field_for(model, LINEAR, cond=labels, guidance=Guidance(4.0, rescale=1.0))
    torch.testing.assert_close(rescaled(0.8, x).std(dim=1), cond_only(0.8, x).std(dim=1))


def test_rescale_leaves_outputs_without_spread_finite():
    model = LabelledToy()
    labels = torch.tensor([3, 8])
    rescaled = diffode.field_for(model, LINEAR, cond=labels, guidance=Guidance(4.0, rescale=0.7))
    plain = diffode.field_for(model, LINEAR, cond=labels, guidance=4.0)
    # one element per sample, and a constant state (the toy's ε is constant there): no spread to
    # match, so the guided output is kept as it is (0.7 g + 0.3 g: a rounding or two)
    one = torch.randn(2, 1, dtype=F64, generator=torch.Generator().manual_seed(0))
    # (batch,) states have one element per sample too: their spread was pooled over the batch
    for x in (one, one[:, 0], torch.zeros(2, 4, dtype=F64)):
        torch.testing.assert_close(rescaled(0.8, x), plain(0.8, x), rtol=4 * 2.0**-53, atol=0)


def test_malformed_guidance_intervals_name_the_argument():
    for interval in ((1.0, 2.0, 3.0), 5.0, ("a", 1.0)):
        with pytest.raises(TypeError, match="interval must be a pair \\(sigma_lo, sigma_hi\\) of numbers"):
            Guidance(2.0, interval=interval)
    with pytest.raises(ValueError, match="0 <= sigma_lo <= sigma_hi"):
        Guidance(2.0, interval=(2.0, 1.0))


def test_callback_denoised_and_any_solver_work_under_guidance():
    model = LabelledToy()
    field = diffode.field_for(model, LINEAR, cond=torch.tensor([1, 2]), guidance=3.0)
    infos = []
    grid = diffode.sigma_grid(LINEAR, 6, "logsnr")  # Heun refuses the uniform grid's last step
    out = solve(field, torch.randn(2, 3, dtype=F64), grid, "heun", callback=infos.append)
    assert all(i.denoised is not None for i in infos) and out.nfe == 2 * 5 + 1


def test_conditioning_errors_name_the_fix():
    model = LabelledToy()
    noise = torch.randn(3, 2)
    with pytest.raises(ValueError, match="batch size 2 but the state has 3"):
        sample(model, LINEAR, noise, steps=2, cond=torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="no null_condition"):
        sample(lambda x, t, **kw: x, LINEAR, noise, steps=2, cond={"y": torch.ones(3)}, guidance=2.0)
    with pytest.raises(TypeError, match="declares no cond_keyword"):
        sample(lambda x, t, **kw: x, LINEAR, noise, steps=2, cond=torch.ones(3))
    with pytest.raises(ValueError, match="need a conditional model"):
        sample(model, LINEAR, noise, steps=2, guidance=2.0)
    with pytest.raises(ValueError, match="guidance must be a finite number >= 0"):
        sample(model, LINEAR, noise, steps=2, cond=torch.tensor([1, 2, 3]), guidance=-1.0)
    with pytest.raises(ValueError, match="uncond must have the keys of cond"):
        sample(model, LINEAR, noise, steps=2, cond=torch.tensor([1, 2, 3]), guidance=1.5, uncond={"y": noise})


@pytest.mark.parametrize("solver", ["euler", "heun", "bdia"])
def test_exact_inversion_under_guidance_round_trips(solver):
    # guidance is an ordinary field: the exact inverse of the guided sampler retraces it (float64
    # target of exact encoding, 1e-9), where DDIM inversion under guidance does not
    model = LabelledToy()
    labels = torch.tensor([0, 4, 9])
    x0 = torch.randn(3, 4, dtype=F64, generator=torch.Generator().manual_seed(5)).clamp(-1, 1)
    # logsnr: the implicit inverses' default grid, which Heun also samples on (not the uniform one)
    kw = dict(steps=20, solver=solver, cond=labels, guidance=3.0, timesteps="logsnr")
    enc = diffode.encode(model, LINEAR, x0, method="exact", return_info=True, **kw)
    back = diffode.decode(model, LINEAR, enc)
    assert float((back - x0).abs().max()) <= 1e-9
    naive = diffode.decode(model, LINEAR, diffode.encode(model, LINEAR, x0, **kw), **kw)
    assert float((naive - x0).abs().max()) > 1e-4


def test_guided_exact_inversion_on_the_conditional_digits_model():
    model, schedule = diffode.pretrained.digits_conditional()
    images, labels = digits_data("test")
    x0 = images[:4].double()
    enc = diffode.encode(
        model.double(),
        schedule,
        x0,
        steps=10,
        solver="bdia",
        method="exact",
        cond=labels[:4],
        guidance=3.0,
        return_info=True,
    )
    back = diffode.decode(model.double(), schedule, enc)
    assert float((back - x0).abs().max()) <= 1e-9


def test_guidance_weights_may_be_numpy_numbers():
    # np.arange sweeps give np.int64 and np.float32 weights, which were refused (np.float64 was not)
    import numpy as np

    from diffode.conditioning import as_guidance

    for w in (np.int64(3), np.float32(3.0), np.float64(3.0), 3):
        assert as_guidance(w).scale == 3.0
    with pytest.raises(TypeError, match="guidance must be a number w >= 0"):
        as_guidance(np.bool_(True))
