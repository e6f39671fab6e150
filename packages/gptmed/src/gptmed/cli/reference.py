"""Render the CLI reference (docs/cli-reference.md) from the click commands themselves.

`gptmed cli-reference > docs/cli-reference.md` regenerates it; an integration test fails when the
committed file drifts from what the installed commands say. Each command is documented once: a
component's command under its console-script name (``gptmed-data``), not again as the umbrella's
subcommand (``gptmed data``), which runs the same click command.
"""

from __future__ import annotations

import click

__all__ = ["render_cli_reference"]

_HEADER = """# CLI reference

Generated from the commands' own `--help` by `gptmed cli-reference > docs/cli-reference.md`;
`integration_tests/test_docs.py` fails when this file and the commands disagree.

Every component command is also a subcommand of `gptmed`: `gptmed data convert ...` runs the same
command as `gptmed-data convert ...`, with the same options and behaviour (`gptmed generate` is
`gptmed-generate`, `gptmed train` is `gptmed-train`, and so on). This page documents each command
once, under its console-script name; `gptmed`'s own commands are `pipeline` and `quickstart`.
"""


def _walk(
    cmd: click.Command, ctx: click.Context, skip: frozenset[str] = frozenset()
) -> list[tuple[click.Context, click.Command]]:
    """``cmd`` and its visible subcommands (but the names in ``skip``), depth first, each with the
    context it runs in (which carries the command's ``context_settings``, e.g. ``-h``, and inherits
    its parents')."""
    found = [(ctx, cmd)]
    if isinstance(cmd, click.Group):
        for name in cmd.list_commands(ctx):
            if name in skip:
                continue
            sub = cmd.get_command(ctx, name)
            if sub is not None and not sub.hidden:
                found.extend(_walk(sub, _context(sub, name, ctx)))
    return found


def _context(cmd: click.Command, name: str, parent: click.Context | None) -> click.Context:
    settings = {**cmd.context_settings, "terminal_width": 100, "max_content_width": 100}
    return click.Context(cmd, info_name=name, parent=parent, **settings)


def render_cli_reference(commands: dict[str, click.Command]) -> str:
    """Markdown with every command's and subcommand's help, for the given top-level commands.

    ``commands`` maps each top-level name (``gptmed``, ``gptmed-data``, ...) to its click command.
    A subcommand ``X`` of ``gptmed`` whose console script ``gptmed-X`` is also given is documented
    only there.
    """
    parts = [_HEADER]
    skip = frozenset(name[len("gptmed-") :] for name in commands if name.startswith("gptmed-"))
    for top in sorted(commands):
        for ctx, cmd in _walk(commands[top], _context(commands[top], top, None), skip):
            level = "##" if ctx.parent is None else "###"
            help_text = cmd.get_help(ctx).rstrip()
            parts.append(f"{level} `{ctx.command_path}`\n\n```text\n{help_text}\n```\n")
    return "\n".join(parts)
