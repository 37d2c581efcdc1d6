"""Checkpoint and config errors name the file and the field (issue 9, item 11)."""

import json
import re

import pytest
import torch

from diffode.checkpoint import load_checkpoint, load_tensors, save_checkpoint, save_tensors
from diffode.models import MLP


@pytest.fixture
def folder(tmp_path):
    torch.manual_seed(0)
    save_checkpoint(tmp_path, MLP(hidden=8, depth=2, emb_dim=8), {"schedule": {"name": "linear"}})
    return tmp_path


def _edit(folder, change):
    config = json.loads((folder / "config.json").read_text())
    change(config)
    (folder / "config.json").write_text(json.dumps(config))


def _unpair(folder):
    """Rewrite the weights without the entry naming their config, as files written before it."""
    save_tensors(folder / "model.safetensors", load_tensors(folder / "model.safetensors"))


def test_weights_and_a_config_written_apart_are_refused(folder):
    # an --overwrite run killed between the two files: its new weights beside the old config
    old_config = (folder / "config.json").read_bytes()
    save_checkpoint(folder, MLP(hidden=8, depth=2, emb_dim=8), {"schedule": {"name": "cosine"}})
    (folder / "config.json").write_bytes(old_config)
    with pytest.raises(ValueError, match="written with a different config.json than the one beside it"):
        load_checkpoint(folder)
    # an edited config is refused alike; weights without the entry are taken as they are
    _edit(folder, lambda c: c.update(note="edited"))
    with pytest.raises(ValueError, match="restore the config written with these weights"):
        load_checkpoint(folder)
    _unpair(folder)
    assert load_checkpoint(folder).config["note"] == "edited"


def test_a_config_rewritten_without_changing_its_content_still_loads(folder):
    # git's autocrlf rewrites line endings on checkout; the pairing is on the content
    text = (folder / "config.json").read_text()
    (folder / "config.json").write_bytes(text.replace("\n", "\r\n").encode())
    assert load_checkpoint(folder).config["format"] == "diffode-checkpoint"


@pytest.mark.parametrize("key", ["architecture", "model", "format_version"])
def test_a_missing_field_is_named_with_its_file(folder, key):
    _edit(folder, lambda c: c.pop(key))
    with pytest.raises(ValueError, match=f"config.json has no '{key}' field") as info:
        load_checkpoint(folder)
    assert str(folder / "config.json") in str(info.value)


@pytest.mark.parametrize("version", ["1", 1.0, None, True])
def test_format_version_of_the_wrong_type_is_named(folder, version):
    _edit(folder, lambda c: c.update(format_version=version))
    with pytest.raises(ValueError, match=r"config.json: field 'format_version' must be int, got"):
        load_checkpoint(folder)


@pytest.mark.parametrize("key", ["architecture", "model"])
def test_a_field_of_the_wrong_type_names_its_file_once(folder, key):
    # the file was named twice ("…/config.json: …/config.json: field 'model' …")
    _edit(folder, lambda c: c.update({key: None}))
    with pytest.raises(ValueError, match=f"field '{key}' must be") as info:
        load_checkpoint(folder)
    assert str(info.value).count("config.json") == 1


def test_a_failed_save_leaves_the_old_checkpoint_whole(folder):
    # the weights were written before the config failed to serialise: new weights beside the
    # old config loaded without error
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    other = MLP(hidden=8, depth=2, emb_dim=8)
    with pytest.raises(ValueError, match="info must be JSON-serialisable"):
        save_checkpoint(folder, other, {"schedule": {"name": "linear"}, "trained_at": torch.tensor(1.0)})
    with pytest.raises(ValueError, match="info must not set 'model': the checkpoint writes them itself"):
        save_checkpoint(folder, other, {"model": "digits v2"})
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_weights_that_do_not_fit_report_the_whole_mismatch(folder):
    _unpair(folder)
    _edit(folder, lambda c: c["model"].update(hidden=16, depth=3))
    with pytest.raises(ValueError, match="model.safetensors do not fit the architecture in") as info:
        load_checkpoint(folder)
    message = str(info.value)
    # every kind of mismatch torch reports, not just the first line
    assert "Missing key(s)" in message and "size mismatch" in message
    assert len(re.findall("size mismatch for", message)) > 1


@pytest.mark.parametrize("text", ["{not json", "", "\xff"])
def test_invalid_json_names_the_file(folder, text):
    (folder / "config.json").write_text(text, encoding="latin-1")
    with pytest.raises(ValueError, match=re.escape(str(folder / "config.json"))):
        load_checkpoint(folder)


def test_a_config_that_is_not_an_object_names_the_file(folder):
    (folder / "config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="config.json must hold a JSON object"):
        load_checkpoint(folder)


def test_prediction_in_a_diffode_config_is_honoured_or_refused(folder):
    assert load_checkpoint(folder).prediction == "epsilon"
    _unpair(folder)
    _edit(folder, lambda c: c.update(prediction="v_prediction"))
    assert load_checkpoint(folder).prediction == "v_prediction"
    _edit(folder, lambda c: c.update(prediction="x0"))
    with pytest.raises(ValueError, match=r"config.json: field 'prediction' must be one of 'epsilon'"):
        load_checkpoint(folder)


def test_a_bad_schedule_field_names_the_file(folder):
    _edit(folder, lambda c: c.update(schedule={"name": "linear", "beta": 1}))
    with pytest.raises(ValueError, match=r"config.json: field 'schedule': schedule config"):
        load_checkpoint(folder)


@pytest.mark.parametrize("scheduler", ["[1, 2]", '"linear"', "{oops"])
def test_a_diffusers_scheduler_config_that_is_not_a_mapping_names_the_file(tmp_path, scheduler):
    pytest.importorskip("diffusers")
    from diffode.diffusers_interop import load_diffusers

    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_text('{"_class_name": "UNet2DModel"}')
    (tmp_path / "scheduler").mkdir()
    path = tmp_path / "scheduler" / "scheduler_config.json"
    path.write_text(scheduler)
    with pytest.raises(ValueError, match=re.escape(str(path))):
        load_diffusers(tmp_path)
