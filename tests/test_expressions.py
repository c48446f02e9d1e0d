"""The conditional-edge expression language: semantics, errors, and hostile input."""

from __future__ import annotations

import pytest

from enginex.kit.expressions import MAX_DEPTH, MAX_LENGTH, ExpressionError, evaluate, parse

STATE = {
    "approval": {"decision": "approve", "comment": "ok"},
    "inputs": {"count": 3, "ratio": 0.5, "name": "Ada", "tags": ["a", "b"], "flag": True},
    "rows": [{"hours": 8}, {"hours": 7.5}],
    "summary": "Alice worked 16 hours",
    "empty": "",
    "nothing": None,
    "in": "keyword-named key",
}


@pytest.mark.parametrize(("text", "expected"), [
    ("approval.decision == 'approve'", True),
    ('approval.decision == "approve"', True),
    ("approval.decision != 'reject'", True),
    ("inputs.count > 2", True),
    ("inputs.count >= 3 and inputs.count <= 3", True),
    ("inputs.count < 3", False),
    ("inputs.ratio == 0.5", True),
    ("inputs.count == 3.0", True),
    ("-1 < inputs.count", True),
    ("'b' in inputs.tags", True),
    ("'c' not in inputs.tags", True),
    ("'Alice' in summary", True),
    ("'decision' in approval", True),
    ("inputs.name in ['Ada', 'Grace']", True),
    ("inputs.count in [1, 2]", False),
    ("not (inputs.count > 2)", False),
    ("not inputs.flag or inputs.count == 3", True),
    ("inputs.flag and (approval.comment == 'ok' or false)", True),
    ("rows.1.hours == 7.5", True),
    ("rows.5.hours == null", True),
    ("missing.deeply.nested == null", True),
    ("missing", None),
    ("inputs.count", 3),
    ("'it\\'s'", "it's"),
    ("true", True),
    ("null == null", True),
    ("empty or nothing", False),
    ("not empty", True),
    ("inputs.in == null", True),
    ("'a' < 'b'", True),
    ("[1, 'x', null]", [1, "x", None]),
    ("[1, 2] == [1, 2]", True),
    ("approval.decision", "approve"),
])
def test_semantics(text: str, expected: object) -> None:
    assert evaluate(text, STATE) == expected


@pytest.mark.parametrize("text", [
    "inputs.name > 3",           # string vs number
    "inputs.count < 'x'",
    "missing < 1",               # null vs number
    "inputs.tags >= 1",
    "approval > approval",
    "true > false",              # booleans are not ordered
    "1 in 5",                    # not a container
    "1 not in 5",
    "1 in 'abc'",                # number in string
    "1 not in 'abc'",
    "true == 1",                 # booleans equal only booleans
    "0 == false",
    "'1' == 1",
    "null == 0",
])
def test_incompatible_types_are_false_not_errors(text: str) -> None:
    assert evaluate(text, STATE) is False


def test_not_equal_is_the_negation_of_equal() -> None:
    assert evaluate("'1' != 1", STATE) is True
    assert evaluate("true != 1", STATE) is True


@pytest.mark.parametrize(("text", "message"), [
    ("approval.decision == 'approve')", "unexpected token ')' at column 31"),
    ("a == ", "unexpected end of expression at column 6; expected a value"),
    ("(a == 1", "expected ')' to close the '(' at column 1"),
    ("a = 1", "unexpected character '=' at column 3; use == to compare"),
    ("a && b", "unexpected character '&' at column 3; use and, or, not"),
    ("'open", "unterminated string starting at column 1"),
    ("a == 'x\\q'", "unknown escape '\\q'"),
    ("a < b < c", "chained comparisons are not supported"),
    ("a.", "expected a key name after '.'"),
    ("", "the expression is empty"),
    ("   ", "the expression is empty"),
    ("a == and", "unexpected token 'and' at column 6"),
    ("[1, 2", "expected ',' or ']'"),
    ("a $ b", "unexpected character '$' at column 3"),
])
def test_errors_name_the_column(text: str, message: str) -> None:
    with pytest.raises(ExpressionError) as excinfo:
        parse(text)
    assert message in str(excinfo.value)


def test_error_position_is_the_zero_based_offset() -> None:
    with pytest.raises(ExpressionError) as excinfo:
        parse("approval.decision == 'approve' )")
    assert excinfo.value.position == 31
    assert "column 32" in excinfo.value.message


@pytest.mark.parametrize("text", [
    "__import__('os')",
    "__import__('os').system('id')",
    "open('/etc/passwd')",
    "eval('1')",
    "exec('import os')",
    "inputs.count()",
    "lambda: 1",
    "[x for x in inputs]",
    "{'a': 1}",
    "inputs['count']",
    "a if b else c",
    "1 + 1",
    "`id`",
    "f'{inputs}'",
    "().__class__.__bases__[0].__subclasses__()",
])
def test_code_is_never_run(text: str) -> None:
    with pytest.raises(ExpressionError):
        parse(text)


def test_function_call_attempts_get_a_clear_message() -> None:
    with pytest.raises(ExpressionError, match="function calls are not supported"):
        parse("__import__('os')")


@pytest.mark.parametrize("text", [
    "inputs.__class__",
    "inputs.__class__.__mro__",
    "summary.__len__",
    "approval.keys",
    "rows.__getitem__",
    "__builtins__",
    "__import__",
])
def test_attribute_access_only_reads_keys(text: str) -> None:
    # Dunder names are ordinary keys: they are looked up in mappings, never as attributes.
    assert evaluate(text, STATE) is None


def test_lookups_do_not_touch_attributes_of_objects() -> None:
    class Tricky:
        decision = "approve"

        def __getattr__(self, name: str) -> str:  # would be hit by getattr-based lookup
            raise AssertionError("attribute access attempted")

    assert evaluate("obj.decision == 'approve'", {"obj": Tricky()}) is False


def test_deep_nesting_is_refused() -> None:
    ok = "(" * MAX_DEPTH + "true" + ")" * MAX_DEPTH
    assert evaluate(ok, {}) is True
    too_deep = "(" * (MAX_DEPTH + 1) + "true" + ")" * (MAX_DEPTH + 1)
    with pytest.raises(ExpressionError, match="nests more than 32 levels"):
        parse(too_deep)
    with pytest.raises(ExpressionError, match="nests more than 32 levels"):
        parse("not " * 200 + "true")
    with pytest.raises(ExpressionError, match="nests more than 32 levels"):
        parse("[" * 100 + "]" * 100)


def test_huge_inputs_are_refused_quickly() -> None:
    with pytest.raises(ExpressionError, match="the limit is 1000"):
        parse("a" * (MAX_LENGTH + 1))
    with pytest.raises(ExpressionError, match="the limit is 1000"):
        parse("'" + "x" * 10_000_000 + "'")
    with pytest.raises(ExpressionError, match="the limit is 1000"):
        parse("(" * 100_000)
    # Long but legal: 1000 characters of a flat 'or' chain and a huge number.
    chain = " or ".join(["a == 1"] * 99)
    assert len(chain) <= MAX_LENGTH and evaluate(chain, {"a": 1}) is True
    assert evaluate("9" * 900 + " > 1", {}) is True


def test_non_string_input_is_an_error() -> None:
    with pytest.raises(ExpressionError):
        parse(123)  # type: ignore[arg-type]


def test_parsed_expression_is_reusable_and_lists_its_keys() -> None:
    expression = parse("approval.decision == 'approve' and rows.0.hours > 1")
    assert expression.referenced_keys() == {"approval.decision", "rows.0.hours"}
    assert expression.evaluate(STATE) is True
    assert expression.evaluate({"approval": {"decision": "reject"}}) is False
