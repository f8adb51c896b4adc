"""Kubernetes' grammar for the values a spec hands to the API server: names, labels, quantities.

A value the API server would refuse must be refused here, with a message naming the field,
or the operator's Job create fails with 422 and the run never gets a status. The rules follow
k8s.io/apimachinery/pkg/util/validation and api/resource (Quantity), restated as regular
expressions in the common subset of Go's RE2 and Rust's regex (no look-around), so one pattern
serves the pydantic models and the generated CRDs (`pattern` and CEL `matches`).

The annotated types (`DNSLabel`, `DNSSubdomain`, `LabelKey`, ...) validate with a message that
says what the grammar is and carry their pattern into the JSON schema (and so the CRDs).
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field

# ---------------------------------------------------------------- grammar

DNS_LABEL_MAX = 63
DNS_SUBDOMAIN_MAX = 253
LABEL_NAME_MAX = 63
LABEL_KEY_MAX = DNS_SUBDOMAIN_MAX + 1 + LABEL_NAME_MAX
LABEL_VALUE_MAX = 63
ANNOTATIONS_TOTAL_MAX = 256 * 1024
"""Kubernetes' cap on the summed length of all annotation keys and values of one object."""

_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS_LABEL_PATTERN = rf"^{_LABEL}$"
"""RFC 1123 label: object names that become host names (pods, Services, saeops resources)."""
DNS_SUBDOMAIN_PATTERN = rf"^{_LABEL}(\.{_LABEL})*$"
"""RFC 1123 subdomain: Secret, ServiceAccount, PriorityClass names; label key prefixes."""
DNS1035_LABEL_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
"""RFC 1035 label (starts with a letter): Service names."""
_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?"
LABEL_NAME_PATTERN = rf"^{_NAME}$"
LABEL_KEY_PATTERN = rf"^({_LABEL}(\.{_LABEL})*/)?{_NAME}$"
"""A qualified name: optional DNS-subdomain prefix and '/', then a name (label and annotation
keys, toleration keys, resource names)."""
LABEL_VALUE_PATTERN = rf"^({_NAME})?$"
_NUMBER = r"([0-9]+(\.[0-9]*)?|\.[0-9]+)"
QUANTITY_PATTERN = rf"^[+-]?{_NUMBER}(([KMGTPE]i)|[numkMGTPE]|([eE][+-]?[0-9]+))?$"
"""resource.Quantity: a signed decimal number, then a binary (Ki..Ei) or decimal (n..E) SI
suffix or a decimal exponent."""
NONNEG_QUANTITY_PATTERN = rf"^\+?{_NUMBER}(([KMGTPE]i)|[numkMGTPE]|([eE][+-]?[0-9]+))?$"
"""A quantity without a minus sign: what resource requests, limits and sizes must be."""
NO_SPACE_PATTERN = r"^\S+$"

_RE = {p: re.compile(p) for p in (
    DNS_LABEL_PATTERN, DNS_SUBDOMAIN_PATTERN, DNS1035_LABEL_PATTERN, LABEL_NAME_PATTERN,
    LABEL_VALUE_PATTERN, QUANTITY_PATTERN, NONNEG_QUANTITY_PATTERN, NO_SPACE_PATTERN,
)}
_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_QUANTITY_SPLIT = re.compile(r"^([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))(.*)$")
# Container resources without a domain prefix that Kubernetes knows (others need `domain/name`).
STANDARD_RESOURCES = frozenset({"cpu", "memory", "ephemeral-storage"})


def _short(value: str, n: int = 40) -> str:
    return repr(value if len(value) <= n else value[:n] + "...")


def is_dns_label(value: str) -> bool:
    return len(value) <= DNS_LABEL_MAX and bool(_RE[DNS_LABEL_PATTERN].match(value))


def is_dns_subdomain(value: str) -> bool:
    return len(value) <= DNS_SUBDOMAIN_MAX and bool(_RE[DNS_SUBDOMAIN_PATTERN].match(value))


def check_dns_label(value: str) -> str:
    if not is_dns_label(value):
        raise ValueError(f"{_short(value)} is not a valid name (DNS-1123 label): at most 63 lower-case "
                         "letters, digits and '-', starting and ending with a letter or digit")
    return value


def check_dns_subdomain(value: str) -> str:
    if not is_dns_subdomain(value):
        raise ValueError(f"{_short(value)} is not a valid name (DNS-1123 subdomain): at most 253 lower-case "
                         "letters, digits, '-' and '.', each dot-separated part starting and ending with a "
                         "letter or digit")
    return value


def check_label_key(value: str) -> str:
    """A qualified name (`[prefix/]name`), as label, annotation and toleration keys must be."""
    prefix, slash, name = value.rpartition("/")
    ok = bool(name) and len(name) <= LABEL_NAME_MAX and bool(_RE[LABEL_NAME_PATTERN].match(name))
    if slash:
        ok = ok and is_dns_subdomain(prefix)
    if not ok:
        raise ValueError(f"{_short(value)} is not a valid key: an optional DNS-subdomain prefix and '/', then "
                         "at most 63 letters, digits, '-', '_' and '.', starting and ending with a letter or digit")
    return value


def check_label_value(value: str) -> str:
    if len(value) > LABEL_VALUE_MAX or not _RE[LABEL_VALUE_PATTERN].match(value):
        raise ValueError(f"{_short(value)} is not a valid label value: at most 63 letters, digits, '-', '_' "
                         "and '.', starting and ending with a letter or digit (or empty)")
    return value


def parse_quantity(value: str) -> Decimal:
    """The value of a Kubernetes quantity (`500m` -> 0.5, `2Gi` -> 2147483648); ValueError if it
    is not one."""
    m = _QUANTITY_SPLIT.match(value) if _RE[QUANTITY_PATTERN].match(value) else None
    if m is None:
        raise ValueError(f"{_short(value)} is not a Kubernetes quantity (e.g. 500m, 2, 1.5Gi, 64Mi, 1e3)")
    number, suffix = m.groups()
    try:
        n = Decimal(number)
        if suffix in _BINARY:
            return n * _BINARY[suffix]
        if suffix in _DECIMAL:
            return n.scaleb(_DECIMAL[suffix])
        exp = int(suffix[1:])
        if abs(exp) > 60:  # Kubernetes cannot represent it either
            raise ValueError(f"{_short(value)}: exponent out of range")
        return n.scaleb(exp)
    except InvalidOperation:
        raise ValueError(f"{_short(value)} is not a Kubernetes quantity") from None


def check_nonneg_quantity(value: str) -> str:
    if parse_quantity(value) < 0:
        raise ValueError(f"{_short(value)}: must not be negative")
    return value


def check_resource_name(value: str) -> str:
    """A container resource name: cpu, memory, ephemeral-storage, hugepages-SIZE, or an extended
    resource with a domain prefix (`nvidia.com/gpu`)."""
    check_label_key(value)
    if "/" in value or value in STANDARD_RESOURCES:
        return value
    if value.startswith("hugepages-"):
        parse_quantity(value.removeprefix("hugepages-"))
        return value
    raise ValueError(f"{_short(value)} is not a container resource: use cpu, memory, ephemeral-storage, "
                     "hugepages-<size> or a prefixed extended resource such as nvidia.com/gpu")


def is_extended_resource(name: str) -> bool:
    """Extended resources (GPUs and the like) cannot be overcommitted: integer, requests == limits."""
    return "/" in name and not name.startswith(("kubernetes.io/", "requests."))


def check_no_space(value: str) -> str:
    if not _RE[NO_SPACE_PATTERN].match(value):
        raise ValueError(f"{_short(value)}: whitespace is not allowed")
    return value


def check_queue_name(value: str) -> str:
    """A Kueue LocalQueue name: an object name that saeops also writes as a label value."""
    return check_label_value(check_dns_subdomain(value))


def check_annotations_size(annotations: dict[str, str]) -> dict[str, str]:
    total = sum(len(k.encode()) + len(v.encode()) for k, v in annotations.items())
    if total > ANNOTATIONS_TOTAL_MAX:
        raise ValueError(f"annotations total {total} bytes, more than Kubernetes' {ANNOTATIONS_TOTAL_MAX} "
                         "(256 KiB); keep large data out of annotations")
    return annotations


# ---------------------------------------------------------------- annotated types


def _typed(check: Any, pattern: str, max_length: int, *before: Any) -> Any:
    # The checker gives the message; the pattern and bound go into the JSON schema (and the CRDs).
    return Annotated[str, *before, AfterValidator(check),
                     Field(json_schema_extra={"pattern": pattern, "maxLength": max_length})]


def _quantity_input(value: Any) -> Any:
    # The CRDs type quantities as strings (as the examples write them); say how to fix a number.
    if isinstance(value, int | float) and not isinstance(value, bool):
        raise ValueError(f"{value!r}: a quantity is a string in the manifest; quote it (\"{value}\")")
    return value


DNSLabel = _typed(check_dns_label, DNS_LABEL_PATTERN, DNS_LABEL_MAX)
"""Object names that become host names or prefixes of them (saeops resources, namespaces)."""
DNSSubdomain = _typed(check_dns_subdomain, DNS_SUBDOMAIN_PATTERN, DNS_SUBDOMAIN_MAX)
"""Names of Secrets, ServiceAccounts, PriorityClasses."""
QueueName = _typed(check_queue_name, DNS_SUBDOMAIN_PATTERN, LABEL_VALUE_MAX)
"""A Kueue LocalQueue: an object name that is also written as a label value."""
LabelKey = _typed(check_label_key, LABEL_KEY_PATTERN, LABEL_KEY_MAX)
LabelValue = _typed(check_label_value, LABEL_VALUE_PATTERN, LABEL_VALUE_MAX)
Quantity = _typed(check_nonneg_quantity, NONNEG_QUANTITY_PATTERN, 64, BeforeValidator(_quantity_input))
"""A non-negative resource quantity (requests, limits, volume sizes)."""
ResourceName = _typed(check_resource_name, LABEL_KEY_PATTERN, LABEL_KEY_MAX)
Image = _typed(check_no_space, NO_SPACE_PATTERN, 1024)
"""A container image reference (no whitespace; the registry checks the rest)."""

__all__ = [
    "ANNOTATIONS_TOTAL_MAX",
    "DNS1035_LABEL_PATTERN",
    "DNS_LABEL_PATTERN",
    "DNS_SUBDOMAIN_PATTERN",
    "LABEL_KEY_PATTERN",
    "LABEL_VALUE_PATTERN",
    "NONNEG_QUANTITY_PATTERN",
    "QUANTITY_PATTERN",
    "DNSLabel",
    "DNSSubdomain",
    "Image",
    "LabelKey",
    "LabelValue",
    "Quantity",
    "QueueName",
    "ResourceName",
    "check_annotations_size",
    "check_dns_label",
    "check_dns_subdomain",
    "check_label_key",
    "check_label_value",
    "check_no_space",
    "check_queue_name",
    "check_resource_name",
    "is_dns_label",
    "is_dns_subdomain",
    "is_extended_resource",
    "parse_quantity",
]
