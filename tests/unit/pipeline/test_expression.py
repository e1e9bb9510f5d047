from __future__ import annotations

from typing import Any

import pytest

from modelfleet.pipeline.expression import SKIPPED, EvaluationError, ExpressionError, NeedsSkipped, parse

SCOPE: dict[str, Any] = {
    "input": {"text": "Hello there", "channel": "chat", "tags": ["a", "b"]},
    "language": {"language": "en", "score": 0.93},
    "spam": {"label": "ham", "scores": [0.9, 0.1]},
}


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("language.language == 'en'", True),
        ('language.language != "en"', False),
        ("language.score >= 0.9 and spam.label == 'ham'", True),
        ("not spam.label == 'spam'", True),
        ("input.channel in ['chat', 'email']", True),
        ("'c' not in input.tags", True),
        ("spam.scores[0] > spam.scores[1]", True),
        ("len(input.text) > 3 and lower(input.text) == 'hello there'", True),
        ("1 + 2 * 3 == 7 and -(2 - 5) == 3 and 7 / 2 == 3.5", True),
        ("language.score < 0.5 or false", False),
        ("null == exists(null) or true", True),
        ("'it\\'s' == \"it's\"", True),
        ("input", SCOPE["input"]),
        ("'é' + 'x'", "éx"),
    ],
)
def test_evaluates(source: str, expected: Any) -> None:
    assert parse(source).evaluate(SCOPE) == expected


def test_names_are_the_roots_read() -> None:
    assert parse("language.language == 'en' and len(input.text) > spam.scores[0]").names == {
        "language",
        "input",
        "spam",
    }


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("", "empty expression"),
        ("a ==", "ends too early"),
        ("a = 1", "unexpected character '='"),
        ("(a == 1", "expected ')'"),
        ("a.", "expected a field name"),
        ("__import__('os')", "unknown function '__import__'"),
        ("a b", "unexpected 'b'"),
        ("a; b", "unexpected character ';'"),
    ],
)
def test_bad_expressions_are_refused_with_the_reason(source: str, message: str) -> None:
    with pytest.raises(ExpressionError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse(source)


def test_reading_a_skipped_step_says_which() -> None:
    with pytest.raises(NeedsSkipped) as info:
        parse("input.text != '' and spam.label == 'ham'").evaluate({**SCOPE, "spam": SKIPPED})
    assert info.value.step == "spam"


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("language.nope", "no field 'nope'"),
        ("input.text.length", "cannot read field 'length' of a str"),
        ("input.text > 3", "cannot compare str > int"),
        ("1 / 0", "cannot compute"),
        ("spam.scores[5]", "cannot index list"),
    ],
)
def test_evaluation_errors_are_clear(source: str, message: str) -> None:
    with pytest.raises(EvaluationError, match=message):
        parse(source).evaluate(SCOPE)
