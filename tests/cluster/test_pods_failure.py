"""A run whose pods cannot work (the model path is not in the image): every attempt's pod fails
with the runtime's one-line error as its termination message, the operator recreates the Job
up to `failurePolicy.maxRestarts`, and the CR ends Failed with that line as its message."""

from __future__ import annotations

import pytest

from tests.cluster import manifests
from tests.cluster.conftest import Cluster

MISSING = "/opt/models/not-in-the-image"


@pytest.mark.asyncio
@pytest.mark.timeout(1200)
async def test_failing_pod_fails_the_run_with_its_error_after_max_restarts(cluster: Cluster) -> None:
    c = cluster
    doc = manifests.quickstart(c, "broken")
    doc["spec"]["model"]["path"] = MISSING
    doc["spec"]["failurePolicy"] = {"maxRestarts": 1}
    await c.create("SAETrainingRun", doc)

    run = await c.phase("SAETrainingRun", "broken", "Failed")
    pods = c.runner.of("broken")
    assert len(pods) == 2, "one pod per attempt: the first Job and the one restart"
    assert len({p.job_uid for p in pods}) == 2, "the operator recreated the Job once"
    messages = set()
    for pod in pods:  # as the runner wrote them (the first Job's pods were deleted with it)
        state = pod.terminated
        assert state["exitCode"] != 0 and state["reason"] == "Error"
        messages.add(state["message"])
    (message,) = messages
    assert message.startswith("error: ") and MISSING in message and "\n" not in message
    failed = c.condition("SAETrainingRun", "broken", "Failed")
    assert failed["status"] == "True"
    assert message in failed["message"], (failed, message)
    assert run["restarts"] == 1
