"""The test command also keeps the code base lint-, format- and type-clean."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "args",
    [
        ["ruff", "check", "diffode", "tests", "benchmarks", "notebooks"],
        ["ruff", "format", "--check", "diffode", "tests", "benchmarks", "notebooks"],
        ["mypy", "diffode"],
    ],
    ids=["ruff-lint", "ruff-format", "mypy"],
)
def test_tool_is_clean(args):
    result = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
