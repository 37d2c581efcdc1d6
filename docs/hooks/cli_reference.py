"""MkDocs hook: the CLI reference page (``cli.md``), generated from ``diffode.cli.build_parser()``.

The page is built from the argparse parsers at every build, so it cannot drift from the command:
every subcommand with its description, usage line and a table of every argument (flags, value,
default, choices, help). Nothing is written into ``docs/``.
"""

from __future__ import annotations

import argparse
import html

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files

INTRO = """\
# CLI reference

Generated from the argparse parsers of `diffode.cli` when the site is built, so it always matches
`diffode COMMAND --help` (every command has `-h`, `--help`). Every command exits with status 2
and one line on standard error for bad arguments, unreadable inputs and unwritable outputs; no
output file is replaced without `--overwrite`. The [guides](index.md#guides) show the commands in
context.

```text
{usage}
```

| command | what it does |
| --- | --- |
{commands}
"""


def _cell(text: str) -> str:
    """Text for a Markdown table cell: HTML-escaped, pipes escaped, on one line."""
    return html.escape(" ".join(text.split()), quote=False).replace("|", "\\|")


def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            return [(name, helps.get(name, ""), sub) for name, sub in action.choices.items()]
    return []


def _value(action: argparse.Action) -> str:
    if action.nargs == 0:
        return ""
    metavar = action.metavar or (action.dest.upper() if action.option_strings else action.dest)
    if action.nargs in ("+", "*"):
        return f"{metavar} …"
    return str(metavar)


def _default(action: argparse.Action) -> str:
    if action.required or action.nargs == 0 or action.default in (None, argparse.SUPPRESS):
        return ""
    if action.default == "":
        return "''"
    return f"`{action.default}`"


def _argument_rows(parser: argparse.ArgumentParser) -> list[str]:
    formatter = parser._get_formatter()
    exclusive = {
        id(action): group for group in parser._mutually_exclusive_groups for action in group._group_actions
    }
    rows = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
            continue
        name = ", ".join(f"`{flag}`" for flag in action.option_strings) or f"`{action.dest}`"
        notes = []
        if action.required or (not action.option_strings and action.nargs not in ("?", "*")):
            notes.append("required")
        if id(action) in exclusive:
            others = [a.option_strings[0] for a in exclusive[id(action)]._group_actions if a is not action]
            notes.append("not with " + ", ".join(others))
        choices = ", ".join(f"`{c}`" for c in action.choices) if action.choices is not None else ""
        help_text = formatter._expand_help(action) if action.help else ""
        if notes:
            help_text = f"{help_text} ({'; '.join(notes)})" if help_text else "; ".join(notes)
        rows.append(
            f"| {name} | {_cell(_value(action))} | {_default(action)} | {choices} | {_cell(help_text)} |"
        )
    return rows


def render(parser: argparse.ArgumentParser) -> str:
    """The Markdown of the CLI reference for ``parser`` (the ``diffode`` parser)."""
    commands = _subcommands(parser)
    text = INTRO.format(
        usage=parser.format_usage().strip(),
        commands="\n".join(f"| [`{name}`](#{name}) | {_cell(helps)} |" for name, helps, _ in commands),
    )
    for name, _, sub in commands:
        text += f"\n## {name}\n\n"
        if sub.description:
            text += " ".join(sub.description.split()) + "\n\n"
        text += "```text\n" + sub.format_usage().strip() + "\n```\n\n"
        text += "| argument | value | default | choices | description |\n| --- | --- | --- | --- | --- |\n"
        text += "\n".join(_argument_rows(sub)) + "\n"
    return text


def on_files(files: Files, config: MkDocsConfig) -> Files:
    from diffode.cli import build_parser

    files.append(File.generated(config, "cli.md", content=render(build_parser())))
    return files
