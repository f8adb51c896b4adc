"""A training job: one SAETrainingRun executed in this process. Used by `saeops run` and by
the pods' entry point. A run is a training group (`group.py`): of one dictionary, or of one
dictionary per hook point when the run names several (`sae.perHookPoint`)."""

from __future__ import annotations

from saeops.api import SAETrainingRun
from saeops.api.groups import expand_run
from saeops.runtime.runner import RunResult
from saeops.runtime.train.group import GroupJob
from saeops.runtime.train.member import Member
from saeops.runtime.train.sources import SourceFactory


class TrainingJob:
    """One SAETrainingRun executed in this process."""

    def __init__(self, run: SAETrainingRun, *, progress: bool = True, metrics_port: int | None = None,
                 source: SourceFactory | None = None) -> None:
        """`source` replaces the live/cache source (tests)."""
        self.run = run
        self.group = GroupJob(expand_run(run), progress=progress, metrics_port=metrics_port, source=source,
                              label=run.metadata.name)

    def run_members(self) -> dict[str, Member]:
        """Train every dictionary of the run; by hook point when it names several."""
        return self.group.run_group()

    def run_job(self) -> RunResult:
        """Train (resuming from the latest checkpoint) and write artifacts. In a distributed run
        every rank calls this; rank 0 alone writes. Raises `Preempted` after a SIGTERM
        checkpoint. For a run of several dictionaries, the first one's result (`run_members`
        gives them all)."""
        members = self.run_members()
        first = next(iter(members.values()))
        assert first.result is not None  # a group of one raises its member's error
        return first.result
