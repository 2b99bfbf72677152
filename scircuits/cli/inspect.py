"""`scircuits inspect STORE`: what an activation store holds and how its values are distributed."""

from __future__ import annotations

from typing import Any

import click
import numpy as np

from scircuits.cli.common import echo_json
from scircuits.platform.contract.jsonvalues import finite_or_none

_SHOWN_TOP_DIMS = 5
DEFAULT_STATS_ROWS = 262_144


@click.command()
@click.argument("store")
@click.option(
    "--json", "as_json", is_flag=True, help="Print everything as JSON (per-dimension lists included)."
)
@click.option(
    "--max-rows",
    type=click.IntRange(min=0),
    default=DEFAULT_STATS_ROWS,
    show_default=True,
    help="Statistics on about this many rows (whole chunks spread over the store); 0 = every row.",
)
@click.option(
    "--fast",
    is_flag=True,
    help="Only check that every data file exists; by default every file is also read and decoded.",
)
def inspect(store: str, as_json: bool, max_rows: int, fast: bool) -> None:
    """Show an activation store's attributes, shape, size on disk and per-dimension statistics,
    after checking every data file (exit code 2 when any is missing, undecodable or non-finite)."""
    from scircuits.store import ActivationStore
    from scircuits.store.errors import DamagedStoreError

    reader = ActivationStore(store)
    integrity = reader.verify(fast=fast)
    info = reader.describe()
    stats = None
    if not integrity["damaged"]:
        try:
            stats = reader.stats(max_rows=max_rows or None)
        except DamagedStoreError as exc:  # --fast skipped decoding; the statistics found the damage
            integrity.update(ok=False, damaged=[str(exc)])
    if as_json:
        echo_json({**info, "integrity": integrity, "stats": None if stats is None else finite_or_none(stats)})
    else:
        _print_text(info, stats, integrity)
    if not integrity["ok"] or (stats is not None and stats["nonfinite_total"]):
        raise SystemExit(2)  # missing, undecodable or non-finite values, as the help says


def _integrity_line(integrity: dict[str, Any]) -> str:
    what = "present" if integrity["fast"] else "present and decodable"
    if integrity["ok"]:
        return f"  integrity    all {integrity['checked_files']:,} data files {what}"
    problems = []
    for key, label in (("missing", "missing"), ("damaged", "cannot be decoded")):
        if integrity[key]:
            problems.append(f"{label}: {', '.join(integrity[key][:5])}")
    if integrity["nonfinite_rows"]:
        problems.append(f"{integrity['nonfinite_rows']:,} rows hold NaN or inf")
    return "  DAMAGED      " + "; ".join(problems) + " (delete the store and collect it again)"


def _size(n_bytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n_bytes < 1024 or unit == "GiB":
            return f"{n_bytes:.0f} {unit}" if unit == "B" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1024
    return f"{n_bytes:.1f} TiB"


def _print_text(info: dict[str, Any], stats: dict[str, Any] | None, integrity: dict[str, Any]) -> None:
    attrs = info["attrs"]
    status = "complete" if info["complete"] else "INCOMPLETE (collection stopped; re-run it to resume)"
    click.echo(f"{info['path']}: {status}")
    click.echo(
        f"  shape        {info['shape'][0]:,} tokens x {info['shape'][1]} ({info['dtype']}), "
        f"{attrs.get('n_examples', '?')} examples, chunks of {info['block_rows']:,} rows"
    )
    ratio = info["acts_raw_bytes"] / info["size_on_disk"] if info["size_on_disk"] else float("nan")
    codecs = ", ".join(info["compressors"]) or "uncompressed"
    click.echo(
        f"  on disk      {_size(info['size_on_disk'])} ({codecs}; acts raw {_size(info['acts_raw_bytes'])}, "
        f"ratio {ratio:.2f})"
    )
    click.echo(_integrity_line(integrity))
    click.echo("  attributes")
    for key in sorted(attrs):
        value = attrs[key]
        text = (
            repr(value) if not isinstance(value, (dict, list)) else f"{type(value).__name__} of {len(value)}"
        )
        click.echo(f"    {key:<18} {text}")
    if stats is None:
        return
    click.echo(f"  statistics over {stats['rows']:,} of {stats['rows_total']:,} rows")
    if not stats["rows"]:
        return
    mean, std, abs_max = stats["mean"], stats["std"], stats["abs_max"]
    for label, values in (("mean", mean), ("std ", std)):
        click.echo(
            f"    per-dim {label}  min {np.nanmin(values):.4g}  median {np.nanmedian(values):.4g}  "
            f"max {np.nanmax(values):.4g}"
        )
    click.echo(f"    min {np.nanmin(stats['min']):.4g}  max {np.nanmax(stats['max']):.4g}")
    top = np.argsort(np.nan_to_num(abs_max, nan=-1.0))[::-1][:_SHOWN_TOP_DIMS]
    listed = ", ".join(f"{int(d)} ({abs_max[d]:.4g})" for d in top)
    click.echo(f"    largest |value| dims  {listed}")
    norm = stats["norm"]
    click.echo(
        f"    token L2 norm  mean {norm['mean']:.4g}  std {norm['std']:.4g}  "
        f"min {norm['min']:.4g}  max {norm['max']:.4g}"
    )
    if stats["nonfinite_total"]:
        bad_dims = int((stats["nonfinite"] > 0).sum())
        click.echo(
            f"  WARNING: {stats['nonfinite_total']:,} non-finite values (NaN/inf) in {bad_dims} dimension(s)"
        )
    else:
        click.echo("    no non-finite values")
