"""The execution engine over an in-process StepCaller of tiny functions."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from tests.unit.pipeline.conftest import compile_one

from modelfleet.pipeline.executor import PipelineExecutor, RowOutcome, StepCallError
from modelfleet.pipeline.spec import CompiledStep

FUNCS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "language": lambda i: {"language": "fr" if "bonjour" in i["text"] else "en"},
    "spam": lambda i: {"label": "spam" if "WIN" in i["text"] else "ham"},
    "intent": lambda i: {"label": "card_arrival" if "card" in i["text"] else "other"},
    "sentiment": lambda i: {"label": "negative" if "bad" in i["text"] else "positive"},
    "extra": lambda i: {"n": len(i["text"])},
}

TRIAGE: dict[str, Any] = {
    "steps": {
        "language": {"model": "language"},
        "spam": {"model": "spam", "when": "language.language == 'en'"},
        "intent": {"model": "intent", "when": "spam.label != 'spam'"},
        "sentiment": {"model": "sentiment", "when": "spam.label != 'spam'"},
    },
    "output": {
        "language": "language.language",
        "spam": "spam.label",
        "intent": "intent.label",
        "sentiment": "sentiment.label",
    },
}


class Caller:
    def __init__(
        self, delay_s: float = 0.0, fail: Callable[[str, dict[str, Any]], bool] | None = None
    ) -> None:
        self.calls: list[tuple[str, int]] = []
        self.delay_s = delay_s
        self.fail = fail

    async def call(self, step: CompiledStep, inputs: list[Any]) -> tuple[list[Any], str | None]:
        self.calls.append((step.name, len(inputs)))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.fail and any(self.fail(step.name, i) for i in inputs):
            raise StepCallError(f"{step.model} refused the input")
        return [FUNCS[step.model](i) for i in inputs], "1"


def run(pipeline: dict[str, Any], inputs: list[Any], caller: Caller | None = None) -> list[RowOutcome]:
    return asyncio.run(PipelineExecutor(caller or Caller()).run(compile_one(pipeline), inputs))


def test_an_english_ham_message_visits_every_step() -> None:
    (outcome,) = run(TRIAGE, [{"text": "where is my card"}])
    assert outcome.status == "succeeded"
    assert outcome.output == {
        "language": "en",
        "spam": "ham",
        "intent": "card_arrival",
        "sentiment": "positive",
    }
    assert {n: s.status for n, s in outcome.steps.items()} == dict.fromkeys(TRIAGE["steps"], "ok")


def test_non_english_skips_spam_and_everything_that_needs_it() -> None:
    (outcome,) = run(TRIAGE, [{"text": "bonjour ma carte"}])
    assert outcome.output == {"language": "fr", "spam": None, "intent": None, "sentiment": None}
    steps = outcome.steps
    assert steps["spam"].status == "skipped"
    assert steps["spam"].reason == "condition is false: language.language == 'en'"
    assert steps["intent"].reason == "needs skipped step 'spam'"
    assert steps["sentiment"].status == "skipped"


def test_spam_never_reaches_intent() -> None:
    caller = Caller()
    (outcome,) = run(TRIAGE, [{"text": "WIN a prize now"}], caller)
    assert outcome.output["spam"] == "spam"
    assert outcome.steps["intent"].reason == "condition is false: spam.label != 'spam'"
    assert ("intent", 1) not in caller.calls


def test_a_batch_costs_one_call_per_step_for_the_inputs_that_reach_it() -> None:
    caller = Caller()
    inputs = [{"text": "my card"}, {"text": "bonjour"}, {"text": "WIN"}, {"text": "bad card"}]
    outcomes = run(TRIAGE, inputs, caller)
    assert [o.output["intent"] for o in outcomes] == ["card_arrival", None, None, "card_arrival"]
    assert sorted(caller.calls) == [("intent", 2), ("language", 4), ("sentiment", 2), ("spam", 3)]


def test_independent_steps_run_concurrently() -> None:
    pipeline = {"steps": {name: {"model": name} for name in ("language", "spam", "intent", "sentiment")}}
    started = time.perf_counter()
    run(pipeline, [{"text": "x"}], Caller(delay_s=0.2))
    assert time.perf_counter() - started < 0.5


def test_on_error_policies() -> None:
    def fail(step: str, payload: dict[str, Any]) -> bool:
        return step == "intent"

    base = TRIAGE["steps"]
    for policy, status, output in (
        ("skip", "skipped", None),
        ({"default": {"label": "unknown"}}, "defaulted", "unknown"),
    ):
        pipeline = {**TRIAGE, "steps": {**base, "intent": {**base["intent"], "on_error": policy}}}
        (outcome,) = run(pipeline, [{"text": "card"}], Caller(fail=fail))
        assert outcome.status == "succeeded"
        assert outcome.steps["intent"].status == status
        assert "intent refused the input" in (outcome.steps["intent"].reason or "")
        assert outcome.output["intent"] == output
        assert outcome.output["sentiment"] == "positive"
    (failed,) = run(TRIAGE, [{"text": "card"}], Caller(fail=fail))
    assert failed.status == "failed"
    assert failed.error == "step 'intent' failed: intent refused the input"
    assert failed.output is None
    assert failed.steps["intent"].status == "failed"


def test_one_bad_input_does_not_sink_the_others_in_its_call() -> None:
    def fail(step: str, payload: dict[str, Any]) -> bool:
        return step == "spam" and payload["text"] == "poison"

    caller = Caller(fail=fail)
    outcomes = run(TRIAGE, [{"text": "card"}, {"text": "poison"}, {"text": "bad"}], caller)
    assert [o.status for o in outcomes] == ["succeeded", "failed", "succeeded"]
    assert outcomes[1].error == "step 'spam' failed: spam refused the input"
    assert outcomes[1].steps["intent"].reason == "not run: the run failed"


def test_expression_errors_at_run_time_fail_the_step_clearly() -> None:
    pipeline = {"steps": {"spam": {"model": "spam", "input": {"text": "input.body"}}}}
    (outcome,) = run(pipeline, [{"text": "x"}])
    assert outcome.status == "failed"
    assert "cannot evaluate its expressions: no field 'body'" in (outcome.error or "")


def test_without_output_mapping_the_output_is_every_step_that_ran() -> None:
    (outcome,) = run(
        {"steps": {"language": {"model": "language"}, "extra": {"model": "extra"}}}, [{"text": "abc"}]
    )
    assert outcome.output == {"language": {"language": "en"}, "extra": {"n": 3}}
