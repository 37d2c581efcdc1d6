import pytest
import torch

from diffode import Schedule, karras_sigmas, sigma_grid, spaced_timesteps
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
    with pytest.raises(ValueError, match="steps=5 disagrees"):
        sigma_grid(linear, 5, torch.tensor([999, 500]))
    with pytest.raises(ValueError, match="must decrease for sampling"):
        sigma_grid(linear, None, torch.tensor([0.5, 1.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="timesteps must be a non-empty 1-D tensor"):
        sigma_grid(linear, None, torch.tensor([], dtype=torch.float64))
    with pytest.raises(ValueError, match="needs a discrete schedule"):
        sigma_grid(Schedule.vp(), 10, "uniform")
