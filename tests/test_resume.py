"""Training runs never clobber a folder and resume exactly (issue 9, item 3)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from diffode.checkpoint import TRAINING_STATE, load_tensors, load_training_state
from diffode.cli import main
from diffode.train import TrainConfig, train

STEPS = 120
ARGS = ["train", "--dataset", "moons", "--steps", str(STEPS), "--batch-size", "32", "--hidden", "16"]
ARGS += ["--checkpoint-every", "20", "--threads", "1", "--no-progress"]
# the interrupted child sleeps 20 ms per step, so the kill lands mid-run, well after the first
# checkpoint and well before the last; sleeping changes timing only, never a number
SLOW_CHILD = """
import sys, time
import diffode.train as tr
loss = tr.ddpm_loss
tr.ddpm_loss = lambda *a: (time.sleep(0.02), loss(*a))[1]
from diffode.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _cli(*args: str) -> None:
    done = subprocess.run([sys.executable, "-m", "diffode", *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_a_killed_and_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(tmp_path):
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    child = subprocess.Popen([sys.executable, "-c", SLOW_CHILD, *ARGS, "--out", str(killed)])
    try:
        deadline = time.monotonic() + 120
        while not (killed / TRAINING_STATE).is_file():
            assert child.poll() is None and time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.005)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait()
    reached = load_training_state(killed).info["step"]
    assert 0 < reached < STEPS
    _cli(*ARGS, "--out", str(killed), "--resume")
    _cli(*ARGS, "--out", str(whole))
    resumed, uninterrupted = load_training_state(killed), load_training_state(whole)
    assert resumed.info["step"] == uninterrupted.info["step"] == STEPS  # --steps is the total
    assert resumed.info["losses"] == uninterrupted.info["losses"]
    # on the CPU a resumed run repeats the uninterrupted one bit for bit
    for key, value in uninterrupted.tensors.items():  # raw and EMA weights, optimiser, RNGs
        assert torch.equal(resumed.tensors[key], value), key
    sampled = load_tensors(killed / "model.safetensors")
    for key, value in load_tensors(whole / "model.safetensors").items():
        assert torch.equal(sampled[key], value), key
    assert json.loads((killed / "config.json").read_text())["step"] == STEPS


def _tiny(**kw):
    model = {"hidden": 16, "depth": 1, "emb_dim": 8}
    return TrainConfig(dataset="moons", batch_size=16, n_points=64, model=model, warmup=2, **kw)


def test_resuming_a_finished_run_changes_nothing(tmp_path):
    full = train(_tiny(steps=12, checkpoint_every=5), tmp_path / "a", progress=False)
    stamp = (tmp_path / "a" / TRAINING_STATE).stat().st_mtime_ns
    again = train(_tiny(steps=12, checkpoint_every=5), tmp_path / "a", progress=False, resume=True)
    assert all(torch.equal(again.model.state_dict()[k], v) for k, v in full.model.state_dict().items())
    assert again.losses == full.losses
    assert (tmp_path / "a" / TRAINING_STATE).stat().st_mtime_ns == stamp


def test_a_run_stopped_before_its_final_model_is_written_writes_it_on_resume(tmp_path, monkeypatch):
    # the final training state is written first; a stop before the model's files leaves
    # config.json at the last periodic checkpoint, and resuming must bring it up to the end
    import diffode.train as tr

    full = train(_tiny(steps=12, checkpoint_every=5), tmp_path / "whole", progress=False)
    real = tr.save_checkpoint

    def stop_at_the_end(folder, model, info):
        if info["step"] == 12:
            raise KeyboardInterrupt
        return real(folder, model, info)

    monkeypatch.setattr(tr, "save_checkpoint", stop_at_the_end)
    with pytest.raises(KeyboardInterrupt):
        train(_tiny(steps=12, checkpoint_every=5), tmp_path / "cut", progress=False)
    assert json.loads((tmp_path / "cut" / "config.json").read_text())["step"] == 10
    monkeypatch.setattr(tr, "save_checkpoint", real)
    train(_tiny(steps=12, checkpoint_every=5), tmp_path / "cut", progress=False, resume=True)
    assert json.loads((tmp_path / "cut" / "config.json").read_text())["step"] == 12
    written = load_tensors(tmp_path / "cut" / "model.safetensors")
    for key, value in full.model.state_dict().items():
        torch.testing.assert_close(written[key], value, rtol=0, atol=1e-6, msg=key)


@pytest.mark.parametrize(
    "setup, kwargs, message",
    [
        ("checkpoint", {}, "already holds a checkpoint; pass --resume to continue that run, --overwrite"),
        ("other", {}, "already holds other files"),
        ("file", {}, "is a file, not a folder"),
        ("empty-name", {}, "out must name a folder for the checkpoint, got ''"),
        ("missing", {"resume": True}, "holds no training state"),
        ("checkpoint", {"resume": True, "overwrite": True}, "resume and overwrite exclude each other"),
    ],
)
def test_training_refuses_to_clobber_or_to_resume_nothing(tmp_path, setup, kwargs, message):
    out: Path | str = tmp_path / "run"
    if setup == "checkpoint":
        train(_tiny(steps=2), out, progress=False)
    elif setup == "other":
        out.mkdir()
        (out / "notes.txt").write_text("keep me")
    elif setup == "file":
        out.write_text("x")
    elif setup == "empty-name":
        out = ""
    before = sorted(p.name for p in tmp_path.rglob("*"))
    with pytest.raises(ValueError, match=message):
        train(_tiny(steps=2), out, progress=False, **kwargs)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_resume_refuses_other_settings_and_overwrite_starts_over(tmp_path):
    out = tmp_path / "run"
    train(_tiny(steps=4), out, progress=False)
    with pytest.raises(ValueError, match=r"other settings \(lr: checkpoint 0.002, given 0.001\)"):
        train(_tiny(steps=4, lr=1e-3), out, progress=False, resume=True)
    (out / "notes.txt").write_text("keep me")
    train(_tiny(steps=3), out, progress=False, overwrite=True)
    assert load_training_state(out).info["step"] == 3 and (out / "notes.txt").read_text() == "keep me"


def test_cli_train_refuses_an_existing_checkpoint_with_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    train(_tiny(steps=2), out, progress=False)
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    assert main([*ARGS, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "already holds a checkpoint" in err and len(err.splitlines()) == 1
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp


def test_a_damaged_training_state_is_a_value_error(tmp_path):
    from safetensors.torch import load_file, save_file

    train(_tiny(steps=6, checkpoint_every=3), tmp_path / "a", progress=False)
    path = tmp_path / "a" / TRAINING_STATE
    from safetensors import safe_open

    with safe_open(path, framework="pt") as fh:
        metadata = dict(fh.metadata())
    key = next(iter(metadata))
    info = json.loads(metadata[key])
    del info["config"]
    save_file(load_file(path), path, metadata={key: json.dumps(info)})
    with pytest.raises(ValueError, match="has no 'config' field"):
        train(_tiny(steps=6, checkpoint_every=3), tmp_path / "a", progress=False, resume=True)


def test_a_diverging_run_is_refused_and_overwrite_keeps_the_old_checkpoint_until_replaced(tmp_path):
    # a learning rate of 1e4 sends the loss to NaN within 10 steps: the run stops with a
    # ValueError naming the option instead of writing a model that samples NaN (it exited 0)
    out = tmp_path / "run"
    train(_tiny(steps=3), out, progress=False)
    old = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(ValueError, match=r"training diverged: .*lr=10000 now; CLI --lr"):
        train(_tiny(steps=40, lr=1e4), out, progress=False, overwrite=True, log_every=10)
    # --overwrite removed the old checkpoint before the new run had one; now it stays until
    # the new run's checkpoints replace it
    assert {p.name: p.read_bytes() for p in out.iterdir()} == old
    # a schedule it refuses is found before the folder is touched
    bad = TrainConfig(dataset="moons", steps=3, schedule={"name": "linear", "T": 1})
    with pytest.raises(ValueError, match="T must be at least 2"):
        train(bad, out, progress=False, overwrite=True)
    with pytest.raises(ValueError, match="T must be at least 2"):
        train(bad, tmp_path / "new", progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == old and not (tmp_path / "new").exists()


def test_a_config_with_tuples_resumes(tmp_path):
    # the stored config is JSON, where (8, 16) became [8, 16]: resuming compared them unequal
    model = {"hidden": 16, "depth": 1, "emb_dim": 8}
    config = TrainConfig(
        dataset="moons", batch_size=16, n_points=64, model=model, steps=4, checkpoint_every=2
    )
    train(config, tmp_path / "a", progress=False)
    digits = TrainConfig(
        dataset="digits", steps=2, batch_size=4, model={"channels": (8, 8)}, checkpoint_every=1
    )
    train(digits, tmp_path / "b", progress=False)
    train(digits, tmp_path / "b", progress=False, resume=True)


def test_a_damaged_training_state_is_one_clear_error(tmp_path):
    # fields that check_fields does not reach raised KeyError or RuntimeError (a traceback)
    from diffode.checkpoint import save_training_state

    out = tmp_path / "run"
    train(_tiny(steps=10, checkpoint_every=5), out, progress=False)
    good = load_training_state(out)
    for damage in ("scheduler", "optimizer", "generator"):
        state = load_training_state(out)
        if damage == "generator":
            state.tensors["rng/generator"] = state.tensors["rng/generator"][:10]
        else:
            state.info[damage] = {}
        save_training_state(out, state)
        with pytest.raises(ValueError, match="training_state.safetensors: the training state is damaged"):
            train(_tiny(steps=10, checkpoint_every=5), out, progress=False, resume=True)
        save_training_state(out, good)
