"""`modelfleet lake ...`: ingest files as dataset versions, list and show them, count captures."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING, Any

from modelfleet.errors import ConfigError, DatasetRejected, ModelfleetError
from modelfleet.settings import load_settings

if TYPE_CHECKING:
    from modelfleet.lake import DatasetVersion, Lake

FORMAT_CHOICES = ("csv", "tsv", "jsonl", "parquet")


def _lake(args: argparse.Namespace) -> Lake:
    from modelfleet.lake import Lake

    if args.lake:
        return Lake(args.lake)
    try:
        settings = load_settings(args.config, env=os.environ)
    except ConfigError as err:
        raise ConfigError(f"{err} (or name the lake with --lake ROOT)") from None
    return Lake.from_settings(settings)


def _fail(err: ModelfleetError) -> int:
    if isinstance(err, DatasetRejected):
        print("modelfleet: dataset refused:", file=sys.stderr)
        for reason in err.reasons:
            print(f"  - {reason}", file=sys.stderr)
        return 2
    print(f"modelfleet: {err}", file=sys.stderr)
    return 2 if isinstance(err, ConfigError) else 1


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False, default=str))


def _column_names(text: str | None) -> list[str] | None:
    if text is None:
        return None
    names = [name.strip() for name in text.split(",")]
    if not all(names):
        raise DatasetRejected(f"--columns {text!r} has an empty column name")
    return names


def cmd_lake_ingest(args: argparse.Namespace) -> int:
    """Store a CSV, TSV, JSONL or Parquet file as an immutable, content-hashed version of a dataset."""
    try:
        lake = _lake(args)
        found = lake.ingest(
            args.file,
            args.dataset,
            format=args.format,
            text_column=args.text_column,
            label_column=args.label_column,
            header=not args.no_header,
            column_names=_column_names(args.columns),
        )
    except ModelfleetError as err:
        return _fail(err)
    if args.json:
        _print_json(found.to_dict())
        return 0
    columns = ", ".join(f"{c.name}: {c.type}" for c in found.schema)
    if found.created:
        print(f"stored {found.ref}: {found.rows} rows, {len(found.schema)} columns ({columns})")
    else:
        print(f"already stored as {found.ref} (same content): {found.rows} rows ({columns})")
    return 0


def cmd_lake_ls(args: argparse.Namespace) -> int:
    """List the lake's datasets with their version count and newest version."""
    lake = _lake(args)
    rows = []
    try:
        for name in lake.datasets():
            versions = lake.versions(name)
            rows.append((name, versions))
    except ModelfleetError as err:
        return _fail(err)
    if args.json:
        _print_json(
            {
                "lake": lake.url,
                "datasets": [
                    {"name": name, "versions": len(vs), "latest": vs[0].to_dict()} for name, vs in rows
                ],
            }
        )
        return 0
    if not rows:
        print(f"no datasets in the lake {lake.url}")
        return 0
    print(f"{'DATASET':<24} {'VERSIONS':>8}  {'LATEST':<12} {'ROWS':>10}  CREATED (UTC)")
    for name, versions in rows:
        latest = versions[0]
        created = latest.created_at.isoformat(timespec="seconds")
        print(f"{name:<24} {len(versions):>8}  {latest.version:<12} {latest.rows:>10}  {created}")
    return 0


def cmd_lake_show(args: argparse.Namespace) -> int:
    """Show one dataset version (the newest unless NAME@VERSION): schema, rows, hash, source, roles."""
    from modelfleet.lake import parse_ref

    lake = _lake(args)
    try:
        name, version = parse_ref(args.ref)
        found = lake.get(name, version)
        versions = lake.versions(name)
    except ModelfleetError as err:
        return _fail(err)
    if args.json:
        _print_json({**found.to_dict(), "versions": [v.version for v in versions]})
        return 0
    _print_version(found, versions)
    return 0


def _print_version(found: DatasetVersion, versions: list[DatasetVersion]) -> None:
    source = found.source
    roles = ", ".join(
        f"{role}: {column}"
        for role, column in (("text", found.text_column), ("label", found.label_column))
        if column is not None
    )
    width = max(len(c.name) for c in found.schema)
    print(f"dataset  {found.name}")
    print(f"version  {found.version}{'  (newest)' if found.version == versions[0].version else ''}")
    print(f"sha256   {found.sha256}")
    print(f"rows     {found.rows}")
    print(f"created  {found.created_at.isoformat(timespec='seconds')}")
    print(f"source   {source.path} ({source.format}, {source.size_bytes} bytes, sha256 {source.sha256})")
    print(f"roles    {roles or '-'}")
    print(f"stored   {found.uri}")
    print("schema")
    for column in found.schema:
        print(f"  {column.name:<{width}}  {column.type}")
    print(f"versions {', '.join(v.version for v in versions)} (newest first)")


def cmd_lake_captures(args: argparse.Namespace) -> int:
    """Count a model's captured predictions, per UTC hour partition."""
    from modelfleet.lake import capture_partitions

    lake = _lake(args)
    try:
        partitions = capture_partitions(lake, args.model)
    except ModelfleetError as err:
        return _fail(err)
    total = sum(p.rows for p in partitions)
    if args.json:
        _print_json({"model": args.model, "rows": total, "partitions": [p.to_dict() for p in partitions]})
        return 0
    print(f"model {args.model}: {total} captured rows in {len(partitions)} partitions of {lake.url}")
    if partitions:
        print(f"{'DATE':<10}  {'HOUR':<4} {'FILES':>6} {'ROWS':>8}")
        for p in partitions:
            print(f"{p.date:<10}  {p.hour:<4} {p.files:>6} {p.rows:>8}")
    return 0


def add_lake_commands(subparsers: Any, common_parent: argparse.ArgumentParser) -> None:
    """Register ``lake ingest|ls|show|captures``; ``common_parent`` brings the shared ``-c/--config``."""
    lake = subparsers.add_parser("lake", help="datasets and captured predictions in the data lake")
    commands = lake.add_subparsers(dest="lake_command", required=True)

    def command(name: str, func: Any) -> argparse.ArgumentParser:
        doc = (func.__doc__ or "").strip()
        p: argparse.ArgumentParser = commands.add_parser(
            name, parents=[common_parent], help=doc.splitlines()[0], description=doc
        )
        p.add_argument("--lake", help="lake root: a folder or fsspec URL (default: lake.root of the config)")
        p.add_argument("--json", action="store_true", help="machine-readable output")
        p.set_defaults(func=func)
        return p

    ingest = command("ingest", cmd_lake_ingest)
    ingest.add_argument("file", help="a .csv, .tsv, .jsonl/.ndjson or .parquet file (or fsspec URL)")
    ingest.add_argument("--dataset", required=True, help="dataset name (lower-case letters, digits, . _ -)")
    ingest.add_argument("--text-column", help="the column holding the text; must be non-empty strings")
    ingest.add_argument("--label-column", help="the column holding labels; non-empty strings or integers")
    ingest.add_argument(
        "--format", choices=FORMAT_CHOICES, help="the file's format (default: from its suffix)"
    )
    ingest.add_argument("--no-header", action="store_true", help="CSV/TSV: the first line is data")
    ingest.add_argument("--columns", help="CSV/TSV without header: column names, comma-separated")
    command("ls", cmd_lake_ls)
    show = command("show", cmd_lake_show)
    show.add_argument("ref", help="NAME or NAME@VERSION")
    captures = command("captures", cmd_lake_captures)
    captures.add_argument("model")
