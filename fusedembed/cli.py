"""The ``fusedembed`` command. Exit codes: 0 ok, 1 failure (bad config, broken plugin,
nothing matched), 2 usage (unknown command, option or kind)."""

import argparse
import sys
from typing import List, Optional, Sequence

from ._version import __version__
from .config import ConfigError, dump, load_config
from .registry import KINDS, RegistryError, kind_of

OK, FAILURE, USAGE = 0, 1, 2


def _table(rows: List[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1]
                     for r in rows).rstrip() + "\n"


def cmd_plugins(args, out) -> int:
    from .plugins import get_plugin_manager

    manager = get_plugin_manager()
    rows = [("PLUGIN", "VERSION", "DISTRIBUTION", "STATUS", "REGISTERED / ERROR")]
    for info in manager.plugins.values():
        lines = ([f"{kind}: {', '.join(names)}" for kind, names in info.registered.items()]
                 if info.ok else [info.error or ""]) or ["(nothing)"]
        rows.append((info.name, info.version or "?", info.dist or "?", info.status, lines[0]))
        rows += [("", "", "", "", line) for line in lines[1:]]
    out.write(_table(rows))
    for note in manager.notes:
        out.write(f"note: {note}\n")
    for conflict in manager.conflicts:
        out.write(f"conflict: {conflict}\n")
    failed = manager.failed()
    if args.verbose:
        for info in failed:
            out.write(f"\n--- {info.name} ({info.value}) ---\n{info.traceback}")
    elif failed:
        out.write("(run `fusedembed plugins -v` for the tracebacks)\n")
    return FAILURE if failed or manager.conflicts else OK


def cmd_list(args, out) -> int:
    from .registry import get_registry

    kind = kind_of(args.kind)
    entries = get_registry(kind.name).entries(args.pattern)
    if not entries:
        print(f"no {kind.plural} match {args.pattern!r}" if args.pattern != "*"
              else f"no {kind.plural} are registered", file=sys.stderr)
        return FAILURE
    rows = [("NAME", "PLUGIN", "DESCRIPTION")] + [(e.name, e.plugin, e.description) for e in entries]
    out.write(_table(rows))
    return OK


def cmd_config_show(args, out) -> int:
    out.write(dump(load_config(args.name, args.overrides)))
    return OK


def cmd_demo(args, out) -> int:
    from . import demo

    demo.run(epochs=args.epochs, train_images=args.train_images, device=args.device,
             out=lambda line: print(line, file=out, flush=True))
    return OK


def _kind(text: str) -> str:
    try:
        return kind_of(text).name
    except RegistryError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fusedembed", description="Image and image-text embeddings: "
                                "plugins, their components and recipes.")
    p.add_argument("--version", action="version", version=f"fusedembed {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    plugins = sub.add_parser("plugins", help="list installed plugins, what each registered, load errors",
                             description="Every plugin found in the `fusedembed` entry-point group, "
                             "its version and what it registered. Exits 1 when a plugin failed "
                             "to load or two registered the same name.")
    plugins.add_argument("-v", "--verbose", action="store_true", help="show tracebacks of failed plugins")
    plugins.set_defaults(func=cmd_plugins)

    kinds = ", ".join(k.plural for k in KINDS.values())
    lister = sub.add_parser("list", help="list registered components of one kind",
                            description=f"Registered components of KIND ({kinds}) whose names "
                            f"match PATTERN. Exits 1 when none match.")
    lister.add_argument("kind", metavar="KIND", type=_kind, help=kinds)
    lister.add_argument("pattern", metavar="PATTERN", nargs="?", default="*",
                        help="shell-style wildcard, e.g. 'res*' (default: all)")
    lister.set_defaults(func=cmd_list)

    config = sub.add_parser("config", help="inspect recipes", description="Inspect recipes.")
    config_sub = config.add_subparsers(dest="action", metavar="ACTION")
    config_sub.required = True
    show = config_sub.add_parser(
        "show", help="print a resolved recipe",
        description="Print the recipe NAME (a YAML path or a registered <plugin>/<name>) after "
        "_base_ inheritance and OVERRIDES, with every default filled in and every component "
        "checked. Exits 1 if it is invalid.")
    show.add_argument("name", metavar="NAME", help="YAML file or <plugin>/<name>")
    show.add_argument("overrides", metavar="OVERRIDES", nargs="*", help="dotted key=value, e.g. trainer.lr=0.01")
    show.set_defaults(func=cmd_config_show)

    demo = sub.add_parser("demo", help="train and evaluate a small model on the embedded demo data",
                          description="Generates (once, then cached) the embedded scenes data, trains a "
                          "GeM-pooled CNN with the fused sampled sigmoid loss and prints multi-label "
                          "metrics next to baselines.")
    demo.add_argument("--epochs", type=int, default=8)
    demo.add_argument("--train-images", type=int, default=8000)
    demo.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    demo.set_defaults(func=cmd_demo)
    return p


def main(argv: Optional[List[str]] = None, out=None) -> int:
    out = out or sys.stdout
    try:
        args = parser().parse_args(argv)
    except SystemExit as exit_:  # --help (0) and usage errors (2) exit from argparse
        return exit_.code if isinstance(exit_.code, int) else USAGE
    try:
        return args.func(args, out)
    except (ConfigError, RegistryError) as err:
        print(f"fusedembed {args.command}: error: {err}", file=sys.stderr)
        return FAILURE
