"""What ``jobgate ops`` prints: rich tables, the API's own JSON, NDJSON, the problem block.

Tables go to standard output at the terminal's width (``COLUMNS`` when it is not a terminal);
messages, previews of JSON runs and progress go to standard error, so ``--output json`` keeps
standard output to the gateway's payloads.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

Getter = Callable[[dict[str, Any]], Any]


@dataclass(frozen=True)
class Column:
    header: str
    value: str | Getter
    max_width: int | None = None
    justify: str = "left"
    no_wrap: bool = False  # True: never cut (ids are copied into the next command, instants read whole)

    def of(self, row: dict[str, Any]) -> Any:
        return self.value(row) if callable(self.value) else row.get(self.value)


def text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (dict, list)):
        if isinstance(value, list) and all(isinstance(v, (str, int)) for v in value):
            return ", ".join(str(v) for v in value) or "-"
        return json.dumps(value, separators=(",", ":"), sort_keys=True)
    return str(value)


def _width() -> int | None:
    columns = os.environ.get("COLUMNS")
    return int(columns) if columns and columns.isdigit() else None


class Output:
    """The chosen output mode and the consoles it writes to."""

    def __init__(self, mode: str = "table", *, out: Any = None, err: Any = None) -> None:
        self.mode = mode
        width = _width()
        self.console = Console(file=out or sys.stdout, width=width, highlight=False, soft_wrap=False)
        self.errors = Console(file=err or sys.stderr, width=width, highlight=False, stderr=True)

    # -- machine output ---------------------------------------------------------------------

    def json(self, payload: Any) -> None:
        self.console.file.write(json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
        self.console.file.flush()

    def ndjson(self, payload: Any) -> None:
        self.console.file.write(json.dumps(payload, separators=(",", ":"), ensure_ascii=False) + "\n")
        self.console.file.flush()

    # -- human output -----------------------------------------------------------------------

    def say(self, message: str, *, style: str | None = None) -> None:
        """A line for the human: standard output in table mode, standard error otherwise."""
        console = self.console if self.mode == "table" else self.errors
        console.print(Text(message, style=style or ""))

    def note(self, message: str, *, style: str | None = None) -> None:
        self.errors.print(Text(message, style=style or ""))

    def human(self, renderable: Any) -> None:
        console = self.console if self.mode == "table" else self.errors
        console.print(renderable)

    # -- documents --------------------------------------------------------------------------

    def document(self, payload: Any, render: Callable[[Any], Any] | None = None) -> None:
        """One payload of the API: as it is (json, ndjson) or as a table."""
        if self.mode == "json":
            self.json(payload)
        elif self.mode == "ndjson":
            self.ndjson(payload)
        else:
            for renderable in _as_list(render(payload) if render else fields_table(payload)):
                self.console.print(renderable)

    def listing(
        self,
        items: Iterable[dict[str, Any]],
        columns: Sequence[Column],
        *,
        title: str | None = None,
        page_document: Callable[[list[dict[str, Any]]], Any] | None = None,
        empty: str = "nothing found",
    ) -> int:
        """Items of a list: NDJSON streams them as they come; JSON prints the API's page shape
        (``page_document``); a table collects them first. Returns how many there were."""
        if self.mode == "ndjson":
            count = 0
            for item in items:
                self.ndjson(item)
                count += 1
            return count
        collected = list(items)
        if self.mode == "json":
            self.json(page_document(collected) if page_document else collected)
            return len(collected)
        if not collected:
            self.say(empty)
            return 0
        self.console.print(table(collected, columns, title=title, width=self.console.width))
        return len(collected)


def table(
    rows: Iterable[dict[str, Any]], columns: Sequence[Column], *, title: str | None = None, width: int | None = None
) -> Table:
    cells = [[text(column.of(row)) for column in columns] for row in rows]
    result = Table(
        title=title, title_justify="left", header_style="bold", expand=False, box=box.SIMPLE_HEAD, pad_edge=False
    )
    for column, least in zip(columns, least_widths(cells, columns, width or Console().width), strict=True):
        result.add_column(
            column.header,
            max_width=column.max_width,
            min_width=least,
            overflow="fold",
            no_wrap=column.no_wrap and least is not None,
            justify=column.justify,  # type: ignore[arg-type]
        )
    for row in cells:
        result.add_row(*row)
    return result


def least_widths(cells: list[list[str]], columns: Sequence[Column], width: int) -> list[int | None]:
    """The least width of each column. Whole columns (ids, instants: copied into the next command)
    keep their longest value, short values (codes, statuses) theirs up to 28 characters, long free
    texts wrap first; what does not fit the terminal gives way in that order."""
    widest = [max([len(c.header), *(len(row[n]) for row in cells)]) for n, c in enumerate(columns)]
    generous = [w if c.no_wrap else min(w, 12 if c.max_width else 28) for w, c in zip(widest, columns, strict=True)]
    whole_only = [w if c.no_wrap else None for w, c in zip(widest, columns, strict=True)]
    gaps = 3 * (len(columns) - 1)
    for choice in (generous, whole_only):
        if sum(w or 4 for w in choice) + gaps <= width:
            return choice
    return [None] * len(columns)


def fields_table(payload: dict[str, Any], *, title: str | None = None, skip: Sequence[str] = ()) -> Table:
    """A document as field / value rows, in the payload's own order."""
    result = Table(title=title, title_justify="left", show_header=False, expand=False, box=box.SIMPLE)
    result.add_column("field", style="bold")
    result.add_column("value", overflow="fold")
    for key, value in payload.items():
        if key not in skip:
            result.add_row(key, text(value))
    return result


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def problem_block(status: int | None, problem: dict[str, Any], *, heading: str) -> Text:
    """A problem+json answer in one readable block: code, detail, field errors, traceId."""
    block = Text()
    code = problem.get("code") or "unknown"
    block.append(f"{heading}: ", style="bold red")
    block.append(f"{status or problem.get('status', '')} {code}".strip(), style="bold")
    if problem.get("title"):
        block.append(f" ({problem['title']})")
    if problem.get("detail"):
        block.append(f"\n  {problem['detail']}")
    for error in problem.get("errors") or []:
        if isinstance(error, dict):
            block.append(f"\n  - {error.get('field', '?')}: {error.get('message', '')}")
        else:
            block.append(f"\n  - {error}")
    if problem.get("traceId"):
        block.append(f"\n  traceId: {problem['traceId']}", style="dim")
    return block
