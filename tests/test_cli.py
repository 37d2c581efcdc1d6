import inspect
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import diffode
from diffode.cli import main
from diffode.runs import parse_seeds
from tests.helpers import tiny_unet


def test_demo_runs_and_writes_png(tmp_path, capsys):
    out = tmp_path / "gmm.png"
    assert main(["demo", "--n", "500", "--steps", "10", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "NFE=10" in text and "wall=" in text and "|mean - data mean|" in text
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["demo", "--steps", "0", "--out", ""], "steps must be at least 1"),
        (["demo", "--solver", "nope", "--out", ""], "unknown solver 'nope'"),
        (["demo", "--steps", "ten"], "invalid int value"),
        (["frobnicate"], "invalid choice"),
        ([], "required"),
        (["demo", "--n", "1", "--out", ""], "argument --n: must be at least 2, got 1"),
        (["sample", "--scale", "0"], "argument --scale: must be at least 1, got 0"),
        (["train", "--label-dropout", "0.2", "--out", "x"], "--label-dropout applies to conditional"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(argv, message):
    result = subprocess.run([sys.executable, "-m", "diffode", *argv], capture_output=True, text=True)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("diffode: error:") and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_help_for_every_command():
    for argv in (["--help"], ["demo", "--help"]):
        result = subprocess.run([sys.executable, "-m", "diffode", *argv], capture_output=True, text=True)
        assert result.returncode == 0 and "usage: diffode" in result.stdout


# ----------------------------------------------------------------------------- sample, train, eval

COMMANDS = ("demo", "sample", "encode", "interpolate", "train", "train-classifier", "eval")


def run(argv, capsys):
    code = main([*argv, "--no-progress"] if argv[0] in ("sample", "train", "train-classifier") else argv)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out


def test_sample_writes_a_png_grid_and_reports_nfe_and_time(tmp_path, capsys):
    out = tmp_path / "digits.png"
    text = run(["sample", "--seeds", "0-5", "--steps", "5", "--out", str(out)], capsys)
    assert "NFE=5 " in text and "wall=" in text and "bundled digits model" in text
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "solver, why, unchecked",
    [
        ("heun", "linear stability", "Heun(check_stability=False)"),
        ("ipndm", "four-step", "IPNDM(order=4, check"),
    ],
)
def test_sample_refuses_an_unstable_step_unless_told(tmp_path, capsys, solver, why, unchecked):
    # 5 uniform steps end with σ(200) -> σ(0), a ratio of 72: beyond Heun's 13.9 and iPNDM's 25
    out = tmp_path / "refused.png"
    argv = [
        "sample",
        "--seeds",
        "0-1",
        "--steps",
        "5",
        "--solver",
        solver,
        "--out",
        str(out),
        "--no-progress",
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and why in err and "--no-stability-check" in err, err
    assert not out.exists()
    text = run([*argv[:-1], "--no-stability-check"], capsys)
    assert unchecked in text and out.is_file()
    assert (
        main([*argv[:5], "--solver", "euler", "--out", str(out), "--overwrite", "--no-stability-check"]) == 2
    )
    assert "applies to the Runge–Kutta solvers and ipndm" in capsys.readouterr().err


def test_sample_npz_holds_uint8_nhwc_images(tmp_path, capsys):
    out = tmp_path / "s.npz"
    run(["sample", "--seeds", "0-2", "--steps", "3", "--out", str(out)], capsys)
    with np.load(out) as archive:
        assert archive.files == ["arr_0"]
        images = archive["arr_0"]
    assert images.shape == (3, 8, 8, 1) and images.dtype == np.uint8


@pytest.mark.parametrize(
    "solver", [["--solver", "euler"], ["--solver", "ddim", "--eta", "1"]], ids=["ddim", "ddpm"]
)
def test_a_sample_depends_only_on_its_seed(tmp_path, capsys, solver):
    def images(seeds, batch):
        out = tmp_path / f"{seeds}-{batch}.npz"
        run(
            ["sample", *solver, "--steps", "4", "--seeds", seeds, "--batch", str(batch), "--out", str(out)],
            capsys,
        )
        with np.load(out) as archive:
            return archive["arr_0"]

    whole = images("0-5", 6)
    assert np.array_equal(whole, images("0-5", 1))
    assert np.array_equal(whole, images("0-5", 4))
    assert np.array_equal(whole[3:5], images("3-4", 2))
    assert not np.array_equal(whole[0], whole[1])


def test_sample_in_float64_matches_float32(tmp_path, capsys):
    outs = {}
    for dtype in ("float32", "float64"):
        outs[dtype] = tmp_path / f"{dtype}.npz"
        run(["sample", "--seeds", "0-3", "--steps", "5", "--dtype", dtype, "--out", str(outs[dtype])], capsys)
    with np.load(outs["float32"]) as a, np.load(outs["float64"]) as b:
        # 5 DDIM steps in float32 vs float64 differ by round-off, at most one grey level
        assert np.abs(a["arr_0"].astype(int) - b["arr_0"].astype(int)).max() <= 1


def test_eval_reports_the_digits_frechet_distance(tmp_path, capsys):
    from diffode.images import from_uint8
    from diffode.pretrained import digits_fd

    out = tmp_path / "s.npz"
    run(["sample", "--seeds", "0-31", "--steps", "10", "--out", str(out)], capsys)
    text = run(["eval", str(out)], capsys)
    with np.load(out) as archive:
        expected = digits_fd(from_uint8(archive["arr_0"]))
    assert f"digits FD={expected:.3f} (n=32, reference=train split)" in text
    assert "real-data floor at n = 297: test split vs train split (1500)" in text
    # 32 samples scored against a floor at 297: the comparison needs the caveat
    assert "note: FD depends on n (biased upwards as n shrinks); compare sets of equal size (n=32)" in text


def test_train_writes_a_checkpoint_that_sample_reads(tmp_path, capsys):
    ckpt = tmp_path / "moons"
    text = run(["train", "--dataset", "moons", "--steps", "20", "--hidden", "16", "--out", str(ckpt)], capsys)
    assert "trained mlp on moons: 20 steps" in text and "test loss" in text
    config = json.loads((ckpt / "config.json").read_text())
    assert config["command"].startswith("diffode train --dataset moons --steps 20 --hidden 16 --out ")
    assert config["training"]["model"]["hidden"] == 16
    points = tmp_path / "points.npz"
    run(["sample", "--model", str(ckpt), "--seeds", "0-9", "--steps", "3", "--out", str(points)], capsys)
    with np.load(points) as archive:
        assert archive["arr_0"].shape == (10, 2) and archive["arr_0"].dtype == np.float32
    picture = tmp_path / "points.png"
    run(["sample", "--model", str(ckpt), "--seeds", "0-9", "--steps", "3", "--out", str(picture)], capsys)
    assert picture.read_bytes()[:4] == b"\x89PNG"


def test_train_a_tiny_digits_unet_and_the_classifier(tmp_path, capsys):
    pytest.importorskip("sklearn")
    ckpt = tmp_path / "digits"
    run(["train", "--dataset", "digits", "--steps", "3", "--channels", "8,8", "--out", str(ckpt)], capsys)
    assert json.loads((ckpt / "config.json").read_text())["model"]["channels"] == [8, 8]
    run(
        ["sample", "--model", str(ckpt), "--seeds", "0-1", "--steps", "2", "--out", str(tmp_path / "d.png")],
        capsys,
    )
    text = run(["train-classifier", "--steps", "3", "--out", str(tmp_path / "cls")], capsys)
    assert "test accuracy" in text
    assert {p.name for p in (tmp_path / "cls").iterdir()} == {
        "config.json",
        "model.safetensors",
        "features.safetensors",
    }
    # a second run into the folder is refused (see below) unless asked to replace it
    run(["train-classifier", "--steps", "3", "--out", str(tmp_path / "cls"), "--overwrite"], capsys)
    assert "--overwrite" in json.loads((tmp_path / "cls" / "config.json").read_text())["command"]


@pytest.mark.parametrize(
    "existing, message",
    # no --resume offered: train-classifier has none
    [("file", "is a file, not a folder"), ("run", "; pass --overwrite to start a new one there")],
)
def test_train_classifier_refuses_an_existing_out_before_training(
    existing, message, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "out"
    if existing == "file":
        out.write_bytes(b"mine")
    else:
        out.mkdir()
        (out / "config.json").write_text("{}")

    def no_training(*args, **kwargs):
        raise AssertionError("training started before --out was checked")

    monkeypatch.setattr("diffode.train.digits", no_training)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert main(["train-classifier", "--steps", "3", "--out", str(out), "--no-progress"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("diffode: error: ") and message in lines[0], lines
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_sample_a_diffusers_folder(tmp_path, capsys):
    diffusers = pytest.importorskip("diffusers")
    unet = tiny_unet(diffusers)
    unet.save_pretrained(tmp_path / "unet")
    diffusers.DDIMScheduler(num_train_timesteps=100).save_pretrained(tmp_path / "scheduler")
    out = tmp_path / "rgb.npz"
    run(["sample", "--model", str(tmp_path), "--seeds", "0-1", "--steps", "3", "--out", str(out)], capsys)
    with np.load(out) as archive:
        assert archive["arr_0"].shape == (2, 8, 8, 3)


def test_encode_writes_latents_and_reports_the_round_trip(tmp_path, capsys):
    images = tmp_path / "s.npz"
    run(["sample", "--seeds", "0-1", "--steps", "10", "--out", str(images)], capsys)
    single = tmp_path / "one.png"
    run(["sample", "--seeds", "2", "--steps", "10", "--out", str(single)], capsys)
    out, recon = tmp_path / "z.npz", tmp_path / "recon.png"
    text = run(
        ["encode", str(images), str(single), "--steps", "10", "--out", str(out), "--recon", str(recon)],
        capsys,
    )
    assert "encoded 3 image(s) with Euler(), method=reverse, steps=10: NFE=10" in text
    assert "round trip decode(encode(x)): mean squared error per dimension" in text
    with np.load(out) as archive:
        assert archive["latents"].shape == (3, 1, 8, 8) and archive["latents"].dtype == np.float32
    assert recon.read_bytes()[:4] == b"\x89PNG"


def test_encode_with_the_reversible_sampler_keeps_its_companion(tmp_path, capsys):
    images = tmp_path / "s.npz"
    run(["sample", "--seeds", "0-1", "--steps", "5", "--out", str(images)], capsys)
    out = tmp_path / "z.npz"
    text = run(
        ["encode", str(images), "--solver", "bdia", "--method", "exact", "--steps", "10", "--out", str(out)],
        capsys,
    )
    # decoding from latents and companion retraces the encoding to float32 round-off
    error = float(text.split("mean squared error per dimension ")[1].split()[0])
    assert error < 1e-9
    with np.load(out) as archive:
        assert archive.files == ["latents", "companion"] and archive["companion"].shape == (2, 1, 8, 8)


def test_interpolate_strip_ends_at_the_samples_of_its_seeds(tmp_path, capsys):
    strip = tmp_path / "strip.npz"
    text = run(
        ["interpolate", "--seeds", "3,7", "--frames", "5", "--steps", "8", "--out", str(strip)], capsys
    )
    assert "slerp between seeds 3 and 7: 5 frames" in text
    ends = tmp_path / "ends.npz"
    run(["sample", "--seeds", "3,7", "--steps", "8", "--out", str(ends)], capsys)
    with np.load(strip) as a, np.load(ends) as b:
        frames, samples = a["arr_0"], b["arr_0"]
    assert frames.shape == (5, 8, 8, 1)
    assert np.array_equal(frames[[0, -1]], samples)
    picture = tmp_path / "strip.png"
    run(["interpolate", "--seeds", "3,7", "--frames", "5", "--steps", "8", "--out", str(picture)], capsys)
    from diffode.images import read_png

    assert read_png(picture).shape == (32, 5 * 33 - 1)


def test_interpolate_between_two_images(tmp_path, capsys):
    for seed in (1, 2):
        run(["sample", "--seeds", str(seed), "--steps", "8", "--out", str(tmp_path / f"{seed}.png")], capsys)
    out = tmp_path / "between.npz"
    paths = [str(tmp_path / "1.png"), str(tmp_path / "2.png")]
    text = run(
        ["interpolate", "--images", *paths, "--frames", "3", "--steps", "8", "--out", str(out)], capsys
    )
    assert f"slerp between the encodings of {paths[0]} and {paths[1]}:" in text
    with np.load(out) as archive:
        assert archive["arr_0"].shape == (3, 8, 8, 1)
    # two images from one file are reported as such (the names were joined whatever each held)
    pair = tmp_path / "pair.npz"
    run(["sample", "--seeds", "1-2", "--steps", "8", "--out", str(pair)], capsys)
    text = run(
        [
            "interpolate",
            "--images",
            str(pair),
            "--frames",
            "3",
            "--steps",
            "8",
            "--out",
            str(out),
            "--overwrite",
        ],
        capsys,
    )
    assert f"slerp between the encodings of the two images of {pair}:" in text


def test_parse_seeds():
    assert parse_seeds("0-3") == [0, 1, 2, 3]
    assert parse_seeds("7") == [7]
    assert parse_seeds("3,7,10-12") == [3, 7, 10, 11, 12]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["sample", "--seeds", "5-2"], "--seeds must be non-negative integers below 2**32 and ranges"),
        # torch's CPU generator keeps 32 bits of a seed: 2**32 drew the noise of seed 0
        (["sample", "--seeds", str(2**32)], "--seeds must be non-negative integers below 2**32"),
        (["train", "--seed", str(2**32 - 1), "--out", "x"], "argument --seed: must be at most 4294967294"),
        (["train", "--hidden", "0", "--out", "x"], "argument --hidden: must be at least 1"),
        (["sample", "--seeds", "0", "--outdir", ""], "--outdir must name a folder for the shards, got ''"),
        (["sample", "--seeds", "a"], "--seeds must be"),
        (["sample", "--out", "x.jpg"], "--out must be a file name ending in .png or .npz"),
        (["sample", "--batch", "0"], "argument --batch: must be at least 1"),
        (["sample", "--steps", "0"], "steps must be at least 1"),
        (["sample", "--steps", "2000"], "steps must be at most 1000"),
        (["sample", "--eta", "-1", "--solver", "ddim"], "eta must be a finite number >= 0"),
        (["sample", "--eta", "0.5"], "eta=0.5 applies only to solver='ddim'"),
        (["sample", "--sigma-hat"], "--sigma-hat is a variant of --solver ddim"),
        (["sample", "--solver", "ddim", "--sigma-hat", "--eta", "0.5"], "has no η of its own, got --eta 0.5"),
        (["sample", "--solver", "nope"], "unknown solver 'nope'"),
        (["sample", "--dtype", "int8"], "invalid choice: 'int8'"),
        (["sample", "--device", "nonsense"], "--device 'nonsense' is not a torch device"),
        (["sample", "--model", "/no/such/folder"], "--model /no/such/folder: no such folder"),
        (["train", "--out", "x", "--dataset", "mnist"], "invalid choice: 'mnist'"),
        (["train", "--out", "x", "--steps", "0"], "steps must be at least 1"),
        (["train", "--out", "x", "--channels", "8,a"], "--channels must be comma-separated integers"),
        (["train"], "the following arguments are required: --out"),
        # a model config the network refuses leaves no --out folder behind
        (["train", "--out", "x", "--channels", "0,0", "--steps", "1"], "channels must be a non-empty list"),
        (
            ["train", "--out", "x", "--dataset", "moons", "--channels", "8,8"],
            "does not fit architecture 'mlp'",
        ),
        (["train-classifier", "--out", "x", "--steps", "0"], "argument --steps: must be at least 1, got 0"),
        (["train-classifier", "--out", "x", "--steps", "-5"], "argument --steps: must be at least 1, got -5"),
        (["likelihood", "--split", "test", "--tol", "-1"], "argument --tol: must be a finite number > 0"),
        (["likelihood", "--split", "test", "--tol", "nan"], "argument --tol: must be a finite number > 0"),
        (["likelihood", "--split", "test", "--levels", "1"], "argument --levels: must be 0 (continuous"),
        (["encode", "x.npz", "--method", "exact", "--tol", "0"], "argument --tol: must be a finite number"),
        (["eval", "missing.npz"], "samples must be an existing .npz file"),
        (["encode", "missing.png"], "no such image file: missing.png"),
        (["encode", "x.npz", "--out", "z.png"], "--out must be a file name ending in .npz"),
        (["encode", "x.npz", "--solver", "nope"], "unknown solver 'nope'"),
        (["interpolate"], "one of the arguments --seeds --images is required"),
        (["interpolate", "--seeds", "1,2,3"], "--seeds must name exactly two seeds"),
        (["interpolate", "--seeds", "1,2", "--frames", "1"], "argument --frames: must be at least 2"),
        (["interpolate", "--seeds", "1,2", "--images", "a.png"], "not allowed with argument --seeds"),
        (["interpolate", "--seeds", "1,2", "--out", "s.gif"], "--out must be a file name ending in .png"),
        (["sample", "--threads", "-1"], "--threads must be >= 0"),
    ],
)
def test_bad_arguments_print_one_line_and_exit_2(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("diffode: error:") and message in lines[0], err
    assert not (tmp_path / "x").exists()


def test_exact_encoding_that_does_not_converge_is_one_line(tmp_path, capsys):
    # 5 steps of DDIM's uniform grid: the step σ 0.01 -> 0.72 folds on the digits network
    images = tmp_path / "s.npz"
    run(["sample", "--seeds", "0", "--steps", "5", "--out", str(images)], capsys)
    assert (
        main(
            [
                "encode",
                str(images),
                "--method",
                "exact",
                "--steps",
                "5",
                "--timesteps",
                "uniform",
                "--out",
                str(tmp_path / "z.npz"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "did not converge" in err


def test_encode_refuses_pictures_of_the_wrong_size(tmp_path, capsys):
    from diffode.images import write_png

    write_png(tmp_path / "odd.png", np.zeros((9, 9), np.uint8))
    assert main(["encode", str(tmp_path / "odd.png"), "--out", str(tmp_path / "z.npz")]) == 2
    assert "odd.png is a 9×9 PNG; the model needs 1×8×8 images" in capsys.readouterr().err


def test_eval_refuses_npz_that_are_not_digits(tmp_path, capsys):
    # the messages name the file and the shape as stored, (n, 8, 8, 1)
    cases = (
        (
            "rgb.npz",
            np.zeros((4, 8, 8, 3), np.uint8),
            "need at least 2 grey 8×8 images (n, 8, 8, 1), got shape (4, 8, 8, 3)",
        ),
        ("float.npz", np.zeros((4, 8, 8, 1)), "float.npz: images must be uint8"),
    )
    for name, array, message in cases:
        np.savez(tmp_path / name, arr_0=array)
        assert main(["eval", str(tmp_path / name)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and message in err and name in err, err
    np.savez(tmp_path / "other.npz", images=np.zeros((4, 8, 8, 1), np.uint8))
    assert main(["eval", str(tmp_path / "other.npz")]) == 2
    assert "has no arr_0 array (found images)" in capsys.readouterr().err


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    assert f"usage: diffode {command}" in capsys.readouterr().out


# ----------------------------------------------------------------------------- image files


def test_non_finite_images_are_not_written_as_pixels(tmp_path):
    from diffode.images import to_uint8
    from diffode.runs import write_samples

    x = torch.zeros(3, 1, 2, 2)
    x[1, 0, 1, 1] = float("nan")
    with pytest.raises(ValueError, match=r"images \[1\] \(1 of 3\) hold non-finite values"):
        to_uint8(x)
    with pytest.raises(ValueError, match="non-finite"):
        write_samples(tmp_path / "x.png", x)
    assert not (tmp_path / "x.png").exists()
    # points that carry a graph are written as they are
    points = torch.zeros(4, 2, requires_grad=True) + 1
    write_samples(tmp_path / "p.npz", points)
    assert np.load(tmp_path / "p.npz")["arr_0"].tolist() == [[1.0, 1.0]] * 4


def test_png_round_trip_and_grid(tmp_path):
    from diffode.images import from_uint8, grid, read_png, to_uint8, write_png

    x = torch.rand(5, 1, 8, 8) * 2 - 1
    images = to_uint8(x)
    assert images.shape == (5, 8, 8, 1) and images.dtype == np.uint8
    # uint8 holds x to half a grey level
    assert (from_uint8(images) - x).abs().max() <= 1 / 255 + 1e-6
    picture = grid(images, 3, scale=2, pad=1)
    assert picture.shape == (2 * 17 - 1, 3 * 17 - 1, 1)
    assert np.array_equal(picture[:16, :16, 0], images[0, :, :, 0].repeat(2, 0).repeat(2, 1))
    assert np.array_equal(picture[17:, 17:33, 0], images[4, :, :, 0].repeat(2, 0).repeat(2, 1))
    assert (picture[16, :, 0] == 128).all() and (picture[17:, 34:, 0] == 128).all()
    write_png(tmp_path / "g.png", picture)
    assert np.array_equal(read_png(tmp_path / "g.png"), picture[..., 0])


def test_read_png_scales_16_bit_grey(tmp_path):
    # Pillow's convert("L") clips a 16-bit grey image at 255 instead of scaling it
    from PIL import Image

    from diffode.images import read_png

    levels = np.arange(8, dtype=np.int64) * 65535 // 7
    Image.fromarray(levels.astype(np.uint16)[None].repeat(2, 0)).save(tmp_path / "g16.png")
    np.testing.assert_array_equal(read_png(tmp_path / "g16.png")[0], np.rint(levels / 257).astype(np.uint8))


def test_read_png_undoes_every_row_filter(tmp_path):
    from diffode.images import read_png

    image_module = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(0)
    # this mix of ramps and noise makes Pillow's encoder use all four row filters (checked by hand:
    # Sub, Up, Average and Paeth each appear)
    ramp = np.add.outer(np.arange(40), np.arange(30)).astype(np.uint8)
    rgb = np.stack([ramp, ramp[::-1], rng.integers(0, 255, ramp.shape, dtype=np.uint8)], axis=2)
    image_module.fromarray(rgb).save(tmp_path / "x.png", format="PNG", optimize=True)
    grey = read_png(tmp_path / "x.png").astype(int)
    expected = np.asarray(image_module.fromarray(rgb).convert("L")).astype(int)
    assert np.abs(grey - expected).max() <= 1


# ----------------------------------------------------------------------------- class labels and guidance


def _npz(path):
    with np.load(path) as archive:
        return archive["arr_0"]


def test_labels_cycle_over_the_seeds_and_follow_them_whatever_the_batch(tmp_path, capsys):
    common = ["sample", "--model", "digits-cond", "--guidance", "3", "--steps", "10"]
    cycled = tmp_path / "cycled.npz"
    text = run([*common, "--label", "0-9", "--seeds", "0-11", "--batch", "5", "--out", str(cycled)], capsys)
    assert "label=0,1,2,3,4,5,6,7,8,9 guidance=3" in text
    whole = tmp_path / "whole.npz"
    run([*common, "--label", "0-9", "--seeds", "0-11", "--out", str(whole)], capsys)
    assert np.array_equal(_npz(cycled), _npz(whole))
    # seeds 10 and 11 are the 11th and 12th: the labels start over at 0 and 1
    for seed, label in ((10, 0), (11, 1), (3, 3)):
        alone = tmp_path / f"{seed}.npz"
        run([*common, "--label", str(label), "--seeds", str(seed), "--out", str(alone)], capsys)
        assert np.array_equal(_npz(alone)[0], _npz(cycled)[seed]), seed


def test_label_lists_and_cycling():
    from diffode.runs import LoadedModel, cycle_labels, parse_labels

    loaded = LoadedModel(
        model=None, schedule=None, prediction="epsilon", sample_shape=(1,), name="m", num_classes=10
    )
    assert parse_labels("7", loaded) == [7] and parse_labels("1,3,5-6", loaded) == [1, 3, 5, 6]
    assert parse_labels(None, loaded) is None and cycle_labels(None, 3) is None
    assert cycle_labels([0, 1, 2], 7).tolist() == [0, 1, 2, 0, 1, 2, 0]


@pytest.mark.skipif(
    "cond" not in inspect.signature(diffode.decode).parameters,
    reason="diffode.encode/decode do not take cond= yet (issue 11, being added to diffode/encoding.py)",
)
def test_interpolate_and_encode_take_labels(tmp_path, capsys):
    common = ["--model", "digits-cond", "--label", "7", "--guidance", "2", "--steps", "8"]
    strip = tmp_path / "strip.npz"
    text = run(["interpolate", "--seeds", "3,7", "--frames", "3", *common, "--out", str(strip)], capsys)
    assert "label=7 guidance=2" in text
    ends = tmp_path / "ends.npz"
    run(["sample", "--seeds", "3,7", *common, "--out", str(ends)], capsys)
    assert np.array_equal(_npz(strip)[[0, -1]], _npz(ends))
    latents = tmp_path / "latents.npz"
    text = run(["encode", str(ends), *common, "--out", str(latents)], capsys)
    assert "label=7 guidance=2" in text and "round trip" in text


@pytest.mark.parametrize(
    "argv, message",
    [
        (["sample", "--model", "digits-cond", "--label", "10"], "class 10 is out of range; bundled"),
        (["sample", "--model", "digits-cond", "--label", "3,12"], "class 12 is out of range"),
        (["sample", "--model", "digits-cond", "--label", "-1"], "--label must be non-negative integers"),
        (["sample", "--label", "3"], "bundled digits model is unconditional; drop --label"),
        (["sample", "--label", "3", "--guidance", "2"], "is unconditional"),
        (["sample", "--model", "digits-cond", "--label", "3", "--guidance", "-1"], "--guidance must be"),
        (["sample", "--model", "digits-cond", "--label", "3", "--guidance", "nan"], "--guidance must be"),
        (["sample", "--model", "digits-cond", "--guidance", "2"], "--guidance 2.0 needs --label"),
        (["encode", "x.npz", "--label", "1"], "is unconditional"),
        (["interpolate", "--seeds", "1,2", "--model", "digits-cond", "--label", "99"], "out of range"),
    ],
)
def test_bad_labels_and_guidance_exit_2_with_one_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("diffode: error:") and message in lines[0], lines
    assert not list(tmp_path.iterdir())


def test_ctrl_c_is_one_line_and_exit_130(tmp_path, capsys, monkeypatch):
    # outputs are atomic, so an interrupted command has nothing to clean up: no traceback
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("diffode.cli.load_model", interrupted)
    out = tmp_path / "x.npz"
    assert main(["sample", "--seeds", "0-3", "--out", str(out), "--no-progress"]) == 130
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("diffode: interrupted; no file was left half-written")
    assert not out.exists()


def test_a_png_of_points_other_than_2_d_is_refused_before_sampling(tmp_path, capsys):
    # a 3-D point model sampled everything, then failed to draw the scatter
    from diffode.checkpoint import save_checkpoint
    from diffode.models import MLP

    save_checkpoint(
        tmp_path / "mlp3", MLP(dim=3, hidden=8, depth=1, emb_dim=8), {"schedule": {"name": "linear"}}
    )
    out = tmp_path / "p.png"
    assert main(["sample", "--model", str(tmp_path / "mlp3"), "--seeds", "0-3", "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert (
        "a PNG holds images or a scatter of 2-D points, and the model makes samples of shape (3,)"
        in captured.err
    )
    assert "NFE" not in captured.out and not out.exists()


# ----------------------------------------------------------------------------- review fixes


def test_an_allocation_failure_is_one_line_and_other_runtime_errors_keep_their_traceback(
    tmp_path, monkeypatch, capsys
):
    from diffode import runs

    def refuse(*args, **kwargs):
        raise RuntimeError(
            "DefaultCPUAllocator: can't allocate memory: you tried to allocate 25600000000 bytes"
        )

    monkeypatch.setattr(runs, "sample_seeds", refuse)
    assert main(["sample", "--seeds", "0", "--steps", "2", "--out", str(tmp_path / "x.npz")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("diffode: error: out of memory (DefaultCPUAllocator")

    def broken(*args, **kwargs):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    monkeypatch.setattr(runs, "sample_seeds", broken)
    with pytest.raises(RuntimeError, match="mat1 and mat2"):
        main(["sample", "--seeds", "0", "--steps", "2", "--out", str(tmp_path / "x.npz")])


def test_sample_reports_what_it_took(tmp_path, capsys):
    # adaptive solvers solve each seed alone: the NFE printed was the last seed's
    def sampled(seeds: str) -> str:
        argv = [
            "sample",
            "--seeds",
            seeds,
            "--steps",
            "3",
            "--solver",
            "bosh3",
            "--out",
            str(tmp_path / "x.npz"),
        ]
        return run([*argv, "--overwrite"], capsys)

    out = sampled("0-2")
    alone = [int(sampled(str(seed)).split("NFE=")[1].split()[0]) for seed in range(3)]
    if len(set(alone)) > 1:
        expected = f"NFE={sum(alone) / 3:.1f} per sample ({min(alone)}-{max(alone)})"
    else:
        expected = f"NFE={alone[0]} "
    assert expected in out, (out, alone)
    # a quadratic spacing drops repeated timesteps: 50 requested, 49 taken
    out = run(
        [
            "sample",
            "--seeds",
            "0",
            "--steps",
            "50",
            "--timesteps",
            "quadratic",
            "--out",
            str(tmp_path / "x.npz"),
            "--overwrite",
        ],
        capsys,
    )
    assert "steps=50 (49 distinct)" in out and "NFE=49 " in out
    # the memory check counts the samples a shard can hold, not --shard-size
    assert (
        main(
            [
                "sample",
                "--seeds",
                "0-3",
                "--steps",
                "2",
                "--outdir",
                str(tmp_path / "shards"),
                "--shard-size",
                "20000000",
                "--no-progress",
            ]
        )
        == 0
    )


def test_encode_writes_what_it_reports_and_each_image_alone_for_adaptive_solvers(tmp_path, capsys):
    from diffode import decode
    from diffode.images import load_images
    from diffode.pretrained import digits

    images = tmp_path / "images.npz"
    run(["sample", "--seeds", "0-2", "--steps", "10", "--out", str(images)], capsys)
    # float64 latents were written in float32, which missed the printed round trip (4e-7 for 3e-15)
    latents = tmp_path / "latents.npz"
    out = run(
        [
            "encode",
            str(images),
            "--steps",
            "20",
            "--method",
            "exact",
            "--dtype",
            "float64",
            "--out",
            str(latents),
        ],
        capsys,
    )
    printed = float(out.split("round trip max abs error ")[1].split(";")[0])
    with np.load(latents) as archive:
        z = torch.from_numpy(archive["latents"])
    assert z.dtype == torch.float64
    model, schedule = digits()
    back = decode(model.double(), schedule, z, steps=20, timesteps="logsnr")
    x0 = load_images([str(images)], (1, 8, 8)).double()
    assert float((back - x0).abs().max()) <= max(printed, 1e-12) * 1.01
    # dopri5 controlled its error over the whole file: image 0's latents depended on the others
    first = tmp_path / "first.npz"
    np.savez(first, arr_0=np.load(images)["arr_0"][:1])
    runs_ = {}
    for name, source in (("all", images), ("one", first)):
        out_file = tmp_path / f"{name}.npz"
        run(["encode", str(source), "--steps", "5", "--solver", "dopri5", "--out", str(out_file)], capsys)
        runs_[name] = np.load(out_file)["latents"][0]
    np.testing.assert_array_equal(runs_["all"], runs_["one"])


def test_pack_refuses_an_inconsistent_manifest_and_names_the_fix_for_a_damaged_shard(tmp_path, capsys):
    folder = tmp_path / "run"
    assert (
        main(
            [
                "sample",
                "--seeds",
                "0-9",
                "--steps",
                "2",
                "--outdir",
                str(folder),
                "--shard-size",
                "5",
                "--no-progress",
            ]
        )
        == 0
    )
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**manifest, "count": 11}))
    capsys.readouterr()
    # pack sized its .npz from the count and wrote a file np.load refuses, printing "packed 11"
    assert main(["pack", str(folder), "--out", str(tmp_path / "all.npz")]) == 2
    assert "inconsistent: its seeds '0-9' are 10, its count says 11" in capsys.readouterr().err
    assert not (tmp_path / "all.npz").exists()
    (folder / "manifest.json").write_text(json.dumps(manifest))
    shard = folder / "seeds-000005-000009.npz"
    shard.write_bytes(shard.read_bytes()[:100])
    assert main(["pack", str(folder), "--out", str(tmp_path / "all.npz")]) == 2
    err = capsys.readouterr().err
    assert "not a readable .npz file" in err and "delete it and rerun the sampling command" in err
