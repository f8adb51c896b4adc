"""`saeops-runtime`: the in-pod entry point run under torchrun.

Reads the resource manifest (the operator's ConfigMap `spec.json`) from `--spec PATH` or
the `SAEOPS_SPEC` environment variable (a path, or the JSON itself) and runs it through the
same code path as `saeops run`. Only rank 0 serves /metrics (`SAEOPS_METRICS_PORT`), on the
pod IP when the downward API gives one (`SAEOPS_POD_IP`).

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
from typing import NoReturn

from saeops.api import EXIT_BAD_INPUT, AnyResource, SpecError, load_resource, parse_resource

EXIT_FAILED = 1


def read_spec(path: str | None) -> AnyResource:
    source = path or os.environ.get("SAEOPS_SPEC")
    if not source:
        raise SpecError("no spec: pass --spec PATH or set SAEOPS_SPEC")
    if source.lstrip().startswith("{"):
        return parse_resource(json.loads(source), "SAEOPS_SPEC")
    return load_resource(source)


def error_line(e: BaseException) -> str:
    """One line for the termination message: bad input as is, anything else with its type."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    if isinstance(e, SpecError):
        return f"error: {text}"
    return f"error: {type(e).__name__}: {text}" if text else f"error: {type(e).__name__}"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="saeops-runtime", description=__doc__)
    p.add_argument("--spec", help="manifest path (default: $SAEOPS_SPEC)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s rank{rank} %(levelname)s %(name)s: %(message)s")
    port_env = os.environ.get("SAEOPS_METRICS_PORT")
    metrics_port = int(port_env) if port_env and rank == 0 else None
    from saeops.runtime.launch import run_resource, write_termination_message

    try:
        res = read_spec(args.spec)
        # Pods log to a collector, not a terminal: no progress bar there.
        progress = not args.no_progress and sys.stderr.isatty()
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
