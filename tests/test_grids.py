import json
import math

import pytest
import torch

from diffode import EpsField, Schedule, karras_sigmas, oracles, sample, sigma_grid, solve, spaced_timesteps
from diffode.grids import GRID_FORMAT, load_grid, logsnr_sigmas, optimize, save_grid
from tests.helpers import reference_quad, reference_uniform


@pytest.mark.parametrize(
    "spacing, expected",
    [
        # diffusers' documented examples for T = 1000, S = 10
        ("uniform", [900, 800, 700, 600, 500, 400, 300, 200, 100, 0]),
        ("leading", [900, 800, 700, 600, 500, 400, 300, 200, 100, 0]),
        ("trailing", [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]),
        ("linspace", [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]),
    ],
)
def test_spacings_known_values(linear, spacing, expected):
    assert spaced_timesteps(linear, 10, spacing).tolist() == expected


@pytest.mark.parametrize("S", [1, 2, 3, 7, 10, 20, 50, 100, 333, 999, 1000])
def test_uniform_and_quadratic_match_reference_code(linear, S):
    uni = spaced_timesteps(linear, S, "uniform").tolist()
    assert uni == sorted(reference_uniform(1000, S), reverse=True)
    assert len(uni) == S
    quad = spaced_timesteps(linear, S, "quadratic").tolist()
    assert quad == sorted(set(reference_quad(1000, S)), reverse=True)


@pytest.mark.parametrize("spacing", ["uniform", "trailing", "linspace"])
@pytest.mark.parametrize("S", [1, 3, 10, 999, 1000])
def test_spacings_give_S_distinct_valid_steps(linear, spacing, S):
    ts = spaced_timesteps(linear, S, spacing)
    assert ts.numel() == S
    assert bool((ts[1:] < ts[:-1]).all()) and int(ts.min()) >= 0 and int(ts.max()) <= 999


def test_sigma_grid_appends_final_zero(linear):
    grid = sigma_grid(linear, 10, "uniform")
    assert grid.dtype == torch.float64 and grid.shape == (11,)
    assert float(grid[-1]) == 0.0
    assert torch.equal(grid[:-1], linear.sigmas[spaced_timesteps(linear, 10)])


def test_a_rho_too_small_for_the_sigma_range_is_named():
    # σ^(1/ρ) overflowed: an OverflowError from Python's float power
    with pytest.raises(ValueError, match=r"rho=0.001 is too small .* use rho > 0.00876"):
        karras_sigmas(0.002, 80.0, 5, rho=1e-3)
    assert bool(torch.isfinite(karras_sigmas(0.002, 80.0, 5, rho=0.01)).all())


def test_karras_grid(linear):
    sig = karras_sigmas(0.01, 80.0, 5, rho=7.0)
    assert float(sig[0]) == pytest.approx(80.0, rel=1e-14) and float(sig[-1]) == pytest.approx(
        0.01, rel=1e-12
    )
    i = 2
    expected = (80 ** (1 / 7) + i / 4 * (0.01 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    assert float(sig[i]) == pytest.approx(expected, rel=1e-14)
    grid = sigma_grid(linear, 12, "karras")
    assert grid.shape == (13,) and float(grid[0]) == pytest.approx(linear.sigma_max)
    assert float(grid[-2]) == pytest.approx(linear.sigma_min)


def test_explicit_grids(linear):
    ts = torch.tensor([999, 500, 10])
    assert torch.equal(
        sigma_grid(linear, None, ts), torch.cat([linear.sigmas[ts], torch.zeros(1, dtype=torch.float64)])
    )
    sig = torch.tensor([50.0, 1.0, 0.1], dtype=torch.float64)
    assert sigma_grid(linear, None, sig).tolist() == [50.0, 1.0, 0.1, 0.0]
    assert sigma_grid(linear, 3, torch.tensor([50.0, 1.0, 0.1, 0.0], dtype=torch.float64)).tolist() == [
        50.0,
        1.0,
        0.1,
        0.0,
    ]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_a_grid_rounded_to_a_lower_precision_keeps_sigma_max(dtype):
    # σ_max rounds up in float32 (157.407 + 7e-6 on the linear schedule): the grid is the same
    # grid, clamped back, not a σ beyond the schedule
    for schedule in (Schedule.linear(), Schedule.cosine(), Schedule.scaled_linear()):
        grid = sigma_grid(schedule, 10, "karras")
        got = sigma_grid(schedule, timesteps=grid.to(dtype))
        assert float(got[0]) == schedule.sigma_max
        torch.testing.assert_close(got, grid, rtol=torch.finfo(dtype).eps, atol=0)
    # beyond the rounding it is still refused
    with pytest.raises(ValueError, match="must lie in \\[0, sigma_max = 157.407"):
        sigma_grid(Schedule.linear(), timesteps=torch.tensor([157.5, 1.0, 0.0]))


def test_a_sigma_grid_without_a_positive_sigma_is_refused(linear):
    # [0.] alone would "sample" in zero steps and hand back the noise
    with pytest.raises(ValueError, match="at least one σ > 0"):
        sigma_grid(linear, None, torch.tensor([0.0], dtype=torch.float64))


def test_adaptive_grids_with_zero_terminal_snr():
    ac = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 100, dtype=torch.float64), 0)
    ac[-1] = 0.0
    s = Schedule.from_alphas_cumprod(ac)
    # sampling starts at σ = ∞ (the x̂₀ step lands on the largest finite σ); encoding ends there
    down = sigma_grid(s, None, "uniform", adaptive=True)
    assert down.tolist() == [math.inf, s.sigma_max_finite, s.sigma_min, 0.0]
    for spacing in ("uniform", "karras", "logsnr"):
        up = sigma_grid(s, None, spacing, adaptive=True, direction="encode")
        assert up.tolist() == [0.0, s.sigma_min, s.sigma_max_finite]


@pytest.mark.parametrize(
    "ts, match",
    [
        (torch.tensor([100, 500, 10]), "strictly decreasing"),
        (torch.tensor([500, 500, 10]), "no duplicates"),
        (torch.tensor([1000, 500]), "must lie in 0 … 999"),
        (torch.tensor([500, -1]), "must lie in 0 … 999"),
    ],
)
def test_bad_timesteps(linear, ts, match):
    with pytest.raises(ValueError, match=match):
        sigma_grid(linear, None, ts)


def test_bad_steps_and_spacing(linear):
    with pytest.raises(ValueError, match="steps must be at least 1, got 0"):
        sigma_grid(linear, 0)
    with pytest.raises(ValueError, match="steps must be at most 1000, got 1001"):
        sigma_grid(linear, 1001)
    with pytest.raises(ValueError, match="timesteps must be one of"):
        sigma_grid(linear, 10, "cubic")
    with pytest.raises(TypeError, match="timesteps must hold integer training timesteps or float σ values"):
        sigma_grid(linear, None, torch.tensor([True, False]))
    # a misspelt name is named as such, also without steps
    with pytest.raises(ValueError, match="timesteps must be one of .* got 'Karras'"):
        sigma_grid(linear, None, "Karras")
    with pytest.raises(ValueError, match="steps=5 disagrees"):
        sigma_grid(linear, 5, torch.tensor([999, 500]))
    with pytest.raises(ValueError, match="must decrease for sampling"):
        sigma_grid(linear, None, torch.tensor([0.5, 1.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="timesteps must be a non-empty 1-D tensor"):
        sigma_grid(linear, None, torch.tensor([], dtype=torch.float64))
    with pytest.raises(ValueError, match="needs a discrete schedule"):
        sigma_grid(Schedule.vp(), 10, "trailing")


def test_logsnr_grid_is_uniform_in_log_sigma(linear):
    grid = sigma_grid(linear, 10, "logsnr")
    assert grid.dtype == torch.float64 and grid.shape == (11,) and float(grid[-1]) == 0.0
    assert (float(grid[0]), float(grid[-2])) == (linear.sigma_max, linear.sigma_min)
    steps = torch.log(grid[:-2] / grid[1:-1])
    torch.testing.assert_close(steps, torch.full_like(steps, float(steps.mean())), rtol=1e-12, atol=0)
    assert logsnr_sigmas(0.1, 10.0, 1).tolist() == [10.0]
    with pytest.raises(ValueError, match="sigma_min must be below sigma_max"):
        logsnr_sigmas(10.0, 0.1, 3)
    with pytest.raises(ValueError, match="timesteps spacing must be one of .*'linspace'\\), got 'logsnr'"):
        spaced_timesteps(linear, 10, "logsnr")


def test_logsnr_and_karras_work_on_a_continuous_schedule():
    vp = Schedule.vp()
    for spacing in ("logsnr", "karras"):
        grid = sigma_grid(vp, 5, spacing)
        ends = (float(grid[0]), float(grid[-2]))
        assert ends == pytest.approx((vp.sigma_max, vp.sigma_min))


def mixture_problem(linear):
    model = oracles.GaussianMixture.ring().model(linear)
    field = EpsField(model, linear)
    pilot = torch.randn(16, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return model, field, pilot * math.sqrt(1 + linear.sigma_max**2)


def test_optimized_grid_costs_nfe_and_beats_the_fixed_grids(linear):
    # GITS's claim on a problem with a known answer: at 10 evaluations, Euler on the grid fitted to
    # 16 pilot trajectories lands closer to the converged ODE solution of 256 other samples than on
    # the Karras or log-SNR grids (measured 0.05 against 0.12-0.14)
    model, field, pilot = mixture_problem(linear)
    grid = optimize(field, pilot, linear.sigma_max, linear.sigma_min, 10, solver="euler", candidates=32)
    assert grid.dtype == torch.float64 and grid.shape == (11,) and float(grid[-1]) == 0.0
    # the refinement may start below σ_max, from the same x-space noise (as DDIM's grids do)
    assert float(grid[0]) <= linear.sigma_max and float(grid[-2]) == linear.sigma_min
    assert bool((grid[1:] < grid[:-1]).all())
    noise = torch.randn(256, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    start = noise * math.sqrt(1 + linear.sigma_max**2)
    assert solve(field, start, grid, "euler").nfe == 10
    converged = solve(field, start, sigma_grid(linear, 400, "karras"), "rk4").x

    def error(timesteps, steps=None):
        x = sample(model, linear, noise, steps=steps, timesteps=timesteps, solver="euler")
        return float((x - converged).square().mean().sqrt())

    assert error(grid) < min(error("karras", 10), error("logsnr", 10))


def test_optimized_grid_for_a_two_stage_solver_and_bad_budgets(linear):
    _, field, pilot = mixture_problem(linear)
    grid = optimize(field, pilot[:4], linear.sigma_max, linear.sigma_min, 11, solver="heun", candidates=16)
    assert grid.shape == (7,)  # 6 positive σ: 5 Heun steps (10 evaluations) and the step into 0
    # no step Heun refuses (σ₀/σ₁ > 10.91, where its weights on the denoised estimates pass 9);
    # 2 or 4 steps over σ_max/σ_min = 15 700 need one
    assert float((grid[:-2] / grid[1:-1]).max()) <= 10.91
    with pytest.raises(ValueError, match="refuses a step of every 4-step chain"):
        optimize(field, pilot[:4], linear.sigma_max, linear.sigma_min, 9, solver="heun", candidates=16)
    with pytest.raises(ValueError, match="refuses a step of every 2-step chain"):
        optimize(field, pilot[:4], linear.sigma_max, linear.sigma_min, 5, solver="heun", candidates=8)
    with pytest.raises(ValueError, match="2 evaluations per step.*nfe=6 is not of that form \\(try 5\\)"):
        optimize(field, pilot, linear.sigma_max, linear.sigma_min, 6, solver="heun")
    # the suggestion is a budget that exists (one step and the step into 0), not nfe=1
    with pytest.raises(ValueError, match="nfe=2 is not of that form \\(try 3\\)"):
        optimize(field, pilot, linear.sigma_max, linear.sigma_min, 2, solver="heun")
    with pytest.raises(ValueError, match="nfe=10 gives 9 steps .* needs 1 to candidates - 1 = 7"):
        optimize(field, pilot, linear.sigma_max, linear.sigma_min, 10, candidates=8)
    with pytest.raises(ValueError, match="deterministic fixed-step solver"):
        optimize(field, pilot, linear.sigma_max, linear.sigma_min, 10, solver="dopri5")
    with pytest.raises(ValueError, match="each init grid needs 10 positive σ values"):
        optimize(field, pilot, linear.sigma_max, linear.sigma_min, 10, init=[sigma_grid(linear, 5, "karras")])
    # iPNDM takes every single step but refuses a four-step step beyond σ ratio 25: over
    # σ_max/σ_min = 1.6e6 in 4 steps no grid escapes one
    with pytest.raises(ValueError, match="IPNDM.* refuses every 4-step grid .* that was tried"):
        optimize(field, pilot[:4], linear.sigma_max, 1e-4, 5, solver="ipndm", candidates=8, sweeps=1)
    # a float32 copy of a fitting grid fits (its ends rounded)
    fitting = sigma_grid(linear, 5, "karras").float()
    optimize(field, pilot[:4], linear.sigma_max, linear.sigma_min, 5, candidates=8, sweeps=0, init=[fitting])


def test_optimized_grid_starts_from_a_given_grid(linear):
    # with no sweeps the refinement returns the best starting grid on the pilot, a given one
    # included: a named grid that fits is never beaten by a worse fitted one
    _, field, pilot = mixture_problem(linear)
    given = sigma_grid(linear, 10, "quadratic")
    ends = (linear.sigma_max, linear.sigma_min)
    grid = optimize(field, pilot, *ends, 10, candidates=12, sweeps=0, init=[given])
    scores = {}
    for name, g in (("fitted", grid), ("given", given)):
        start = pilot * math.sqrt((1 + float(g[0]) ** 2) / (1 + linear.sigma_max**2))
        scores[name] = solve(field, start, g, "euler").x
    converged = solve(field, pilot, sigma_grid(linear, 400, "karras"), "rk4").x
    errors = {k: float((v - converged).square().mean()) for k, v in scores.items()}
    assert errors["fitted"] <= errors["given"] * (1 + 1e-9)


def test_grid_files_round_trip_exactly_and_feed_sample(linear, tmp_path):
    grid = sigma_grid(linear, 7, "karras")
    path = tmp_path / "grid.json"
    save_grid(path, grid, solver="euler", nfe=7)
    loaded = load_grid(path)
    assert torch.equal(loaded, grid) and path.stat().st_size < 2000
    model = oracles.GaussianMixture.ring().model(linear)
    noise = torch.randn(4, 2, generator=torch.Generator().manual_seed(2))
    expected = sample(model, linear, noise, steps=7, timesteps="karras")
    assert torch.equal(sample(model, linear, noise, timesteps=loaded), expected)
    (tmp_path / "bad.json").write_text('{"sigmas": [1, 0]}')
    with pytest.raises(ValueError, match="is not a diffode σ grid file"):
        load_grid(tmp_path / "bad.json")
    for sigmas in (
        "",
        ', "sigmas": ["a"]',
        ', "sigmas": [1.0, null]',
        ', "sigmas": [true, false]',
        ', "sigmas": []',
    ):
        (tmp_path / "bad.json").write_text('{"format": "diffode-sigma-grid/1"' + sigmas + "}")
        with pytest.raises(ValueError, match="is not a valid σ grid file: 'sigmas' must be a non-empty list"):
            load_grid(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="info must be JSON-serialisable, with finite numbers"):
        save_grid(tmp_path / "nan.json", grid, error=math.nan)
    with pytest.raises(ValueError, match="cannot read a σ grid"):
        load_grid(tmp_path / "missing.json")
    # an existing file is replaced only when asked, and then atomically (no temporary file left)
    other = sigma_grid(linear, 5, "logsnr")
    with pytest.raises(ValueError, match="exists; pass overwrite=True"):
        save_grid(path, other)
    assert torch.equal(load_grid(path), grid)
    save_grid(path, other, overwrite=True)
    assert torch.equal(load_grid(path), other)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.json", "grid.json"]


def test_grid_files_keep_infinite_starts_and_the_grids_dtype(linear, tmp_path):
    # a zero-terminal-SNR grid starts at σ = ∞, which JSON numbers cannot hold (save_grid
    # blamed `info`); a float32 grid came back float64 just above σ_max, which sample refused
    ac = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 100, dtype=torch.float64), 0)
    ac[-1] = 0.0
    zero_snr = sigma_grid(Schedule.from_alphas_cumprod(ac), 10, "trailing")
    assert math.isinf(float(zero_snr[0]))
    save_grid(tmp_path / "z.json", zero_snr, solver="euler")
    assert torch.equal(load_grid(tmp_path / "z.json"), zero_snr)
    narrow = sigma_grid(linear, 10, "karras").float()
    assert float(narrow[0]) > linear.sigma_max
    save_grid(tmp_path / "f.json", narrow)
    loaded = load_grid(tmp_path / "f.json")
    assert loaded.dtype == torch.float32 and torch.equal(loaded, narrow)
    model = oracles.GaussianMixture.ring().model(linear)
    noise = torch.randn(4, 2, generator=torch.Generator().manual_seed(2))
    assert torch.equal(
        sample(model, linear, noise, timesteps=loaded), sample(model, linear, noise, timesteps=narrow)
    )
    (tmp_path / "bad.json").write_text(
        '{"format": "diffode-sigma-grid/1", "sigmas": [1.0, 0.0], "dtype": "int8"}'
    )
    with pytest.raises(ValueError, match="'dtype' must be one of float64, float32"):
        load_grid(tmp_path / "bad.json")
    (tmp_path / "bad.json").write_text(
        '{"format": "diffode-sigma-grid/1", "sigmas": [1.0, 0.0], "dtype": [1]}'
    )
    with pytest.raises(ValueError, match="bad.json is not a valid σ grid file: 'dtype' must be one of"):
        load_grid(tmp_path / "bad.json")


def test_optimize_refuses_a_sigma_max_above_the_schedules(linear):
    # it fitted a grid the network was evaluated on out of range, and that sample() refused
    _, field, pilot = mixture_problem(linear)
    with pytest.raises(ValueError, match=r"sigma_max must be at most the schedule's sigma_max = 157\.4"):
        optimize(field, pilot, 1000.0, linear.sigma_min, 4, candidates=4, sweeps=0)


@pytest.mark.parametrize("rho", [3.0, 5.0, 7.0])
def test_karras_grid_ends_exactly_on_the_schedules_sigmas(linear, rho):
    # (σ^{1/ρ})^ρ alone lands a few ulps off, above σ_max, where sample() refuses the grid
    grid = sigma_grid(linear, 10, "karras", rho=rho)
    assert float(grid[0]) == linear.sigma_max and float(grid[-2]) == linear.sigma_min
    sample(lambda x, t: 0.1 * x, linear, torch.randn(2, 3), timesteps=grid)


def test_only_the_first_value_snaps_to_sigma_max(linear):
    # both float32 neighbours of σ_max lie within its rounding slack: snapping both repeated it
    top = torch.tensor(linear.sigma_max, dtype=torch.float32)
    below = torch.nextafter(top, torch.tensor(0.0))
    grid = sigma_grid(linear, None, torch.stack([top, below, torch.tensor(1.0)]))
    assert float(grid[0]) == linear.sigma_max and bool((grid[1:] < grid[:-1]).all())


def test_a_schedule_with_one_finite_sigma_gets_distinct_grids():
    # zero terminal SNR at T = 2: σ_min is also the largest finite σ
    two = Schedule.from_betas(torch.tensor([0.02, 1.0], dtype=torch.float64))
    assert sigma_grid(two, None, "uniform", adaptive=True).tolist() == [math.inf, two.sigma_min, 0.0]
    up = sigma_grid(two, None, "uniform", adaptive=True, direction="encode")
    assert up.tolist() == [0.0, two.sigma_min]
    with pytest.raises(ValueError, match="timesteps='karras' spaces σ between the schedule's sigma_min"):
        sigma_grid(two, 2, "karras")


def test_uniform_spacing_on_a_continuous_schedule_is_uniform_in_t():
    vp = Schedule.vp()
    t = torch.linspace(vp.time_scale, vp.eps * vp.time_scale, 4, dtype=torch.float64)
    torch.testing.assert_close(sigma_grid(vp, 4)[:-1], vp.sigma(t), rtol=1e-12, atol=0)
    # so the default sampling call works on a score-SDE schedule
    gauss = oracles.Gaussian(torch.zeros(2, dtype=torch.float64), 0.5)
    out = sample(gauss.model(vp), vp, torch.randn(3, 2, dtype=torch.float64), steps=4)
    assert out.shape == (3, 2) and bool(torch.isfinite(out).all())


def test_schedule_constructors_name_their_arguments():
    with pytest.raises(ValueError, match="beta_start must be a finite number > 0, got -0.1"):
        Schedule.scaled_linear(beta_start=-0.1)
    with pytest.raises(ValueError, match="beta_end must lie in"):
        Schedule.linear(beta_end=1.5)
    with pytest.raises(ValueError, match="s must be a finite number >= 0"):
        Schedule.cosine(s=-1)
    with pytest.raises(ValueError, match="max_beta"):
        Schedule.cosine(max_beta=0)


def test_grid_files_and_diffusers_timesteps_refusals_name_the_fix(tmp_path, linear):
    with pytest.raises(TypeError, match="grid must be a torch.Tensor, got list"):
        save_grid(tmp_path / "g.json", [5.0, 1.0, 0.0])  # type: ignore[arg-type]
    # diffusers' trailing timesteps at S = 61 end in -1
    trailing = torch.cat([spaced_timesteps(linear, 61, "trailing"), torch.tensor([-1])])
    with pytest.raises(ValueError, match=r"pass timesteps\[timesteps >= 0\]"):
        sigma_grid(linear, None, trailing)
    assert torch.equal(sigma_grid(linear, None, trailing[trailing >= 0]), sigma_grid(linear, 61, "trailing"))


def test_encoding_a_grid_through_infinity_says_how_to_avoid_it():
    ztsnr = Schedule.from_betas(torch.tensor([0.1, 0.2, 0.3, 1.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="'uniform' .or 'leading'. with fewer steps than the schedule's T"):
        sigma_grid(ztsnr, 4, "uniform", direction="encode")


def test_grid_builders_refuse_what_they_cannot_represent(tmp_path, linear):
    # both σ^(1/ρ) underflowed to 0: the grid held zeros inside
    with pytest.raises(ValueError, match="rho=0.0001 is too small .* overflows or underflows"):
        karras_sigmas(1e-3, 0.5, 5, rho=1e-4)
    # a file whose values its dtype cannot hold came back with inf or repeated values
    for values, dtype in (([70000.0, 1.0, 0.0], "float16"), ([1.0001, 1.0, 0.0], "bfloat16")):
        path = tmp_path / f"{dtype}.json"
        path.write_text(json.dumps({"format": GRID_FORMAT, "sigmas": values, "dtype": dtype}))
        with pytest.raises(ValueError, match="grid"):
            load_grid(path)
    # one grid where optimize takes a sequence of them
    _, field, pilot = mixture_problem(linear)
    with pytest.raises(TypeError, match=r"pass one grid as init=\[grid\]"):
        optimize(
            field, pilot[:2], linear.sigma_max, linear.sigma_min, 4, init=sigma_grid(linear, 3, "karras")
        )
    # the spacing names the grid builder a continuous schedule needs
    with pytest.raises(ValueError, match="the 'uniform' spacing needs a discrete schedule .* sigma_grid"):
        spaced_timesteps(Schedule.vp(), 10, "uniform")
