"""Datasets, the DDPM training loop, and safetensors checkpoints (which never unpickle)."""

import json
import math
import pickle

import pytest
import torch

from diffode.checkpoint import (
    load_checkpoint,
    load_tensors,
    save_checkpoint,
    save_tensors,
    schedule_from_checkpoint_config,
)
from diffode.data import DIGITS_TRAIN, digits, gmm, load_dataset, moons, swiss_roll
from diffode.models import MLP, UNet
from diffode.schedule import Schedule
from diffode.train import TrainConfig, eval_loss, train

# ----------------------------------------------------------------------------- datasets


def test_digits_split_is_fixed_disjoint_and_scaled():
    pytest.importorskip("sklearn")
    train_x, train_y = digits("train")
    test_x, test_y = digits("test")
    all_x, _ = digits("all")
    assert train_x.shape == (DIGITS_TRAIN, 1, 8, 8) and test_x.shape == (1797 - DIGITS_TRAIN, 1, 8, 8)
    assert train_x.dtype == torch.float32 and train_x.min() == -1 and train_x.max() == 1
    # the 17 grey levels 0 … 16 land on a lattice of step 1/8
    assert torch.equal(torch.round((all_x + 1) * 8), (all_x + 1) * 8)
    assert torch.equal(digits("train")[0], train_x)
    # disjoint: every image of the full set is in exactly one split (compare as multisets of rows)
    rows = sorted(map(tuple, torch.cat([train_x, test_x]).flatten(1).tolist()))
    assert rows == sorted(map(tuple, all_x.flatten(1).tolist()))
    assert set(train_y.tolist()) == set(test_y.tolist()) == set(range(10))


def test_point_sets_are_seeded_and_shaped():
    for name in ("gmm", "moons", "swissroll"):
        a = load_dataset(name, n=500, seed=3)
        assert a.shape == (500, 2) and a.dtype == torch.float32
        assert torch.equal(a, load_dataset(name, n=500, seed=3))
        assert not torch.equal(a, load_dataset(name, split="test", n=500, seed=3))
    # these reached torch's manual_seed (or Python's str + bool)
    for seed, error in ((1.5, TypeError), ("3", TypeError), (-1, ValueError), (2**32 - 1, ValueError)):
        with pytest.raises(error, match="seed must be"):
            load_dataset("moons", n=10, seed=seed)


def test_point_set_geometry():
    g = torch.Generator().manual_seed(0)
    clean_moons = moons(4000, g, noise=0.0).double()
    upper, lower = (
        clean_moons[:2000] + torch.tensor([0.5, 0.25]),
        clean_moons[2000:] + torch.tensor([0.5, 0.25]),
    )
    torch.testing.assert_close(upper.norm(dim=1), torch.ones(2000, dtype=torch.float64), atol=1e-6, rtol=0)
    centre = torch.tensor([1.0, 0.5], dtype=torch.float64)
    torch.testing.assert_close(
        (lower - centre).norm(dim=1), torch.ones(2000, dtype=torch.float64), atol=1e-6, rtol=0
    )
    roll = swiss_roll(4000, g, noise=0.0).double()
    radius = roll.norm(dim=1)
    assert radius.min() >= 1.5 * math.pi / 7 - 1e-6 and radius.max() <= 4.5 * math.pi / 7 + 1e-6
    ring = gmm(4000, g).double()
    assert abs(ring.norm(dim=1).mean() - 2.0) < 0.05


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: load_dataset("mnist"), "unknown dataset 'mnist'; choose one of digits, gmm"),
        (lambda: load_dataset("moons", split="all"), "split must be 'train' or 'test'"),
        (lambda: digits("valid"), "split must be one of"),
        (lambda: moons(0), "n must be at least 1"),
        (lambda: swiss_roll(10, noise=-1.0), "noise must be a finite number >= 0"),
    ],
)
def test_bad_dataset_arguments(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# ----------------------------------------------------------------------------- training


def _tiny(dataset="moons", steps=60, **kw):
    model = (
        {"hidden": 32, "depth": 2, "emb_dim": 16}
        if dataset != "digits"
        else {"channels": [8, 8], "emb_dim": 16}
    )
    return TrainConfig(dataset=dataset, steps=steps, batch_size=64, n_points=512, model=model, **kw)


def test_training_lowers_the_loss():
    config = _tiny(steps=150, ema_decay=0.9)
    schedule = schedule_from_checkpoint_config(config.schedule)
    test = load_dataset("moons", split="test", n=512)
    untrained = MLP(**config.model)  # the zero predictor: loss E|ε|² ≈ 1 on the fixed draws
    before = eval_loss(untrained, schedule, test)
    result = train(config, progress=False)
    # the optimal ε on 2-D data with a small data scale explains a large share of the noise at
    # most t; a trained MLP must at least halve the zero predictor's loss (measured ≈ 0.35)
    assert before == pytest.approx(1.0, abs=0.05)
    assert result.test_loss < 0.5 * before
    assert result.losses[-1] < result.losses[0]
    assert not result.model.training and not any(p.requires_grad for p in result.model.parameters())


def test_training_a_tiny_unet_on_digits_lowers_the_loss():
    pytest.importorskip("sklearn")
    config = _tiny("digits", steps=60)
    before = eval_loss(
        UNet(**config.model), schedule_from_checkpoint_config(config.schedule), digits("test")[0]
    )
    result = train(config, progress=False)
    # 60 steps take the zero predictor (loss ≈ 1) well below its start (measured ≈ 0.3)
    assert before == pytest.approx(1.0, abs=0.05)
    assert result.test_loss < 0.6 * before


def test_training_is_reproducible_from_the_seed():
    a = train(_tiny(steps=15), progress=False).model.state_dict()
    b = train(_tiny(steps=15), progress=False).model.state_dict()
    c = train(_tiny(steps=15, seed=1), progress=False).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_periodic_checkpoints_record_the_run(tmp_path):
    out = tmp_path / "run"
    seen = []
    config = _tiny(steps=30, checkpoint_every=10)
    import diffode.train as train_module

    original = train_module.save_checkpoint

    def spy(folder, model, info):
        seen.append(info["step"])
        return original(folder, model, info)

    train_module.save_checkpoint = spy
    try:
        train(config, out, command="diffode train --dataset moons", progress=False)
    finally:
        train_module.save_checkpoint = original
    assert seen == [10, 20, 30]
    saved = json.loads((out / "config.json").read_text())
    assert saved["step"] == 30 and saved["command"] == "diffode train --dataset moons"
    assert saved["training"]["seed"] == 0 and saved["dataset"] == "moons"
    assert saved["schedule"] == {"name": "linear", "T": 1000, "beta_start": 1e-4, "beta_end": 0.02}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"dataset": "cifar"}, "dataset must be one of digits, gmm, moons, swissroll, got 'cifar'"),
        ({"steps": 0}, "steps must be at least 1"),
        ({"lr": -1.0}, "lr must be a finite number > 0"),
        ({"ema_decay": 1.0}, r"ema_decay must lie in \[0, 1\)"),
        ({"batch_size": 0}, "batch_size must be at least 1"),
    ],
)
def test_bad_training_configs(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**kwargs)


def test_conditional_training_drops_labels_to_the_null_class(monkeypatch):
    pytest.importorskip("sklearn")
    import diffode.train as train_module

    seen = []
    original = train_module.ddpm_loss

    def spy(model, schedule, x0, t, noise, labels=None):
        if model.training:  # the training steps, not the test-loss evaluations
            seen.append(labels)
        return original(model, schedule, x0, t, noise, labels)

    monkeypatch.setattr(train_module, "ddpm_loss", spy)
    config = _tiny("digits", steps=20, conditional=True)
    assert config.model["num_classes"] == 10 and config.label_dropout == 0.1
    result = train(config, progress=False)
    assert result.model.num_classes == 10 and len(seen) == 20
    labels = torch.cat(seen)
    null = (labels == 10).double().mean()
    # 1280 draws with p = 0.1: the binomial standard deviation is 0.008
    assert 0.07 < null < 0.13, null
    assert labels.min() >= 0 and set(labels[labels < 10].tolist()) == set(range(10))
    seen.clear()
    train(_tiny("digits", steps=5, conditional=True, label_dropout=0.0), progress=False)
    assert not (torch.cat(seen) == 10).any()


def test_conditional_training_draws_its_dropout_after_the_batch(monkeypatch):
    # each step draws data, times and noise first and the labels' dropout last, from the one
    # generator: the first step of a conditional run trains on the unconditional run's batch,
    # and the later ones on other batches (the dropout draws move the generator on)
    pytest.importorskip("sklearn")
    import diffode.train as train_module

    draws: dict[bool, list] = {False: [], True: []}
    original = train_module.ddpm_loss

    def spy(model, schedule, x0, t, noise, labels=None):
        if model.training:
            draws[labels is not None].append((x0, t, noise))
        return original(model, schedule, x0, t, noise, labels)

    monkeypatch.setattr(train_module, "ddpm_loss", spy)
    train(_tiny("digits", steps=2), progress=False)
    train(_tiny("digits", steps=2, conditional=True, label_dropout=0.5), progress=False)
    (plain_first, plain_second), (cond_first, cond_second) = draws[False], draws[True]
    assert all(torch.equal(a, b) for a, b in zip(plain_first, cond_first, strict=True))
    assert not torch.equal(plain_second[2], cond_second[2])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"dataset": "moons", "conditional": True}, "conditional training needs a labelled dataset"),
        ({"conditional": True, "architecture": "mlp"}, "conditional training needs architecture 'unet'"),
        ({"conditional": True, "label_dropout": 1.0}, r"label_dropout must lie in \[0, 1\)"),
        ({"model": {"num_classes": 10}}, "pass conditional=True"),
    ],
)
def test_bad_conditional_configs(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**kwargs)


# ----------------------------------------------------------------------------- checkpoints


def _random_unet():
    torch.manual_seed(0)
    model = UNet(channels=(8, 16), emb_dim=16)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.1)
    return model


def test_checkpoint_round_trip_gives_identical_outputs(tmp_path):
    model = _random_unet()
    schedule = {"name": "cosine", "T": 500}
    save_checkpoint(tmp_path, model, {"schedule": schedule, "seed": 7})
    loaded = load_checkpoint(tmp_path)
    x, t = torch.randn(4, 1, 8, 8), torch.tensor([0.0, 17.5, 250.0, 499.0])
    assert torch.equal(loaded.model(x, t), model(x, t))
    assert loaded.config["seed"] == 7 and loaded.schedule is not None
    assert torch.equal(loaded.schedule.alphas_cumprod, Schedule.cosine(T=500).alphas_cumprod)
    assert not loaded.model.training and not any(p.requires_grad for p in loaded.model.parameters())
    as64 = load_checkpoint(tmp_path, dtype=torch.float64)
    assert next(as64.model.parameters()).dtype == torch.float64


def test_weights_are_readable_by_the_safetensors_library(tmp_path):
    from safetensors.torch import load_file

    model = _random_unet()
    save_checkpoint(tmp_path, model, {})
    on_disk = load_file(tmp_path / "model.safetensors")
    assert all(torch.equal(on_disk[k], v) for k, v in model.state_dict().items())


class _Trap:
    """Unpickling this object creates a file: evidence that a loader ran pickle."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("writer", ["torch.save", "pickle", "pickle-protocol-0"])
def test_pickle_files_are_refused_without_being_unpickled(tmp_path, writer):
    _random_unet_folder = tmp_path / "ckpt"
    save_checkpoint(_random_unet_folder, _random_unet(), {"schedule": {"name": "linear"}})
    marker = tmp_path / "unpickled"
    weights = _random_unet_folder / "model.safetensors"
    payload = {"weights": _Trap(marker)}
    if writer == "torch.save":
        torch.save(payload, weights)
    else:
        weights.write_bytes(pickle.dumps(payload, protocol=0 if writer.endswith("0") else 4))
    with pytest.raises(ValueError, match="pickle|not a safetensors file") as info:
        load_checkpoint(_random_unet_folder)
    assert str(weights) in str(info.value)
    assert not marker.exists()


def test_corrupt_and_foreign_files_are_refused(tmp_path):
    path = tmp_path / "x.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    with pytest.raises(ValueError, match="not a valid safetensors file"):
        load_tensors(path)
    path.write_bytes(b"\xff" * 64)
    with pytest.raises(ValueError, match="not a safetensors file"):
        load_tensors(path)
    with pytest.raises(FileNotFoundError, match="no such weights file"):
        load_tensors(tmp_path / "missing.safetensors")


def test_checkpoint_config_mismatches_are_refused(tmp_path):
    save_checkpoint(tmp_path, _random_unet(), {})
    # weights without the entry naming their config (written before it existed)
    save_tensors(tmp_path / "model.safetensors", load_tensors(tmp_path / "model.safetensors"))
    config = json.loads((tmp_path / "config.json").read_text())
    config["model"]["channels"] = [8, 32]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="do not fit the architecture"):
        load_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"architecture": "unet"}))
    with pytest.raises(ValueError, match="not a diffode checkpoint config"):
        load_checkpoint(tmp_path)
    with pytest.raises(ValueError, match="has no config.json"):
        load_checkpoint(tmp_path / "elsewhere")
    with pytest.raises(ValueError, match="schedule config must be a dict with 'name'"):
        schedule_from_checkpoint_config({"name": "sigmoid"})


def test_save_tensors_is_atomic_and_round_trips(tmp_path):
    tensors = {
        "a": torch.arange(6, dtype=torch.float64).reshape(2, 3),
        "b": torch.tensor([1], dtype=torch.int64),
    }
    save_tensors(tmp_path / "t.safetensors", tensors)
    back = load_tensors(tmp_path / "t.safetensors")
    assert all(torch.equal(back[k], v) for k, v in tensors.items())
    assert [p.name for p in tmp_path.iterdir()] == ["t.safetensors"]


def test_a_new_run_in_an_old_runs_folder_does_not_inherit_its_files(tmp_path, monkeypatch):
    # a classifier's statistics beside a diffusion model (and the reverse) were read as its own
    from diffode import checkpoint
    from diffode.checkpoint import FEATURES, TRAINING_STATE, prepare_run_folder
    from diffode.train import train_classifier

    folder = tmp_path / "run"
    train(_tiny(steps=3), folder, progress=False)
    train_classifier(folder, steps=2, progress=False, overwrite=True)
    assert (folder / FEATURES).exists() and not (folder / TRAINING_STATE).exists()
    train(_tiny(steps=3), folder, progress=False, overwrite=True)
    assert (folder / TRAINING_STATE).exists() and not (folder / FEATURES).exists()
    # run A's config.json beside run B's weights (B killed between the two files of its final
    # save): resuming B found the step it expected there and kept A's config
    other = _tiny(steps=3, seed=5)
    real = checkpoint.atomic_write
    calls = {"n": 0}

    def killed_before_the_config(path):
        if path.name == checkpoint.CONFIG and calls["n"]:
            raise KeyboardInterrupt
        if path.name == checkpoint.WEIGHTS:
            calls["n"] += 1
        return real(path)

    monkeypatch.setattr(checkpoint, "atomic_write", killed_before_the_config)
    with pytest.raises(KeyboardInterrupt):
        train(other, folder, progress=False, overwrite=True)
    monkeypatch.setattr(checkpoint, "atomic_write", real)
    train(other, folder, progress=False, resume=True)
    saved = json.loads((folder / checkpoint.CONFIG).read_text())
    assert saved["training"]["seed"] == 5
    # a folder of other files holds no run to resume: --resume is not offered
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="already holds other files; pass --overwrite") as caught:
        prepare_run_folder(tmp_path / "notes", resume=False, overwrite=False)
    assert "--resume" not in str(caught.value)


def test_a_config_that_cannot_train_leaves_no_folder(tmp_path):
    out = tmp_path / "run"
    cases = [
        (
            TrainConfig(steps=3, batch_size=4, model={"image_size": 16}),
            r"makes samples of shape \(1, 16, 16\)",
        ),
        (TrainConfig(dataset="digits", architecture="mlp", steps=3), r"makes samples of shape \(2,\)"),
        (TrainConfig(dataset="moons", steps=1, batch_size=10**12), "lower batch_size"),
    ]
    for config, match in cases:
        with pytest.raises(ValueError, match=match):
            train(config, out, progress=False)
        assert not out.exists()
    # the run's test split uses seed + 1
    with pytest.raises(ValueError, match="seed must be at most 4294967294"):
        TrainConfig(seed=2**32 - 1)


def test_a_diverging_classifier_is_named_as_such(tmp_path):
    from diffode.train import train_classifier

    with pytest.raises(ValueError, match="training the classifier diverged"):
        train_classifier(tmp_path / "cls", steps=3, lr=1e8, progress=False)
    assert not (tmp_path / "cls" / "model.safetensors").exists()


def test_numpy_settings_are_kept_as_numbers_json_holds(tmp_path):
    # NumPy numbers from a sweep were accepted and failed at the first save, after the training
    np = pytest.importorskip("numpy")
    config = TrainConfig(dataset="moons", steps=np.int64(2), lr=np.float32(1e-3), n_points=64, batch_size=8)
    assert type(config.steps) is int and type(config.lr) is float
    train(config, tmp_path / "run", progress=False)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["training"]["steps"] == 2
    with pytest.raises(TypeError, match=r"model must be built from Python numbers.*\.item\(\)"):
        TrainConfig(dataset="moons", model={"hidden": np.int64(16)})
    # a model built with a NumPy width records it as a Python int
    assert type(MLP(emb_dim=np.int64(8)).config()["emb_dim"]) is int


def test_run_options_are_checked_before_any_work(tmp_path):
    from diffode.train import train_classifier

    config = _tiny(steps=2)
    with pytest.raises(
        ValueError, match="resume=True continues the run checkpointed in out, but out is None"
    ):
        train(config, None, resume=True, progress=False)
    for bad in (0, -1):
        with pytest.raises(ValueError, match="log_every must be at least 1"):
            train(config, tmp_path / "run", log_every=bad, progress=False)
    assert not (tmp_path / "run").exists()
    for seed, error in ((1.5, TypeError), ("3", TypeError), (2**70, ValueError), (-1, ValueError)):
        with pytest.raises(error, match="seed must be"):
            train_classifier(tmp_path / "cls", steps=1, seed=seed, progress=False)
        assert not (tmp_path / "cls").exists()


@pytest.mark.parametrize("step", [True, {}, -1, 1.5])
def test_a_training_state_with_a_bad_step_is_refused(tmp_path, step):
    from diffode.checkpoint import TrainingState, load_training_state, save_training_state

    save_training_state(
        tmp_path, TrainingState({"w": torch.zeros(1)}, {"step": step, "optimizer": {}, "scheduler": {}})
    )
    with pytest.raises(ValueError, match="field 'step' must be"):
        load_training_state(tmp_path)
