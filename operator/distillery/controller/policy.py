"""What a DistillationJob may ask of the cluster: which Secrets a trainer may be handed, which
store endpoints, tolerations and node selectors it may use. Pure functions over the job, the
Secret's metadata and the operator's settings (the chart's allow-lists); no I/O.

Whoever may create a DistillationJob is not trusted with more than the job's own outputs, so
everything a job points the trainer at (credentials, endpoints, nodes) is checked here before the
trainer Job exists. Messages name the field, never a value (a Secret's data is never seen here).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from distillery.api.job import DistillationJob, Toleration, TolerationOperator

if TYPE_CHECKING:
    from distillery.controller.settings import Settings

# A label, not an annotation: an admin can list every Secret jobs may use with a selector
# (`kubectl get secrets -A -l distillery.io/usable-by-jobs=true`), and labelling needs the same
# `patch secrets` right as writing the Secret, so only who may change a Secret can opt it in.
OPT_IN_LABEL = "distillery.io/usable-by-jobs"
OPT_IN_VALUE = "true"

ANY_VALUE = "*"  # in allowed_node_selectors: every value of that key

_DEFAULT_PORTS = {"http": 80, "https": 443}
_LABEL_KEY = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._/-]{0,315}[A-Za-z0-9])?")


@dataclass(frozen=True)
class TolerationPattern:
    """One toleration the chart allows. `key` is matched exactly ("" is the key-less toleration,
    which tolerates every taint, so it has to be written out to be allowed); `operator`, `value`
    and `effect` match anything when None. A toleration without an effect tolerates every
    effect, so only a pattern without an effect allows it."""

    key: str
    operator: str | None = None
    value: str | None = None
    effect: str | None = None

    def allows(self, toleration: Toleration) -> bool:
        operator = toleration.operator or TolerationOperator.EQUAL
        return (self.key == (toleration.key or "")
                and (self.operator is None or self.operator == operator)
                and (self.value is None or self.value == (toleration.value or ""))
                and (self.effect is None or self.effect == toleration.effect))


class EndpointError(ValueError):
    """An endpoint URL that is not plainly scheme://host[:port][/path]."""


def endpoint_origin(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of an S3 endpoint URL, the part that says where credentials go.

    Anything that parsers read differently (user info, a query or fragment, backslashes,
    whitespace) is refused rather than guessed at, so the host compared here is the host
    botocore connects to."""
    if any(c.isspace() or c == "\\" for c in url):
        raise EndpointError("has whitespace or a backslash")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise EndpointError("must start with http:// or https://")
    if "@" in parts.netloc:
        raise EndpointError("must not carry user info")
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        raise EndpointError("must not carry a query or fragment")
    try:
        port = parts.port
    except ValueError:
        raise EndpointError("has an invalid port") from None
    if not parts.hostname:
        raise EndpointError("has no host")
    return scheme, parts.hostname.lower(), port or _DEFAULT_PORTS[scheme]


# ----------------------------------------------------------------------------- Secrets


def secret_opted_in(secret_metadata: Mapping[str, Any] | None, secret_name: str, settings: Settings) -> bool:
    """Whether a trainer may be handed this Secret: it carries the opt-in label, or the chart
    names it (allowedSecrets, as `name` in every namespace or `namespace/name`; the chart's
    default store Secret counts as named, since the admin chose it for every job)."""
    metadata = secret_metadata or {}
    if (metadata.get("labels") or {}).get(OPT_IN_LABEL) == OPT_IN_VALUE:
        return True
    if secret_name == settings.default_credentials_secret:
        return True
    namespace = metadata.get("namespace")
    return secret_name in settings.allowed_secrets or (
        namespace is not None and f"{namespace}/{secret_name}" in settings.allowed_secrets)


# ----------------------------------------------------------------------------- the job


def job_violations(job: DistillationJob, settings: Settings) -> list[str]:
    """One short line per thing the job asks for that the chart does not allow (empty: none)."""
    resources = job.spec.resources
    return [
        *endpoint_violations(job.spec.output.endpoint, settings),
        *toleration_violations(resources.tolerations or [], settings.allowed_tolerations),
        *node_selector_violations(resources.node_selector or {}, settings.allowed_node_selectors),
    ]


def endpoint_violations(endpoint: str | None, settings: Settings) -> list[str]:
    """A job's own endpoint must be one the chart lists (by scheme, host and port) when it lists
    any; no endpoint means the chart's default store, which is always allowed."""
    if not endpoint or not settings.allowed_endpoints:
        return []
    try:
        origin = endpoint_origin(endpoint)
    except EndpointError as err:
        return [f"output.endpoint: {err}"]
    allowed = {endpoint_origin(e) for e in settings.allowed_endpoints}
    if settings.default_endpoint:
        allowed.add(endpoint_origin(settings.default_endpoint))
    if origin not in allowed:
        return ["output.endpoint: not an endpoint this cluster allows (the chart's allowedEndpoints)"]
    return []


def tolerates_every_taint(toleration: Toleration) -> bool:
    return not toleration.key and toleration.operator == TolerationOperator.EXISTS


def toleration_violations(tolerations: Sequence[Toleration],
                          allowed: Sequence[TolerationPattern]) -> list[str]:
    """With no patterns, anything but a toleration of every taint; with patterns, only what one
    of them allows."""
    out = []
    for i, toleration in enumerate(tolerations):
        where = f"resources.tolerations[{i}]"
        if allowed:
            if not any(p.allows(toleration) for p in allowed):
                out.append(f"{where}: not a toleration this cluster allows (the chart's allowedTolerations)")
        elif tolerates_every_taint(toleration):
            out.append(f"{where}: tolerates every taint (no key, operator Exists); "
                       "only the chart's allowedTolerations can allow that")
    return out


def node_selector_violations(node_selector: Mapping[str, str],
                             allowed: Mapping[str, Sequence[str]]) -> list[str]:
    """With an allow-list, every key must be listed and its value among the key's values (or the
    key allows any value)."""
    if not allowed:
        return []
    out = []
    for key, value in sorted(node_selector.items()):
        where = f"resources.nodeSelector.{key}" if _LABEL_KEY.fullmatch(key) else "resources.nodeSelector"
        values = allowed.get(key)
        if values is None:
            out.append(f"{where}: not a node label this cluster allows selecting on (the chart's allowedNodeSelectors)")
        elif ANY_VALUE not in values and value not in values:
            out.append(f"{where}: value not allowed for this node label (the chart's allowedNodeSelectors)")
    return out
