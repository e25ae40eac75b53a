"""Flag tables of every `localmodel` command, generated from the click definitions.

docs/configuration.md holds one generated block per command between

    <!-- BEGIN GENERATED: localmodel agent -->
    ...
    <!-- END GENERATED: localmodel agent -->

`localmodel dev docs docs/configuration.md` rewrites those blocks; `--check` only says whether
they are current (a test does the same, so a new flag cannot go undocumented).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import click

_BLOCK = re.compile(r"(<!-- BEGIN GENERATED: (?P<name>[a-z -]+) -->\n)(?P<body>.*?)(<!-- END GENERATED: (?P=name) -->)",
                    re.DOTALL)


def commands(group: click.Group, prefix: str = "localmodel") -> Iterator[tuple[str, click.Command]]:
    """Every runnable command below `group`, as ("localmodel dev demo", command), sorted."""
    for name in sorted(group.commands):
        command = group.commands[name]
        if command.hidden:
            continue
        path = f"{prefix} {name}"
        if isinstance(command, click.Group):
            yield from commands(command, path)
        else:
            yield path, command


def _cell(text: str) -> str:
    """One table cell: one line, pipes escaped, and <...> kept visible (not read as HTML)."""
    return " ".join(text.split()).replace("|", "\\|").replace("<", "\\<")


def _value_name(option: click.Option) -> str:
    kind = option.type
    if isinstance(kind, click.Choice):
        return "|".join(str(choice) for choice in kind.choices)
    if isinstance(kind, (click.IntRange, click.FloatRange)) or kind.name in ("integer", "float"):
        return "N"
    if isinstance(kind, click.Path):
        return "DIR" if not kind.file_okay else "FILE" if not kind.dir_okay else "PATH"
    return "TEXT"


def _flags(option: click.Option) -> str:
    if option.is_flag and option.secondary_opts:
        return " / ".join(f"`{flag}`" for flag in (*option.opts, *option.secondary_opts))
    names = sorted(option.opts, key=len)
    shown = ", ".join(f"`{name}`" for name in names[:-1])
    last = f"`{names[-1]}`" if option.is_flag else f"`{names[-1]} {_value_name(option)}`"
    return (f"{shown}, {last}" if shown else last).replace("|", "\\|")  # GFM: even inside code spans


def _default_value(option: click.Option) -> object:
    """The default as click applies it (None when there is none: click 8.2+ uses a sentinel)."""
    value = option.get_default(click.Context(click.Command("docs")), call=True)
    return None if value is None or type(value).__name__ == "Sentinel" else value


def _default(option: click.Option) -> str:
    value = _default_value(option)
    if option.is_flag and option.secondary_opts:
        return f"`{option.opts[0] if value else option.secondary_opts[0]}`"
    if option.is_flag:
        return "on" if value else "off"
    if option.required:
        return "required"
    return "" if value is None else f"`{value}`"


def _env(option: click.Option) -> str:
    names = option.envvar if isinstance(option.envvar, (list, tuple)) else [option.envvar] if option.envvar else []
    return ", ".join(f"`{name}`" for name in names)


def render(path: str, command: click.Command) -> str:
    """The generated block of one command: its summary, arguments and a table of its options."""
    lines = [_cell(command.get_short_help_str(limit=200)), ""]
    arguments = [p for p in command.params if isinstance(p, click.Argument)]
    if arguments:
        usage = " ".join((p.metavar or p.name or "").upper() for p in arguments)
        lines += [f"Usage: `{path} [OPTIONS] {usage}`", ""]
    lines += ["| Flag | Env | Default | Meaning |", "|---|---|---|---|"]
    for param in command.params:
        if isinstance(param, click.Option) and not param.hidden:
            lines.append(f"| {_flags(param)} | {_env(param)} | {_default(param)} | {_cell(param.help or '')} |")
    lines.append("| `-h`, `--help` |  |  | Show the command's help and exit. |")
    return "\n".join(lines) + "\n"


def generated(group: click.Group) -> dict[str, str]:
    return {path: render(path, command) for path, command in commands(group)}


def update(text: str, group: click.Group) -> str:
    """`text` with every generated block rewritten; raises KeyError for a block naming no command."""
    blocks = generated(group)

    def replace(match: re.Match[str]) -> str:
        return match.group(1) + blocks[match.group("name")] + match.group(4)

    return _BLOCK.sub(replace, text)


def blocks_in(text: str) -> set[str]:
    return {match.group("name") for match in _BLOCK.finditer(text)}
