"""Payloads of the sources routes (camelCase, as the gateway contract)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, ClassVar

import msgspec

SourceIdText = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$", max_length=64)]
ProjectIdText = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", max_length=64)]
SourceTypeText = Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9._-]{0,63}$", max_length=64)]
NameText = Annotated[
    str, msgspec.Meta(min_length=1, max_length=200, pattern=r"^[^\x00-\x20\x7f]([^\x00-\x1f\x7f]*[^\x00-\x20\x7f])?$")
]
DescriptionText = Annotated[str, msgspec.Meta(max_length=2000, pattern=r"^[^\x00]*$")]


class JobCounts(msgspec.Struct, rename="camel"):
    submitted: int
    active: int
    failed: int


class SourceView(msgspec.Struct, rename="camel"):
    source_id: str
    name: str
    source_type: str
    enabled: bool
    project_id: str | None
    description: str | None
    created_at: datetime
    updated_at: datetime
    last_job_at: datetime | None
    job_counts: JobCounts


class SourcePage(msgspec.Struct, rename="camel"):
    items: list[SourceView]
    continuation_token: str | None


_DEFAULTS = (
    "An absent field takes its default: `enabled` true, `projectId` the X-Stella-Project header's project "
    "(none without the header), no `description`."
)


class SourceCreate(msgspec.Struct, rename="camel", forbid_unknown_fields=True):
    """A new source; absent optional fields take their defaults (``_DEFAULTS``)."""

    schema_extra: ClassVar[dict[str, Any]] = {"description": "A new job source. " + _DEFAULTS}

    name: NameText
    source_type: SourceTypeText
    source_id: SourceIdText | None = None
    enabled: bool = True
    project_id: ProjectIdText | None = None
    description: DescriptionText | None = None


class SourceReplace(msgspec.Struct, rename="camel", forbid_unknown_fields=True):
    """Full replace: the source becomes what the body says; an absent optional field takes the same
    default as on create, it does not keep the current value."""

    schema_extra: ClassVar[dict[str, Any]] = {
        "description": "Full replace: the source becomes what the body says. " + _DEFAULTS + " An absent field "
        "does not keep the current value."
    }

    name: NameText
    source_type: SourceTypeText
    enabled: bool = True
    project_id: ProjectIdText | None = None
    description: DescriptionText | None = None
