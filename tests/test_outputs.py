"""The CLI under faults (issue 9): atomic outputs, output paths checked before the work, bounded
sizes, the seed promise for adaptive solvers, unreadable inputs, and argument fuzzing."""

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, PngImagePlugin

from diffode.atomic import atomic_write
from diffode.cli import build_parser, main


def one_error_line(capsys) -> str:
    """The single stderr line of a failed command (and no traceback)."""
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("diffode: error:") and "Traceback" not in err, err
    return lines[0]


def ok(argv, capsys) -> str:
    code = main([*argv, "--no-progress"] if argv[0] == "sample" else argv)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out


def leftovers(folder: Path, keep: set[str]) -> set[str]:
    return {p.name for p in folder.iterdir()} - keep


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """Good and broken input files, and a tiny 2-D (moons) checkpoint."""
    folder = tmp_path_factory.mktemp("inputs")
    assert (
        main(["sample", "--seeds", "0-1", "--steps", "3", "--out", str(folder / "good.npz"), "--no-progress"])
        == 0
    )
    assert (
        main(["sample", "--seeds", "2", "--steps", "3", "--out", str(folder / "one.png"), "--no-progress"])
        == 0
    )
    good, picture = (folder / "good.npz").read_bytes(), (folder / "one.png").read_bytes()
    (folder / "truncated.npz").write_bytes(good[: len(good) // 2])
    (folder / "notzip.npz").write_bytes(b"this is not a zip archive at all" * 4)
    (folder / "truncated.png").write_bytes(picture[: len(picture) // 2])
    np.savez(folder / "empty.npz")
    # a compressed text chunk beyond Pillow's decompression limit: Pillow raises a bare ValueError
    bomb = PngImagePlugin.PngInfo()
    bomb.add_text("note", "a" * (PngImagePlugin.MAX_TEXT_CHUNK + 1), zip=True)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(folder / "bomb.png", pnginfo=bomb)
    np.savez(folder / "noimages.npz", arr_0=np.zeros((0, 8, 8, 1), np.uint8))
    (folder / "folder.npz").mkdir()
    (folder / "existing.npz").write_bytes(good)
    moons = folder / "moons"
    assert (
        main(
            [
                "train",
                "--dataset",
                "moons",
                "--steps",
                "2",
                "--hidden",
                "8",
                "--out",
                str(moons),
                "--no-progress",
            ]
        )
        == 0
    )
    return folder


# ----------------------------------------------------------------------------- 1: atomic outputs


def test_atomic_write_keeps_the_old_file_when_the_block_fails(tmp_path):
    target = tmp_path / "x.bin"
    target.write_bytes(b"good")
    with pytest.raises(RuntimeError), atomic_write(target) as fh:
        fh.write(b"half")
        raise RuntimeError("interrupted")
    assert target.read_bytes() == b"good" and leftovers(tmp_path, {"x.bin"}) == set()
    with atomic_write(target) as fh:
        fh.write(b"new")
    assert target.read_bytes() == b"new" and leftovers(tmp_path, {"x.bin"}) == set()


CHILD = """
import resource, sys
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))  # a full disk, as `ulimit -f` makes one
from diffode.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize(
    "argv, name",
    [
        (["sample", "--seeds", "0-299", "--steps", "1", "--no-progress"], "good.npz"),
        (["sample", "--seeds", "0-99", "--steps", "1", "--no-progress"], "good.png"),
        (["interpolate", "--seeds", "0,1", "--frames", "300", "--steps", "1"], "good.npz"),
    ],
    ids=["sample-npz", "sample-png", "interpolate-npz"],
)
def test_a_failed_write_leaves_the_previous_output_intact(tmp_path, capsys, argv, name):
    out = tmp_path / name
    ok(["sample", "--seeds", "0", "--steps", "2", "--out", str(out)], capsys)
    before = out.read_bytes()
    limit = str(len(before) + 1000)
    result = subprocess.run(
        [sys.executable, "-c", CHILD, limit, *argv, "--out", str(out), "--overwrite"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2, result.stderr
    assert "File too large" in result.stderr and "Traceback" not in result.stderr
    assert out.read_bytes() == before
    assert leftovers(tmp_path, {name}) == set()


# ----------------------------------------------------------------------------- 2: outputs checked first


@pytest.mark.parametrize(
    "out, message",
    [
        ("missing/x.npz", "the folder 'missing' does not exist"),
        ("folder.npz", "is a folder"),
        ("/proc/x.npz", "cannot write in '/proc'"),
        ("x.jpg", "--out must be a file name ending in .png or .npz"),
        ("existing.npz", "exists; pass --overwrite to replace it"),
        # a name the file system takes, but not with the temporary file's 14 extra characters
        ("x" * 248 + ".npz", "File name too long"),
    ],
)
def test_sample_checks_its_output_before_the_work(inputs, capsys, monkeypatch, out, message):
    monkeypatch.chdir(inputs)
    monkeypatch.setattr("diffode.runs.sample_seeds", lambda *a, **k: pytest.fail("sampled before checking"))
    start = time.perf_counter()
    assert main(["sample", "--seeds", "0-199999", "--out", out]) == 2
    assert time.perf_counter() - start < 1.0
    assert message in one_error_line(capsys)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["encode", "good.npz", "--out", "missing/z.npz"], "the folder 'missing' does not exist"),
        (["encode", "good.npz", "--out", "existing.npz"], "--out existing.npz exists"),
        (
            ["encode", "good.npz", "--out", "z.npz", "--recon", "/proc/r.png"],
            "--recon /proc/r.png: cannot write",
        ),
        (["encode", "good.npz", "--out", "z.npz", "--recon", "folder.npz"], "--recon folder.npz is a folder"),
        (["interpolate", "--seeds", "1,2", "--out", "existing.npz"], "exists; pass --overwrite"),
        (["interpolate", "--seeds", "1,2", "--out", "/proc/s.png"], "cannot write in '/proc'"),
        (["demo", "--out", "missing/g.png"], "the folder 'missing' does not exist"),
        (["demo", "--out", "g.npz"], "--out must be a file name ending in .png"),
    ],
)
def test_every_output_is_checked_before_the_work(inputs, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(inputs)
    for name in ("load_model", "sample"):
        monkeypatch.setattr(f"diffode.cli.{name}", lambda *a, **k: pytest.fail("worked before checking"))
    assert main(argv) == 2
    assert message in one_error_line(capsys)


def test_overwrite_replaces_an_existing_output(tmp_path, capsys):
    out = tmp_path / "s.npz"
    ok(["sample", "--seeds", "0", "--steps", "2", "--out", str(out)], capsys)
    ok(["sample", "--seeds", "0-1", "--steps", "2", "--out", str(out), "--overwrite"], capsys)
    with np.load(out) as archive:
        assert archive["arr_0"].shape == (2, 8, 8, 1)


# ----------------------------------------------------------------------------- 4: memory


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["sample", "--seeds", "0-3999999999"],
            "--seeds names 4000000000 seeds; one run samples at most",
        ),
        (["interpolate", "--seeds", "1,2", "--frames", "10001"], "argument --frames: must be at most 10000"),
        (["sample", "--scale", "1000"], "argument --scale: must be at most 64"),
    ],
)
def test_sizes_are_bounded(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert message in one_error_line(capsys)


def test_interpolate_decodes_in_batches(tmp_path, capsys, monkeypatch):
    import diffode.encoding

    sizes = []
    decode = diffode.encoding.decode

    def recording(model, schedule, latents, **kwargs):
        sizes.append(len(latents))
        return decode(model, schedule, latents, **kwargs)

    whole = tmp_path / "whole.npz"
    ok(["interpolate", "--seeds", "3,7", "--frames", "7", "--steps", "3", "--out", str(whole)], capsys)
    monkeypatch.setattr(diffode.encoding, "decode", recording)
    parts = tmp_path / "parts.npz"
    argv = ["interpolate", "--seeds", "3,7", "--frames", "7", "--steps", "3", "--batch", "3"]
    ok([*argv, "--out", str(parts)], capsys)
    assert sizes == [3, 3, 1]
    with np.load(whole) as a, np.load(parts) as b:
        assert np.array_equal(a["arr_0"], b["arr_0"])


# ----------------------------------------------------------------------------- 8: the seed promise


@pytest.mark.parametrize("solver", ["dopri5", "bosh3", "scipy:RK45"])
def test_adaptive_samples_depend_only_on_their_seed(tmp_path, capsys, solver):
    def images(batch):
        out = tmp_path / f"{batch}.npz"
        argv = ["sample", "--solver", solver, "--steps", "2", "--seeds", "0-11", "--batch", str(batch)]
        ok([*argv, "--out", str(out)], capsys)
        with np.load(out) as archive:
            return archive["arr_0"]

    assert np.array_equal(images(1), images(12))


# ----------------------------------------------------------------------------- 12, 13: inputs


@pytest.mark.parametrize(
    "argv, message",
    [
        (["eval", "truncated.npz"], "truncated.npz is not a readable .npz file"),
        # numpy took these bytes for a pickle and suggested allow_pickle=True
        (["eval", "notzip.npz"], "notzip.npz is not a readable .npz file (not a zip archive)"),
        (["eval", "empty.npz"], "empty.npz has no arr_0 array (found nothing)"),
        (["encode", "truncated.npz"], "truncated.npz is not a readable .npz file"),
        (["encode", "notzip.npz"], "notzip.npz is not a readable .npz file"),
        (["encode", "truncated.png"], "truncated.png is not a readable PNG file"),
        (["encode", "bomb.png"], "bomb.png is not a readable PNG file (Decompressed data too large"),
        (["encode", "empty.npz"], "empty.npz has no arr_0 array"),
        (["encode", "noimages.npz"], "no images in noimages.npz"),
        (["encode", "one.png", "--model", "moons"], "not images (C, H, W)"),
        (["encode", "one.png", "--device", "meta"], "--device meta: meta tensors hold no values"),
        (["sample", "--device", "meta"], "--device meta: meta tensors hold no values"),
        (["interpolate", "--images", "truncated.png", "one.png"], "truncated.png is not a readable PNG"),
    ],
)
def test_unreadable_inputs_are_one_line(inputs, capsys, monkeypatch, tmp_path, argv, message):
    monkeypatch.chdir(inputs)
    out = (
        ["--out", str(tmp_path / ("z.npz" if argv[0] == "encode" else "s.png"))] if argv[0] != "eval" else []
    )
    assert main([*argv, *out]) == 2
    assert message in one_error_line(capsys)


def test_encode_refuses_a_recon_it_cannot_write_as_named(inputs, tmp_path, capsys):
    recon = tmp_path / "r.jpg"
    assert (
        main(["encode", str(inputs / "one.png"), "--out", str(tmp_path / "z.npz"), "--recon", str(recon)])
        == 2
    )
    assert "--recon must be a file name ending in .png or .npz" in one_error_line(capsys)
    assert not recon.exists() and not (tmp_path / "z.npz").exists()
    ok(
        [
            "encode",
            str(inputs / "one.png"),
            "--steps",
            "3",
            "--out",
            str(tmp_path / "z.npz"),
            "--recon",
            str(tmp_path / "r.png"),
        ],
        capsys,
    )
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- fuzzing


def subparsers() -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def choices(*values: str) -> st.SearchStrategy[str]:
    return st.sampled_from(values)


# every option of every subcommand: (good values, bad values), small so that examples run fast;
# options with choices take them as the good values; flags are good when absent (FLAG) or when
# present (ON). An option missing here fails the test, so new options get fuzzed too.
OUT = (("o.png", "o.npz"), ("", "o.jpg", "missing/o.npz", "folder.npz", "existing.npz", "/proc/o.png"))
FLAG: tuple[tuple[str, ...], tuple[str, ...]] = ((), ("",))
ON: tuple[tuple[str, ...], tuple[str, ...]] = (("",), ())
VALUES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "--solver": (("euler", "ddim", "heun", "dpmpp-2m", "bdia", "dopri5", "scipy:RK45"), ("nope",)),
    "--steps": (("1", "2", "3"), ("0", "-1")),
    "--eta": (("0",), ("1", "-1", "nan")),
    "--sigma-hat": FLAG,
    "--no-stability-check": FLAG,
    "--seeds": (("0", "0-2", "3,7"), ("5-2", "x")),
    "--batch": (("1", "2"), ("0",)),
    "--device": (("cpu",), ("meta", "nonsense")),
    "--out": OUT,
    "--recon": (("o.png", ""), OUT[1][1:]),
    "--columns": (("0", "2"), ("-1",)),
    "--scale": (("1", "2"), ("0",)),
    "--no-progress": ON,
    "--overwrite": ON,
    "--resume": FLAG,
    "--threads": (("1", "0"), ("-1",)),
    "--model": (("moons",), ("missing", "folder.npz", ".")),
    "--n": (("2", "50"), ("1",)),
    "--seed": (("0", "1"), ("-1",)),
    "--frames": (("2", "3"), ("1",)),
    "--tol": (("1e-3",), ("0", "-1")),
    "--images": (("one.png", "good.npz"), ("truncated.png", "notzip.npz", "missing.png")),
    "--batch-size": (("4",), ("0",)),
    "--lr": (("1e-3",), ("-1",)),
    "--ema-decay": (("0.9",), ("2",)),
    "--channels": (("8,8",), ("a",)),
    "--hidden": (("8",), ("0",)),
    "--checkpoint-every": (("0", "1"), ("-1",)),
    "--outdir": (("run",), ("existing.npz", "/proc/run")),
    "--shard-size": (("1", "2"), ("0",)),
    "--png": (("", "pngs"), ("existing.npz", "/proc/pngs")),
    "--label": (("0", "0-2"), ("10", "x")),
    "--guidance": (("1", "2.5"), ("-1", "nan")),
    "--max-iter": (("5", "50"), ("0",)),
    "--levels": (("0", "17"), ("1", "-1")),
    "--conditional": FLAG,
    "--label-dropout": (("0.1", "0"), ("1", "-0.5")),
}
# options always given (unless the bad one): no example runs for long, none trips on the output
# of the one before (defaults: 50 steps, 64 seeds, 10000 training steps, digits.png)
ALWAYS = {"--steps", "--seeds", "--n", "--out", "--no-progress", "--overwrite", "--tol"}
INPUTS = (("good.npz", "one.png"), ("truncated.npz", "notzip.npz", "empty.npz", "missing.npz"))
# what one command wants differently (a value with spaces stands for several arguments)
OVERRIDES: dict[tuple[str, str], tuple[tuple[str, ...], tuple[str, ...]]] = {
    ("demo", "--out"): (("g.png", ""), ("o.npz", "missing/g.png", "/proc/g.png")),
    ("encode", "--out"): (("z.npz",), OUT[1]),
    ("eval", ""): (("good.npz",), (*INPUTS[1], "one.png")),
    ("interpolate", "--seeds"): (("3,7", "0,1"), ("0-2", "x")),
    ("interpolate", "--images"): (("good.npz", "one.png one.png"), INPUTS[1]),
    ("train", "--out"): (("run",), ("", "existing.npz", "/proc/run")),
    # a whole data split through an adaptive solve takes minutes: the fuzzer reads its files only
    ("likelihood", "--split"): ((), ("bad",)),
    ("likelihood", "--tol"): (("0.1",), ("0", "-1")),
    # --tol is a usage error with --method reverse: given only as the bad value, or never
    ("encode", "--tol"): ((), ("0", "-1", "1e-3")),
    ("train-classifier", "--out"): (("classifier",), ("", "existing.npz", "/proc/run")),
}


def table(action: argparse.Action, command: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    name = max(action.option_strings, key=len) if action.option_strings else ""
    if (command, name) in OVERRIDES:
        return OVERRIDES[command, name]
    if not name:
        return INPUTS
    if action.choices is not None:
        return tuple(str(c) for c in action.choices), ("bad",)
    assert name in VALUES, f"no fuzzing values for {command} {name}"
    return VALUES[name]


@st.composite
def argument_vectors(draw, command: str) -> list[str]:
    """``[command, ...]`` from the subcommand's real options; in about half the vectors one
    option or input gets a bad value (a flag: the opposite of its good state)."""
    parser = subparsers()[command]
    options = [a for a in parser._actions if "--help" not in a.option_strings]
    bad = draw(st.none() | st.sampled_from(options))
    # of each group of options that exclude each other, one is given (two only as the bad case)
    chosen = {id(draw(st.sampled_from(g._group_actions))) for g in parser._mutually_exclusive_groups}
    excluded = {id(a) for g in parser._mutually_exclusive_groups for a in g._group_actions} - chosen
    argv = [command]
    for action in options:
        good, wrong = table(action, command)
        pool = wrong if action is bad and wrong else good
        name = max(action.option_strings, key=len) if action.option_strings else ""
        given = (
            action is bad
            or id(action) in chosen
            or action.required
            or not name
            or (id(action) not in excluded and (name in ALWAYS or draw(st.booleans())))
        )
        if not given or not pool:
            continue
        if action.nargs == 0:
            argv.append(name)
            continue
        count = draw(st.integers(1, 2)) if action.nargs == "+" else 1
        argv += [name] if name else []
        argv += [word for _ in range(count) for word in draw(st.sampled_from(pool)).split(" ")]
    return argv


@contextmanager
def inside(folder: Path) -> Iterator[None]:
    previous = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(previous)
        torch.set_num_threads(1)  # --threads changes a process-wide setting


@pytest.mark.parametrize("command", sorted(subparsers()))
def test_fuzzed_arguments_exit_0_or_2_in_one_line(inputs, command, capsys):
    @settings(max_examples=12)
    @given(argv=argument_vectors(command))
    def check(argv):
        with inside(inputs):
            code = main(argv)
        err = capsys.readouterr().err
        assert code in (0, 2), (argv, err)
        if code == 2:
            assert err.count("\n") == 1 and err.startswith("diffode: error:"), (argv, err)

    check()


def test_a_grid_of_images_checks_its_layout():
    from diffode.images import write_grid

    images = np.zeros((3, 8, 8, 1), dtype=np.uint8)
    for columns, error in ((0, ValueError), (-3, ValueError), (2.0, TypeError)):
        with pytest.raises(error, match="columns must be"):
            write_grid(BytesIO(), images, columns)
    with pytest.raises(ValueError, match=r"images must have shape \(n, H, W, C\)"):
        write_grid(BytesIO(), images[..., 0], 2)
