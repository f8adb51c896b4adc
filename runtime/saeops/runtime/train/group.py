"""A training group: one activation stream (live model or cache) feeding N dictionaries.

Every member gets the same batches in the same order (the stream of the spec they share:
`saeops.api.groups.stream_key`); the model forward reads the union of their hook points and
stops at the deepest one. Each member has its own spec, optimiser, schedules, metrics,
checkpoints, artifacts and identity (`member.py`). A member that fails (its loss diverges, for
example) stops alone with its own error; the others train on. Resuming restores every member
from its own latest checkpoint; members saved at different steps catch up on the one stream
(a member ahead skips the batches it has trained on), so resume is exact for each.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from tqdm.auto import tqdm

from saeops.api import SAETrainingRun
from saeops.runtime.distributed.context import DistContext, init_distributed
from saeops.runtime.distributed.faults import maybe_fail
from saeops.runtime.distributed.preemption import Preempted, StopFlag
from saeops.runtime.errors import bad_input_types
from saeops.runtime.runner import pick_device
from saeops.runtime.telemetry import RunMetrics
from saeops.runtime.train.member import Member
from saeops.runtime.train.sources import Batch, CacheSource, LiveSource, Source, SourceFactory
from saeops.runtime.train.trainer import Diverged
from saeops.runtime.train.wandb_logger import import_wandb

log = logging.getLogger("saeops.run")

PARALLEL_WRITES = 8
"""Checkpoints of one group written at once (a group holds up to `grouping.maxTrials` members)."""


class SharedSamples:
    """A source whose initialisation samples are drawn once per (size, seed): members of a group
    share the seed, so N members cost one sample's forwards, not N."""

    def __init__(self, src: Source) -> None:
        self.src = src
        self._samples: dict[tuple[int, int], Batch] = {}

    @property
    def lm(self) -> Any:
        return self.src.lm

    def dims(self) -> dict[str, int]:
        return self.src.dims()

    def sample(self, n_tokens: int, seed: int) -> Batch:
        key = (n_tokens, seed)
        if key not in self._samples:
            self._samples[key] = self.src.sample(n_tokens, seed)
        return self._samples[key]

    def stream(self, seed: int, skip_batches: int = 0) -> Any:
        return self.src.stream(seed, skip_batches)

    def release(self) -> None:
        """Every member is initialised: the samples are not needed any more."""
        self._samples.clear()


class GroupJob:
    """Train `runs` (they share one activation stream) in this process, together."""

    def __init__(self, runs: Sequence[SAETrainingRun], *, progress: bool = True, metrics_port: int | None = None,
                 source: SourceFactory | None = None, label: str | None = None, alone_raises: bool = True) -> None:
        """`source` replaces the live/cache source (tests); `label` names the group in logs.
        `alone_raises`: a group of one raises its member's exception as a single run always
        did (False: it is that member's error, as in any group: a sweep's trial)."""
        if not runs:
            raise ValueError("a group needs at least one run")
        self.runs = list(runs)
        self.spec = self.runs[0].spec  # what decides the stream is the same in every member
        self.label = label or self.runs[0].metadata.name
        self.show_progress = progress and self.spec.trainer.progress_bar
        self.metrics_port = metrics_port
        self.source_factory = source
        self.alone_raises = alone_raises
        self.ctx = DistContext()
        self.members: list[Member] = []
        self.metrics: RunMetrics | None = None
        self.bar: Any = None
        self.forwards = 0
        """Batches drawn from the stream (tests count them: one per step, whatever N)."""

    # ---------------------------------------------------------------- pieces

    def _hooks(self) -> list[str]:
        """Every member's hook points, in first-seen order (the forward stops at the deepest)."""
        return list(dict.fromkeys(h for run in self.runs for h in run.spec.sae.hook_points()))

    def _source(self, device: torch.device) -> Source:
        spec, hooks = self.spec, self._hooks()
        # Ranks of one tensor group share a batch: the stream is split by data rank only.
        rank, world_size = self.ctx.data.rank, self.ctx.data.size
        if self.source_factory is not None:
            return self.source_factory(spec, hooks, rank=rank, world_size=world_size)
        if spec.activations.cache_uri or spec.activations.cache_ref:
            return CacheSource(spec, hooks, rank=rank, world_size=world_size)
        return LiveSource(spec, hooks, device, rank=rank, world_size=world_size)

    def _serve_metrics(self) -> None:
        # `saeops run --metrics-port`, or in pods the operator's SAEOPS_METRICS_PORT (rank 0 only).
        # One endpoint; each member's series carry its own run (and hook_point) label.
        first = self.runs[0].metadata
        self.metrics = RunMetrics(first.name, first.namespace or "default")
        for m in self.members:
            if m.spec.metrics.enabled:
                m.metrics = self.metrics.member(m.name, m.run.metadata.namespace or "default")
        port = self.metrics_port if any(m.metrics is not None for m in self.members) else None
        if port is not None:
            bound = self.metrics.serve(port)
            log.info("serving Prometheus metrics on :%d/metrics", bound)

    # ---------------------------------------------------------------- run

    def run_group(self) -> dict[str, Member]:
        """Train every member (resuming each from its latest checkpoint) and write their
        artifacts. Returns the members by name: `result` set, or `error` (it failed alone).
        Raises when the group itself fails (bad input, the stream), and `Preempted` after a
        SIGTERM checkpoint of every member."""
        if any(r.spec.trainer.wandb is not None for r in self.runs):
            import_wandb()  # a missing package fails before any work
        par = self.spec.parallelism
        self.ctx = init_distributed(par.data, par.tensor, pick_device(self.spec.model.device))
        stop = StopFlag().install()
        try:
            self._train(stop)
        except BaseException as e:
            for m in self.members:
                if m.wandb is not None and m.error is None and m.result is None:
                    m.wandb.abort(preempted=isinstance(e, Preempted))
            raise
        finally:
            stop.uninstall()
            if self.bar is not None:
                self.bar.close()
        # Only after a clean finish: after an error, exiting is what tells the other ranks.
        self.ctx.close()
        return {m.key: m for m in self.members}

    def _train(self, stop: StopFlag) -> None:
        ctx = self.ctx
        self.members = [Member(run, ctx) for run in self.runs]
        if len({m.name for m in self.members}) < len(self.members):
            for m in self.members:  # one run's dictionaries (one per hook point) share its name
                m.key = m.hooks[1]
        # A member whose own output or spec is wrong (another run's checkpoints there, a k above
        # its width) fails alone before training; the stream's input failing fails them all.
        self._each(Member.open)
        device = ctx.device if ctx.distributed else pick_device(self.spec.model.device)
        src = SharedSamples(self._source(device))
        dims = src.dims()
        self._each(Member.check_source, src, dims)
        self._each(Member.build, src, dims, device)
        src.release()
        if ctx.is_main:
            self._serve_metrics()
        start = min((m.step for m in self.members if m.active), default=None)
        if start is not None:
            self._loop(src, start, stop)
        for m in self.members:
            if m.error is None:
                self._isolated(m, m.end)
        self._checkpoint([m for m in self.members if m.error is None and m.unsaved])
        for m in self.members:
            if m.error is None:
                self._isolated(m, m.finish)
        ctx.barrier()
        if self.metrics is not None:
            self._linger(stop)
            self.metrics.close()
        failed = [m for m in self.members if m.error is not None]
        if failed and len(failed) == len(self.members):
            raise GroupFailed(self.members)

    def _loop(self, src: Source, start: int, stop: StopFlag) -> None:
        """Batch `index` of the stream goes to every member whose next step is `index`."""
        spec = self.spec
        if self.ctx.is_main and self.show_progress:
            self.bar = tqdm(total=spec.trainer.total_steps * spec.trainer.batch_size,
                            initial=start * spec.trainer.batch_size, unit="tok", unit_scale=True,
                            desc=self.label, dynamic_ncols=True)
        for m in self.members:
            if m.error is None:
                m.trainer.begin()
        index = start
        for batch in src.stream(seed=spec.trainer.seed, skip_batches=start):
            self.forwards += 1
            stepped = [m for m in self.members if m.active and m.step == index]
            for m in stepped:
                self._isolated(m, m.advance, batch)
            index += 1
            self._after_step(index, stepped, stop)
            if not any(m.active for m in self.members):
                break  # not one batch more: a live stream would run the model for it

    def _each(self, fn: Any, *args: Any) -> None:
        """`fn(member, *args)` for every member not failed yet, each failure its own; raises
        `GroupFailed` when none is left."""
        for m in self.members:
            if m.error is None:
                self._isolated(m, fn, m, *args)
        if all(m.error is not None for m in self.members):
            raise GroupFailed(self.members)

    def _isolated(self, m: Member, fn: Any, *args: Any) -> None:
        """Run one member's work; its failure is its own. In a distributed run only a failure
        every rank sees alike (divergence: the loss is reduced first) is isolated; anything
        else fails the group, since the ranks would disagree on who trains on."""
        try:
            fn(*args)
        except (Preempted, KeyboardInterrupt):
            raise
        except Exception as e:
            # A run alone fails as it always did, with its own exception.
            if (self.alone_raises and len(self.members) == 1) or (self.ctx.distributed and not isinstance(e, Diverged)):
                raise
            if not isinstance(e, (Diverged, *bad_input_types())):  # those say it all in one line
                log.exception("%s failed", m.name)
            m.fail(e)

    def _after_step(self, index: int, stepped: list[Member], stop: StopFlag) -> None:
        """Progress; checkpoints every member's interval asks for; on SIGTERM (agreed by all ranks
        at this step boundary) a checkpoint of every member, their preemption markers and
        `Preempted`."""
        if self.bar is not None:
            self.bar.update(index * self.spec.trainer.batch_size - self.bar.n)
            shown = [m for m in stepped if m.values]
            if shown:
                self.bar.set_postfix(l0=f"{shown[0].values['l0']:.1f}",
                                     ev=f"{shown[0].values['explained_variance']:.3f}")
        maybe_fail("step", index)
        stopping = self.ctx.any(stop.is_set)
        # On a stop every member still training or not yet finished saves where it is.
        self._checkpoint([m for m in self.members
                          if m.error is None and ((m in stepped and m.due(False)) or stopping)])
        if stopping:
            for m in self.members:
                if m.error is None:
                    m.mark_preempted()
            raise Preempted(index)

    def _checkpoint(self, due: list[Member]) -> None:
        """Checkpoint the `due` members. In one process their writes run side by side: each is
        mostly storage I/O (an S3 upload of weights and Adam moments, an fsync), so a group's
        checkpoint costs about its largest member's, not the sum. A distributed group writes
        them in turn: a save is a collective every rank must enter in the same order."""
        if len(due) < 2 or self.ctx.distributed:
            for m in due:
                self._isolated(m, m.checkpoint)
            return
        with ThreadPoolExecutor(max_workers=min(len(due), PARALLEL_WRITES), thread_name_prefix="checkpoint") as pool:
            writes = [(m, pool.submit(m.save_checkpoint)) for m in due]
        for m, write in writes:
            # The metrics and W&B updates stay on this thread; a failed write fails its member alone.
            self._isolated(m, lambda write=write, m=m: (write.result(), m.saved()))

    def _linger(self, stop: StopFlag) -> None:
        """Serve the final metrics a while longer (`spec.metrics.lingerSeconds`), until SIGTERM."""
        linger = max(m.spec.metrics.linger_seconds for m in self.members)
        if not linger or self.metrics is None or self.metrics.port is None:
            return
        log.info("serving final metrics for %d s more", linger)
        deadline = time.monotonic() + linger
        while time.monotonic() < deadline and not stop.wait(min(1.0, max(0.0, deadline - time.monotonic()))):
            pass


class GroupFailed(RuntimeError):
    """Every member of a group failed (each with its own error)."""

    def __init__(self, members: Sequence[Member]) -> None:
        self.members = list(members)
        first = self.members[0]
        super().__init__(f"every dictionary of the group failed; {first.name}: {first.error}")




