"""The ``spatialbind`` command: a thin click group.

Subcommands live next to the code they drive (``<package>/commands.py``) and are imported only
when invoked, so ``spatialbind --help`` stays instant and a command's heavy dependencies (torch,
pyrender) load only for that command. Package errors (classes defined in a package's ``errors``
module, and ``common.io.FileError``) become one clean line and exit status 1; so does, as the
last resort, any ``OSError`` that names a file (``common.io.describe``: the path and the
fix). ``--debug`` shows the traceback instead.
"""
from __future__ import annotations

import importlib
import re
import sys

import click

OUR_PACKAGES = ("scenegen", "vlms", "actstore", "probes", "interventions", "study", "organisms",
                "common")

# command name -> "module:attribute"; add a line here to add a command.
COMMANDS: dict[str, str] = {
    "organism": "organisms.commands:organism",
    "generate": "scenegen.commands:generate",
    "show": "scenegen.commands:show",
    "query": "actstore.commands:query",
    "evaluate": "study.commands:evaluate",
    "patch": "interventions.commands:patch",
    "ablate": "interventions.commands:ablate",
    "amplify": "interventions.commands:amplify",
    "model": "vlms.commands:model",
    "extract": "vlms.commands:extract",
    "probe": "probes.commands:probe",
    "demo": "study.demo_commands:demo",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        target = COMMANDS.get(name)
        if target is None:
            return None
        mod, attr = target.split(":")
        return getattr(importlib.import_module(mod), attr)

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        """As click's, except that a usage error (unknown option, bad value, missing argument)
        is one line on stderr naming the command and where to look, still with exit status 2."""
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.UsageError as e:
            where = e.ctx.command_path if e.ctx is not None else (prog_name or self.name)
            click.echo(f"Error: {where}: {e.format_message()} (see '{where} --help')", err=True)
            sys.exit(e.exit_code)
        except click.ClickException as e:
            e.show()
            sys.exit(e.exit_code)
        except click.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)
        # non-standalone click returns an Exit's code (--help, --version: 0) or the command's
        # return value (our commands return None)
        sys.exit(rv if isinstance(rv, int) else 0)

    def invoke(self, ctx):
        argv = [*getattr(ctx, "_protected_args", []), *ctx.args]  # before click consumes them
        try:
            return super().invoke(ctx)
        except Exception as e:  # noqa: BLE001 - re-raised unless it is one of ours
            if ctx.obj and ctx.obj.get("debug"):
                raise
            if _is_ours(e):
                cmd = self.get_command(ctx, ctx.invoked_subcommand) \
                    if ctx.invoked_subcommand else None
                raise click.ClickException(flag_message(str(e), cmd, argv)) from None
            if isinstance(e, OSError) and (e.filename is not None or e.errno == 28):
                from common.io import describe

                raise click.ClickException(describe(e)) from None
            raise


def _flags(command: click.Command | None, argv=None) -> dict[str, str]:
    """parameter name -> flag, for a command (and every subcommand of a group); with ``argv``
    only the options given there (a value from a config file or a default keeps its name)."""
    given = None if argv is None else {a.split("=", 1)[0] for a in argv if a.startswith("-")}
    out: dict[str, str] = {}
    stack = [command] if command is not None else []
    while stack:
        c = stack.pop()
        if isinstance(c, click.Group):
            stack += list(c.commands.values())
        for p in c.params:
            if not isinstance(p, click.Option):
                continue
            longs = [o for o in p.opts if o.startswith("--")] or list(p.opts)
            if given is not None and not given & set(p.opts + p.secondary_opts):
                continue
            for o in longs:
                out.setdefault(o.lstrip("-").replace("-", "_"), longs[0])
            if p.name:
                out.setdefault(p.name, longs[0])
    return out


def flag_message(message: str, command: click.Command | None, argv=None) -> str:
    """A library message speaks of parameters (``layers='0-99': ...``); on the command line it
    names the command's flags instead (``--layers '0-99': ...``), for the options given in
    ``argv`` (all options when None)."""
    flags = _flags(command, argv)
    if not flags:
        return message
    names = "|".join(sorted(map(re.escape, flags), key=len, reverse=True))
    return re.sub(rf"(?<![\w.\-'\"])({names})=",
                  lambda m: f"{flags[m.group(1)]} ", message)


def _is_ours(e: BaseException) -> bool:
    for cls in type(e).__mro__:
        parts = cls.__module__.split(".")
        if parts[0] in OUR_PACKAGES and parts[-1] == "errors":
            return True
        if cls.__module__ == "common.io" and cls.__name__ == "FileError":
            return True
    return False


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
@click.version_option(package_name="spatialbind")
@click.pass_context
def spatialbind(ctx: click.Context, debug: bool) -> None:
    """Study how vision-language models bind objects to spatial positions."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


def main(argv: list[str] | None = None) -> None:
    spatialbind.main(args=argv, prog_name="spatialbind")


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
