"""The class-conditional UNet (null class, cond_keyword), its bundled digits model, and guidance
with it."""

import pytest
import torch

import diffode
from diffode.checkpoint import load_tensors
from diffode.models import UNet, build_model
from diffode.pretrained import digits, digits_classifier, digits_conditional, path


def small(num_classes: int = 0) -> UNet:
    """A small UNet with random weights everywhere (the output layer and the class embedding
    start at zero, which would make every output 0 and every class alike)."""
    torch.manual_seed(0)
    model = UNet(channels=(8, 16), emb_dim=16, num_classes=num_classes)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(std=0.3)
    return model


def test_conditional_unet_declares_its_keyword_and_null_class():
    model = small(num_classes=3)
    assert model.cond_keyword == "class_labels" and model.null_label == 3
    assert model.config()["num_classes"] == 3
    assert model.state_dict()["label.weight"].shape == (4, 16)  # 3 classes and the null class
    labels = torch.tensor([0, 2, 1])
    assert torch.equal(model.null_condition({"class_labels": labels})["class_labels"], torch.full((3,), 3))
    x, t = torch.randn(3, 1, 8, 8), torch.tensor([10.0, 500.0, 900.0])
    null = model(x, t, class_labels=torch.full((3,), 3))
    torch.testing.assert_close(model(x, t), null, rtol=0, atol=0)  # None is the null class
    assert not torch.allclose(model(x, t, class_labels=labels), null)
    # a sample's output depends on its own label only
    one = model(x[1:2], t[1:2], class_labels=labels[1:2])
    torch.testing.assert_close(one, model(x, t, class_labels=labels)[1:2], rtol=1e-5, atol=1e-6)


def test_guidance_uses_the_null_class_by_default():
    model = small(num_classes=3)
    schedule = diffode.Schedule.linear()
    noise = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([1, 2])
    guided = diffode.sample(model, schedule, noise, steps=5, cond=labels, guidance=2.0)
    explicit = diffode.sample(
        model, schedule, noise, steps=5, cond=labels, guidance=2.0, uncond=torch.full((2,), 3)
    )
    torch.testing.assert_close(guided, explicit, rtol=0, atol=0)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"class_labels": torch.tensor([0, 4])}, ValueError, r"must lie in 0 … 3 \(3: the null class\)"),
        ({"class_labels": torch.tensor([-1, 0])}, ValueError, "must lie in 0 … 3"),
        ({"class_labels": torch.tensor([0.0, 1.0])}, TypeError, "integer tensor"),
        ({"class_labels": torch.tensor([0, 1, 2])}, ValueError, r"shape \(batch,\) = \(2,\)"),
    ],
)
def test_bad_labels_are_refused(kwargs, error, message):
    with pytest.raises(error, match=message):
        small(num_classes=3)(torch.randn(2, 1, 8, 8), torch.ones(2), **kwargs)


def test_front_doors_check_the_labels_once_before_any_network_call():
    # the network checks the label range only for labels on the CPU (reading them from a GPU at
    # every call waited for the device at every step); the field checks cond and uncond once
    model = small(num_classes=3)
    calls = []
    model.register_forward_hook(lambda *args: calls.append(1))
    field_for = diffode.field_for
    with pytest.raises(ValueError, match=r"class_labels must lie in 0 … 3"):
        field_for(model, diffode.Schedule.linear(), cond=torch.tensor([0, 4]))
    with pytest.raises(ValueError, match=r"got values in 5 … 5"):
        field_for(
            model,
            diffode.Schedule.linear(),
            cond=torch.tensor([0, 1]),
            guidance=2.0,
            uncond=torch.full((2,), 5),
        )
    assert calls == []


def test_unconditional_unet_refuses_labels_and_has_no_null_class():
    model = small()
    assert "num_classes" not in model.config() and model.label is None
    assert not any(k.startswith("label") for k in model.state_dict())
    with pytest.raises(ValueError, match="unconditional"):
        model(torch.randn(1, 1, 8, 8), torch.ones(1), class_labels=torch.tensor([0]))
    with pytest.raises(ValueError, match="no null class"):
        model.null_condition({"class_labels": torch.tensor([0])})
    for bad in (-1, 2.5, True):
        with pytest.raises(ValueError, match="num_classes must be an integer >= 0"):
            UNet(channels=(8, 8), num_classes=bad)


def test_shipped_unconditional_weights_load_and_give_the_outputs_of_the_unet_before_classes():
    model, _ = digits()
    assert "num_classes" not in model.config()
    assert set(model.state_dict()) == set(load_tensors(path("digits") / "model.safetensors"))
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    out = model(x, torch.tensor([0.0, 10.5, 500.0, 999.0]))
    # recorded with the UNet of commit 5e2a737 (no class embedding), bit-for-bit equal there
    reference = [
        [-0.14494988322257996, -0.6436528563499451, 0.12602850794792175],
        [1.4520196914672852, 1.3686392307281494, 0.3756691515445709],
        [-0.6295530200004578, -0.16658583283424377, -0.7479937076568604],
        [-0.559531033039093, 0.5223358273506165, 0.4125038981437683],
    ]
    torch.testing.assert_close(out[:, 0, 0, :3], torch.tensor(reference), rtol=1e-5, atol=1e-5)


def test_conditional_config_round_trips_through_build_model():
    model = small(num_classes=10)
    rebuilt = build_model("unet", model.config())
    rebuilt.load_state_dict(model.state_dict())
    assert rebuilt.num_classes == 10


def test_bundled_conditional_model_loads_with_its_provenance():
    model, schedule = digits_conditional()
    assert model.num_classes == 10 and model.null_label == 10 and not model.training
    assert not any(p.requires_grad for p in model.parameters())
    assert schedule.T == 1000
    config = diffode.checkpoint.read_config(path("digits_cond"))
    assert config["command"].startswith("diffode train --dataset digits --conditional")
    assert config["training"]["conditional"] is True and config["training"]["label_dropout"] == 0.1
    # only the checkpoint ships, not the training state
    assert sorted(p.name for p in path("digits_cond").iterdir()) == ["config.json", "model.safetensors"]


def test_guided_samples_of_the_bundled_model_are_recognised_as_their_class():
    model, schedule = digits_conditional()
    labels = torch.arange(10).repeat(3)
    noise = torch.randn(30, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    x = diffode.sample(model, schedule, noise, steps=20, cond=labels, guidance=3.0)
    recognised = (digits_classifier()(x).argmax(1) == labels).double().mean()
    assert recognised >= 0.8, f"only {recognised:.0%} recognised"
