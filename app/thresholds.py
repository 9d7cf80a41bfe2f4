"""Per-type lifecycle thresholds: when an active run is past its expected lifecycle, and when the
reconciler gives up on it.

Defaults live in :data:`DEFAULTS`; ``JOBGATE_LIFECYCLE_THRESHOLDS`` (JSON, read once into
:attr:`app.settings.Settings.lifecycle_thresholds`) overrides them per type, e.g. ``{"pack_run.execute": {"heartbeat_seconds": 600}, "*": {"queued_seconds": 1200}}``
(``*`` is the fallback for types without an entry). Unknown keys, non-integer or non-positive
values, and a ``reconcile_after_seconds`` below the type's other two thresholds are refused with
a :class:`ThresholdsError` naming the variable. See docs/operations.md.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

ENV_VAR = "JOBGATE_LIFECYCLE_THRESHOLDS"
FALLBACK = "*"


class ThresholdsError(ValueError):
    pass


@dataclass(frozen=True)
class TypeThresholds:
    queued_seconds: int  # a queued run not started within this is likely stale
    heartbeat_seconds: int  # a running run without a heartbeat for this long is likely stale
    reconcile_after_seconds: int  # the reconciler fails an active run without progress for this long


DEFAULTS: Mapping[str, TypeThresholds] = {
    "pack_run.execute": TypeThresholds(
        queued_seconds=900, heartbeat_seconds=300, reconcile_after_seconds=1800
    ),
    "pack_run.retry": TypeThresholds(queued_seconds=900, heartbeat_seconds=300, reconcile_after_seconds=1800),
    "deadletter.replay_pending": TypeThresholds(
        queued_seconds=300, heartbeat_seconds=120, reconcile_after_seconds=900
    ),
    "deadletter.replay_batch": TypeThresholds(
        queued_seconds=300, heartbeat_seconds=120, reconcile_after_seconds=900
    ),
    "deadletter.discard_pending": TypeThresholds(
        queued_seconds=300, heartbeat_seconds=120, reconcile_after_seconds=900
    ),
    "ops.reconcile": TypeThresholds(queued_seconds=300, heartbeat_seconds=120, reconcile_after_seconds=600),
    FALLBACK: TypeThresholds(queued_seconds=900, heartbeat_seconds=300, reconcile_after_seconds=1800),
}


@dataclass(frozen=True)
class Thresholds:
    """The thresholds of every type; :meth:`of` falls back to ``*`` for a type without an entry."""

    by_type: Mapping[str, TypeThresholds]

    def of(self, run_type: str) -> TypeThresholds:
        return self.by_type.get(run_type) or self.by_type[FALLBACK]

    @property
    def named_types(self) -> tuple[str, ...]:
        return tuple(t for t in self.by_type if t != FALLBACK)


DEFAULT_THRESHOLDS = Thresholds(DEFAULTS)


def _check(run_type: str, values: TypeThresholds) -> None:
    if values.reconcile_after_seconds < max(values.queued_seconds, values.heartbeat_seconds):
        raise ThresholdsError(
            f"{ENV_VAR}: {run_type}.reconcile_after_seconds must be at least queued_seconds and heartbeat_seconds"
        )


def parse(text: str | None) -> Thresholds:
    """The defaults overridden by ``text`` (the variable's JSON; empty or None keeps the defaults)."""
    merged = dict(DEFAULTS)
    if text and text.strip():
        try:
            overrides: Any = json.loads(text)
        except ValueError:
            raise ThresholdsError(f"{ENV_VAR} must be a JSON object") from None
        if not isinstance(overrides, dict):
            raise ThresholdsError(f"{ENV_VAR} must be a JSON object of type -> thresholds")
        fields = set(TypeThresholds.__dataclass_fields__)
        for run_type, values in overrides.items():
            if not isinstance(values, dict) or not values:
                raise ThresholdsError(f"{ENV_VAR}: {run_type!r} must map to a non-empty object")
            unknown = set(values) - fields
            if unknown:
                raise ThresholdsError(
                    f"{ENV_VAR}: {run_type!r} has unknown key(s) {', '.join(sorted(unknown))}"
                )
            for key, value in values.items():
                if type(value) is not int or not 1 <= value <= 30 * 86400:
                    raise ThresholdsError(f"{ENV_VAR}: {run_type}.{key} must be an integer from 1 to 2592000")
            merged[run_type] = replace(merged.get(run_type) or DEFAULTS[FALLBACK], **values)
    for run_type, values in merged.items():
        _check(run_type, values)
    return Thresholds(merged)
