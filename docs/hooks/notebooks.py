"""MkDocs hook: pages whose sources live outside ``docs/``, added at build time without copies.

- ``notebooks/*.ipynb`` become ``notebooks/<name>/`` pages, rendered with their stored outputs by
  mkdocs-jupyter (``execute: false``). This hook runs before that plugin's ``on_files`` so the
  plugin sees the notebooks as its own.
- ``CHANGELOG.md`` (at the repository root, where packaging tools and readers expect it) becomes
  ``changelog.md``.

Nothing is written into ``docs/``: the repository keeps one copy of each file.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.plugins import event_priority
from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[2]


@event_priority(100)  # before mkdocs-jupyter turns .ipynb files into notebook pages
def on_files(files: Files, config: MkDocsConfig) -> Files:
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        files.append(
            File(
                f"notebooks/{path.name}",
                src_dir=str(ROOT),
                dest_dir=config.site_dir,
                use_directory_urls=config.use_directory_urls,
            )
        )
    files.append(File.generated(config, "changelog.md", abs_src_path=str(ROOT / "CHANGELOG.md")))
    return files
