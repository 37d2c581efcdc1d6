"""Exact encoding on the bundled digits network (issue 10): round trips within the dtype's
targets, per-sample residuals and cost on ``Encoding``, ``decode(Encoding)``, errors that name the
sample, the step and an existing option, and the CLI's sample -> encode round trip.

Targets (max abs over all pixels, images in [-1, 1]): float32 2e-5 ≈ 170 units of round-off,
float64 1e-9; the round trip is the sum of the per-step residuals (each a few units of
round-off of the step) plus decoding's own round-off, one rounding per step and pixel.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffode import EpsField, decode, encode, sample, sigma_grid, solve
from diffode.boundary import invert_into_zero
from diffode.encoding import EXACT_TIMESTEPS
from diffode.fixed_point import default_acceptance, default_tolerance
from diffode.images import load_images
from diffode.pretrained import digits
from diffode.solvers import Euler, InverseOf
from diffode.solvers.reversible import InverseStep, InversionError

F32, F64 = torch.float32, torch.float64
TARGET = {F32: 2e-5, F64: 1e-9}


@pytest.fixture(scope="module")
def held_out() -> torch.Tensor:
    pytest.importorskip("sklearn")
    from diffode.data import digits as digits_data

    return digits_data("test")[0][:4]


def round_trip(x0: torch.Tensor, **kwargs) -> tuple[float, object]:
    model, schedule = digits(dtype=x0.dtype)
    info = encode(model, schedule, x0, method="exact", return_info=True, **kwargs)
    back = decode(model, schedule, info)
    return float((back.double() - x0.double()).abs().max()), info


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("steps", [10, 50])
def test_bdia_round_trips_held_out_digits_within_the_target(held_out, dtype, steps):
    error, info = round_trip(held_out.to(dtype), steps=steps, solver="bdia")
    assert error <= TARGET[dtype]
    # only the step out of σ = 0 iterates; its residual is what the Encoding reports
    assert info.residual is not None and info.residual.shape == (4,)
    assert float(info.residual.max()) <= TARGET[dtype]
    if dtype == F32:
        assert info.evaluations_per_step <= 4


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("steps", [10, 50])
@pytest.mark.parametrize("solver", ["euler", "heun"])
def test_implicit_inverses_round_trip_held_out_digits_with_defaults(held_out, solver, steps, dtype):
    # the default grid of the implicit inverse (logsnr) keeps every sampling step invertible, and
    # the default tolerance iterates each step to its round-off floor
    error, info = round_trip(held_out.to(dtype), steps=steps, solver=solver)
    assert error <= TARGET[dtype]
    assert info.sigmas.numel() == steps + 1 and float(info.sigmas[1]) > 0


def test_the_step_after_zero_takes_its_predictor_from_the_step_into_zero(held_out):
    # the field at σ₁ that the first step's predictor needs is a by-product of inverting the step
    # into σ = 0: no row is evaluated at σ₁ beyond that step's own evaluations
    model, schedule = digits()
    seen: list[tuple[float, int]] = []

    class Tap(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            seen.append((float(t.reshape(-1)[0]), x.shape[0]))
            return self.inner(x, t)

    steps: list[InverseStep] = []
    grid = sigma_grid(schedule, 10, EXACT_TIMESTEPS, direction="encode")
    solve(EpsField(Tap(), schedule), held_out, grid, InverseOf(Euler(), observer=steps.append))
    lowest = min(t for t, _ in seen)
    assert sum(rows for t, rows in seen if t == lowest) == steps[0].evaluations
    assert sum(rows for _, rows in seen) == sum(step.evaluations for step in steps)


def test_exact_euler_costs_at_most_4_evaluations_per_step_in_float32():
    # issue 10's target, on 16 held-out digits at 50 steps: measured 3.89 evaluations per image
    # and step (3.86 on 64; 4.22 stopping at 2 units of round-off instead of 8, 7.0 before the
    # stopping rule's unevaluated last step; docs/encoding.md gives the trade against accuracy)
    pytest.importorskip("sklearn")
    from diffode.data import digits as digits_data

    error, info = round_trip(digits_data("test")[0][:16], steps=50, solver="euler")
    assert info.evaluations_per_step <= 4.0 and error <= TARGET[F32]


@pytest.mark.parametrize("dtype", [F32, F64])
def test_euler_round_trips_held_out_digits_at_100_steps(held_out, dtype):
    error, info = round_trip(held_out.to(dtype), steps=100, solver="euler")
    assert error <= TARGET[dtype]
    # decoding adds about one rounding per step to the accumulated step residuals
    assert error <= float(info.residual.max()) + 100 * torch.finfo(dtype).eps


def test_a_step_that_cannot_be_inverted_names_sample_step_residual_and_options():
    # 10 Euler steps on DDIM's uniform grid: the sampling step σ 0.34 -> 0.01 folds on the digits
    # network (its Jacobian has eigenvalues ≤ 0 there), and the iteration stalls far above
    # round-off on 7 of the first 64 held-out digits, among them 40 and 42
    pytest.importorskip("sklearn")
    from diffode.data import digits as digits_data

    held_out = digits_data("test")[0][40:44]
    model, schedule = digits()
    with pytest.raises(InversionError) as caught:
        encode(model, schedule, held_out, steps=10, timesteps="uniform", method="exact")
    err = caught.value
    assert isinstance(err, ValueError) and 0 <= err.sample < 4 and err.residual > TARGET[F32]
    assert err.sigma == pytest.approx(0.0100005, rel=1e-4)
    message = str(err)
    for option in ("steps=", "--steps", "tol=", "--tol", "method='reverse'", "--method reverse"):
        assert option in message
    # the sample stopped improving before the iteration limit: more iterations are not offered
    assert err.sample >= 0 and "(where it stopped improving)" in message and "--max-iter" not in message
    # the tolerance it suggests is the residual reached, rounded up to one significant digit, and
    # it says that it loosens every step of every sample; the default's acceptance is named as such
    assert "accept this residual on every step of every sample (tol=" in message
    assert "above the acceptance 7.63e-06 (tol 9.54e-07)" in message
    # tol is relative (to max(1, |x|, |predictor|)), as is the residual the message quotes first;
    # err.residual is in x
    tol = float(message.split("tol=")[1].split(";")[0])
    relative = float(message.split("residual ")[1].split(" (relative")[0])
    assert relative <= tol <= 2 * relative
    # the step out of σ = 0 ends at σ_min whatever the number of steps: more steps are not offered
    with pytest.raises(InversionError) as caught:
        encode(model, schedule, held_out, steps=10, method="exact", max_iter=2)
    message = str(caught.value)
    assert caught.value.sigma == 0.0 and "steps=" not in message and "--steps" not in message
    # stopped by the limit, not by stagnation: more iterations are offered
    assert "max_iter=2 now; CLI --max-iter" in message and "--method reverse" in message
    # a trailing grid starts above σ_min, and more steps lower its first σ: they are offered
    with pytest.raises(InversionError) as caught:
        encode(model, schedule, held_out, steps=10, timesteps="trailing", method="exact", max_iter=2)
    assert caught.value.sigma == 0.0 and "a finer grid (more steps=, CLI --steps" in str(caught.value)


def test_an_explicit_tolerance_is_what_is_asked(held_out):
    model, schedule = digits()
    with pytest.raises(InversionError, match="above tol 1e-09"):
        encode(model, schedule, held_out, steps=10, solver="bdia", method="exact", tol=1e-9, return_info=True)


@pytest.mark.parametrize("solver", ["euler", "bdia"])
def test_a_float16_network_round_trips_within_its_own_round_off(held_out, solver):
    # float16 data are integrated in float32, but the network computes in float16: the defaults
    # take the coarser dtype's round-off (a float32 nudge is rounded away at the network's input,
    # and the measured floor missed the network's round-off: every sample failed)
    model, schedule = digits(dtype=torch.float16)
    x0 = held_out.half()
    info = encode(model, schedule, x0, steps=10, solver=solver, method="exact", return_info=True)
    error = float((decode(model, schedule, info).float() - x0.float()).abs().max())
    assert error <= 64 * torch.finfo(torch.float16).eps  # the default acceptance, per step


def test_the_step_into_zero_inverts_a_nearly_singular_own_sample():
    # the model's 40th own sample (Euler, 50 steps, 64 samples from seed 0, clipped to [-1, 1])
    # has pixels where x̂₀(x̄, σ_min) is nearly flat: Anderson with 10 columns and patience 30
    # stalls there at 3e-5, the step-into-zero defaults converge to round-off
    model, schedule = digits()
    noise = torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    x0 = sample(model, schedule, noise).clamp(-1, 1)[39:40]
    field = EpsField(model, schedule)
    criteria = {"tol": default_tolerance(F32), "accept": default_acceptance(F32), "max_iter": 500}
    found = invert_into_zero(field, schedule.sigma_min, x0, **criteria)
    assert bool(found.converged.all()) and float(found.residual.max()) <= default_acceptance(F32)
    short = invert_into_zero(field, schedule.sigma_min, x0, memory=10, **criteria)
    assert not bool(short.converged.any()) and float(short.residual.max()) > 1e-5


def test_decode_retraces_an_encoding(held_out):
    model, schedule = digits()
    info = encode(
        model,
        schedule,
        held_out,
        steps=10,
        timesteps="quadratic",
        solver="bdia",
        method="exact",
        return_info=True,
    )
    by_hand = decode(
        model,
        schedule,
        info.latents,
        steps=10,
        timesteps="quadratic",
        solver="bdia",
        companion=info.companion,
    )
    assert torch.equal(decode(model, schedule, info), by_hand)
    with pytest.raises(ValueError, match="retraces the Encoding it is given, which fixes steps, solver"):
        decode(model, schedule, info, steps=10, solver="euler")
    reverse = encode(model, schedule, held_out, steps=10, return_info=True)
    assert reverse.residual is None and reverse.evaluations_per_step == 1.0
    assert torch.equal(decode(model, schedule, reverse), decode(model, schedule, reverse.latents, steps=10))


def test_cli_sample_png_grid_then_exact_encode(tmp_path, capsys):
    # sample's PNG grid (5 images, 2 per row, enlarged 3 times, grey padding) records its layout,
    # so encode reads back exactly the images the .npz of the same seeds holds
    import json

    from diffode.cli import main
    from diffode.images import GRID_KEY, write_png

    png, npz = tmp_path / "s.png", tmp_path / "s.npz"
    for out in (png, npz):
        assert (
            main(
                [
                    "sample",
                    "--seeds",
                    "0-4",
                    "--steps",
                    "20",
                    "--columns",
                    "2",
                    "--scale",
                    "3",
                    "--out",
                    str(out),
                ]
            )
            == 0
        )
    assert torch.equal(load_images([str(png)], (1, 8, 8)), load_images([str(npz)], (1, 8, 8)))
    assert (
        main(["encode", str(png), "--method", "exact", "--steps", "10", "--out", str(tmp_path / "z.npz")])
        == 0
    )
    out = capsys.readouterr().out
    assert "encoded 5 image(s)" in out
    assert float(out.split("round trip max abs error ")[1].split(";")[0]) <= TARGET[F32]
    # a record that does not describe the picture (another tool resized or cropped it and kept
    # the chunk) or is damaged leaves the picture to the single-image rule: 16×16 is one image
    picture = np.kron(np.arange(64, dtype=np.uint8).reshape(8, 8), np.ones((2, 2), np.uint8))
    layout = {"count": 5, "columns": 2, "height": 8, "width": 8, "scale": 3, "pad": 1}
    for name, record in (("resized.png", json.dumps(layout)), ("junk.png", "[" * 5000)):
        write_png(tmp_path / name, picture, text={GRID_KEY: record})
        single = load_images([str(tmp_path / name)], (1, 8, 8))
        assert single.shape == (1, 1, 8, 8)
        assert torch.equal(single, load_images([str(tmp_path / "resized.png")], (1, 8, 8)))
    # a grid of images of another size is refused naming the file
    layout = {"count": 1, "columns": 1, "height": 4, "width": 4, "scale": 4, "pad": 0}
    write_png(tmp_path / "small.png", picture, text={GRID_KEY: json.dumps(layout)})
    with pytest.raises(ValueError, match="small.png is a grid of 4×4 images; the model needs 8×8"):
        load_images([str(tmp_path / "small.png")], (1, 8, 8))


def test_cli_sample_then_exact_encode(tmp_path, capsys):
    from diffode.cli import main

    images = tmp_path / "s.npz"
    assert main(["sample", "--seeds", "0-3", "--steps", "20", "--out", str(images)]) == 0
    assert (
        main(
            [
                "encode",
                str(images),
                "--method",
                "exact",
                "--solver",
                "bdia",
                "--steps",
                "20",
                "--out",
                str(tmp_path / "z.npz"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    error = float(out.split("round trip max abs error ")[1].split(";")[0])
    cost = float(out.split("encoding cost ")[1].split(" ")[0])
    assert error <= TARGET[F32] and cost <= 4
    # Euler at the default 50 steps, on its default grid: the summary is the library's round trip
    assert main(["encode", str(images), "--method", "exact", "--out", str(tmp_path / "z2.npz")]) == 0
    out = capsys.readouterr().out
    x0 = load_images([str(images)], (1, 8, 8))
    error, info = round_trip(x0, steps=50)
    assert float(out.split("round trip max abs error ")[1].split(";")[0]) == pytest.approx(error, rel=0.01)
    assert float(out.split("encoding cost ")[1].split(" ")[0]) == pytest.approx(
        info.evaluations_per_step, abs=0.01
    )
    # a tolerance far below float32's round-off is missed: one line naming the options, exit 2
    assert (
        main(
            [
                "encode",
                str(images),
                "--method",
                "exact",
                "--steps",
                "10",
                "--tol",
                "1e-12",
                "--out",
                str(tmp_path / "z3.npz"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--tol" in err[0] and "--method reverse" in err[0]
    # --tol with the default --method reverse was ignored without a word
    assert main(["encode", str(images), "--tol", "1e-3", "--out", str(tmp_path / "z4.npz")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--method exact" in err[0] and not (tmp_path / "z4.npz").exists()
