"""diffusers interoperability: a tiny random UNet2DModel sampled by diffode's Euler equals the
diffusers DDIMScheduler loop (η = 0) on the same timesteps, in memory and after save/load."""

import json

import pytest
import torch

import diffode
from tests.helpers import tiny_unet

diffusers = pytest.importorskip("diffusers")

T = 1000


@pytest.fixture(scope="module")
def unet():
    return tiny_unet(diffusers).eval().requires_grad_(False)


def make_scheduler(**config):
    # the pure DDIM ODE: no x̂0 clipping, final step to ᾱ = 1
    return diffusers.DDIMScheduler(num_train_timesteps=T, clip_sample=False, set_alpha_to_one=True, **config)


def diffusers_ddim(unet, scheduler, noise):
    x = noise
    for t in scheduler.timesteps:
        out = unet(x, t).sample
        x = scheduler.step(out, t, x, eta=0.0).prev_sample
    return x


CONFIGS = {
    "linear-eps-leading-offset": dict(beta_schedule="linear", steps_offset=1),
    "scaled-v-trailing": dict(
        beta_schedule="scaled_linear", prediction_type="v_prediction", timestep_spacing="trailing"
    ),
    "cosine-sample-leading": dict(beta_schedule="squaredcos_cap_v2", prediction_type="sample"),
    "zero-snr-v-trailing": dict(
        beta_schedule="scaled_linear",
        prediction_type="v_prediction",
        timestep_spacing="trailing",
        rescale_betas_zero_snr=True,
    ),
    "zero-snr-sample-trailing": dict(
        beta_schedule="linear",
        prediction_type="sample",
        timestep_spacing="trailing",
        rescale_betas_zero_snr=True,
    ),
}


def max_differences(got, want):
    diff = float((got - want).abs().max())
    return diff, diff / float(want.abs().max())


# diffusers reads the previous timestep as t - T // S, which is off the trailing grid when S does
# not divide T (reference §13), so trailing runs use divisors of T
CASES = [
    (name, steps)
    for name, config in sorted(CONFIGS.items())
    for steps in (1, 7, 10)
    if config.get("timestep_spacing") != "trailing" or T % steps == 0
]


@pytest.mark.parametrize("name, steps", CASES)
def test_euler_equals_the_diffusers_ddim_loop(unet, name, steps):
    scheduler = make_scheduler(**CONFIGS[name])
    scheduler.set_timesteps(steps)
    noise = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(steps))
    expected = diffusers_ddim(unet, scheduler, noise)

    wrapped = diffode.from_diffusers(unet, scheduler)
    assert wrapped.prediction == scheduler.config.prediction_type
    assert wrapped.sample_shape == (3, 8, 8)
    got = diffode.sample(
        wrapped.model,
        wrapped.schedule,
        noise,
        timesteps=scheduler.timesteps,
        solver="euler",
        prediction=wrapped.prediction,
    )
    assert got.dtype == torch.float32 and bool(torch.isfinite(got).all())
    assert float(expected.abs().max()) > 0.1  # the network's output reaches the sample
    _, rel = max_differences(got, expected)
    assert rel <= 1e-5


def test_schedule_is_the_schedulers_table():
    for config in CONFIGS.values():
        scheduler = make_scheduler(**config)
        schedule, _ = diffode.diffusers_interop.schedule_from_diffusers_config(scheduler.config)
        assert schedule.alphas_cumprod.dtype == torch.float64
        assert torch.equal(schedule.alphas_cumprod, scheduler.alphas_cumprod.double())
    zero_snr = diffode.from_diffusers(torch.nn.Identity(), make_scheduler(**CONFIGS["zero-snr-v-trailing"]))
    assert zero_snr.schedule.sigma_max == float("inf") and zero_snr.sample_shape is None


def test_config_mapping_and_trained_betas():
    betas = torch.linspace(1e-4, 0.02, T, dtype=torch.float32)
    from_betas, prediction = diffode.diffusers_interop.schedule_from_diffusers_config(
        {"trained_betas": betas.tolist()}
    )
    from_name, _ = diffode.diffusers_interop.schedule_from_diffusers_config({"beta_schedule": "linear"})
    assert prediction == "epsilon"
    assert torch.equal(from_betas.alphas_cumprod, from_name.alphas_cumprod)


def save(unet, scheduler, root, layout):
    if layout == "subfolders":
        unet.save_pretrained(root / "unet")
        scheduler.save_pretrained(root / "scheduler")
    else:
        unet.save_pretrained(root)
        scheduler.save_pretrained(root)


@pytest.mark.parametrize("layout", ["subfolders", "flat"])
def test_load_from_a_saved_folder_gives_identical_samples(unet, tmp_path, layout):
    scheduler = make_scheduler(**CONFIGS["zero-snr-v-trailing"])
    save(unet, scheduler, tmp_path, layout)
    loaded = diffode.load_diffusers(tmp_path)
    in_memory = diffode.from_diffusers(unet, scheduler)
    assert loaded.prediction == "v_prediction" and loaded.sample_shape == (3, 8, 8)
    assert torch.equal(loaded.schedule.alphas_cumprod, in_memory.schedule.alphas_cumprod)
    noise = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    kwargs = dict(steps=6, timesteps="trailing", prediction="v_prediction")
    got = diffode.sample(loaded.field(), loaded.schedule, noise, **kwargs)
    want = diffode.sample(in_memory.model, in_memory.schedule, noise, **kwargs)
    assert torch.equal(got, want)


def test_adapter_runs_the_network_in_its_own_dtype(unet):
    wrapped = diffode.from_diffusers(unet, make_scheduler())
    noise = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    got = diffode.sample(wrapped.model, wrapped.schedule, noise, steps=3)
    assert got.dtype == torch.float64
    in_float32 = diffode.sample(wrapped.model, wrapped.schedule, noise.float(), steps=3)
    # the float32 run rounds x̄ = x·√(1+σ²), up to σ_max ≈ 157 times larger than x
    atol = 4 * torch.finfo(torch.float32).eps * wrapped.schedule.sigma_max
    torch.testing.assert_close(got, in_float32.double(), rtol=0, atol=atol)


def test_the_adjoint_reaches_the_diffusers_networks_parameters(unet):
    # the adapter is a module holding the UNet: the field's parameters are the UNet's, so the
    # adjoint's default adjoint_params find them (with none it raised a raw autograd error)
    wrapped = diffode.from_diffusers(unet, make_scheduler())
    field = diffode.field_for(wrapped.model, wrapped.schedule, wrapped.prediction)
    params = list(unet.parameters())
    assert {id(p) for p in field.parameters()} == {id(p) for p in params}
    noise = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    grid = diffode.sigma_grid(wrapped.schedule, 3, "uniform")
    grads = []
    unet.requires_grad_(True)  # the shared fixture is frozen
    try:
        for adjoint in (False, True):
            unet.zero_grad()
            diffode.solve(field, noise, grid, "euler", adjoint=adjoint).x.square().sum().backward()
            grads.append([p.grad.clone() for p in params])
    finally:
        unet.zero_grad()
        unet.requires_grad_(False)
    for plain, by_adjoint in zip(*grads, strict=True):
        torch.testing.assert_close(by_adjoint, plain, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------- bad input


def test_missing_folder_and_config_files(unet, tmp_path):
    with pytest.raises(ValueError, match="path must be a folder written by save_pretrained, got '.*nowhere'"):
        diffode.load_diffusers(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="no network config found: looked for .*unet/config.json"):
        diffode.load_diffusers(tmp_path)
    unet.save_pretrained(tmp_path / "unet")
    with pytest.raises(
        ValueError, match="no scheduler config found: looked for .*scheduler/scheduler_config.json"
    ):
        diffode.load_diffusers(tmp_path)


def test_missing_weights_and_unknown_class(unet, tmp_path):
    make_scheduler().save_pretrained(tmp_path / "scheduler")
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_text(json.dumps(dict(unet.config)))
    with pytest.raises(ValueError, match="could not load the network from .*unet"):
        diffode.load_diffusers(tmp_path)
    unet.save_pretrained(tmp_path / "unet", safe_serialization=False)  # pickled weights only
    assert not list((tmp_path / "unet").glob("*.safetensors"))
    with pytest.raises(ValueError, match=r"holds diffusion_pytorch_model.bin .* never unpickles weights"):
        diffode.load_diffusers(tmp_path)
    # only the networks diffode calls as unet(x, t, ...): any other model class (a VAE) was
    # accepted and called with t as its generator
    for name in ("os", "AutoencoderKL", "ModelMixin"):
        (tmp_path / "unet" / "config.json").write_text(json.dumps({"_class_name": name}))
        with pytest.raises(
            ValueError, match=f"names '{name}'; diffode samples the diffusers networks UNet2DModel"
        ):
            diffode.load_diffusers(tmp_path)


def test_sharded_weights_load(unet, tmp_path):
    # save_pretrained shards a large network into numbered files with an index
    make_scheduler().save_pretrained(tmp_path / "scheduler")
    unet.save_pretrained(tmp_path / "unet", max_shard_size="20KB")
    assert (tmp_path / "unet" / "diffusion_pytorch_model.safetensors.index.json").is_file()
    assert not (tmp_path / "unet" / "diffusion_pytorch_model.safetensors").exists()
    loaded = diffode.load_diffusers(tmp_path)
    x, t = torch.randn(2, *loaded.sample_shape), torch.tensor([3.0, 500.0])
    torch.testing.assert_close(loaded.model(x, t), unet(x, t).sample)


def test_a_config_that_does_not_fit_its_weights_is_refused(unet, tmp_path):
    # a class embedding the weights lack was filled with uninitialised memory, silently
    make_scheduler().save_pretrained(tmp_path / "scheduler")
    unet.save_pretrained(tmp_path / "unet")
    config = json.loads((tmp_path / "unet" / "config.json").read_text())
    (tmp_path / "unet" / "config.json").write_text(json.dumps({**config, "num_class_embeds": 10}))
    with pytest.raises(ValueError, match="do not fit its config.json .*missing keys: class_embedding"):
        diffode.load_diffusers(tmp_path)
    # a shape that does not fit was a RuntimeError
    (tmp_path / "unet" / "config.json").write_text(json.dumps({**config, "block_out_channels": [16, 32]}))
    with pytest.raises(ValueError, match="could not load the network from|do not fit its config.json"):
        diffode.load_diffusers(tmp_path)


@pytest.mark.parametrize(
    "config, match",
    [
        # the network reads 0.25 log σ as its time then, not t in 0 … T-1
        ({"beta_schedule": "linear", "timestep_type": "continuous"}, "timestep_type='continuous'"),
        (
            {"beta_schedule": "linear", "num_train_timesteps": "1000"},
            "'num_train_timesteps' must be an integer >= 2, got '1000'",
        ),
        ({"beta_start": "x"}, "'beta_start' must be a number"),
        # a true string: zero terminal SNR was applied
        (
            {"beta_schedule": "linear", "rescale_betas_zero_snr": "no"},
            "'rescale_betas_zero_snr' must be true or false",
        ),
        # the key without a value was taken as a β schedule, and read as the default linear one
        ({"trained_betas": None}, "has no β schedule"),
        (
            {"prediction_type": "flow"},
            "prediction_type must be one of 'epsilon', 'sample', 'v_prediction', got 'flow'",
        ),
        (
            {"beta_schedule": "sigmoid"},
            "beta_schedule must be one of 'linear', 'scaled_linear', 'squaredcos_cap_v2' .*got 'sigmoid'",
        ),
        # read as the default linear β before: a flow-matching model sampled as a DDPM one
        (
            {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0},
            "FlowMatchEulerDiscreteScheduler's config has no β schedule",
        ),
        ({"_class_name": "EDMEulerScheduler", "sigma_min": 0.002, "sigma_max": 80.0}, "no β schedule"),
    ],
)
def test_unsupported_scheduler_config(unet, config, match):
    with pytest.raises(ValueError, match=match):
        diffode.from_diffusers(unet, config)


def test_scheduler_of_the_wrong_type(unet):
    with pytest.raises(
        TypeError, match="scheduler must be a diffusers scheduler or its config mapping, got str"
    ):
        diffode.from_diffusers(unet, "ddim")


def test_likelihood_of_a_batch_through_a_diffusers_unet(unet):
    # vmap cannot batch diffusers' memory-format queries: batches of 2 or more raised "NYI"
    wrapped = diffode.from_diffusers(unet, make_scheduler())
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    seed = torch.Generator().manual_seed(1)
    both = diffode.likelihood(
        wrapped.model,
        wrapped.schedule,
        x,
        divergence="hutchinson",
        rtol=1e-2,
        atol=1e-2,
        generator=[seed, torch.Generator().manual_seed(2)],
    )
    assert both.nats.shape == (2,) and bool(torch.isfinite(both.nats).all())


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_timestep_spacings_equal_diffusers_for_every_step_count(spacing):
    # trailing differed at 111 of S = 1 … 1000 (S = 48: 937 where diffusers has 936); where
    # diffusers gives S + 1 trailing timesteps, the last -1 (S = 61: ..., 15, -1), diffode keeps S
    scheduler = diffusers.DDIMScheduler(num_train_timesteps=T, timestep_spacing=spacing)
    schedule = diffode.Schedule.linear(T)
    longer = []
    for steps in range(1, T + 1):
        scheduler.set_timesteps(steps)
        ours, theirs = diffode.spaced_timesteps(schedule, steps, spacing), scheduler.timesteps
        assert len(ours) == steps and int(ours.min()) >= 0
        assert torch.equal(ours, theirs[:steps]), steps
        if len(theirs) > steps:
            assert theirs[steps:].tolist() == [-1]
            longer.append(steps)
    assert (61 in longer) if spacing == "trailing" else longer == []


def test_loading_a_diffusers_model_leaves_no_diffusers_log_lines(tmp_path):
    # every cast warned "modules ... should be kept in float32: []" on stderr, beside diffode's output
    import logging

    from diffode.runs import load_model

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    root = diffusers.utils.logging.get_logger("diffusers")
    root.addHandler(handler)
    try:
        unet = tiny_unet(diffusers)
        unet.save_pretrained(tmp_path / "m" / "unet")
        make_scheduler().save_pretrained(tmp_path / "m" / "scheduler")
        unet.to(torch.float64)
        assert any("kept in float32" in r.getMessage() for r in records)  # what it did before
        records.clear()
        load_model(str(tmp_path / "m"), torch.device("cpu"), torch.float64)
        assert records == []
    finally:
        root.removeHandler(handler)


def test_cli_refuses_what_it_cannot_write_or_guide_before_sampling(tmp_path, capsys):
    # a 4-channel model's PNG failed after all the sampling; --guidance on a class-conditional
    # diffusers network without a null class suggested uncond=, which the CLI does not have
    from diffode.cli import main

    for name, unet in [
        ("latent", tiny_unet(diffusers, in_channels=4, out_channels=4)),
        ("labelled", tiny_unet(diffusers, seed=2, num_class_embeds=10)),
    ]:
        unet.save_pretrained(tmp_path / name / "unet")
        make_scheduler().save_pretrained(tmp_path / name / "scheduler")
    out = tmp_path / "s.png"
    assert main(["sample", "--model", str(tmp_path / "latent"), "--seeds", "0-3", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "a PNG holds grey or RGB images, and the model makes 4-channel samples" in err
    assert "NFE" not in err and not out.exists()
    argv = [
        "sample",
        "--model",
        str(tmp_path / "labelled"),
        "--label",
        "3",
        "--guidance",
        "2",
        "--out",
        str(out),
    ]
    assert main(argv) == 2
    assert "--guidance needs the model's unconditional input" in capsys.readouterr().err
    assert not out.exists()
    # a colour grid that sample wrote was described as a grey PNG of the wrong size
    labelled = str(tmp_path / "labelled")
    assert (
        main(
            [
                "sample",
                "--model",
                labelled,
                "--label",
                "3",
                "--steps",
                "2",
                "--seeds",
                "0-3",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["encode", str(out), "--model", labelled, "--out", str(tmp_path / "z.npz")]) == 2
    assert "is a grid of colour images, which is read back for grey models only" in capsys.readouterr().err


# ---------------------------------------------------------------- conditional networks and guidance
def tiny_conditional_unets():
    text = tiny_unet(
        diffusers,
        seed=1,
        kind="UNet2DConditionModel",
        cross_attention_dim=12,
        attention_head_dim=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    )
    labelled = tiny_unet(diffusers, seed=2, num_class_embeds=10)
    return text.eval().requires_grad_(False), labelled.eval().requires_grad_(False)


def diffusers_guided_ddim(unet, scheduler, noise, key, cond, uncond, w):
    # the loop of diffusers' pipelines: eps_u + w (eps_c - eps_u), then DDIMScheduler.step
    x = noise
    for t in scheduler.timesteps:
        eps_u = unet(x, t, **{key: uncond}).sample
        eps_c = unet(x, t, **{key: cond}).sample
        x = scheduler.step(eps_u + w * (eps_c - eps_u), t, x, eta=0.0).prev_sample
    return x


@pytest.mark.parametrize("which", ["text", "class"])
@pytest.mark.parametrize("w", [1.0, 3.0])
def test_guided_euler_equals_the_diffusers_guided_ddim_loop(which, w):
    text, labelled = tiny_conditional_unets()
    gen = torch.Generator().manual_seed(3)
    if which == "text":
        unet, key = text, "encoder_hidden_states"
        cond, uncond = torch.randn(2, 5, 12, generator=gen), torch.zeros(2, 5, 12)
    else:
        unet, key = labelled, "class_labels"
        cond, uncond = torch.tensor([3, 7]), torch.tensor([0, 0])
    scheduler = make_scheduler(beta_schedule="scaled_linear")
    scheduler.set_timesteps(10)
    noise = torch.randn(2, 3, 8, 8, generator=gen)
    expected = diffusers_guided_ddim(unet, scheduler, noise, key, cond, uncond, w)
    wrapped = diffode.from_diffusers(unet, scheduler)
    assert wrapped.model.cond_keyword == key
    for batched in (True, False):
        got = diffode.sample(
            wrapped.model,
            wrapped.schedule,
            noise,
            timesteps=scheduler.timesteps,
            cond=cond,
            guidance=diffode.Guidance(w, batched=batched),
            uncond={key: uncond},
        )
        _, rel = max_differences(got, expected)
        assert rel <= 1e-4, (which, w, batched, rel)
    # the conditioning reaches the network: another condition gives another sample
    other = diffode.sample(wrapped.model, wrapped.schedule, noise, timesteps=scheduler.timesteps, cond=uncond)
    assert float((other - expected).abs().max()) > 1e-3


def test_diffusers_guidance_without_uncond_asks_for_it():
    text, _ = tiny_conditional_unets()
    wrapped = diffode.from_diffusers(text, make_scheduler())
    with pytest.raises(ValueError, match="pass uncond="):
        diffode.sample(
            wrapped.model,
            wrapped.schedule,
            torch.randn(1, 3, 8, 8),
            steps=2,
            cond=torch.randn(1, 5, 12),
            guidance=2.0,
        )
