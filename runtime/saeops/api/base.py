"""Shared pydantic base for every spec model.

Python code uses snake_case; manifests use the camelCase aliases Kubernetes users
expect. Field docstrings become descriptions (and so CRD descriptions and
`kubectl explain` text), which is why every field carries one.

Types are strict, as the API server's are: `true` is not an integer, `16.0` or `"16"` is not
an integer, `1` is not a boolean. Floats accept integers but never NaN or infinity (a run with
`weightDecay: .inf` would train to NaN weights and exit 0).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

API_GROUP = "saeops.io"
API_VERSION = "saeops.io/v1alpha1"

MAX_SEED = 2**63 - 1
"""Seeds fit a signed 64-bit integer (torch.manual_seed, numpy generators)."""
MAX_TOKENS = 1 << 50
"""Token counts (about 10^15) stay far inside int64 arithmetic on every rank."""
MAX_STEPS = 1 << 40
"""Step counts and intervals."""
MAX_SECONDS = 2**31 - 1
"""Durations in seconds (Kubernetes stores them as int32/int64; 68 years is plenty)."""

Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]
"""A seed: 0 <= seed < 2**63."""


class SpecModel(BaseModel):
    """Base of all spec models: camelCase aliases, unknown fields rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_attribute_docstrings=True,
        validate_default=True,
        protected_namespaces=(),
        strict=True,
        allow_inf_nan=False,
    )

    def to_manifest(self) -> dict[str, Any]:
        """Manifest form: camelCase keys, defaults left out so manifests stay short."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")
