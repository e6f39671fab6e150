"""Render the CLI reference (docs/cli-reference.md) from the click commands themselves.

`gptmed cli-reference > docs/cli-reference.md` regenerates it; an integration test fails when the
committed file drifts from what the installed commands say.
"""

from __future__ import annotations

import click

__all__ = ["render_cli_reference"]

_HEADER = """# CLI reference

Generated from the commands' own `--help` by `gptmed cli-reference > docs/cli-reference.md`;
`integration_tests/test_docs.py` fails when this file and the commands disagree.
"""


def _walk(cmd: click.Command, path: list[str]) -> list[tuple[list[str], click.Command]]:
    found = [(path, cmd)]
    if isinstance(cmd, click.Group):
        ctx = click.Context(cmd, info_name=path[-1])
        for name in cmd.list_commands(ctx):
            sub = cmd.get_command(ctx, name)
            if sub is not None and not sub.hidden:
                found.extend(_walk(sub, [*path, name]))
    return found


def _help(cmd: click.Command, path: list[str]) -> str:
    parent: click.Context | None = None
    for name in path[:-1]:
        parent = click.Context(click.Group(name), info_name=name, parent=parent)
    ctx = click.Context(cmd, info_name=path[-1], parent=parent, terminal_width=100, max_content_width=100)
    return cmd.get_help(ctx)


def render_cli_reference(commands: dict[str, click.Command]) -> str:
    """Markdown with every command's and subcommand's help, for the given top-level commands."""
    parts = [_HEADER]
    for top in sorted(commands):
        for path, cmd in _walk(commands[top], [top]):
            level = "##" if len(path) == 1 else "###"
            parts.append(f"{level} `{' '.join(path)}`\n\n```text\n{_help(cmd, path).rstrip()}\n```\n")
    return "\n".join(parts)
