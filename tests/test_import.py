"""``import diffode`` stays light: the optional parts load on first use."""

import subprocess
import sys
from importlib.metadata import version

import diffode

_LAZY = ("diffode.testing", "diffode.study", "diffode.metrics", "diffode.pretrained", "hypothesis")


def test_import_diffode_leaves_the_optional_parts_unloaded():
    # a fresh interpreter: this test process has long imported everything
    code = (
        "import sys, diffode; "
        f"print([m for m in {_LAZY!r} if m in sys.modules]); "
        "diffode.metrics; print('diffode.metrics' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded, after_access = out.stdout.splitlines()
    assert loaded == "[]", f"import diffode loaded {loaded}"
    assert after_access == "True"


def test_lazy_names_stay_public_and_listed():
    for name in ("metrics", "pretrained", "study", "testing"):
        assert name in diffode.__all__ and name in dir(diffode)
        assert getattr(diffode, name).__name__ == f"diffode.{name}"
    assert "NoiseSchedule" in dir(diffode)


def test_version_comes_from_the_package_metadata():
    assert diffode.__version__ == version("diffode")
