"""The bundled digits model and classifier, and the digits Fréchet distance."""

import math

import numpy as np
import pytest
import scipy.linalg
import torch

import diffode
from diffode import pretrained
from diffode.checkpoint import read_config
from diffode.metrics import FeatureStats, digits_features, frechet_distance
from diffode.models import UNet
from diffode.pretrained import digits_fd, real_floor

# ----------------------------------------------------------------------------- Fréchet distance


def _stats(mean, cov):
    return FeatureStats(
        torch.as_tensor(mean, dtype=torch.float64), torch.as_tensor(cov, dtype=torch.float64), 100
    )


def test_frechet_distance_of_commuting_gaussians_is_closed_form():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    d1, d2 = rng.uniform(0.1, 3, size=5), rng.uniform(0.1, 3, size=5)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(d1) - np.sqrt(d2)) ** 2)
    got = frechet_distance(_stats(mu1, np.diag(d1)), _stats(mu2, np.diag(d2)))
    assert got == pytest.approx(expected, rel=1e-10)
    assert frechet_distance(_stats(mu1, np.diag(d1)), _stats(mu1, np.diag(d1))) == pytest.approx(0, abs=1e-10)
    # NaN statistics are refused (max(nan, 0) returned nan)
    bad = mu1.copy()
    bad[2] = np.nan
    for a, b in (
        (_stats(bad, np.diag(d1)), _stats(mu2, np.diag(d2))),
        (_stats(mu2, np.diag(d2)), _stats(bad, np.diag(d1))),
    ):
        with pytest.raises(ValueError, match="non-finite mean or covariance"):
            frechet_distance(a, b)


def test_frechet_distance_matches_the_sqrtm_formula_for_general_covariances():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
    c1, c2 = a @ a.T + 0.1 * np.eye(6), b @ b.T + 0.1 * np.eye(6)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    cross = scipy.linalg.sqrtm(c1 @ c2).real
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(c1 + c2 - 2 * cross)
    s1, s2 = _stats(mu1, c1), _stats(mu2, c2)
    assert frechet_distance(s1, s2) == pytest.approx(expected, rel=1e-8)
    assert frechet_distance(s2, s1) == pytest.approx(expected, rel=1e-8)


def test_real_floor_is_the_one_recorded_when_the_classifier_was_trained():
    # the shipped statistics are the ones computed with the shipped classifier: the floor it
    # recorded then (test split against train split) comes out again, up to summation order
    recorded = read_config(pretrained.path(pretrained.DIGITS_CLASSIFIER))["floor_test_vs_train"]
    assert real_floor() == pytest.approx(recorded, rel=1e-9)
    assert recorded > 0


def test_bundled_loaders_check_device_and_dtype():
    with pytest.raises(ValueError, match="device 'nonsense' is not a torch device"):
        pretrained.digits(device="nonsense")
    with pytest.raises(ValueError, match="device meta: meta tensors hold no values"):
        pretrained.digits(device="meta")
    for dtype in (torch.int64, "float16"):
        with pytest.raises(TypeError, match="dtype must be a floating torch.dtype"):
            pretrained.digits(dtype=dtype)


def test_metric_input_checks():
    with pytest.raises(ValueError, match="feature dimensions differ"):
        frechet_distance(_stats(np.zeros(2), np.eye(2)), _stats(np.zeros(3), np.eye(3)))
    with pytest.raises(ValueError, match=r"features must have shape \(n >= 2, D\)"):
        FeatureStats.of(torch.zeros(1, 4))
    with pytest.raises(ValueError, match="features contains 1 non-finite value"):
        FeatureStats.of(torch.tensor([[0.0, 1.0], [float("inf"), 2.0]]))
    with pytest.raises(ValueError, match=r"digit images must have shape \(n, 1, 8, 8\)"):
        digits_features(torch.zeros(2, 8, 8), pretrained.digits_classifier())
    # uint8 pixels were clipped to [-1, 1] and scored as images
    with pytest.raises(TypeError, match=r"digit images must be floats in \[-1, 1\], got dtype torch.uint8"):
        digits_features(torch.zeros(2, 1, 8, 8, dtype=torch.uint8), pretrained.digits_classifier())
    with pytest.raises(ValueError, match="batch must be at least 1, got 0"):
        digits_features(torch.zeros(2, 1, 8, 8), pretrained.digits_classifier(), batch=0)
    with pytest.raises(ValueError, match="split must be one of"):
        pretrained.digits_feature_stats("valid")
    # hand-built statistics: float32 ones raised a dtype error in the distance, a mismatched
    # covariance a shape error, and a negative one gave 0 in silence
    a = FeatureStats(torch.zeros(2), torch.eye(2), 10)
    assert a.mean.dtype == a.cov.dtype == torch.float64
    assert frechet_distance(a, _stats(np.ones(2), np.eye(2))) == pytest.approx(2.0, abs=1e-12)
    with pytest.raises(ValueError, match=r"a mean \(D,\) and a covariance \(D, D\), got \(2,\) and \(3, 3\)"):
        _stats(np.zeros(2), np.eye(3))
    with pytest.raises(ValueError, match="positive semi-definite"):
        _stats(np.zeros(2), -np.eye(2))
    with pytest.raises(ValueError, match="symmetric"):
        _stats(np.zeros(2), np.array([[1.0, 0.5], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="unknown bundled model 'cifar'"):
        pretrained.path("cifar")


# ----------------------------------------------------------------------------- bundled files


def test_bundled_model_loads_frozen_with_its_schedule_and_provenance():
    model, schedule = pretrained.digits()
    assert isinstance(model, UNet) and model.sample_shape == (1, 8, 8)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert schedule.T == 1000 and schedule.sigma_max == pytest.approx(157.4, abs=0.1)
    config = read_config(pretrained.path("digits"))
    assert config["command"].startswith("diffode train --dataset digits")
    assert config["step"] == config["training"]["steps"] and config["training"]["seed"] == 0
    for name in ("digits", "digits_classifier"):
        assert (pretrained.path(name) / "model.safetensors").stat().st_size < 3_000_000


def test_bundled_classifier_is_accurate_and_reproduces_the_shipped_statistics():
    from diffode.data import digits

    pytest.importorskip("sklearn")
    net = pretrained.digits_classifier()
    images, labels = digits("test")
    assert (net(images).argmax(1) == labels).double().mean() >= 0.97
    train_images, _ = digits("train")
    fresh = FeatureStats.of(digits_features(train_images, net))
    shipped = pretrained.digits_feature_stats("train")
    assert shipped.n == 1500 and pretrained.digits_feature_stats("test").n == 297
    torch.testing.assert_close(fresh.mean, shipped.mean, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(fresh.cov, shipped.cov, rtol=1e-6, atol=1e-6)


def test_bundled_model_samples_digits_far_better_than_noise_and_a_bad_sampler():
    model, schedule = pretrained.digits()
    noise = torch.randn(500, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    good = diffode.sample(model, schedule, noise, steps=25)
    bad = diffode.sample(model, schedule, noise, steps=2)
    fd_good, fd_bad, fd_noise = digits_fd(good), digits_fd(bad), digits_fd(noise.clamp(-1, 1))
    # measured at n = 500: 25 DDIM steps ≈ 43, 2 Euler steps ≈ 1800, clipped noise ≈ 2100; the
    # margins (4× and 2.5× the measured ratios) hold for any retraining that makes clear digits
    assert math.isfinite(fd_good) and fd_good < 0.1 * fd_bad and fd_good < 0.05 * fd_noise
