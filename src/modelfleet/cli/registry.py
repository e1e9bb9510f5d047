"""`modelfleet models ls | show | promote | rollback | delete | history`: the registry from a shell.

The commands talk to the registry's database (``store_url`` of fleet.yaml) directly, like
`modelfleet runs`, so they work whether or not a fleet is running. Parsing and printing only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from modelfleet.errors import ConfigError, ModelfleetError
from modelfleet.registry import DEFAULT_ALIAS, MAX_LIST_LIMIT, Registry, make_registry
from modelfleet.registry.api import DeleteArtifact, model_view, remove_artifact
from modelfleet.settings import Settings, load_settings

T = TypeVar("T")

ArtifactDeleterOf = Callable[[Settings], DeleteArtifact]


def add_registry_commands(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    config_parent: argparse.ArgumentParser,
    artifact_deleter_of: ArtifactDeleterOf | None = None,
) -> None:
    """Add `models` and its subcommands to the `modelfleet` parser.

    ``config_parent`` contributes the ``-c/--config`` option. ``artifact_deleter_of``, when
    given, makes the lake's artifact deleter from the settings, so `models delete` removes the
    deleted version's artifact too (without it, the command prints the artifact's URI).
    """
    models = subparsers.add_parser("models", help="the model registry: versions, aliases, rollbacks")
    commands = models.add_subparsers(dest="models_command", required=True)

    def command(name: str, run: Callable[[argparse.Namespace, Settings], int]) -> argparse.ArgumentParser:
        doc = run.__doc__ or ""
        parser = commands.add_parser(
            name, parents=[config_parent], help=doc.strip().splitlines()[0], description=doc
        )

        def func(args: argparse.Namespace) -> int:
            settings = load_settings(args.config, env=os.environ)
            try:
                return run(args, settings)
            except ConfigError:
                raise
            except ModelfleetError as err:
                print(f"modelfleet: {err}", file=sys.stderr)
                return 1

        parser.set_defaults(func=func)
        return parser

    def delete(args: argparse.Namespace, settings: Settings) -> int:
        """Delete a version no alias or rollout uses, and its artifact when the lake is configured."""
        deleter = artifact_deleter_of(settings) if artifact_deleter_of is not None else None
        return cmd_delete(args, settings, deleter)

    ls = command("ls", cmd_ls)
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    show = command("show", cmd_show)
    show.add_argument("name", help="the model")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    promote = command("promote", cmd_promote)
    promote.add_argument("name", help="the model")
    promote.add_argument("version", help="the version number the alias should point at")
    promote.add_argument(
        "--alias", default=DEFAULT_ALIAS, help=f"the alias to move (default: {DEFAULT_ALIAS})"
    )
    rollback = command("rollback", cmd_rollback)
    rollback.add_argument("name", help="the model")
    rollback.add_argument(
        "--alias", default=DEFAULT_ALIAS, help=f"the alias to move back (default: {DEFAULT_ALIAS})"
    )
    remove = command("delete", delete)
    remove.add_argument("name", help="the model")
    remove.add_argument("version", help="the version number to delete")
    history = command("history", cmd_history)
    history.add_argument("name", help="the model")
    history.add_argument("--alias", help="only this alias's events")
    history.add_argument(
        "--limit", type=int, default=50, help=f"at most this many events (1..{MAX_LIST_LIMIT})"
    )
    history.add_argument("--json", action="store_true", help="machine-readable output")


def with_registry(settings: Settings, work: Callable[[Registry], Awaitable[T]]) -> T:
    """Run ``work`` on the settings' registry, opened for it and closed after (CLI commands)."""

    async def run() -> T:
        registry = make_registry(settings.store_url)
        await registry.open()
        try:
            return await work(registry)
        finally:
            await registry.close()

    return asyncio.run(run())


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))


def _aliases_text(aliases: dict[str, str]) -> str:
    return ", ".join(f"{alias}={version}" for alias, version in sorted(aliases.items())) or "-"


def _metrics_text(metrics: dict[str, Any]) -> str:
    return " ".join(f"{name}={value:.4g}" for name, value in sorted(metrics.items())) or "-"


def cmd_ls(args: argparse.Namespace, settings: Settings) -> int:
    """List registered models: how many versions, the newest, and where each alias points."""
    summaries = with_registry(settings, lambda registry: registry.models())
    if args.json:
        _print_json({"models": [summary.to_dict() for summary in summaries]})
        return 0
    if not summaries:
        print("no models registered")
        return 0
    print(f"{'MODEL':<24} {'VERSIONS':>8} {'LATEST':>7}  ALIASES")
    for summary in summaries:
        print(
            f"{summary.model:<24} {summary.versions:>8} {summary.latest or '-':>7}  "
            f"{_aliases_text(summary.aliases)}"
        )
    return 0


def cmd_show(args: argparse.Namespace, settings: Settings) -> int:
    """Show one model: its versions with metrics, dataset and creation time, its aliases and rollout."""
    view = with_registry(settings, lambda registry: model_view(registry, args.name))
    if args.json:
        _print_json(view)
        return 0
    versions = view["versions"]
    print(f"model {view['model']}: {len(versions)} version(s), latest {view['latest'] or '-'}")
    print(f"aliases: {_aliases_text(view['aliases'])}")
    rollout = view["rollout"]
    if rollout is not None:
        routes = ", ".join(f"{r['ref']} (v{r['version']}) {r['weight']}%" for r in rollout["routes"])
        extras = []
        if rollout["sticky_header"]:
            extras.append(f"sticky on {rollout['sticky_header']}")
        if rollout["shadow"]:
            extras.append(f"shadow {rollout['shadow']} (v{rollout['shadow_version']})")
        print(f"rollout: {routes}" + (f"; {'; '.join(extras)}" if extras else ""))
    by_version: dict[str, list[str]] = {}
    for alias, version in view["aliases"].items():
        by_version.setdefault(version, []).append(alias)
    print(f"{'VERSION':>7}  {'CREATED (UTC)':<20} {'TRAINER':<16} {'DATASET':<24} {'ALIASES':<20} METRICS")
    for version in versions:
        created = version["created_at"][:19].replace("T", " ")
        aliases = ",".join(sorted(by_version.get(version["version"], []))) or "-"
        print(
            f"{version['version']:>7}  {created:<20} {version['trainer']:<16} "
            f"{version['dataset'] or '-':<24} {aliases:<20} {_metrics_text(version['metrics'])}"
        )
    return 0


def cmd_promote(args: argparse.Namespace, settings: Settings) -> int:
    """Point an alias (default: production) at a version of a model."""
    event = with_registry(settings, lambda registry: registry.set_alias(args.name, args.alias, args.version))
    was = f" (was {event.previous_version})" if event.previous_version is not None else " (new alias)"
    print(f"{event.model}: {event.alias} -> {event.version}{was}")
    return 0


def cmd_rollback(args: argparse.Namespace, settings: Settings) -> int:
    """Move an alias (default: production) back to the version it pointed at before its last promotion."""
    event = with_registry(settings, lambda registry: registry.rollback(args.name, args.alias))
    print(f"{event.model}: {event.alias} rolled back to {event.version} (was {event.previous_version})")
    return 0


def cmd_delete(args: argparse.Namespace, settings: Settings, delete_artifact: DeleteArtifact | None) -> int:
    """Delete a version no alias or rollout uses, and its artifact when a deleter is given."""

    async def work(registry: Registry) -> tuple[str, bool, str | None]:
        deleted = await registry.delete_version(args.name, args.version)
        if delete_artifact is None:
            return deleted.artifact_uri, False, None
        return deleted.artifact_uri, *await remove_artifact(delete_artifact, deleted.artifact_uri)

    uri, removed, error = with_registry(settings, work)
    print(f"deleted version {args.version} of model {args.name}")
    if error is not None:
        print(f"could not delete its artifact at {uri}: {error}", file=sys.stderr)
        return 1
    if delete_artifact is None:
        print(f"its artifact is still at {uri}; remove it from the lake if it is not needed")
    elif removed:
        print(f"deleted its artifact at {uri}")
    else:
        print(f"found no artifact at {uri} to delete")
    return 0


def cmd_history(args: argparse.Namespace, settings: Settings) -> int:
    """Show a model's alias promotions, rollbacks and deletions, newest first."""
    events = with_registry(settings, lambda registry: registry.history(args.name, args.alias, args.limit))
    if args.json:
        _print_json({"model": args.name, "events": [event.to_dict() for event in events]})
        return 0
    if not events:
        print(f"no alias changes recorded for model {args.name}")
        return 0
    print(f"{'ID':>6}  {'AT (UTC)':<23} {'ALIAS':<16} {'ACTION':<9} {'VERSION':>7} {'PREVIOUS':>8}")
    for event in events:
        at = event.at.isoformat(timespec="milliseconds")[:23].replace("T", " ")
        print(
            f"{event.id:>6}  {at:<23} {event.alias:<16} {event.action:<9} "
            f"{event.version or '-':>7} {event.previous_version or '-':>8}"
        )
    return 0
