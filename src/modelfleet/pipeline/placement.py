"""Placement: which steps of a pipeline can run together inside one worker, in one hop.

Steps whose models live in the same service are merged into one *unit* whenever the merge keeps
the graph of units acyclic; a unit of several steps is sent to one replica of that service, which
runs them locally and answers with all their results. With every model of a pipeline packed in
one service the whole pipeline is one hop.
"""

from __future__ import annotations

from dataclasses import dataclass

from modelfleet.pipeline.spec import CompiledPipeline


@dataclass(frozen=True)
class Unit:
    """Steps that run together on one service, listed in the pipeline's topological order."""

    service: str
    steps: tuple[str, ...]


def _unit_graph(pipeline: CompiledPipeline, groups: list[set[str]]) -> dict[int, set[int]]:
    index = {step: i for i, group in enumerate(groups) for step in group}
    edges: dict[int, set[int]] = {i: set() for i in range(len(groups))}
    for name, step in pipeline.steps.items():
        for dep in step.depends_on:
            if index[dep] != index[name]:
                edges[index[name]].add(index[dep])
    return edges


def _acyclic(edges: dict[int, set[int]]) -> bool:
    state: dict[int, int] = {}

    def visit(node: int) -> bool:
        if state.get(node) == 1:
            return False
        if state.get(node) == 2:
            return True
        state[node] = 1
        ok = all(visit(dep) for dep in edges[node])
        state[node] = 2
        return ok

    return all(visit(node) for node in edges)


def plan_units(pipeline: CompiledPipeline, packed: bool = True) -> list[Unit]:
    """Group steps into units in a dependency order; ``packed=False`` gives one unit per step."""
    position = {name: i for i, name in enumerate(pipeline.order)}
    groups: list[set[str]] = [{name} for name in pipeline.order]
    if packed:
        merged = True
        while merged:
            merged = False
            for i in range(len(groups)):
                for j in range(i + 1, len(groups)):
                    service_i = pipeline.steps[next(iter(groups[i]))].service
                    service_j = pipeline.steps[next(iter(groups[j]))].service
                    if service_i != service_j:
                        continue
                    candidate = [g for k, g in enumerate(groups) if k not in (i, j)] + [groups[i] | groups[j]]
                    if _acyclic(_unit_graph(pipeline, candidate)):
                        groups = candidate
                        merged = True
                        break
                if merged:
                    break
    edges = _unit_graph(pipeline, groups)
    ordered: list[int] = []
    seen: set[int] = set()

    def visit(node: int) -> None:
        if node in seen:
            return
        seen.add(node)
        for dep in sorted(edges[node], key=lambda k: min(position[s] for s in groups[k])):
            visit(dep)
        ordered.append(node)

    for node in sorted(range(len(groups)), key=lambda k: min(position[s] for s in groups[k])):
        visit(node)
    return [
        Unit(
            pipeline.steps[next(iter(groups[k]))].service, tuple(sorted(groups[k], key=position.__getitem__))
        )
        for k in ordered
    ]
