import subprocess
import sys

import pytest

from diffode.cli import main


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
