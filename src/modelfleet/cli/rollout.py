"""`modelfleet rollout set | show | clear` and `modelfleet rollback`: traffic splits from a shell.

Like `modelfleet models`, the commands write the registry's database (``store_url`` of fleet.yaml)
directly, so they work whether or not a fleet is running; a running gateway picks a change up
within ``gateway.rollout_poll_s``. `rollout show` adds the running gateway's live counters.
Parsing and printing only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from modelfleet.cli.registry import with_registry
from modelfleet.errors import AliasNotFound, ConfigError, InvalidInput, ModelfleetError
from modelfleet.registry import DEFAULT_ALIAS, AliasEvent, Registry
from modelfleet.registry.api import rollout_view
from modelfleet.settings import Settings, load_settings

T = TypeVar("T")


def add_rollout_commands(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    config_parent: argparse.ArgumentParser,
) -> None:
    """Add `rollout` (set, show, clear) and `rollback` to the `modelfleet` parser.

    ``config_parent`` contributes the ``-c/--config`` option.
    """
    rollout = subparsers.add_parser("rollout", help="split a model's traffic between versions; shadow one")
    commands = rollout.add_subparsers(dest="rollout_command", required=True)

    def wrap(run: Callable[[argparse.Namespace, Settings], int]) -> Callable[[argparse.Namespace], int]:
        def func(args: argparse.Namespace) -> int:
            settings = load_settings(args.config, env=os.environ)
            try:
                return run(args, settings)
            except ConfigError:
                raise
            except ModelfleetError as err:
                print(f"modelfleet: {err}", file=sys.stderr)
                return 1

        return func

    def command(name: str, run: Callable[[argparse.Namespace, Settings], int]) -> argparse.ArgumentParser:
        doc = run.__doc__ or ""
        parser = commands.add_parser(
            name, parents=[config_parent], help=doc.strip().splitlines()[0], description=doc
        )
        parser.set_defaults(func=wrap(run))
        return parser

    set_ = command("set", cmd_set)
    set_.add_argument("model", help="the model")
    set_.add_argument(
        "--route",
        action="append",
        required=True,
        metavar="REF=WEIGHT",
        help="a share of the traffic: an alias or version number and its percent; weights sum to 100",
    )
    set_.add_argument("--sticky-header", help="requests with the same value of this header see one version")
    set_.add_argument("--shadow", metavar="REF", help="a version or alias that gets a copy of every request")
    show = command("show", cmd_show)
    show.add_argument("model", help="the model")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    clear = command("clear", cmd_clear)
    clear.add_argument("model", help="the model")

    doc = cmd_rollback.__doc__ or ""
    rollback = subparsers.add_parser(
        "rollback", parents=[config_parent], help=doc.strip().splitlines()[0], description=doc
    )
    rollback.set_defaults(func=wrap(cmd_rollback))
    rollback.add_argument("model", help="the model")
    rollback.add_argument(
        "--alias",
        help=f"also move this alias (usually {DEFAULT_ALIAS}) back to its version before its last promotion",
    )


def parse_routes(texts: list[str]) -> list[dict[str, Any]]:
    """``["production=90", "canary=10"]`` as rollout routes; raises InvalidInput naming a bad one."""
    routes: list[dict[str, Any]] = []
    for text in texts:
        ref, sep, weight = text.rpartition("=")
        if not sep or not ref.strip():
            raise InvalidInput(f"--route {text!r} must be REF=WEIGHT, e.g. production=90")
        try:
            number = int(weight)
        except ValueError:
            raise InvalidInput(f"--route {text!r}: the weight must be a whole number of percent") from None
        routes.append({"ref": ref.strip(), "weight": number})
    return routes


def _routes_text(view: dict[str, Any]) -> str:
    routes = ", ".join(f"{r['ref']} (v{r['version'] or '?'}) {r['weight']}%" for r in view["routes"])
    extras = []
    if view["sticky_header"]:
        extras.append(f"sticky on {view['sticky_header']}")
    if view["shadow"]:
        extras.append(f"shadow {view['shadow']} (v{view['shadow_version'] or '?'})")
    return routes + (f"; {'; '.join(extras)}" if extras else "")


async def _production_text(registry: Registry, model: str) -> str:
    try:
        return f"{DEFAULT_ALIAS} (v{(await registry.resolve(model, DEFAULT_ALIAS)).version})"
    except AliasNotFound:
        return f"{DEFAULT_ALIAS} (not set: the fleet's configured version)"


def cmd_set(args: argparse.Namespace, settings: Settings) -> int:
    """Set (or replace) a model's traffic split, e.g. --route production=90 --route canary=10."""
    spec: dict[str, Any] = {"routes": parse_routes(args.route)}
    if args.sticky_header is not None:
        spec["sticky_header"] = args.sticky_header
    if args.shadow is not None:
        spec["shadow"] = args.shadow

    async def work(registry: Registry) -> dict[str, Any]:
        return await rollout_view(registry, await registry.set_rollout(args.model, spec))

    view = with_registry(settings, work)
    print(f"{args.model}: rollout set: {_routes_text(view)}")
    return 0


def _gateway_rollouts(settings: Settings) -> dict[str, Any] | None:
    """The running fleet's GET /v1/rollouts, or None when no fleet runs or its gateway does not answer."""
    from modelfleet.supervisor.state import FleetState, pid_alive

    state = FleetState.read(Path(settings.supervisor.run_dir).resolve())
    if state is None or not pid_alive(state.supervisor_pid):
        return None
    try:
        with urllib.request.urlopen(f"{state.gateway_url.rstrip('/')}/v1/rollouts", timeout=2.0) as answer:
            value = json.loads(answer.read())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def cmd_show(args: argparse.Namespace, settings: Settings) -> int:
    """Show a model's traffic split, and the running gateway's counters per version.

    The counters (requests, errors, shadow outcomes) come from the gateway's GET /v1/rollouts.
    """

    async def work(registry: Registry) -> tuple[dict[str, Any] | None, str]:
        await registry.aliases(args.model)  # an unknown model fails here, named
        rollout = await registry.find_rollout(args.model)
        view = await rollout_view(registry, rollout) if rollout is not None else None
        return view, await _production_text(registry, args.model)

    view, production = with_registry(settings, work)
    live = _gateway_rollouts(settings)
    gateway = None
    if live is not None:
        gateway = next((r for r in live.get("rollouts", []) if r.get("model") == args.model), None)
    if args.json:
        answer = {"model": args.model, "rollout": view, "gateway": gateway, "fleet_running": live is not None}
        print(json.dumps(answer, indent=2, ensure_ascii=False))
        return 0
    if view is None:
        print(f"{args.model}: no rollout; all traffic goes to {production}")
    else:
        print(f"{args.model}: {_routes_text(view)}")
    if live is None:
        print("no fleet is running: no live counters")
        return 0
    if gateway is None:
        print("the running gateway routes no rollout for this model")
        return 0
    print(f"{'VERSION':>7} {'REQUESTS':>9} {'ERRORS':>7} {'4XX':>6} {'FALLBACKS':>9}")
    for version, counts in gateway["versions"].items():
        print(
            f"{version:>7} {counts['requests']:>9} {counts['errors']:>7} "
            f"{counts['client_errors']:>6} {counts['fallbacks']:>9}"
        )
    for version, outcomes in gateway["shadow_outcomes"].items():
        print(f"shadow v{version}: " + " ".join(f"{name}={count}" for name, count in outcomes.items()))
    return 0


def cmd_clear(args: argparse.Namespace, settings: Settings) -> int:
    """Remove a model's traffic split: all its traffic goes to its production alias again."""

    async def work(registry: Registry) -> tuple[bool, str]:
        cleared = await registry.clear_rollout(args.model)
        return cleared, await _production_text(registry, args.model)

    cleared, production = with_registry(settings, work)
    if cleared:
        print(f"{args.model}: rollout cleared; all traffic goes to {production}")
    else:
        print(f"{args.model}: had no rollout; all traffic goes to {production}")
    return 0


@dataclass(frozen=True, slots=True)
class _Rollback:
    cleared: dict[str, Any] | None
    event: AliasEvent | None
    alias_error: str | None
    production: str


def cmd_rollback(args: argparse.Namespace, settings: Settings) -> int:
    """Send all of a model's traffic to production again, in one command.

    Clears the model's rollout; with --alias also moves that alias back one promotion. Prints
    what changed.
    """

    async def work(registry: Registry) -> _Rollback:
        await registry.aliases(args.model)  # an unknown model fails here, before anything changes
        rollout = await registry.find_rollout(args.model)
        cleared = None
        if rollout is not None:
            cleared = await rollout_view(registry, rollout)
            await registry.clear_rollout(args.model)
        event, alias_error = None, None
        if args.alias is not None:
            try:
                event = await registry.rollback(args.model, args.alias)
            except ModelfleetError as err:
                alias_error = str(err)
        return _Rollback(cleared, event, alias_error, await _production_text(registry, args.model))

    outcome = with_registry(settings, work)
    if outcome.cleared is not None:
        print(f"{args.model}: cleared the rollout ({_routes_text(outcome.cleared)})")
    else:
        print(f"{args.model}: had no rollout")
    if outcome.event is not None:
        print(
            f"{args.model}: {outcome.event.alias} rolled back to {outcome.event.version} "
            f"(was {outcome.event.previous_version})"
        )
    print(f"{args.model}: all traffic goes to {outcome.production}")
    if outcome.alias_error is not None:
        print(f"modelfleet: could not roll back alias {args.alias!r}: {outcome.alias_error}", file=sys.stderr)
        return 1
    return 0
