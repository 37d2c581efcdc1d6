"""Built-in networks: time embedding, UNet, MLP, classifier, architecture registry."""

import math
import re

import pytest
import torch

from diffode.models import MLP, DigitsClassifier, UNet, architecture_name, build_model, sinusoidal_embedding


def test_sinusoidal_embedding_values():
    t = torch.tensor([0.0, 1.0, 999.0, 12.5])
    emb = sinusoidal_embedding(t, 8)
    assert emb.shape == (4, 8) and emb.dtype == torch.float32
    freqs = [10_000 ** (-k / 4) for k in range(4)]
    for i, tv in enumerate(t.tolist()):
        expected = [math.sin(tv * w) for w in freqs] + [math.cos(tv * w) for w in freqs]
        assert emb[i].tolist() == pytest.approx(expected, abs=1e-4)
    assert sinusoidal_embedding(t.double(), 8).dtype == torch.float64


def test_sinusoidal_embedding_rejects_odd_dim():
    with pytest.raises(ValueError, match="dim must be even"):
        sinusoidal_embedding(torch.zeros(2), 7)


@pytest.mark.parametrize(
    "model, x",
    [
        (UNet(channels=(8, 16, 16), emb_dim=16), torch.randn(3, 1, 8, 8)),
        (UNet(in_channels=3, channels=(8, 16), emb_dim=16, image_size=4), torch.randn(2, 3, 4, 4)),
        (MLP(dim=2, hidden=16, depth=2, emb_dim=8), torch.randn(5, 2)),
    ],
    ids=["unet-8x8", "unet-rgb-4x4", "mlp"],
)
def test_eps_networks_keep_shape_and_are_per_sample(model, x):
    torch.manual_seed(0)
    for p in model.parameters():  # every layer, the zero-initialised output one too: non-trivial outputs
        torch.nn.init.normal_(p, std=0.2)
    t = torch.tensor([0.0, 499.5, 999.0, 3.25, 10.0])[: x.shape[0]]
    out = model(x, t)
    assert out.shape == x.shape and out.dtype == x.dtype and out.abs().sum() > 0
    # no cross-sample coupling (GroupNorm/LayerNorm are per sample): a batch equals single calls
    singles = torch.cat([model(x[i : i + 1], t[i : i + 1]) for i in range(x.shape[0])])
    torch.testing.assert_close(out, singles, rtol=1e-5, atol=1e-6)
    assert tuple(model.sample_shape) == tuple(x.shape[1:])


def test_fresh_eps_networks_predict_zero():
    # zero-initialised output layer: the first DDPM loss is E|ε|², a calm start
    for model, x in ((UNet(channels=(8, 8)), torch.randn(2, 1, 8, 8)), (MLP(), torch.randn(2, 2))):
        assert model(x, torch.tensor([5.0, 700.0])).abs().max() == 0


def test_model_follows_its_dtype_and_returns_input_dtype():
    model = UNet(channels=(8, 8), emb_dim=16).double()
    x = torch.randn(2, 1, 8, 8, dtype=torch.float32)
    assert model(x, torch.tensor([1.0, 2.0])).dtype == torch.float32
    assert model(x.double(), torch.tensor([1.0, 2.0], dtype=torch.float64)).dtype == torch.float64


@pytest.mark.parametrize(
    "model", [UNet(channels=(8, 16)), MLP(hidden=8), DigitsClassifier(width=4, features=8)]
)
def test_config_rebuilds_the_same_architecture(model):
    rebuilt = build_model(architecture_name(model), model.config())
    assert type(rebuilt) is type(model)
    shapes = {k: v.shape for k, v in rebuilt.state_dict().items()}
    assert shapes == {k: v.shape for k, v in model.state_dict().items()}


def test_classifier_features_and_logits():
    net = DigitsClassifier(width=4, features=12)
    x = torch.rand(5, 1, 8, 8) * 2 - 1
    assert net.features(x).shape == (5, 12) and net(x).shape == (5, 10)


@pytest.mark.parametrize(
    "call, message",
    [
        (
            lambda: build_model("transformer", {}),
            "unknown architecture 'transformer'; known: digits-classifier",
        ),
        (lambda: build_model("unet", {"hidden": 3}), "does not fit architecture 'unet'"),
        (lambda: UNet(channels=()), "channels must be a non-empty list"),
        (lambda: UNet(channels=(8, 8, 8, 8), image_size=4), "image_size=4 must be divisible by"),
        (lambda: MLP(hidden=0), "hidden must be a positive integer, got 0"),
        # a zero time embedding gave a network blind to time, an odd one failed at the first call
        (lambda: MLP(emb_dim=0), "emb_dim must be an even integer >= 2"),
        (lambda: UNet(emb_dim=7), r"emb_dim must be an even integer >= 2 \(sin/cos pairs\), got 7"),
        (lambda: build_model("unet", {"image_size": -8, "in_channels": 0}), "must be a positive integer"),
        (lambda: DigitsClassifier(width=0), "width must be a positive integer, got 0"),
    ],
)
def test_bad_architectures_are_refused(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_network_calls_that_do_not_fit_name_the_shapes():
    # raw torch errors before: "Sizes of tensors must match", "too many indices", ...
    unet, mlp = UNet(channels=(8, 16, 16), emb_dim=8), MLP(hidden=8)
    with pytest.raises(ValueError, match=r"x must have shape \(batch, 1, H, W\) with H and W multiples of 4"):
        unet(torch.zeros(2, 1, 6, 6), torch.zeros(2))
    with pytest.raises(ValueError, match=r"x must have shape \(batch, 1, H, W\)"):
        unet(torch.zeros(2, 2, 8, 8), torch.zeros(2))
    with pytest.raises(ValueError, match=r"t must hold one time per sample, shape \(2,\), got \(\)"):
        unet(torch.zeros(2, 1, 8, 8), torch.tensor(3.0))
    with pytest.raises(ValueError, match=r"x must have shape \(batch, 2\), got \(2, 3\)"):
        mlp(torch.zeros(2, 3), torch.zeros(2))
    # other sizes that the levels divide still work: the network is convolutional
    assert unet(torch.zeros(2, 1, 16, 16), torch.zeros(2)).shape == (2, 1, 16, 16)


def test_architecture_name_rejects_foreign_modules():
    with pytest.raises(TypeError, match="Linear is not a built-in diffode architecture"):
        architecture_name(torch.nn.Linear(2, 2))


def test_integer_states_are_refused_not_truncated():
    # the output is cast back to x's dtype: an int64 x got a truncated ε
    for net, x in (
        (MLP(dim=2), torch.zeros(3, 2, dtype=torch.int64)),
        (UNet(), torch.zeros(2, 1, 8, 8).long()),
    ):
        with pytest.raises(TypeError, match="x must be a floating-point tensor, got dtype torch.int64"):
            net(x, torch.zeros(x.shape[0]))


def test_classifier_refuses_integer_pixels_and_foreign_shapes_by_name():
    classifier = DigitsClassifier()
    # integer pixels were cast to float and classified as if they were in [-1, 1]
    with pytest.raises(TypeError, match="x must be a floating-point tensor, got dtype torch.int64"):
        classifier(torch.zeros(2, 1, 8, 8, dtype=torch.int64))
    for shape in ((2, 8, 8), (2, 1, 16, 16), (2, 3, 8, 8)):
        with pytest.raises(ValueError, match=re.escape(f"x must have shape (batch, 1, 8, 8), got {shape}")):
            classifier.features(torch.zeros(shape))
    assert classifier(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_scatter_image_draws_log_density_upright_and_refuses_non_finite_points():
    import numpy as np

    from diffode.images import scatter_image

    # three points at the origin, one at (0.5, 0.5): 4 pixels over [-1, 1]², y up, log density
    points = np.array([[0.0, 0.0]] * 3 + [[0.5, 0.5]])
    image = scatter_image(points, size=4, extent=1.0)
    assert image.dtype == np.uint8 and image.shape == (4, 4)
    assert image[1, 2] == 0 and image[0, 3] == round(255 * (1 - math.log(2) / math.log(4)))
    assert (image == 255).sum() == 14
    # a NaN row failed inside numpy's histogram ("supplied range of [nan, nan] is not finite")
    with pytest.raises(ValueError, match=r"finite, got NaN or inf in 1 of 2 rows \(the first: row 1\)"):
        scatter_image(np.array([[0.0, 1.0], [np.nan, 0.0]]))
    with pytest.raises(ValueError, match=r"points must have shape \(n, 2\) with n >= 1, got \(0, 2\)"):
        scatter_image(np.zeros((0, 2)))
    with pytest.raises(ValueError, match="size must be"):
        scatter_image(points, size=0)
    with pytest.raises(ValueError, match="extent must be a finite number >= 0, got -1"):
        scatter_image(points, extent=-1)


def test_feature_statistics_of_one_feature_and_of_float32_features():
    import numpy as np

    from diffode.images import grid, to_uint8
    from diffode.metrics import FeatureStats, frechet_distance

    # torch.cov of one feature is 0-d
    one = FeatureStats.of(torch.randn(50, 1, generator=torch.Generator().manual_seed(0)))
    assert one.cov.shape == (1, 1) and frechet_distance(one, one) == 0.0
    # a float32 covariance of fewer samples than features has eigenvalues a few units below 0
    f = torch.randn(10, 64, generator=torch.Generator().manual_seed(1))
    FeatureStats(mean=f.mean(0), cov=torch.cov(f.T), n=10)
    with pytest.raises(ValueError, match=r"positive semi-definite, got an eigenvalue of -1"):
        FeatureStats(mean=torch.zeros(2), cov=torch.tensor([[1.0, 0.0], [0.0, -1.0]]), n=10)
    with pytest.raises(ValueError, match="n must be at least 2"):
        FeatureStats(mean=torch.zeros(2), cov=torch.eye(2), n=-5)
    # pixels that already are uint8 were clamped as if they were floats in [-1, 1]
    with pytest.raises(TypeError, match="images must be floating-point in"):
        to_uint8(torch.tensor([0, 10, 200], dtype=torch.uint8).reshape(1, 1, 1, 3))
    tiles = np.zeros((2, 8, 8, 1), dtype=np.uint8)
    for kwargs, match in (({"columns": 0}, "columns must be at least 1"), ({"columns": 2, "pad": -1}, "pad")):
        with pytest.raises(ValueError, match=match):
            grid(tiles, **kwargs)


def test_image_and_fd_errors_name_what_the_caller_passed(tmp_path):
    import numpy as np

    from diffode.images import load_images
    from diffode.pretrained import digits_fd

    floats = tmp_path / "floats.npz"
    np.savez(floats, arr_0=np.zeros((2, 8, 8, 1), dtype=np.float32))
    with pytest.raises(TypeError, match="floats.npz: "):
        load_images([str(floats)], (1, 8, 8))
    with pytest.raises(ValueError, match="digits_fd needs at least 2 images"):
        digits_fd(torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match="images contains"):
        digits_fd(torch.full((3, 1, 8, 8), math.nan))


def test_sizes_take_any_integer_type_and_refuse_fractions():
    import numpy as np

    # a width of 16.7 was truncated to 16, and a NumPy class count was refused
    assert UNet(channels=(np.int64(8), 8), num_classes=np.int64(3)).num_classes == 3
    assert MLP(dim=np.int32(3)).dim == 3
    for call, message in (
        (lambda: UNet(channels=(16.7,)), r"channels must be a non-empty list of positive widths, got \(16.7"),
        (lambda: MLP(dim=2.5), "dim must be a positive integer, got 2.5"),
        (lambda: MLP(hidden=True), "hidden must be a positive integer, got True"),
    ):
        with pytest.raises(ValueError, match=message):
            call()
