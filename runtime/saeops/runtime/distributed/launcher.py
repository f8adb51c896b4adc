"""torchrun, with its rendezvous store bound to one address.

torchrun's node 0 serves the rendezvous store (a `TCPStore`) on `--master-port` of *every*
interface. Pods that share a network namespace (host networking, or pods run as containers on
one host) then collide on that port, and a laptop's `saeops run` listens on its LAN. `main`
takes torchrun's own arguments; on node 0 it first listens on `--master-addr` when that is a
literal IP, else on the pod IP (`SAEOPS_POD_IP`, from the downward API), and starts the store
server on that socket (`master_listen_fd`, multi-tenant). torchrun's static rendezvous asks for
a multi-tenant store server on the same port in the same process and gets this one. Port 0
picks a free port (single-node launches), with no window for another process to take it.

Pods run `python -m saeops.runtime.distributed.launcher <torchrun arguments>`; `saeops run`
with `parallelism.data * parallelism.tensor > 1` runs it on 127.0.0.1 (`launch_torchrun`).

`launch_torchrun`: the already-overridden manifest (--set, --output applied) goes to a
temporary JSON file that every worker reads through `saeops-runtime --spec`. SIGTERM/SIGINT
are forwarded to torchrun, which forwards them to the workers; those checkpoint and stop.
torchrun's own exit status cannot say "preempted", so the preemption marker rank 0 leaves in
the checkpoint folder decides between `EXIT_PREEMPTED` and a failure.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from types import FrameType
from typing import Any

from saeops.api import SAETrainingRun
from saeops.runtime.distributed.preemption import EXIT_PREEMPTED, PREEMPTED_MARKER
from saeops.runtime.telemetry import POD_IP_ENV

log = logging.getLogger("saeops.distributed")

LOCAL_ADDR = "127.0.0.1"
STORE_TIMEOUT_S = 900
_held: list[Any] = []  # the listening socket and the store server live as long as the process


def torchrun_command(spec_path: str, procs: int, max_restarts: int, *, progress: bool = True) -> list[str]:
    """The single-node command line: this launcher on 127.0.0.1 with a free port."""
    cmd = [sys.executable, "-m", "saeops.runtime.distributed.launcher", "--nnodes=1", "--node-rank=0",
           f"--nproc-per-node={procs}", f"--max-restarts={max_restarts}", f"--master-addr={LOCAL_ADDR}",
           "--master-port=0", "-m", "saeops.runtime.entrypoint", "--spec", spec_path]
    return cmd if progress else [*cmd, "--no-progress"]


def _literal_ip(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None


def serve_store(addr: str, port: int) -> int:
    """Listen on `addr:port` (0: a free port) and start the rendezvous store server there.

    Returns the bound port. The server is multi-tenant, so torchrun's own `TCPStore(...,
    is_master=True, multi_tenant=True)` on that port in this process reuses it."""
    import torch.distributed as dist

    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((addr, port))
    sock.listen(socket.SOMAXCONN)
    bound = int(sock.getsockname()[1])
    store = dist.TCPStore(addr, bound, None, True, timedelta(seconds=STORE_TIMEOUT_S), wait_for_workers=False,
                          multi_tenant=True, master_listen_fd=sock.fileno())
    _held.extend([sock, store])  # the store uses the socket's descriptor: neither may be collected
    log.info("rendezvous store listening on %s:%d", addr, bound)
    return bound


def _with_port(argv: list[str], port: int) -> list[str]:
    """`argv` with torchrun's --master-port (the first one: later ones belong to the script) set
    to `port`, in either spelling (`=` or a separate value)."""
    for i, arg in enumerate(argv):
        name = arg.split("=", 1)[0]
        if name in ("--master-port", "--master_port"):
            rest = argv[i + 1:] if "=" in arg else argv[i + 2:]
            return [*argv[:i], f"--master-port={port}", *rest]
    return argv


def main(argv: Sequence[str] | None = None) -> int:
    """torchrun with `argv`; node 0 of a static rendezvous serves the store on one address."""
    from torch.distributed import run as torchrun

    args_list = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = torchrun.parse_args(args_list)
    static = not args.standalone and args.rdzv_backend == "static"
    # A literal --master-addr is where the workers connect; a name resolves to the pod IP.
    addr = _literal_ip(args.master_addr) or os.environ.get(POD_IP_ENV)
    if static and str(args.node_rank) == "0" and addr:
        port = serve_store(addr, int(args.master_port))
        if port != int(args.master_port):
            args_list = _with_port(args_list, port)
    elif static and int(args.master_port) == 0:
        raise SystemExit("error: --master-port=0 needs node rank 0 and an IP to listen on")
    torchrun.main(args_list)
    return 0


def _preempted(res: SAETrainingRun) -> bool:
    from saeops.runtime.runner import open_output

    try:
        return open_output(res.spec.output).child("checkpoints").exists(PREEMPTED_MARKER)
    except Exception:  # an unreadable output just means "not known to be preempted"
        return False


def _local_env(env: dict[str, str]) -> dict[str, str]:
    """Workers of a single-machine run talk over loopback (gloo's default follows the hostname,
    which may resolve to a LAN address)."""
    if "GLOO_SOCKET_IFNAME" not in env and "lo" in {name for _, name in socket.if_nameindex()}:
        env["GLOO_SOCKET_IFNAME"] = "lo"
    return env


def launch_torchrun(res: SAETrainingRun, procs: int, *, progress: bool = True,
                    metrics_port: int | None = None) -> int:
    """Run `res` under torchrun with `procs` workers; returns the exit status to report."""
    env = _local_env(dict(os.environ))
    if metrics_port is not None:
        env["SAEOPS_METRICS_PORT"] = str(metrics_port)
    with tempfile.TemporaryDirectory(prefix="saeops-launch-") as tmp:
        spec_path = str(Path(tmp) / "spec.json")
        Path(spec_path).write_text(json.dumps(res.to_manifest()))
        cmd = torchrun_command(spec_path, procs, res.spec.failure_policy.max_restarts, progress=progress)
        log.info("launching %s", " ".join(cmd))
        proc = subprocess.Popen(cmd, env=env)

        def forward(signum: int, frame: FrameType | None) -> None:
            proc.send_signal(signum)

        previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            rc = proc.wait()
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
    if rc != 0 and _preempted(res):
        return EXIT_PREEMPTED
    return rc


if __name__ == "__main__":
    sys.exit(main())
