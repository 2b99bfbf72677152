"""The compare folder (``--out``) under the artifact rule of ``scircuits.platform.common.artifacts``.

It is locked while compare writes it; files scircuits did not write are refused (moved aside with
``--force``), never overwritten; a folder an earlier version wrote (its results.json, no marker) is
recognised; an ``--out`` that is, or holds, a compared run is refused. Stale temporaries of dead
compare processes are removed. The seed twins in ``twins/`` are kept across reruns.

    with compare_folder(options.out, run_dirs, force) as out: ...
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from scircuits.platform.common.artifacts import (
    FolderLock,
    check_distinct,
    check_local,
    check_out_apart,
    claim,
    only_bookkeeping,
    read_marker,
    remove_orphans,
    write_marker,
)
from scircuits.platform.compare.schema import FORMAT

KIND = "compare"
RESULTS_FILE = "results.json"
SUBFOLDERS = ("matches", "figures")
# what compare reads in a run directory, and the dashboard whose match files it refreshes
RUN_PARTS = ("causal", "sae", "activations.zarr", "dashboard", "figures", "circuit")


def _is_comparison(folder: Path) -> bool:
    try:
        data = json.loads((folder / RESULTS_FILE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("format") == FORMAT


@contextmanager
def compare_folder(
    out: str | Path, run_dirs: Sequence[str | Path], force: bool, say: Callable[[str], None]
) -> Iterator[Path]:
    """Check, lock and claim the compare folder ``out`` for the comparison of ``run_dirs``."""
    for run_dir in run_dirs:
        check_local(run_dir, "run directory", "compare")
    check_local(out, "--out", "compare")
    check_distinct(run_dirs, "compare")
    runs = [Path(r) for r in run_dirs]
    folder = check_out_apart(out, read=[r / part for r in runs for part in RUN_PARTS], holds=runs)
    existed = folder.exists()
    with FolderLock(folder, "comparison"):
        for where in (folder, *(folder / sub for sub in SUBFOLDERS)):
            remove_orphans(where)
        if read_marker(folder) is None and _is_comparison(folder):
            write_marker(folder, KIND, KIND)
        claimed = claim(folder, KIND, KIND, option="--out", force=force)
        if claimed.moved_to is not None:
            say(f"compare: {folder} held files scircuits did not write; moved them to {claimed.moved_to}")
        try:
            yield folder
        except BaseException:
            if not existed and only_bookkeeping(folder):  # a failed first compare leaves no folder
                shutil.rmtree(folder, ignore_errors=True)
            raise
