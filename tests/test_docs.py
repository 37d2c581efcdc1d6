"""The documentation site: it builds strictly, documents every public name, and its code runs.

- ``mkdocs build --strict`` (into a temporary folder) fails on any broken link, anchor, nav entry,
  cross-reference (including the Sphinx roles of the docstrings) or docstring that griffe cannot
  match to its signature.
- Every name in ``diffode.__all__`` and ``diffode.solvers.__all__`` is rendered in the API pages
  (read from the site's ``objects.inv``), the CLI reference lists every command and option of
  ``diffode.cli.build_parser()``, and every notebook is a page.
- Every relative link and image of ``README.md`` is a file of the repository.
- Every ```python block of ``docs/index.md`` and ``docs/guides/*.md`` runs, each on its own in an
  empty working folder, with warnings as errors. A block directly preceded by the line
  ``<!-- no-run -->`` (or ``<!-- no-run: the reason -->``) is shown but not run: for programs that
  need torchrun or GPUs, used sparingly.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import zlib
from pathlib import Path

import matplotlib
import pytest

import diffode
import diffode.solvers
from diffode.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
NO_RUN = re.compile(r"<!-- no-run(: [^>]*)? -->")
BLOCK = re.compile(r"^```python[^\n]*\n(?P<code>.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(
        # not --quiet: it hides the warnings that --strict turns into a failure
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"
    return out


def inventory(site: Path) -> dict[str, str]:
    """Identifier → page URI, from the Sphinx-format ``objects.inv`` that mkdocstrings writes."""
    raw = (site / "objects.inv").read_bytes()
    body = zlib.decompress(raw.split(b"\n", 4)[4]).decode()
    entries = {}
    for line in body.splitlines():
        match = re.match(r"(?P<name>\S+)\s+\S+:\S+\s+-?\d+\s+(?P<uri>\S+)", line)
        if match:
            entries[match.group("name")] = match.group("uri")
    return entries


def test_site_builds_strictly(site: Path) -> None:
    assert (site / "index.html").is_file()
    assert (site / "api" / "index.html").is_file()


PUBLIC = [("diffode", name) for name in diffode.__all__] + [
    ("diffode.solvers", name) for name in diffode.solvers.__all__
]


@pytest.mark.parametrize(("module", "name"), PUBLIC, ids=[f"{m}.{n}" for m, n in PUBLIC])
def test_public_name_is_in_the_api_reference(site: Path, module: str, name: str) -> None:
    documented = {ident for ident, uri in inventory(site).items() if uri.startswith("api/")}
    obj = getattr(sys.modules[module], name)
    candidates = {f"{module}.{name}"}
    if hasattr(obj, "__module__") and hasattr(obj, "__qualname__"):
        candidates.add(f"{obj.__module__}.{obj.__qualname__}")
    if hasattr(obj, "__spec__") and hasattr(obj, "__name__"):  # a module
        candidates.add(obj.__name__)
    # constants (PREDICTIONS): documented where they are defined
    candidates |= {i for i in documented if i.startswith("diffode.") and i.endswith(f".{name}")}
    assert candidates & documented, f"{module}.{name} is not rendered in docs/api/*.md"


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def test_cli_reference_lists_every_command_and_option(site: Path) -> None:
    page = (site / "cli" / "index.html").read_text()
    commands = _subparsers(build_parser())
    assert commands
    for name, sub in commands.items():
        assert f'id="{name}"' in page, f"no section for 'diffode {name}'"
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):  # the page says once that every command has it
                continue
            for flag in action.option_strings or [action.dest]:
                assert f"<code>{flag}</code>" in page, f"'diffode {name} {flag}' is missing"


def test_every_notebook_is_a_page(site: Path) -> None:
    notebooks = sorted((ROOT / "notebooks").glob("*.ipynb"))
    assert notebooks
    for path in notebooks:
        assert (site / "notebooks" / path.stem / "index.html").is_file(), path.name


def test_changelog_is_a_page(site: Path) -> None:
    assert (site / "changelog" / "index.html").is_file()


README_LINK = re.compile(r"\]\((?P<target>[^)#\s]+)(#[^)]*)?\)")


def test_readme_links_and_images_exist() -> None:
    """Every relative link and image of the README names a file of the repository (on a clean
    checkout, a committed one), so they work on GitHub; the site links the same pages."""
    targets = [m.group("target") for m in README_LINK.finditer((ROOT / "README.md").read_text())]
    relative = [t for t in targets if "://" not in t]
    assert relative
    for target in relative:
        assert (ROOT / target).is_file(), f"README links {target}, which is not a file"


def snippets() -> list[tuple[str, str]]:
    """(id, code) of every runnable ```python block of the index and the guides."""
    found = []
    for path in [DOCS / "index.md", *sorted((DOCS / "guides").glob("*.md"))]:
        text = path.read_text()
        for match in BLOCK.finditer(text):
            before = text[: match.start()].rstrip().splitlines()
            if before and NO_RUN.fullmatch(before[-1].strip()):
                continue
            line = text.count("\n", 0, match.start()) + 1
            found.append((f"{path.relative_to(DOCS)}:{line}", match.group("code")))
    return found


SNIPPETS = snippets()


@pytest.mark.parametrize("code", [code for _, code in SNIPPETS], ids=[ident for ident, _ in SNIPPETS])
def test_snippet_runs(code: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    matplotlib.use("Agg")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "<snippet>", "exec"), {"__name__": "__snippet__"})


def test_docs_hooks_are_lint_and_format_clean() -> None:
    for args in (["check", "docs/hooks"], ["format", "--check", "docs/hooks"]):
        result = subprocess.run(
            [sys.executable, "-m", "ruff", *args], cwd=ROOT, capture_output=True, text=True
        )
        assert result.returncode == 0, result.stdout + result.stderr
