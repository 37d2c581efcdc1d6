"""Sampling into shard folders (``diffode sample --outdir``): 2 ranks under torchrun equal one
process, a ``kill -9`` of every process then a restart equals an uninterrupted run, a changed run
is refused, ``pack`` refuses a folder with missing shards, SIGTERM stops cleanly."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import diffode
from diffode import distributed, runs
from diffode.cli import main
from diffode.solvers import Euler

SEEDS = 200
SHARD = 10
# batch 1 makes a shard slow enough (tens of ms) for the kill to land mid-run
RUN = [
    "--seeds",
    f"0-{SEEDS - 1}",
    "--steps",
    "2",
    "--shard-size",
    str(SHARD),
    "--batch",
    "1",
    "--no-progress",
]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def shard_names() -> list[str]:
    return [f"seeds-{s:06d}-{s + SHARD - 1:06d}.npz" for s in range(0, SEEDS, SHARD)]


def shard_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("seeds-*.npz"))


def sample_cli(outdir: Path, *extra: str) -> int:
    return main(["sample", *RUN, "--outdir", str(outdir), *extra])


def torchrun(outdir: Path, **popen) -> subprocess.Popen:
    command = [*TORCHRUN, "-m", "diffode", "sample", *RUN, "--outdir", str(outdir)]
    return subprocess.Popen(
        command, env=ENV, **{"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, **popen}
    )


def read(path: Path, key: str = "arr_0") -> np.ndarray:
    with np.load(path) as archive:
        return archive[key]


def packed(folder: Path, out: Path) -> np.ndarray:
    assert main(["pack", str(folder), "--out", str(out)]) == 0
    return read(out)


def assert_same_shards(folder: Path, reference: Path) -> None:
    """Every shard of ``reference`` is in ``folder`` with the same seeds and bit-identical images,
    and nothing else is (no duplicate, no temporary file)."""
    assert sorted(p.name for p in folder.iterdir()) == sorted(["manifest.json", *shard_names()])
    assert (folder / "manifest.json").read_text() == (reference / "manifest.json").read_text()
    for name in shard_names():
        with np.load(folder / name) as got, np.load(reference / name) as want:
            np.testing.assert_array_equal(got["seeds"], want["seeds"])
            np.testing.assert_array_equal(got["arr_0"], want["arr_0"])


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The uninterrupted single-process run."""
    folder = tmp_path_factory.mktemp("reference") / "run"
    assert sample_cli(folder) == 0
    return folder


def test_single_process_layout_and_pack(reference, tmp_path, capsys):
    assert shard_files(reference) == shard_names()
    images = packed(reference, tmp_path / "all.npz")
    assert images.dtype == np.uint8 and images.shape == (SEEDS, 8, 8, 1)
    # the folder holds what sampling into one .npz gives, seed for seed (here the first 50)
    one = tmp_path / "one.npz"
    assert main(["sample", "--seeds", "0-49", "--steps", "2", "--batch", "1", "--out", str(one)]) == 0
    np.testing.assert_array_equal(images[:50], read(one))
    seeds = np.concatenate([read(reference / name, "seeds") for name in shard_names()])
    np.testing.assert_array_equal(seeds, np.arange(SEEDS))
    capsys.readouterr()


def test_two_ranks_under_torchrun_equal_one_process(reference, tmp_path):
    proc = torchrun(tmp_path / "run")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()
    assert "ranks=2" in out.decode() and "images/s" in out.decode()
    assert_same_shards(tmp_path / "run", reference)


def test_ranks_started_with_different_settings_are_refused_on_every_rank(tmp_path):
    # only rank 0 compared the settings: a node started with other options wrote shards of
    # another run into the folder, and the run exited 0
    script = tmp_path / "mixed.py"
    script.write_text(
        "import os, sys\n"
        "from diffode.cli import main\n"
        "steps = '2' if os.environ['RANK'] == '0' else '3'\n"
        f"argv = {['sample', *RUN]!r}\n"
        "argv[argv.index('--steps') + 1] = steps\n"
        f"sys.exit(main([*argv, '--outdir', {str(tmp_path / 'run')!r}]))\n"
    )
    proc = subprocess.run([*TORCHRUN, str(script)], env=ENV, capture_output=True, timeout=120)
    err = proc.stderr.decode()
    assert proc.returncode != 0
    assert (
        err.count("the ranks were started with different settings (steps is 2 on rank 0 and 3 on rank 1)")
        == 2
    )
    # nothing written: a launch with one setting everywhere is not refused afterwards
    assert not (tmp_path / "run").exists()


def test_each_node_checks_its_own_folder_without_a_shared_file_system(tmp_path):
    # only rank 0 looked at the folder: a node whose local folder held another run's shards took
    # them as done, and packing gave a shard of that other run
    nodes = [tmp_path / "n0", tmp_path / "n1"]
    for node in nodes:
        node.mkdir()
    assert (
        subprocess.run(
            [sys.executable, "-m", "diffode", "sample", *RUN, "--steps", "3", "--outdir", "run"],
            cwd=nodes[1],
            env=ENV,
            capture_output=True,
            timeout=120,
        ).returncode
        == 0
    )
    script = tmp_path / "node.py"
    script.write_text(
        "import os, sys\n"
        "from diffode.cli import main\n"
        f"os.chdir(os.path.join({str(tmp_path)!r}, 'n' + os.environ['RANK']))\n"
        f"sys.exit(main({['sample', *RUN, '--outdir', 'run']!r}))\n"
    )
    proc = subprocess.run([*TORCHRUN, str(script)], env=ENV, capture_output=True, timeout=120)
    assert proc.returncode != 0
    assert proc.stderr.decode().count("on rank 1: run holds another run (steps is 3 there and 2 here") == 2
    # fresh local folders: each node writes its manifest beside its own shards
    shutil.rmtree(nodes[1] / "run")
    proc = subprocess.run([*TORCHRUN, str(script)], env=ENV, capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    for rank, node in enumerate(nodes):
        assert (node / "run" / "manifest.json").is_file()
        assert shard_files(node / "run") == shard_names()[rank::2]


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (torchrun starts each worker in its own session)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def test_kill_9_mid_run_then_restart_equals_uninterrupted(reference, tmp_path, capsys):
    folder, log = tmp_path / "run", tmp_path / "log.txt"
    with log.open("wb") as err:
        proc = torchrun(folder, start_new_session=True, stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + 90
        while len(shard_files(folder)) < 3:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.002)
        # torchrun's group, and each worker's own session: every process of the run dies at once
        victims = [proc.pid, *_children(proc.pid)]
        for pid in victims:
            os.killpg(pid, signal.SIGKILL)
        proc.wait()
    killed_with = set(shard_files(folder))
    assert 3 <= len(killed_with) < len(shard_names()), "the kill came too late to test anything"

    # the restart (here one process: the layout does not depend on the number of ranks)
    assert sample_cli(folder) == 0
    assert f"{len(killed_with)} shard(s) were already there" in capsys.readouterr().out
    assert_same_shards(folder, reference)
    np.testing.assert_array_equal(packed(folder, tmp_path / "a.npz"), packed(reference, tmp_path / "b.npz"))


@pytest.mark.parametrize("change, name", [(["--solver", "heun"], "solver"), (["--steps", "3"], "steps")])
def test_a_changed_run_into_the_folder_is_refused(reference, change, name, capsys):
    before = {p.name: p.stat().st_mtime_ns for p in reference.iterdir()}
    argv = ["sample", *RUN, "--outdir", str(reference), *change]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{name} is " in err and "another run" in err, err
    assert {p.name: p.stat().st_mtime_ns for p in reference.iterdir()} == before


def test_an_equal_run_resumes_with_nothing_to_do(reference, capsys):
    assert sample_cli(reference) == 0
    out = capsys.readouterr().out
    assert "wrote 0 shard(s)" in out and f"{len(shard_names())} shard(s) were already there" in out


def test_pack_does_not_write_over_its_own_shards(reference, tmp_path, capsys):
    import shutil

    folder = tmp_path / "run"
    shutil.copytree(reference, folder)
    shard = folder / shard_names()[0]
    before = shard.read_bytes()
    assert main(["pack", str(folder), "--out", str(shard), "--overwrite"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "is one of" in lines[0] and "own files" in lines[0], lines
    assert shard.read_bytes() == before
    # a --png that is a file is named as the option's
    (tmp_path / "a.png").write_bytes(b"picture")
    assert (
        main(["pack", str(folder), "--out", str(tmp_path / "all.npz"), "--png", str(tmp_path / "a.png")]) == 2
    )
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "--png" in lines[0] and "is a file, not a folder" in lines[0], lines
    assert not (tmp_path / "all.npz").exists()


def test_pack_refuses_missing_shards_and_lists_them(reference, tmp_path, capsys):
    folder = tmp_path / "partial"
    folder.mkdir()
    for p in reference.iterdir():
        if p.name not in ("seeds-000030-000039.npz", "seeds-000100-000109.npz"):
            (folder / p.name).write_bytes(p.read_bytes())
    assert main(["pack", str(folder), "--out", str(tmp_path / "all.npz")]) == 2
    err = capsys.readouterr().err
    assert "misses 2 shard(s), seeds 30-39, 100-109" in err, err
    assert not (tmp_path / "all.npz").exists()
    assert [shard.seeds for shard in distributed.missing_shards(folder)] == [
        tuple(range(30, 40)),
        tuple(range(100, 110)),
    ]
    assert distributed.missing_shards(reference) == []


@pytest.mark.parametrize("below", ["", "sub"])
def test_an_outdir_that_is_a_file_is_refused_before_any_work(below, tmp_path, capsys, monkeypatch):
    file = tmp_path / "exists.npz"
    file.write_bytes(b"mine")

    def no_work(*args, **kwargs):
        raise AssertionError("the model was loaded before --outdir was checked")

    monkeypatch.setattr("diffode.cli.load_model", no_work)
    outdir = file / below if below else file
    assert main(["sample", "--seeds", "0", "--outdir", str(outdir), "--no-progress"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("diffode: error: --outdir "), lines
    assert f"{file} is a file, not a folder; name a new folder" in lines[0], lines
    assert file.read_bytes() == b"mine"
    with pytest.raises(ValueError, match="is a file, not a folder"):
        distributed.prepare_folder(outdir, {})


def test_a_folder_that_is_not_a_run_is_refused_and_only_diffode_temporaries_are_removed(tmp_path):
    # a user's folder with files but no manifest is not taken over (a file named like a shard
    # would have counted as done, and the user's hidden .tmp files were deleted)
    manifest = {
        "format": distributed.FORMAT,
        "seeds": "0-3",
        "count": 4,
        "shard_size": 4,
        "array": {"dtype": "uint8", "shape": [8, 8, 1]},
    }
    user = tmp_path / "user"
    user.mkdir()
    (user / ".notes.tmp").write_text("mine")
    (user / "seeds-000000-000003.npz").write_text("not a shard")
    with pytest.raises(
        ValueError, match="holds files but no manifest.json, so it is not a sample --outdir run"
    ):
        distributed.prepare_folder(user, manifest)
    assert sorted(p.name for p in user.iterdir()) == [".notes.tmp", "seeds-000000-000003.npz"]
    # in a run's folder a killed run's temporaries go, other hidden files stay
    run = tmp_path / "run"
    distributed.prepare_folder(run, manifest)
    for name in (".seeds-000000-000003.npz.0123abcd.tmp", ".manifest.json.89abcdef.tmp", ".mine.tmp"):
        (run / name).write_text("x")
    distributed.prepare_folder(run, manifest)
    assert sorted(p.name for p in run.iterdir()) == [".mine.tmp", "manifest.json"]
    # a kill while a new run's manifest was being written left only its temporary, and every
    # rerun was refused as "holds files but no manifest.json"
    killed = tmp_path / "killed"
    killed.mkdir()
    (killed / ".manifest.json.0a1b2c3d.tmp").write_text("{")
    distributed.prepare_folder(killed, manifest)
    assert sorted(p.name for p in killed.iterdir()) == ["manifest.json"]


def test_sigterm_drops_the_shard_in_flight_and_keeps_the_others(reference, tmp_path):
    folder = tmp_path / "run"
    command = [sys.executable, "-m", "diffode", "sample", *RUN, "--outdir", str(folder)]
    proc = subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while len(shard_files(folder)) < 2:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1].decode()
        time.sleep(0.002)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err.decode()
    assert "stopped by SIGTERM" in err.decode() and "Traceback" not in err.decode()
    left = shard_files(folder)
    assert not list(folder.glob(".*.tmp")) and len(left) < len(shard_names())
    for name in left:
        np.testing.assert_array_equal(read(folder / name), read(reference / name))


def test_python_api_writes_the_same_shards(reference, tmp_path):
    loaded = runs.load_model(None, torch.device("cpu"), torch.float32)
    run = distributed.sample_shards(
        loaded,
        range(5 * SHARD),
        Euler(),
        tmp_path / "api",
        steps=2,
        batch=1,
        shard_size=SHARD,
        progress=False,
    )
    assert (run.shards, run.written, run.samples, run.rank, run.world_size) == (5, 5, 5 * SHARD, 0, 1)
    for name in shard_names()[:5]:
        np.testing.assert_array_equal(read(tmp_path / "api" / name), read(reference / name))


def test_the_python_api_checks_its_arguments_before_the_folder(tmp_path):
    loaded = runs.load_model(None, torch.device("cpu"), torch.float32)
    cases = [
        # negative and 2**32 seeds wrote shards that pack then refused, naming --seeds
        ({"seeds": [-3, -2]}, ValueError, r"seeds must be in \[0, 2\*\*32\) .* got -3 at position 0"),
        ({"seeds": [2**32]}, ValueError, r"got 4294967296 at position 0"),
        ({"seeds": [0.5]}, TypeError, r"seeds must be integers, got 0.5 at position 0"),
        ({"batch": 0}, ValueError, "batch must be at least 1, got 0"),
        ({"shard_size": 2.5}, TypeError, "shard_size must be an int"),
        ({"labels": [1, 2]}, TypeError, r"labels must be a 1-D integer tensor .* torch.tensor\(labels\)"),
        # NaN != NaN: "the ranks were started with different settings (guidance is nan on rank 0 and nan"
        ({"guidance": float("nan")}, ValueError, "guidance must be a finite number >= 0, got nan"),
    ]
    for change, error, message in cases:
        arguments = {"seeds": range(2), "steps": 2, "progress": False, **change}
        seeds = arguments.pop("seeds")
        with pytest.raises(error, match=message):
            distributed.sample_shards(loaded, seeds, Euler(), tmp_path / "api", **arguments)
        assert not (tmp_path / "api").exists()
    # NumPy integers are seeds like any others
    run = distributed.sample_shards(loaded, np.arange(2), Euler(), tmp_path / "np", steps=2, progress=False)
    assert run.written == 1 and distributed.missing_shards(tmp_path / "np") == []


def test_an_explicit_grid_is_recorded_by_its_exact_values(tmp_path):
    # the manifest held str(tensor), 5 significant digits: resume accepted another grid
    loaded = runs.load_model(None, torch.device("cpu"), torch.float32)
    grid = diffode.sigma_grid(loaded.schedule, 3, "karras")
    nudged = grid.clone()
    nudged[1] += 2e-5

    def run(timesteps):
        return distributed.sample_shards(
            loaded,
            range(2 * SHARD),
            Euler(),
            tmp_path / "api",
            steps=None,
            timesteps=timesteps,
            batch=4,
            shard_size=SHARD,
            progress=False,
        )

    assert run(grid).written == 2
    (tmp_path / "api" / shard_names()[0]).unlink()
    with pytest.raises(ValueError, match="holds another run .timesteps is 'sha256:"):
        run(nudged)
    assert run(grid.clone()).written == 1


def test_labels_and_guidance_follow_the_seeds_across_shards(tmp_path, capsys):
    def cond(guidance: str) -> list[str]:
        return [
            "--model",
            "digits-cond",
            "--label",
            "0-9",
            "--guidance",
            guidance,
            "--seeds",
            "0-29",
            "--steps",
            "2",
        ]

    # shards of 7 seeds against 10 cycled labels: each seed keeps the label of its position
    folder = str(tmp_path / "run")
    assert main(["sample", *cond("3"), "--shard-size", "7", "--batch", "7", "--outdir", folder]) == 0
    assert main(["sample", *cond("3"), "--batch", "7", "--out", str(tmp_path / "one.npz")]) == 0
    np.testing.assert_array_equal(packed(tmp_path / "run", tmp_path / "all.npz"), read(tmp_path / "one.npz"))
    # the guidance weight is part of the run
    assert main(["sample", *cond("2"), "--shard-size", "7", "--outdir", folder]) == 2
    assert "guidance is 3.0 there and 2.0 here" in capsys.readouterr().err


@pytest.mark.parametrize("damage", [{"seeds": 5}, {"count": None}, {"shard_size": "4"}, {"array": None}])
def test_a_damaged_manifest_is_one_line(reference, tmp_path, capsys, damage):
    import shutil

    folder = tmp_path / "run"
    shutil.copytree(reference, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    key, value = next(iter(damage.items()))
    if value is None:
        del manifest[key]
    else:
        manifest[key] = value
    (folder / "manifest.json").write_text(json.dumps(manifest))
    assert main(["pack", str(folder), "--out", str(tmp_path / "x.npz")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "manifest.json" in lines[0] and repr(key) in lines[0], lines


def test_a_run_that_failed_before_its_first_shard_does_not_hold_the_folder(tmp_path):
    # its manifest describes no work: the corrected command may take the folder over
    from diffode.solvers import Heun

    loaded = runs.load_model(None, torch.device("cpu"), torch.float32)

    def run(solver, steps):
        return distributed.sample_shards(
            loaded,
            range(SHARD),
            solver,
            tmp_path / "run",
            steps=steps,
            batch=4,
            shard_size=SHARD,
            progress=False,
        )

    # settings that cannot build a grid are refused before the folder is made
    with pytest.raises(ValueError, match="steps must be at least 1"):
        run(Euler(), 0)
    assert not (tmp_path / "run").exists()
    # Heun refuses DDIM's 3-step grid at its first step, after the manifest was written
    with pytest.raises(ValueError, match="Heun"):
        run(Heun(), 3)
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["manifest.json"]
    assert run(Euler(), 3).written == 1
    # once a shard exists, the folder is that run's
    with pytest.raises(ValueError, match="holds another run"):
        run(Euler(), 4)
