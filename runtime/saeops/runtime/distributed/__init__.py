"""Distributed training on torch.distributed: data parallel, dictionary (tensor) parallel,
preemption-safe checkpoints and torchrun elastic restarts.

Topology: `WORLD_SIZE = parallelism.data * parallelism.tensor`, laid out as a 2-D mesh with
tensor ranks contiguous (`rank = data_rank * tensor + tensor_rank`). Ranks of one tensor
group read the same activations and each hold a slice of d_sae; ranks of one data group hold
the same slice and read disjoint activations.

Exit codes (what the operator and `saeops run` see):

- `0` the run finished; artifacts are written.
- `EXIT_PREEMPTED` (143, i.e. 128 + SIGTERM) the run got SIGTERM, wrote a checkpoint at the
  next step boundary and stopped; it resumes from that checkpoint when started again. This is
  not a failure and must not count against `failurePolicy.maxRestarts`.
- `2` bad input (spec, storage, cache); never retried.
- anything else: a failure.
"""

from saeops.runtime.distributed.context import DistContext, init_distributed
from saeops.runtime.distributed.preemption import EXIT_PREEMPTED, PREEMPTED_MARKER, Preempted

__all__ = ["EXIT_PREEMPTED", "PREEMPTED_MARKER", "DistContext", "Preempted", "init_distributed"]
