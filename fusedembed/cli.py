"""The ``fusedembed`` command (train, eval, export; embed, search, serve; plugins, list, recipe,
demo). Exit codes: 0 ok, 1 failure (bad recipe, broken plugin,
nothing matched), 2 usage (unknown command, option or kind)."""

import argparse
import sys
from typing import List, Optional, Sequence

from ._version import __version__
from .config import dump, load_recipe
from .errors import UserError, report
from .registry import KINDS, RegistryError, kind_of

OK, FAILURE, USAGE = 0, 1, 2


def _table(rows: List[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1]
                     for r in rows).rstrip() + "\n"


class _Version(argparse.Action):
    """--version: what a bug report needs, the installed version (a wheel's with its variant
    label, 0.1.0+pt214cpu), torch, and the devices the kernels were built for."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, help="show the version, torch and the kernels built, and exit")

    def __call__(self, parser, namespace, values, option_string=None):
        from importlib.metadata import PackageNotFoundError, version

        import torch

        from ._extension import build_info

        try:
            installed = version("fusedembed")
        except PackageNotFoundError:   # a source tree on sys.path, not installed
            installed = __version__
        kernels = ", ".join(build_info()["devices"]) or "none, the pure-PyTorch references run"
        print(f"fusedembed {installed} (torch {torch.__version__}; kernels: {kernels})")
        parser.exit()


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
    failed = manager.failed()
    if args.verbose:
        for info in failed:
            out.write(f"\n--- {info.name} ({info.value}) ---\n{info.traceback}")
    elif failed:
        out.write("(run `fusedembed plugins -v` for the tracebacks)\n")
    return FAILURE if failed else OK


def cmd_list(args, out) -> int:
    from .plugins import get_registry

    kind = kind_of(args.kind)
    registry = get_registry(kind.name)
    entries = registry.entries(args.pattern)
    if not entries:
        print(f"no {kind.plural} match {args.pattern!r}" if args.pattern != "*"
              else f"no {kind.plural} are registered", file=sys.stderr)
        return FAILURE
    # NAME is what a recipe writes: the bare name unless two plugins share it.
    rows = [("NAME", "PLUGIN", "DESCRIPTION")] + [(registry.display_name(e), e.plugin, e.description)
                                                  for e in entries]
    out.write(_table(rows))
    return OK


def cmd_recipe_show(args, out) -> int:
    out.write(dump(load_recipe(args.name, args.overrides)))
    return OK


def cmd_demo(args, out) -> int:
    from .plugins import get_registry

    demos = get_registry("demo")
    if args.name is None:
        if not len(demos):
            print("no demos are registered (install a plugin that has one, e.g. plugins/dualpath)",
                  file=sys.stderr)
            return FAILURE
        rows = [("DEMO", "PLUGIN", "DESCRIPTION")] + [(demos.display_name(e), e.plugin, e.description)
                                                      for e in demos.entries()]
        out.write(_table(rows) + "run one with: fusedembed demo NAME [--help]\n")
        return OK
    code = demos.get(args.name).target(list(args.args))
    return OK if code is None else int(code)


def _default_run_dir(name: str) -> str:
    import time
    from pathlib import Path

    stem = Path(name).stem if name.endswith((".yaml", ".yml")) else name.replace("/", "-")
    return str(Path("runs") / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}")


def cmd_train(args, out) -> int:
    from pathlib import Path

    from .trainer import CheckpointError, NonFiniteLossError, train

    recipe = load_recipe(args.recipe, args.overrides)
    run_dir = args.run_dir or (str(Path(args.resume).parent) if args.resume else _default_run_dir(args.recipe))
    try:
        metrics = train(recipe, run_dir, resume=args.resume, out=lambda line: print(line, file=out, flush=True))
    except (CheckpointError, NonFiniteLossError) as err:
        print(f"fusedembed train: error: {err}", file=sys.stderr)
        return FAILURE
    except KeyboardInterrupt:
        print(f"fusedembed train: interrupted; resume with --resume {Path(run_dir) / 'last.pt'}", file=sys.stderr)
        return 130
    out.write(f"run directory: {run_dir}\n")
    for key, value in metrics.items():
        out.write(f"{key}: {value:.4f}\n")
    return OK


def cmd_eval(args, out) -> int:
    from .trainer import CheckpointError, evaluate

    recipe = load_recipe(args.recipe, args.overrides)
    try:
        metrics = evaluate(recipe, args.checkpoint, split=args.split, device=args.device)
    except CheckpointError as err:
        print(f"fusedembed eval: error: {err}", file=sys.stderr)
        return FAILURE
    for key, value in metrics.items():
        out.write(f"{key}: {value:.4f}\n")
    return OK


def cmd_export(args, out) -> int:
    from .trainer import CheckpointError, export

    try:
        path = export(args.checkpoint, args.out)
    except CheckpointError as err:
        print(f"fusedembed export: error: {err}", file=sys.stderr)
        return FAILURE
    out.write(f"wrote {path} and {path.parent / 'config.yaml'}\n")
    return OK


def _workers() -> int:
    import os

    return min(4, max(0, (os.cpu_count() or 1) - 1))


def cmd_embed(args, out) -> int:
    from .data import DataError
    from .embed import InputError, embed, make_inputs, summary
    from .embedfile import EmbeddingFileError
    from .inference import ModelError, load_embedder

    try:
        embedder = load_embedder(args.model, device=args.device, amp=not args.no_amp)
        inputs = make_inputs(args.input, embedder, args.modality)
        result = embed(embedder, inputs, args.out, batch_size=args.batch_size, workers=args.workers,
                       dtype=args.dtype, progress=None if not args.no_progress else False)
    except (ModelError, InputError, EmbeddingFileError, DataError, ValueError) as err:
        print(f"fusedembed embed: error: {err}", file=sys.stderr)
        return FAILURE
    except KeyboardInterrupt:
        print("fusedembed embed: interrupted; what was embedded is kept: rerun the same command to resume",
              file=sys.stderr)
        return 130
    out.write(summary(result) + "\n")
    return OK if result.total else FAILURE


def cmd_search(args, out) -> int:
    from .data import DataError
    from .embedfile import EmbeddingFile, EmbeddingFileError
    from .index import build_index
    from .inference import ModelError, load_embedder
    from .search import QueryError, check_model, format_hits, parse_queries, search, write_html

    try:
        gallery = EmbeddingFile(args.index)
        queries = parse_queries(args.query)
        model = args.model or gallery.meta.get("model")
        check_model(gallery, model)
        embedder = load_embedder(model, device=args.device)
        index = build_index(gallery, args.index_kind, device=embedder.device, resident=False) \
            if args.index_kind == "exact" else build_index(gallery, args.index_kind)
        hits = search(gallery, embedder, queries, args.k, index)
    except (ModelError, QueryError, EmbeddingFileError, DataError, ImportError, ValueError) as err:
        print(f"fusedembed search: error: {err}", file=sys.stderr)
        return FAILURE
    out.write(format_hits(queries, hits))
    if args.html:
        out.write(f"wrote {write_html(args.html, gallery, queries, hits)}\n")
    return OK


def cmd_serve(args, out) -> int:
    from .embedfile import EmbeddingFileError
    from .inference import ModelError

    try:
        from .serve import run
    except ImportError as err:
        print(f"fusedembed serve: error: {err}", file=sys.stderr)
        return FAILURE
    try:
        run(args.model, args.index, host=args.host, port=args.port, device=args.device,
            index_kind=args.index_kind, max_request_bytes=args.max_request_bytes, out=out)
    except (ModelError, EmbeddingFileError, ImportError, ValueError, OSError) as err:
        print(f"fusedembed serve: error: {err}", file=sys.stderr)
        return FAILURE
    return OK


def _use_commands(sub) -> None:
    """embed, search, serve: using a trained model."""
    em = sub.add_parser(
        "embed", help="embed images, sentences or a dataset split with a trained model",
        description="Embed INPUT with MODEL into OUT (.safetensors or .npy). MODEL: a checkpoint (runs/x/best.pt) "
        "or an exported folder. INPUT: a folder of images (recursive; jpg, jpeg, png, gif, webp), a text file "
        "(one sentence per line) or NAME:SPLIT (a registered dataset, e.g. scenes:test; recipe:test for the "
        "model's recipe's data.test). Rerunning resumes: ids OUT already holds are skipped. Images that "
        "cannot be decoded are skipped and listed in OUT.skipped.txt.")
    em.add_argument("model", metavar="MODEL")
    em.add_argument("input", metavar="INPUT")
    em.add_argument("--out", required=True, metavar="FILE", help="FILE.safetensors or FILE.npy (+ FILE.npy.json)")
    em.add_argument("--modality", choices=("image", "text"), help="of a caption dataset split (default: image)")
    em.add_argument("--dtype", choices=("float32", "float16"), default="float32")
    em.add_argument("--batch-size", type=int, default=64)
    em.add_argument("--workers", type=int, default=_workers(), help="image decoding processes (default: %(default)s)")
    em.add_argument("--device", default=None, help="auto (default: the GPU when there is one), cpu, cuda:N")
    em.add_argument("--no-amp", action="store_true", help="no bf16 autocast on the GPU")
    em.add_argument("--no-progress", action="store_true")
    em.set_defaults(func=cmd_embed)

    se = sub.add_parser(
        "search", help="the nearest gallery items of a sentence or an image",
        description="Search the embedding file INDEX (from fusedembed embed) with QUERY: a sentence, an image "
        "file, or a text file of sentences / image paths (one per line). Prints rank, score and id of the top "
        "K. Text queries on an image gallery are cross-modal (dual-path, alignment models).")
    se.add_argument("index", metavar="INDEX")
    se.add_argument("query", metavar="QUERY")
    se.add_argument("-k", type=int, default=10, help="results per query (default: %(default)s)")
    se.add_argument("--html", metavar="FILE", help="also write a page with thumbnails of the results")
    se.add_argument("--model", help="embed the queries with this model (default: the one that made INDEX)")
    se.add_argument("--index-kind", choices=("exact", "flat", "ivfpq"), default="exact",
                    help="exact: blocked matmul (default); flat, ivfpq: FAISS (fusedembed[faiss])")
    se.add_argument("--device", default=None)
    se.set_defaults(func=cmd_search)

    sv = sub.add_parser(
        "serve", help="an HTTP endpoint: POST /embed and /search",
        description="Serve MODEL and the embedding file INDEX over HTTP (FastAPI + uvicorn: fusedembed[serve]). "
        "POST /embed {\"texts\": [...]} or {\"images\": [base64, ...]}; POST /search {\"text\": ...} or "
        "{\"image\": base64, \"k\": 10}; GET /health. Errors are JSON {\"error\": ...}.")
    sv.add_argument("model", metavar="MODEL")
    sv.add_argument("index", metavar="INDEX")
    sv.add_argument("--host", default="127.0.0.1", help="default: %(default)s (this machine only)")
    sv.add_argument("--port", type=_port, default=8000)
    sv.add_argument("--index-kind", choices=("exact", "flat", "ivfpq"), default="exact")
    sv.add_argument("--max-request-bytes", type=int, default=8 << 20, help="default: 8 MiB")
    sv.add_argument("--device", default=None)
    sv.set_defaults(func=cmd_serve)


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"expected a TCP port in [1, 65535], got {text!r}")
    return port


def _kind(text: str) -> str:
    try:
        return kind_of(text).name
    except RegistryError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fusedembed", description="Image and image-text embeddings: "
                                "plugins, their components and recipes.")
    p.add_argument("--version", action=_Version)
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

    recipe = sub.add_parser("recipe", help="inspect recipes", description="Inspect recipes.")
    recipe_sub = recipe.add_subparsers(dest="action", metavar="ACTION")
    recipe_sub.required = True
    show = recipe_sub.add_parser(
        "show", help="print a resolved recipe",
        description="Print the recipe NAME (a YAML path or a registered <plugin>/<name>) after "
        "_base_ inheritance and OVERRIDES, with every default filled in and every component "
        "checked. Exits 1 if it is invalid.")
    show.add_argument("name", metavar="NAME", help="YAML file or <plugin>/<name>")
    show.add_argument("overrides", metavar="OVERRIDES", nargs="*", help="dotted key=value, e.g. trainer.lr=0.01")
    show.set_defaults(func=cmd_recipe_show)

    demo = sub.add_parser("demo", help="list the demos, or run one end to end on the embedded data",
                          description="Without NAME, list the demos the plugins registered. With NAME, "
                          "run it; ARGS go to the demo (`fusedembed demo NAME --help` shows them).")
    demo.add_argument("name", metavar="NAME", nargs="?")
    demo.add_argument("args", metavar="ARGS", nargs=argparse.REMAINDER)
    demo.set_defaults(func=cmd_demo)

    tr = sub.add_parser("train", help="train a recipe (alone or under torchrun)",
                        description="Train RECIPE (a YAML file or <plugin>/<name>) with OVERRIDES. "
                        "Writes config.yaml, metrics.jsonl, last.pt/best.pt and report.md to the run "
                        "directory. Under `torchrun --nproc_per_node=N` it trains with DDP.")
    tr.add_argument("recipe", metavar="RECIPE")
    tr.add_argument("overrides", metavar="OVERRIDES", nargs="*", help="dotted key=value, e.g. trainer.lr=0.01")
    tr.add_argument("--resume", metavar="PATH", help="checkpoint to continue from (e.g. RUN/last.pt)")
    tr.add_argument("--run-dir", metavar="DIR", help="default: the resumed checkpoint's folder, else "
                    "runs/<recipe>-<time>")
    tr.set_defaults(func=cmd_train)

    ev = sub.add_parser("eval", help="run a recipe's evaluators on a checkpoint",
                        description="Run the evaluators of RECIPE on SPLIT with the weights of a checkpoint.")
    ev.add_argument("recipe", metavar="RECIPE")
    ev.add_argument("overrides", metavar="OVERRIDES", nargs="*")
    ev.add_argument("--checkpoint", required=True, metavar="PATH")
    ev.add_argument("--split", default="test", choices=("train", "val", "test"))
    ev.add_argument("--device", default=None)
    ev.set_defaults(func=cmd_eval)

    ex = sub.add_parser("export", help="write model.safetensors + config.yaml from a checkpoint",
                        description="Write the model weights of CHECKPOINT as OUT/model.safetensors "
                        "and its resolved recipe as OUT/config.yaml.")
    ex.add_argument("checkpoint", metavar="CHECKPOINT")
    ex.add_argument("--out", required=True, metavar="DIR")
    ex.set_defaults(func=cmd_export)
    _use_commands(sub)
    return p


def main(argv: Optional[List[str]] = None, out=None) -> int:
    out = out or sys.stdout
    p = parser()
    try:
        # Overrides may stand anywhere (`train R --run-dir D trainer.lr=0.01`): argparse leaves
        # those after an option unparsed, so they are collected here.
        args, extra = p.parse_known_args(argv)
        stray = [a for a in extra if a.startswith("-") or "=" not in a or not hasattr(args, "overrides")]
        if stray:
            p.error(f"unrecognized arguments: {' '.join(stray)}")
        if extra:
            args.overrides = [*args.overrides, *extra]
    except SystemExit as exit_:  # --help (0) and usage errors (2) exit from argparse
        return exit_.code if isinstance(exit_.code, int) else USAGE
    try:
        return args.func(args, out)
    except (UserError, ValueError) as err:
        if not report(err, f"fusedembed {args.command}"):
            raise
        return FAILURE
