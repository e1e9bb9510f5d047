from __future__ import annotations

from tests.unit.pipeline.conftest import compile_one

from modelfleet.pipeline.placement import Unit, plan_units

TRIAGE = {
    "steps": {
        "language": {"model": "language"},
        "spam": {"model": "spam", "when": "language.text != ''"},
        "intent": {"model": "intent", "when": "spam.text != ''"},
        "sentiment": {"model": "sentiment", "when": "spam.text != ''"},
    }
}


def test_everything_packed_in_one_service_is_one_hop() -> None:
    units = plan_units(compile_one(TRIAGE))
    assert units == [Unit("all", ("language", "spam", "intent", "sentiment"))]


def test_unpacked_is_one_unit_per_step_in_dependency_order() -> None:
    units = plan_units(compile_one(TRIAGE), packed=False)
    assert [u.steps for u in units] == [("language",), ("spam",), ("intent",), ("sentiment",)]


def test_merges_never_create_a_cycle_between_services() -> None:
    # language and intent share a service, but intent needs spam, which needs language: merging
    # language with intent would make light -> other -> light.
    services = {
        "light": {"models": ["language", "intent", "extra"]},
        "other": {"models": ["spam", "sentiment"]},
    }
    pipeline = compile_one(
        {
            "steps": {
                "language": {"model": "language"},
                "spam": {"model": "spam", "input": "language"},
                "intent": {"model": "intent", "input": "spam"},
                "sentiment": {"model": "sentiment", "input": "language"},
            }
        },
        services,
    )
    units = plan_units(pipeline)
    assert Unit("light", ("language",)) in units
    assert Unit("light", ("intent",)) in units
    assert Unit("other", ("spam", "sentiment")) in units
    order = [step for unit in units for step in unit.steps]
    assert order.index("language") < order.index("spam") < order.index("intent")
