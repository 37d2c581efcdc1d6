"""Griffe extension: Sphinx roles in diffode's docstrings become cross-references in the site.

The docstrings are Google style (mkdocstrings renders them) but name other objects with Sphinx
roles, ``:func:`solve```, ``:class:`~diffode.Guidance```, which Markdown would show as literal
text. Each role whose target resolves inside ``diffode`` (in the scope of the object that owns the
docstring, as Python would resolve the name there, or as an absolute ``diffode.…`` path) becomes
an autorefs link to the object's canonical path; a target outside diffode (``torch.Tensor``)
becomes inline code. A role naming a diffode object that does not exist is a broken reference:
it is logged as a warning, which fails ``mkdocs build --strict``.

It also reads one convention of these docstrings that Google style lacks: parameters that share a
description are listed together (``rtol, atol: tolerances ...``); each becomes its own entry with
that description, so griffe can match them to the signature.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import griffe

logger = logging.getLogger("mkdocs.plugins.diffode.sphinx_roles")

ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|attr|data|exc|obj|const):`(?P<target>[^`]+)`")
PACKAGE = "diffode"
SECTION = re.compile(
    r"^(?P<indent>\s*)(Args|Arguments|Parameters|Keyword Args|Keyword Arguments|Other Parameters):\s*$"
)
GROUPED = re.compile(
    r"^(?P<indent>\s+)(?P<names>\*{0,2}\w+(?:\s*,\s*\*{0,2}\w+)+)(?P<rest>\s*(\([^)]*\))?:(\s.*)?)$"
)


def split_grouped_parameters(text: str) -> str:
    """``a, b: text`` in a parameters section becomes ``a: text`` and ``b: text``."""
    lines = text.splitlines()
    out: list[str] = []
    section_indent: int | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        indent = len(line) - len(line.lstrip())
        if line.strip() and section_indent is not None and indent <= section_indent:
            section_indent = None
        header = SECTION.match(line)
        if header:
            section_indent = len(header.group("indent"))
            out.append(line)
            i += 1
            continue
        grouped = GROUPED.match(line) if section_indent is not None else None
        if not grouped:
            out.append(line)
            i += 1
            continue
        block = [grouped.group("rest")]
        i += 1
        while i < len(lines) and (
            not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > len(grouped.group("indent"))
        ):
            block.append(lines[i])
            i += 1
        while block and not block[-1].strip():
            block.pop()
            i -= 1
        for name in grouped.group("names").split(","):
            out.append(grouped.group("indent") + name.strip() + block[0])
            out.extend(block[1:])
    return "\n".join(out)


def _walk(obj: Any, parts: list[str]) -> Any | None:
    """The object at ``parts`` below ``obj`` (aliases followed), or None; an alias to an object
    outside the loaded package (``Tensor`` imported from torch) is returned unresolved."""
    for part in parts:
        try:
            if obj.is_alias:
                obj = obj.final_target
            obj = obj.members[part]
        except (KeyError, AttributeError, griffe.AliasResolutionError, griffe.CyclicAliasError):
            return None
    try:
        return obj.final_target if obj.is_alias else obj
    except (griffe.AliasResolutionError, griffe.CyclicAliasError):
        return obj


def _resolve(owner: Any, package: Any, name: str) -> Any | None:
    parts = name.split(".")
    if parts[0] == PACKAGE:
        return _walk(package, parts[1:])
    scope = owner
    while scope is not None:  # the owner's members, then its class's, then the module's
        found = _walk(scope, parts)
        if found is not None:
            return found
        scope = scope.parent
    return None


class SphinxRoles(griffe.Extension):
    """Rewrite ``:role:`target``` into ``[`target`][canonical.path]`` after the package is loaded."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        if pkg.name == PACKAGE:
            self._visit(pkg, pkg, set())

    def _visit(self, obj: Any, package: griffe.Module, seen: set[str]) -> None:
        if obj.is_alias or obj.path in seen:
            return
        seen.add(obj.path)
        if obj.docstring is not None:
            text = split_grouped_parameters(obj.docstring.value)
            obj.docstring.value = ROLE.sub(lambda m: self._link(obj, package, m), text)
        for member in obj.members.values():
            self._visit(member, package, seen)

    def _link(self, owner: Any, package: griffe.Module, match: re.Match[str]) -> str:
        target = match.group("target").strip()
        short = target.startswith("~")
        name = target.lstrip("~.").removesuffix("()")
        shown = name.rsplit(".", 1)[-1] if short else name
        found = _resolve(owner, package, name)
        if found is None:
            if name.split(".")[0] == PACKAGE or "." not in name:
                logger.warning("%s: %s names nothing in %s", owner.path, match.group(0), PACKAGE)
            return f"`{shown}`"
        path = found.target_path if found.is_alias else found.path
        # outside diffode, or private (not in the reference): code, not a link
        if path.split(".")[0] != PACKAGE or any(part.startswith("_") for part in path.split(".")):
            return f"`{shown}`"
        return f"[`{shown}`][{path}]"
