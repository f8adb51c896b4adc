"""Shared pydantic base for every spec model.

Python code uses snake_case; manifests use the camelCase aliases Kubernetes users
expect. Field docstrings become descriptions (and so CRD descriptions and
`kubectl explain` text), which is why every field carries one.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

API_GROUP = "saeops.io"
API_VERSION = "saeops.io/v1alpha1"


class SpecModel(BaseModel):
    """Base of all spec models: camelCase aliases, unknown fields rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_attribute_docstrings=True,
        validate_default=True,
        protected_namespaces=(),
    )

    def to_manifest(self) -> dict[str, Any]:
        """Manifest form: camelCase keys, defaults left out so manifests stay short."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")
