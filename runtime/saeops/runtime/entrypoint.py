"""`saeops-runtime`: the in-pod entry point run under torchrun.

Reads the resource manifest (the operator's ConfigMap `spec.json`) from `--spec PATH` or
the `SAEOPS_SPEC` environment variable (a path, or the JSON itself) and runs it through the
same code path as `saeops run`. `--group DIR` trains the SAETrainingRuns in `DIR/*.json`
together from one activation stream (a sweep's group Job); its termination message is
`{"members": {name: {"final", "lastCheckpoint"} | {"error"}}}`. Only rank 0 serves /metrics
(`SAEOPS_METRICS_PORT`), on the pod IP when the downward API gives one (`SAEOPS_POD_IP`).

Under torchrun it joins the process group (`saeops.runtime.distributed`). Exit status: 0 done;
2 bad input; 143 (`EXIT_PREEMPTED`) stopped on SIGTERM after writing a checkpoint (resume by
starting again); anything else is a failure. The outcome is also the container's termination
message (`/dev/termination-log`, or `$SAEOPS_TERMINATION_LOG`): the final metrics as JSON, or
the one `error: ...` line.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from saeops.api import EXIT_BAD_INPUT, AnyResource, SAETrainingRun, SpecError, load_resource, parse_resource
from saeops.runtime.errors import error_line

EXIT_FAILED = 1


def read_spec(path: str | None) -> AnyResource:
    source = path or os.environ.get("SAEOPS_SPEC")
    if not source:
        raise SpecError("no spec: pass --spec PATH or set SAEOPS_SPEC")
    if source.lstrip().startswith("{"):
        return parse_resource(json.loads(source), "SAEOPS_SPEC")
    return load_resource(source)


def read_group(directory: str) -> list[SAETrainingRun]:
    """The members of a group Job: every `*.json` in `directory` (the operator's ConfigMap keys
    `member-000.json`, ...), sorted by name, each an SAETrainingRun manifest."""
    paths = sorted(Path(directory).glob("*.json"))
    if not paths:
        raise SpecError(f"--group {directory}: no *.json member manifests there")
    runs = []
    for path in paths:
        res = load_resource(str(path))
        if not isinstance(res, SAETrainingRun):
            raise SpecError(f"--group {path}: a {res.kind}, not an SAETrainingRun")
        runs.append(res)
    from saeops.api.groups import stream_key

    if len({stream_key(r.spec) for r in runs}) > 1:
        raise SpecError(f"--group {directory}: the members do not share one activation stream "
                        "(model, dataset, activations, batch size, tokens, seed and parallelism must match)")
    return runs


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="saeops-runtime", description=__doc__)
    p.add_argument("--spec", help="manifest path (default: $SAEOPS_SPEC)")
    p.add_argument("--group", metavar="DIR",
                   help="train the SAETrainingRuns in DIR/*.json (sorted by name) as one group")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s rank{rank} %(levelname)s %(name)s: %(message)s")
    port_env = os.environ.get("SAEOPS_METRICS_PORT")
    metrics_port = int(port_env) if port_env and rank == 0 else None
    from saeops.runtime.launch import run_group, run_resource, write_termination_message

    try:
        # Pods log to a collector, not a terminal: no progress bar there.
        progress = not args.no_progress and sys.stderr.isatty()
        if args.group:
            return run_group(read_group(args.group), progress=progress, metrics_port=metrics_port)
        res = read_spec(args.spec)
        return run_resource(res, progress=progress, metrics_port=metrics_port, in_worker=True)
    except SpecError as e:
        line = error_line(e)
        print(line, file=sys.stderr)
        write_termination_message(line)
        return EXIT_BAD_INPUT
    except Exception as e:
        # The traceback goes to the log; the one line is what `kubectl describe` and the CR show.
        logging.getLogger("saeops.run").exception("the run failed")
        line = error_line(e)
        print(line, file=sys.stderr)
        write_termination_message(line)
        return EXIT_FAILED


def exit_now(code: int) -> NoReturn:
    """End a torchrun worker without the interpreter's teardown.

    With gloo, finalization after a clean `destroy_process_group` sometimes destroys a
    still-joinable C++ thread and the process aborts (SIGABRT) after everything was written, so a
    finished rank would count as a failed pod. Outputs are flushed first; nothing is left to do."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    code = main()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        exit_now(code)
    sys.exit(code)
