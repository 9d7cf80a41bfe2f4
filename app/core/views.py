"""Views made from what the storage answers: entities and the named rows of a list page."""

from __future__ import annotations

from collections.abc import Callable
from operator import attrgetter
from typing import Any, TypeVar

import msgspec

V = TypeVar("V", bound=msgspec.Struct)


def by_name(view: type[V]) -> Callable[[Any], V]:
    """The view of any object whose attributes are named as the view's fields (an entity, or a
    list page's row of its columns), each field from the attribute of its name."""
    fields = view.__struct_fields__
    values = attrgetter(*fields)
    if len(fields) == 1:
        return lambda source: view(values(source))
    return lambda source: view(*values(source))
