"""The built-in ``tabulate_csv`` tool: totals computed from the data, and every malformed input
refused with the line and the value that is wrong."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from enginex.tools.base import ToolContext, ToolError
from enginex.tools.data import MAX_DATA_LINES, TabulateCsvTool
from enginex.tools.registry import builtin_registry, builtin_tool_names

TIMESHEET_COLUMNS = ["date", "person", "project", "hours"]
SHEET = ("date,person,project,hours\n2026-11-02,Alice,Apollo,8\n2026-11-03,Alice,Apollo,8\n"
         "2026-11-04,Alice,Borealis,6.5\n2026-11-02,Bob,Apollo,7.5\n2026-11-03,Bob,Apollo,7.5\n")


def tabulate(text: str, **overrides: Any) -> dict[str, Any]:
    arguments = {"csv": text, "columns": TIMESHEET_COLUMNS, "group_by": ["person", "project"],
                 "sum": "hours", **overrides}
    ctx = ToolContext(tenant_id=uuid.uuid4(), run_id=uuid.uuid4(), node_id="n", state={})
    return asyncio.run(TabulateCsvTool().call(ctx, arguments))


def refused(text: str, **overrides: Any) -> str:
    with pytest.raises(ToolError) as excinfo:
        tabulate(text, **overrides)
    message = str(excinfo.value)
    assert message.startswith("tabulate_csv: ")
    return message


def test_it_is_a_builtin_tool() -> None:
    assert "tabulate_csv" in builtin_tool_names()
    assert builtin_registry().get("tabulate_csv") is not None


def test_sums_per_group_exactly_with_the_inputs_precision() -> None:
    result = tabulate(SHEET)
    assert result["rows"] == [
        {"person": "Alice", "project": "Apollo", "hours": 16.0},
        {"person": "Alice", "project": "Borealis", "hours": 6.5},
        {"person": "Bob", "project": "Apollo", "hours": 15.0}]
    assert result["total"] == 37.5 and result["entries"] == 5
    assert result["markdown"].splitlines() == [
        "| Person | Project | Hours |", "|---|---|---:|", "| Alice | Apollo | 16.0 |",
        "| Alice | Borealis | 6.5 |", "| Bob | Apollo | 15.0 |", "| **Total** | | **37.5** |"]


def test_other_inputs_give_other_totals() -> None:
    result = tabulate("hours,project,person,date,note\n3,X,Zoe,2026-01-01,a\n"
                      " 4 ,X,Zoe,2026-01-02,\"b, c\"\n\n0.1,Y,Al,2026-01-03,\n0.2,Y,Al,x,\n")
    assert result["rows"] == [{"person": "Al", "project": "Y", "hours": 0.3},
                              {"person": "Zoe", "project": "X", "hours": 7.0}]
    assert "| Al | Y | 0.3 |" in result["markdown"]  # exact: not 0.30000000000000004
    assert result["markdown"].endswith("| **Total** | | **7.3** |")


def test_a_timesheet_pasted_without_its_header_is_read_in_the_expected_order() -> None:
    result = tabulate("2026-11-02,Alice,Apollo,16\n2026-11-02,Alice,Apollo,2\n")
    assert result["rows"] == [{"person": "Alice", "project": "Apollo", "hours": 18.0}]
    assert result["markdown"].endswith("| **Total** | | **18** |")


@pytest.mark.parametrize(("text", "expected"), [
    ("hello, this is not a timesheet",
     "line 1: expected the columns date, person, project, hours (a header line, or 4 values "
     "per line); found 2 values: 'hello', 'this is not a timesheet'"),
    ("", "the CSV is empty; expected a header line 'date,person,project,hours'"),
    ("date,person,project,hrs\n2026-11-02,Alice,Apollo,8\n",
     "the header line has no column 'hours' (it has: 'date', 'person', 'project', 'hrs')"),
    ("date,person,project,hours\n", "the CSV has a header line but no entries"),
    ("date,person,project,hours\n2026-11-02,Alice,Apollo,8\n2026-11-03,Bob,Apollo,eight\n",
     "line 3: 'eight' in column 'hours' is not a number"),
    ("date,person,project,hours\n2026-11-02,Alice,Apollo,8h\n",
     "line 2: '8h' in column 'hours' is not a number"),
    ("date,person,project,hours\n2026-11-02,Alice,Apollo,NaN\n",
     "line 2: 'NaN' in column 'hours' is not a number"),
    ("date,person,project,hours\n2026-11-02,Alice,Apollo\n",
     "line 2 has 3 values; every line needs 4"),
    ("date,person,project,hours\n\n2026-11-02,,Apollo,8\n",
     "line 3: the column 'person' is empty"),
])
def test_malformed_input_is_refused_with_its_reason(text: str, expected: str) -> None:
    assert expected in refused(text)


def test_bad_arguments_say_which() -> None:
    assert "'group_by' and 'sum' must be among 'columns'; not: minutes" in refused(
        SHEET, sum="minutes")
    assert "unknown argument" in refused(SHEET, extra=1)
    assert "cannot also be a 'group_by' column" in refused(SHEET, group_by=["hours"])


def test_too_many_lines_are_refused() -> None:
    text = "date,person,project,hours\n" + "2026-11-02,A,P,1\n" * (MAX_DATA_LINES + 1)
    assert f"more than {MAX_DATA_LINES} lines" in refused(text)
