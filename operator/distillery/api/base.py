"""Shared pieces of the API: group/version, the camelCase base model, conditions."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

GROUP = "distillery.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"


class ApiModel(BaseModel):
    """Base for every API object: camelCase on the wire, unknown fields are an error."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_default=True,
    )

    def to_wire(self) -> dict[str, Any]:
        """The object as Kubernetes stores it: camelCase keys, unset optionals left out."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


def cel(rule: str, message: str) -> dict[str, str]:
    """One CEL validation rule for the CRD (``x-kubernetes-validations``)."""
    return {"rule": rule, "message": message}


def crd_extra(*rules: dict[str, str], **more: Any) -> dict[str, Any]:
    """JSON-schema extras that become CRD-only keywords (CEL rules and the like)."""
    extra: dict[str, Any] = dict(more)
    if rules:
        extra["x-kubernetes-validations"] = list(rules)
    return extra


def check_type_meta(api_version: str, kind: str, expected_kind: str) -> None:
    """A top-level object's apiVersion and kind, as the API server would insist on them."""
    if api_version != API_VERSION:
        raise ValueError(f"apiVersion must be {API_VERSION}, got {api_version!r}")
    if kind != expected_kind:
        raise ValueError(f"kind must be {expected_kind}, got {kind!r}")


class Condition(ApiModel):
    """A Kubernetes-style condition (the shape ``kubectl wait --for=condition=`` reads)."""

    type: str
    status: str = Field(description="True, False or Unknown")
    reason: str = ""
    message: str = ""
    observed_generation: int | None = None
    last_transition_time: str | None = None


class ObjectRef(ApiModel):
    """A reference to a namespaced object by name."""

    name: str = Field(min_length=1)
    namespace: str | None = None


# A non-negative Kubernetes resource quantity (k8s.io/apimachinery resource.Quantity's grammar,
# as Kubernetes' own CRDs write it, without the sign: a request is never negative). The same
# text is the CRD's `pattern` and the pydantic check, so the API server and `distillery run`
# agree on every value; it uses only syntax RE2 (Go) and Rust's regex share.
QUANTITY_PATTERN = (
    r"^(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
