"""`saeops` command line: the layer above the operator and the runtime. Bad input prints one
`error:` line and exits 2.

Subcommands import their plane lazily: `saeops validate` and `saeops render` stay fast, and
`saeops operator` never pulls in torch.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from saeops.api import (
    EXIT_BAD_INPUT,
    AnyResource,
    SAETrainingRun,
    SpecError,
    apply_overrides,
    parse_resource,
    read_document,
    set_path,
)
from saeops.api.load import CommandParser, one_line


def _fail(msg: str) -> int:
    print(f"error: {one_line(msg)}", file=sys.stderr)
    return EXIT_BAD_INPUT


def _load(args: argparse.Namespace) -> AnyResource:
    """Read, override (--set, then --output) and validate: --output is validated like the field."""
    doc = apply_overrides(read_document(args.file), getattr(args, "set", None) or [])
    output = getattr(args, "output", None)
    if output is not None:
        # A sweep's trials write under the template's output (one prefix per trial).
        spec = "spec.trialTemplate" if doc.get("kind") == "SAESweep" else "spec"
        set_path(doc, f"{spec}.output.storageUri", output)
    return parse_resource(doc, str(args.file))


def cmd_validate(args: argparse.Namespace) -> int:
    res = _load(args)
    print(f"{args.file}: valid {res.kind} {res.metadata.name}")
    if args.check_model:  # fetches config.json only; checks hook names on the model's backend
        from saeops.runtime.lm.check_cli import check_model

        print(check_model(res))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    res = _load(args)  # bad input fails before torch is imported

    from saeops.runtime.launch import run_resource
    from saeops.runtime.train.identity import prepare_output

    if isinstance(res, SAETrainingRun) and res.spec.trainer.wandb is not None:
        from saeops.runtime.train.wandb_logger import import_wandb

        import_wandb()  # a missing optional package is bad input: refused before the output is touched
    # Before torchrun starts: a refused resume is exit 2, and --force-new deletes once, here.
    prepare_output(res, force_new=args.force_new)
    return run_resource(res, progress=not args.no_progress, metrics_port=args.metrics_port)


def cmd_render(args: argparse.Namespace) -> int:
    res = _load(args)  # bad input fails before the operator's modules are imported

    import yaml

    from saeops.operator.render import render_manifest

    print(yaml.safe_dump_all(render_manifest(res), sort_keys=False), end="")
    return 0


def cmd_crds(args: argparse.Namespace) -> int:
    from saeops.operator.crds import write_crds

    for out in (args.out, *args.also):
        for path in write_crds(Path(out)):
            print(path)
    return 0


def cmd_operator(args: argparse.Namespace) -> int:
    from saeops.operator.cli import run_operator

    return run_operator(args.rest)


def cmd_analyze(args: argparse.Namespace) -> int:
    from saeops.runtime.analysis import main_analyze

    return main_analyze(args.rest)


def cmd_eval(args: argparse.Namespace) -> int:
    from saeops.runtime.evaluate import main_eval

    return main_eval(args.rest)


def cmd_hooks(args: argparse.Namespace) -> int:
    from saeops.runtime.lm.hooks_cli import main_hooks

    return main_hooks(args.rest)


def cmd_cache_inspect(args: argparse.Namespace) -> int:
    from saeops.runtime.cache import CacheError, format_inspection, inspect_cache
    from saeops.runtime.storage import StorageError

    try:
        print(format_inspection(inspect_cache(args.uri)))
    except (CacheError, StorageError) as e:  # one line naming the cache and the fix, exit 2
        return _fail(str(e))
    return 0


def cmd_data_python_docs(args: argparse.Namespace) -> int:
    from saeops.runtime.data import extract_python_docs

    print(extract_python_docs(Path(args.out)))
    return 0


PASSTHROUGH = {
    "analyze": (cmd_analyze, "top activations, feature cards and an HTML report for a run (RUN_URI ...)"),
    "eval": (cmd_eval, "splice a run's dictionary into the model: loss recovered, KL (RUN_URI ...)"),
    "operator": (cmd_operator, "run the kopf operator (see `saeops operator --help`)"),
    "hooks": (cmd_hooks, "hook points of a model on a backend, with widths and equivalents (MODEL ...)"),
}
"""Subcommands that parse their own arguments (and --help)."""


def build_parser() -> argparse.ArgumentParser:
    p = CommandParser(prog="saeops", description="Train sparse dictionaries on LM activations.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    def manifest_cmd(name: str, help: str) -> argparse.ArgumentParser:
        s = sub.add_parser(name, help=help)
        s.add_argument("file", help="manifest (YAML, JSON or TOML)")
        s.add_argument("--set", action="append", metavar="PATH=VALUE",
                       help="override a field by its manifest path, e.g. spec.sae.topK=16")
        return s

    def output_arg(s: argparse.ArgumentParser) -> None:
        s.add_argument("--output", metavar="URI",
                       help="override spec.output.storageUri (a sweep's spec.trialTemplate.output.storageUri)")

    s = manifest_cmd("run", "run a resource (training run, cache, sweep) on this machine")
    output_arg(s)
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.add_argument("--force-new", action="store_true",
                   help="start over in the output: delete a previous run's checkpoints and artifacts there "
                        "(saeops' own files only) instead of resuming it or refusing another run's")
    s.add_argument("--metrics-port", type=int, default=None,
                   help="serve Prometheus /metrics on this port (0: any free port)")
    s.set_defaults(func=cmd_run)
    s = manifest_cmd("validate", "check a manifest")
    output_arg(s)
    s.add_argument("--check-model", action="store_true", help="also read the model's config.json and check the hook names")
    s.set_defaults(func=cmd_validate)
    s = manifest_cmd("render", "print the Kubernetes objects the operator would create (storage must be "
                               "s3:// or an absolute path a pod can mount)")
    output_arg(s)
    s.set_defaults(func=cmd_render)

    s = sub.add_parser("crds", help="generate the CRD YAML files")
    s.add_argument("--out", default="crds", help="output directory")
    s.add_argument("--also", action="append", default=[], metavar="DIR",
                   help="write copies here too (e.g. helm/saeops/crds)")
    s.set_defaults(func=cmd_crds)

    for name, (_, help) in PASSTHROUGH.items():
        # Listed for `saeops --help`; main() hands their arguments over before argparse runs.
        sub.add_parser(name, help=help, add_help=False)

    cache = sub.add_parser("cache", help="activation caches").add_subparsers(dest="cache_cmd", required=True)
    s = cache.add_parser("inspect", help="summarise a cache")
    s.add_argument("uri")
    s.set_defaults(func=cmd_cache_inspect)

    data = sub.add_parser("data", help="datasets").add_subparsers(dest="data_cmd", required=True)
    s = data.add_parser("python-docs", help="extract English text from the Python docs strings")
    s.add_argument("out", help="output .jsonl path")
    s.set_defaults(func=cmd_data_python_docs)
    return p




def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in PASSTHROUGH:
        # These own their argument parsing (and --help); argparse.REMAINDER would eat neither.
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        try:
            return int(PASSTHROUGH[argv[0]][0](argparse.Namespace(rest=argv[1:])) or 0)
        except SpecError as e:
            return _fail(str(e))
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except SpecError as e:
        return _fail(str(e))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
