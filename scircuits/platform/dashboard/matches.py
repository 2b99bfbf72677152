"""Matched features in compared runs: the match data of a dashboard, from ``scircuits compare`` folders.

A dashboard records the compare folders whose matches it shows in ``comparisons.json``; refreshing
(re)writes only generated files of the site:

- ``data/comparisons.js`` (``window.SC_COMPARISONS``): one entry per comparison involving this run,
  with the pair's matched-correlation summaries beside this run's ceiling (seed twin) and floors
  (untrained SAE, random basis);
- ``data/matches/<id>.js`` (``window.SC_MATCHES``) per feature page: its one-to-one and
  max-correlation partners in every comparison, each linked to the other run's feature page when
  that run's dashboard has one (a relative link, so it works from ``file://``).

    refresh_matches(run_dir / "dashboard", run_dir, [Path("compare")])
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from scircuits.files import write_atomic
from scircuits.platform.common.artifacts import (
    ArtifactError,
    FolderLock,
    describe_os_error,
    publish_dir,
    recover_published,
    remove_orphans,
    write_probe,
)
from scircuits.platform.common.logs import get_logger
from scircuits.platform.compare.schema import CompareResults, Comparison, MatchedDistribution, RunEntry
from scircuits.platform.contract.errors import ConfigError
from scircuits.platform.dashboard import sources
from scircuits.platform.dashboard.schema import Match
from scircuits.platform.dashboard.site import js_assign

log = get_logger(__name__)

COMPARISONS_FILE = "comparisons.json"  # in the site folder: the compare folders it shows
DASHBOARD_DIR = "dashboard"


def recorded_compare_dirs(
    site: Path, run_dir: Path | None = None, say: Callable[[str], None] | None = None
) -> list[Path]:
    """The compare folders a site records (those that still hold results), oldest first. Given
    ``run_dir``, a recorded folder that no longer compared it (the run was copied or moved since, or
    the folder was rewritten) is stale: dropped, with a note through ``say``, never an error; one whose
    results cannot be read is kept out with a warning naming it and what is wrong (and stays
    recorded: :func:`damaged_compare_dirs`)."""
    return _recorded(site, run_dir, say)[0]


def damaged_compare_dirs(site: Path, run_dir: Path) -> list[Path]:
    """The compare folders a site records whose results.json cannot be read (no warning: the caller
    of :func:`recorded_compare_dirs` warned); kept in the site's record so that, once repaired (or
    rewritten by `scircuits compare`), their matches show again."""
    return _recorded(site, run_dir, None, warn=False)[1]


def _recorded(
    site: Path, run_dir: Path | None, say: Callable[[str], None] | None, *, warn: bool = True
) -> tuple[list[Path], list[Path]]:
    """(folders shown, folders recorded but damaged)."""
    path = site / COMPARISONS_FILE
    if not path.is_file():
        return [], []
    try:
        dirs = json.loads(path.read_text()).get("compare_dirs", [])
        if not isinstance(dirs, list):
            raise ValueError(f"compare_dirs is {type(dirs).__name__}, not a list")
    except (OSError, ValueError, AttributeError, RecursionError) as exc:
        if warn and run_dir is not None:
            log.warning(
                f"warning: dashboard: {path} cannot be read ({type(exc).__name__}: {str(exc)[:120]}): the "
                f"comparisons it recorded are not shown; give them again with --compare"
            )
        return [], []
    recorded = [Path(d) for d in dirs if isinstance(d, str)]
    if run_dir is None:
        return [d for d in recorded if (d / sources.COMPARE_RESULTS).is_file()], []
    fresh, damaged = [], []
    for compare_dir in recorded:
        if not compare_dir.is_dir():
            if warn:
                (say or (lambda _: None))(
                    f"dropped the comparison {compare_dir}: the folder is gone; rerun `scircuits compare` "
                    "to list its matches again"
                )
            continue
        try:
            stale = run_index(sources.read_comparison(compare_dir), run_dir) is None
        except ConfigError as exc:
            damaged.append(compare_dir)
            if warn:
                log.warning(
                    f"warning: dashboard: the comparison {compare_dir} is left out of {site}: {exc}; it "
                    "stays recorded and shows again once its results read"
                )
            continue
        if stale:
            if warn:
                (say or (lambda _: None))(
                    f"dropped the comparison {compare_dir}: it did not compare {run_dir} (the run was copied "
                    f"or moved since); rerun `scircuits compare` with this folder to list its matches again"
                )
        else:
            fresh.append(compare_dir)
    return fresh, damaged


def _unique(paths: Iterable[Path]) -> list[Path]:
    seen: dict[Path, None] = {}
    for p in paths:
        seen.setdefault(p.resolve(), None)
    return list(seen)


def run_index(results: CompareResults, run_dir: Path) -> int | None:
    """Which of the compared runs ``run_dir`` is (by resolved path), or None."""
    here = run_dir.resolve()
    for i, entry in enumerate(results.runs):
        if Path(entry.resolved_path or entry.path).resolve() == here:
            return i
    return None


def _summary(d: MatchedDistribution | None) -> dict[str, Any] | None:
    if d is None or d.n == 0:
        return None
    return {"n": d.n, "median": d.median, "q10": d.q10, "q90": d.q90}


def _reference_row(what: str, c: Comparison | None) -> dict[str, Any]:
    return {
        "what": what,
        "one_to_one": _summary(c.hungarian) if c else None,
        "max": _summary(c.max_a_to_b) if c else None,  # this run's SAE is side A of its references
    }


def comparison_entry(compare_dir: Path, results: CompareResults, pair_at: int, side: int) -> dict[str, Any]:
    """What a feature page shows about one comparison: the other run, and its figures beside the
    ceiling and floors of this run (``side`` 0: this run is the pair's A)."""
    pair = results.pairs[pair_at]
    this_i, other_i = (pair.a, pair.b) if side == 0 else (pair.b, pair.a)
    this: RunEntry = results.runs[this_i]
    other: RunEntry = results.runs[other_i]
    c = pair.comparison
    ref = this.reference
    floors = []
    if pair.floors is not None:  # runs in different spaces: the floors on the other run's activations
        untrained, basis = (
            (pair.floors.a_vs_untrained_b, pair.floors.a_vs_basis_b)
            if side == 0
            else (pair.floors.untrained_a_vs_b, pair.floors.basis_a_vs_b)
        )
        floors = [
            {
                "what": f"floor: vs {what} on the other run's activations",
                "one_to_one": _summary(f.hungarian),
                "max": _summary(f.max_a_to_b if side == 0 else f.max_b_to_a),
            }
            for what, f in (("an untrained SAE", untrained), ("a random basis", basis))
        ]
    own = " (this run's store)" if floors else ""
    return {
        "compare_dir": str(compare_dir),
        "other": f"{other.label} · {Path(other.path).name}",  # labels alone repeat for one model
        "other_path": other.resolved_path or other.path,
        "n_tokens": c.n_tokens,
        "alignment": c.alignment,
        "rows": [
            {
                "what": "this pair",
                "one_to_one": _summary(c.hungarian),
                "max": _summary(c.max_a_to_b if side == 0 else c.max_b_to_a),
            },
            _reference_row("ceiling: this SAE vs its seed twin", ref.ceiling),
            *floors,
            _reference_row(f"floor: vs an untrained SAE{own}", ref.floor_untrained),
            _reference_row(f"floor: vs a random basis{own}", ref.floor_rotation),
        ],
        "note": ref.note,
    }


def feature_href(site: Path, other_run: Path, feature: int) -> str | None:
    """A link from this site's features/ folder to the other run's page for ``feature``, if it exists."""
    target = other_run / DASHBOARD_DIR / "features" / f"{feature}.html"
    if not target.is_file():
        return None
    return Path(os.path.relpath(target.resolve(), (site / "features").resolve())).as_posix()


def check_compare_dirs(compare_dirs: Sequence[Path], run_dir: Path) -> None:
    """ConfigError unless every folder holds compare results that include ``run_dir``."""
    for compare_dir in compare_dirs:
        results = sources.read_comparison(compare_dir)
        me = _own_index(compare_dir, results, run_dir)
        if any(me in (p.a, p.b) and p.matches_file is None for p in results.pairs):
            raise ConfigError(
                f"{compare_dir / sources.COMPARE_RESULTS} names no matches file (written by an older "
                "`scircuits compare`): rerun the compare to list matched features on the dashboard"
            )


def _own_index(compare_dir: Path, results: CompareResults, run_dir: Path) -> int:
    me = run_index(results, run_dir)
    if me is None:
        compared = ", ".join(r.resolved_path or r.path for r in results.runs)
        raise ConfigError(
            f"{compare_dir / sources.COMPARE_RESULTS} did not compare {run_dir} (it compared {compared}); "
            "give a compare folder of this run"
        )
    return me


def feature_matches(
    site: Path, compare_dirs: Sequence[Path], run_dir: Path, features: Sequence[int]
) -> tuple[list[dict[str, Any]], dict[int, list[Match]]]:
    """(comparison entries, {feature: its matches}) over every comparison involving ``run_dir``."""
    wanted = set(features)
    entries: list[dict[str, Any]] = []
    by_feature: dict[int, list[Match]] = {f: [] for f in features}
    for compare_dir in compare_dirs:
        results = sources.read_comparison(compare_dir)
        me = _own_index(compare_dir, results, run_dir)
        for at, pair in enumerate(results.pairs):
            if me not in (pair.a, pair.b) or pair.matches_file is None:
                continue
            side = 0 if me == pair.a else 1
            number = len(entries)
            entries.append(comparison_entry(compare_dir, results, at, side))
            other_run = Path(entries[-1]["other_path"])
            arrays = sources.read_match_arrays(compare_dir, pair.matches_file)
            mine, theirs = ("a", "b") if side == 0 else ("b", "a")
            max_key = "max_a_to_b" if side == 0 else "max_b_to_a"
            found: dict[tuple[int, int], Match] = {}
            for key, kind in (("hungarian", "one-to-one"), (max_key, "max-correlation")):
                for f, g, corr in zip(
                    arrays[f"{key}_{mine}"].tolist(),
                    arrays[f"{key}_{theirs}"].tolist(),
                    arrays[f"{key}_corr"].tolist(),
                    strict=True,
                ):
                    if f not in wanted:
                        continue
                    if (f, g) in found:
                        found[(f, g)].kinds.append(kind)
                        continue
                    found[(f, g)] = Match(
                        comparison=number,
                        run=entries[-1]["other"],
                        feature=g,
                        similarity=round(float(corr), 4),
                        kinds=[kind],
                        href=feature_href(site, other_run, g),
                    )
            for (f, _), match in found.items():
                by_feature[f].append(match)
    return entries, by_feature


def site_features(site: Path) -> list[int]:
    return sorted(int(p.stem) for p in (site / "data" / "features").glob("*.js") if p.stem.isdigit())


def refresh_matches(site: Path, run_dir: Path, compare_dirs: Sequence[Path], *, warn: bool = True) -> int:
    """(Re)write a site's match data from ``compare_dirs`` plus those it already records; returns the
    number of comparisons shown. Touches only comparisons.json, data/comparisons.js, data/matches/. A
    recorded folder whose results cannot be read is left out with a warning (``warn``: not when the
    caller warned already) and stays recorded."""
    if not (site / "data" / "features").is_dir():
        raise ConfigError(f"{site} is not a dashboard folder: build it with `scircuits dashboard {run_dir}`")
    shown, damaged = _recorded(site, run_dir, None, warn=warn)
    dirs = _unique([*shown, *compare_dirs])
    kept = [d for d in _unique(damaged) if d not in dirs]  # recorded still: shown again once repaired
    features = site_features(site)
    entries, by_feature = feature_matches(site, dirs, run_dir, features)
    matches_dir = site / "data" / "matches"
    remove_orphans(matches_dir.parent)
    recover_published(matches_dir)
    tmp = matches_dir.with_name(f".matches.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    if entries:
        for f in features:
            payload = [m.model_dump(mode="json") for m in by_feature[f]]
            (tmp / f"{f}.js").write_text(js_assign("window.SC_MATCHES", payload))
    publish_dir(tmp, matches_dir)
    write_atomic(site / "data" / "comparisons.js", js_assign("window.SC_COMPARISONS", entries))
    write_atomic(
        site / COMPARISONS_FILE,
        json.dumps({"compare_dirs": [str(d) for d in [*dirs, *kept]]}, indent=2) + "\n",
    )
    return len(entries)


def refresh_matches_locked(site: Path, run_dir: Path, compare_dirs: Sequence[Path]) -> int:
    """``refresh_matches`` for a command that does not hold the site: under the site's lock (and the
    run's, when the site is inside it); a lock held elsewhere, or a site that cannot be written, is a
    ConfigError naming the site."""
    try:
        write_probe(site)
        with FolderLock(site, "dashboard"):
            return refresh_matches(site, run_dir, compare_dirs)
    except ArtifactError as exc:
        raise ConfigError(str(exc)) from None
    except OSError as exc:
        raise ConfigError(f"cannot write in {site}: {describe_os_error(exc)}") from None


def compared_sites(results: CompareResults) -> list[tuple[Path, Path]]:
    """(run dir, its dashboard folder) of each compared run that has a dashboard."""
    out = []
    for entry in results.runs:
        run = Path(entry.resolved_path or entry.path)
        if (run / DASHBOARD_DIR / "data" / "features").is_dir():
            out.append((run, run / DASHBOARD_DIR))
    return out


def refresh_partners(compare_dirs: Sequence[Path], run_dir: Path, say: Callable[[str], None]) -> None:
    """Refresh the other compared runs' dashboards that show one of ``compare_dirs``, so their links
    to this run's (re)built pages resolve; a partner that fails is named and left as it was."""
    for compare_dir in _unique(compare_dirs):
        results = sources.read_comparison(compare_dir)
        for other_run, site in compared_sites(results):
            if other_run.resolve() == run_dir.resolve():
                continue
            if compare_dir not in _unique(recorded_compare_dirs(site)):
                continue
            try:
                refresh_matches_locked(site, other_run, [])
            except ConfigError as exc:
                say(f"{site}: match links not refreshed ({exc})")
