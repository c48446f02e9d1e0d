"""``tabulate_csv``: a built-in data tool that reads CSV text, checks its columns, and adds up
one numeric column per group of others.

It is generic (any package may use it from a tool node or let a model call it): the numbers
an agent reports come from the data, never from the model's arithmetic. Every problem with
the input is a ``ToolError`` that names it -- the missing column, or the line and the value
that is not a number -- so a step fed a malformed file fails with a reason a person can act
on.

Reading rules (written down in docs/ARCHITECTURE.md, "Built-in tools"):

- The first line is a header when it names every expected column (case and surrounding
  spaces ignored; extra columns allowed, in any order). A first line with as many values as
  expected columns that names none of them is read as data, in the expected order, so a
  pasted timesheet without its header line still works; a first line naming some but not all
  of them, or with another number of values, is an error saying which columns were expected
  and what was found.
- Blank lines are skipped; a line with a different number of values, an empty group value or
  a value of the summed column that is not a finite decimal number is an error naming the
  line (lines are numbered from 1, the header included).
- Sums are exact (``Decimal``) and printed with as many decimals as the most precise value
  of the input (at most 6): 8 + 8 with a 6.5 elsewhere prints ``16.0``.
"""

from __future__ import annotations

import csv
import io
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any

from pydantic import Field, ValidationError, model_validator

from enginex.llm.base import ToolSpec
from enginex.tools.base import ToolContext, ToolError
from enginex.tools.builtin import _Args, _validation_message

MAX_CSV_CHARS = 1_000_000
MAX_DATA_LINES = 20_000
MAX_DECIMALS = 6
NAME = "tabulate_csv"

ColumnName = Annotated[str, Field(min_length=1, max_length=100)]


class TabulateArgs(_Args):
    csv: Annotated[str, Field(max_length=MAX_CSV_CHARS)]
    columns: Annotated[list[ColumnName], Field(min_length=1, max_length=50)]
    group_by: Annotated[list[ColumnName], Field(min_length=1, max_length=5)]
    sum: ColumnName

    @model_validator(mode="after")
    def _known_columns(self) -> TabulateArgs:
        expected = [c.strip().lower() for c in self.columns]
        if len(set(expected)) != len(expected):
            raise ValueError("'columns' names a column twice")
        unknown = [c for c in (*self.group_by, self.sum) if c.strip().lower() not in expected]
        if unknown:
            raise ValueError(f"'group_by' and 'sum' must be among 'columns'; not: "
                             f"{', '.join(unknown)}")
        if self.sum.strip().lower() in {c.strip().lower() for c in self.group_by}:
            raise ValueError("the 'sum' column cannot also be a 'group_by' column")
        return self


def _fail(message: str) -> ToolError:
    return ToolError(f"{NAME}: {message}")


def _quoted(values: list[str], limit: int = 6) -> str:
    shown = ", ".join(repr(v.strip()) for v in values[:limit])
    return shown + (", ..." if len(values) > limit else "")


def _number(text: str, line: int, column: str) -> Decimal:
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        value = None
    if value is None or not value.is_finite():
        raise _fail(f"line {line}: {text.strip()!r} in column '{column}' is not a number "
                    "(write it like 7.5, with a dot and no unit)")
    return value


def _decimals(value: Decimal) -> int:
    exponent = value.as_tuple().exponent
    return min(-exponent, MAX_DECIMALS) if isinstance(exponent, int) and exponent < 0 else 0


def _cell(value: str) -> str:
    return value.replace("|", "\\|").replace("\n", " ")


class TabulateCsvTool:
    """``tabulate_csv``: group rows by ``group_by`` and sum ``sum``; see the module docstring."""

    spec = ToolSpec(
        name=NAME,
        description="Read CSV text, check it has the expected columns, and add up one numeric "
                    "column per group of other columns. Returns the rows, the total and a "
                    "Markdown table. Fails with the line and value when the CSV is malformed.",
        parameters={
            "type": "object",
            "properties": {
                "csv": {"type": "string", "description": "The CSV text"},
                "columns": {"type": "array", "items": {"type": "string"},
                            "description": "The columns every line must have, in order"},
                "group_by": {"type": "array", "items": {"type": "string"},
                             "description": "Columns whose values form one group"},
                "sum": {"type": "string", "description": "The numeric column to add up"},
            },
            "required": ["csv", "columns", "group_by", "sum"],
            "additionalProperties": False,
        },
    )

    async def call(self, ctx: ToolContext, arguments: dict[str, Any]) -> dict[str, Any]:
        try:
            args = TabulateArgs.model_validate(arguments)
        except ValidationError as exc:
            raise ToolError(_validation_message(NAME, exc)) from None
        return tabulate(args)


def _lines(text: str) -> list[tuple[int, list[str]]]:
    """(line number, values) of the non-blank lines; quoted values may span lines."""
    reader = csv.reader(io.StringIO(text))
    lines: list[tuple[int, list[str]]] = []
    try:
        start = 1
        for values in reader:
            if any(v.strip() for v in values):
                lines.append((start, values))
                if len(lines) > MAX_DATA_LINES + 1:
                    raise _fail(f"the CSV has more than {MAX_DATA_LINES} lines; split it")
            start = reader.line_num + 1
    except csv.Error as exc:
        raise _fail(f"line {reader.line_num}: the CSV cannot be read ({exc})") from None
    return lines


def _positions(args: TabulateArgs, lines: list[tuple[int, list[str]]]) -> tuple[
        dict[str, int], list[tuple[int, list[str]]]]:
    """Where each expected column is, and the data lines (the header, if any, removed)."""
    expected = [c.strip() for c in args.columns]
    wanted = ", ".join(expected)
    if not lines:
        raise _fail(f"the CSV is empty; expected a header line '{','.join(expected)}' "
                    "and one line per entry")
    first_line, first = lines[0]
    names = [v.strip().lower() for v in first]
    if all(c.lower() in names for c in expected):
        return {c: names.index(c.lower()) for c in expected}, lines[1:]
    if any(c.lower() in names for c in expected):  # a header, but not a complete one
        missing = [c for c in expected if c.lower() not in names]
        raise _fail(f"the header line has no column {', '.join(repr(m) for m in missing)} "
                    f"(it has: {_quoted(first)}); expected the columns {wanted}")
    if len(first) != len(expected):
        raise _fail(f"line {first_line}: expected the columns {wanted} (a header line, or "
                    f"{len(expected)} values per line); found {len(first)} value"
                    f"{'s' if len(first) != 1 else ''}: {_quoted(first)}")
    return {c: i for i, c in enumerate(expected)}, lines


def tabulate(args: TabulateArgs) -> dict[str, Any]:
    lines = _lines(args.csv)
    where, data = _positions(args, lines)
    if not data:
        raise _fail("the CSV has a header line but no entries")
    by_name = {c.strip().lower(): c.strip() for c in args.columns}
    groups = [by_name[g.strip().lower()] for g in args.group_by]
    summed = by_name[args.sum.strip().lower()]
    per_line = len(lines[0][1])
    totals: dict[tuple[str, ...], Decimal] = {}
    decimals = 0
    for line, values in data:
        if len(values) != per_line:
            raise _fail(f"line {line} has {len(values)} value{'s' if len(values) != 1 else ''}"
                        f"; every line needs {per_line} ({', '.join(where)})")
        key = tuple(values[where[g]].strip() for g in groups)
        for name, value in zip(groups, key, strict=True):
            if not value:
                raise _fail(f"line {line}: the column '{name}' is empty")
        amount = _number(values[where[summed]], line, summed)
        decimals = max(decimals, _decimals(amount))
        totals[key] = totals.get(key, Decimal(0)) + amount
    quantum = Decimal(1).scaleb(-decimals)
    total = sum(totals.values(), Decimal(0))
    rows = [{**dict(zip(groups, key, strict=True)), summed: float(value)}
            for key, value in sorted(totals.items())]

    def shown(value: Decimal) -> str:
        return str(value.quantize(quantum))

    header = [g.capitalize() for g in groups] + [summed.capitalize()]
    table = ["| " + " | ".join(header) + " |",
             "|" + "---|" * len(groups) + "---:|"]
    table += ["| " + " | ".join(_cell(k) for k in key) + f" | {shown(value)} |"
              for key, value in sorted(totals.items())]
    table.append("| **Total** |" + " |" * (len(groups) - 1) + f" **{shown(total)}** |")
    return {"columns": [*groups, summed], "rows": rows, "total": float(total),
            "entries": len(data), "markdown": "\n".join(table)}
