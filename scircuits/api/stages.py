"""The research API's entry points: one function per stage command, taking the stage's pydantic
config (or its fields as keywords) and returning its typed result (``scircuits.api.results``).

    import scircuits
    run = scircuits.run(model="smollm2-135m", limit=40, train_tokens=200_000)
    run.study.to_pandas("sweeps")
    scircuits.load_run(run.path).feature(run.study.features[0]["id"])

A user mistake raises the error the CLI reports (``ConfigError``, ``ArtifactError``, ... all
``ScircuitsError``) with the CLI's one-line message, its traceback cut at the call (``user_errors``).
The CLI's stage commands call these same functions.

# Where a new command's entry point goes: a function here taking its config and returning its
# result (a model in results.py), decorated with @user_errors, and its name in scircuits._LAZY.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from scircuits.api.arguments import (
    config_of,
    given,
    is_path,
    optional_path,
    path_arg,
    path_list,
    plugin_set,
    switch,
    whole_number,
)
from scircuits.api.circuit_result import CircuitResult
from scircuits.api.results import (
    AblateResult,
    CollectResult,
    CompareResult,
    DashboardResult,
    RunResult,
    TrainResult,
)
from scircuits.platform.causal.results import read_checked_results, results_path
from scircuits.platform.circuit.results import RESULTS_FILE as CIRCUIT_RESULTS
from scircuits.platform.common.artifacts import DISK_ERRNOS, ArtifactError, check_local, describe_os_error
from scircuits.platform.common.logs import get_logger
from scircuits.platform.common.progress import silence_library_progress_bars
from scircuits.platform.config import AblateConfig, CollectConfig, RunConfig, StageConfig, TrainConfig
from scircuits.platform.config.circuit import CircuitConfig
from scircuits.platform.contract import jsonvalues
from scircuits.platform.contract.errors import ConfigError, ScircuitsError
from scircuits.platform.contract.options import describe_validation_error
from scircuits.platform.manager.plugin_set import PluginSet

log = get_logger(__name__)
F = TypeVar("F", bound=Callable[..., Any])
C = TypeVar("C", bound=StageConfig)
R = TypeVar("R", bound=BaseModel)


def user_errors(f: F) -> F:
    """The function's user-facing errors (``ScircuitsError``; a full disk as ``ArtifactError`` with
    the CLI's message) raised from the call, without the platform's frames behind it."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return f(*args, **kwargs)
        except ScircuitsError as exc:
            raise exc.with_traceback(None) from None
        except OSError as exc:
            if exc.errno not in DISK_ERRNOS:
                raise
            error = disk_error(exc)
        raise error from None

    return wrapper  # type: ignore[return-value]


def disk_error(exc: OSError) -> ArtifactError:
    where = f"{exc.filename}: " if exc.filename else ""
    return ArtifactError(
        f"{where}cannot write ({describe_os_error(exc)}); free space or choose another --out, then run "
        "the same command again (what was already written is kept)"
    )


def stage_config(cls: type[C], config: C | None, settings: Mapping[str, Any]) -> C:
    """``config`` (default: the defaults) with ``settings`` over it, validated as the CLI validates
    a config file and flags: ConfigError in one line naming the setting."""
    config = config_of(cls, config)
    values = config.model_dump(exclude_unset=True) if config is not None else {}
    for name in settings:
        other = cls.either_or.get(name)
        if other is not None and other not in settings:  # as a flag over a file
            values.pop(other, None)
    for name, value in settings.items():
        current = values.get(name)
        values[name] = (
            merged_section(cls, name, current, value)
            if isinstance(value, Mapping) and isinstance(current, dict)
            else value
        )
    resolved = cls.validated(values)
    if getattr(resolved, "progress", True) is False:
        silence_library_progress_bars()
    return resolved


def merged_section(
    cls: type[StageConfig], section: str, current: dict[str, Any], given: Mapping[str, Any]
) -> dict[str, Any]:
    """A section keyword (``train={"lr": 0.01}``) over the config's own values of that section: the
    fields it names win, the rest are kept (``tokens`` given drops ``epochs``, as the flags do)."""
    merged = {**current, **given}
    prefix = f"{section}_"
    for key in given:
        other = cls.either_or.get(prefix + key)
        if other is not None and other.startswith(prefix) and other[len(prefix) :] not in given:
            merged.pop(other[len(prefix) :], None)
    return merged


# ----------------------------------------------------------------------------- the stages


@user_errors
def collect(
    config: CollectConfig | None = None, /, *, plugins: PluginSet | None = None, **settings: Any
) -> CollectResult:
    """Trace a model's activations on a benchmark (or a corpus) into a store (`scircuits collect`)."""
    from scircuits.platform.collect.collection import run_collect

    resolved = stage_config(CollectConfig, config, settings)
    summary = run_collect(resolved, plugin_set(plugins))
    return CollectResult(
        path=str(summary.path),
        n_examples=summary.n_examples,
        n_tokens=summary.n_tokens,
        new_examples=summary.new_examples,
        new_tokens=summary.new_tokens,
        seconds=summary.seconds,
        already_complete=summary.already_complete,
        complete=True,
    )


@user_errors
def train(
    config: TrainConfig | None = None, /, *, plugins: PluginSet | None = None, **settings: Any
) -> TrainResult:
    """Train one SAE on an activation store (`scircuits train`); skipped when ``out`` already holds
    a complete checkpoint of the same config."""
    from scircuits.platform.train.distributed import parse_devices, stop_if_bootstrapping
    from scircuits.platform.train.training import train as train_one
    from scircuits.platform.train.training import train_many

    plugins = plugin_set(plugins)
    resolved = stage_config(TrainConfig, config, settings)
    if not resolved.store:
        raise ConfigError("train: give the activation store with --store PATH (or store = ... in --config)")
    check_train_job(resolved, plugins)
    devices = parse_devices(resolved.device)
    if len(devices) > 1 or resolved.nproc > 1:
        stop_if_bootstrapping()  # a spawned worker re-importing an unguarded script: its parent says why
    if len(devices) == 1 or resolved.nproc > 1:
        out = train_one(resolved, plugins)
    else:
        out = train_many([resolved], devices, plugins)[0]
    return named_by_url(read_checkpoint(out))


def check_hparams(config: TrainConfig, plugins: PluginSet) -> None:
    """Fail before any work when a hyperparameter does not belong to the variant."""
    from scircuits.platform.train.training import apply_preset

    resolved = apply_preset(config, plugins).with_plugin_defaults(plugins)
    plugins.saes.get(resolved.sae).parse_hparams(resolved.hparams)


def check_train_job(config: TrainConfig, plugins: PluginSet) -> None:
    """Fail before any work when a hyperparameter does not belong to the variant, the store cannot be
    read, or the SAE does not fit the machine."""
    from scircuits.platform.train.size import check_sae_memory
    from scircuits.store import ActivationStore

    check_hparams(config, plugins)
    width = ActivationStore(config.store).d_model
    check_sae_memory(width, config.expansion, config.batch_size, config.device)


@user_errors
def ablate(
    config: AblateConfig | None = None, /, *, plugins: PluginSet | None = None, **settings: Any
) -> AblateResult:
    """The causal study of an SAE's features in the running model (`scircuits ablate`): ranks,
    top-k sweeps against matched controls, exact ablations, faithfulness. Returns results.json."""
    from scircuits.platform.causal.stage import run_ablate

    plugins = plugin_set(plugins)
    out = run_ablate(stage_config(AblateConfig, config, settings), plugins)
    return named_by_url(read_study(out, plugins))


@user_errors
def circuit(
    config: CircuitConfig | None = None, /, *, plugins: PluginSet | None = None, **settings: Any
) -> CircuitResult:
    """A feature circuit across several SAE sites (`scircuits circuit`): nodes and edges by attribution
    patching, held-out faithfulness and completeness beside random circuits, exact checks. Returns its
    results.json (docs/circuits.md)."""
    from scircuits.platform.circuit.stage import run_circuit

    plugins = plugin_set(plugins)
    return read_circuit_result(run_circuit(stage_config(CircuitConfig, config, settings), plugins))


@user_errors
def run(
    config: RunConfig | None = None, /, *, plugins: PluginSet | None = None, **settings: Any
) -> RunResult:
    """The whole study, collect -> train -> ablate -> report, into one run directory (`scircuits run`);
    a stage already done with the same settings is skipped. Flat names (``limit``, ``train_tokens``,
    ``collect_limit``, ``sae_hparams``, ...) are the CLI's flags."""
    from scircuits.platform.pipeline.run import run_pipeline

    plugins = plugin_set(plugins)
    run_dir = run_pipeline(stage_config(RunConfig, config, settings), plugins)
    result = read_run(run_dir, plugins)
    parts = {name: getattr(result, name) for name in ("collect", "train", "study")}
    named = {name: named_by_url(part) for name, part in parts.items() if part is not None}
    return named_by_url(result.model_copy(update=named), ("path", "report", "dashboard"))


def named_by_url(result: R, fields: tuple[str, ...] = ("path",)) -> R:
    """``result`` with its paths in a staging folder of an ``--out URL`` named by that URL (the local
    copy is a cache; common.remote)."""
    from scircuits.platform.common.remote import shown

    values = {name: getattr(result, name) for name in fields}
    return result.model_copy(update={k: shown(v) for k, v in values.items() if isinstance(v, str)})


@user_errors
def compare(
    run_dirs: Sequence[str | Path],
    options: Any = None,
    /,
    *,
    force: bool = False,
    plugins: PluginSet | None = None,
    **settings: Any,
) -> CompareResult:
    """Match the SAE features of two or more runs beside each run's ceiling and floors
    (`scircuits compare`); writes results.json, report.md and figures into ``out``."""
    from scircuits.platform.compare.output import compare_folder
    from scircuits.platform.compare.report import write_report
    from scircuits.platform.compare.study import CompareOptions, compare_runs

    runs = run_folders(run_dirs)
    switch(force, "compare: force")
    options = config_of(CompareOptions, options)
    values = options.model_dump(exclude_unset=True) if options is not None else {}
    values.update(settings)
    resolved = CompareOptions(**values)
    plugins = plugin_set(plugins)
    if not resolved.progress:
        silence_library_progress_bars()
    with compare_folder(resolved.out, runs, force, log.info):
        results = compare_runs(runs, resolved, plugins)
        write_report(results, Path(resolved.out))
        link_dashboards(results, Path(resolved.out))
    return CompareResult(**results.model_dump(mode="python"), path=str(Path(resolved.out)))


def run_folders(run_dirs: Any) -> list[str]:
    """compare's run directories: at least two paths, none of them a file."""
    what, each = "compare: the run directories", "compare: each run directory"
    if run_dirs is None or is_path(run_dirs):
        raise ConfigError(f"{what} must be a list of paths (at least two), not {given(run_dirs)}")
    for run_dir in run_dirs if isinstance(run_dirs, (list, tuple)) else []:
        check_local(run_dir if is_path(run_dir) else None, "run directory", "compare")
    runs = path_list(run_dirs, what, each)
    if len(runs) < 2:
        raise ConfigError("compare: give at least two run directories")
    for run_dir in runs:
        if run_dir.is_file():
            raise ConfigError(
                f"{run_dir} is a file, not a run folder: give the folders `scircuits run` wrote"
            )
    return [str(r) for r in runs]


def link_dashboards(results: Any, out: Path) -> None:
    """Refresh the match data of the compared runs' existing dashboards (their generated match files
    only), so each feature page lists its matches here; a failure leaves the results in place."""
    from scircuits.platform.dashboard.matches import compared_sites, refresh_matches_locked

    for run_dir, site in compared_sites(results):
        try:
            n = refresh_matches_locked(site, run_dir, [out])
        except ConfigError as exc:
            log.warning(f"warning: compare: {site} not linked ({exc})")
            continue
        log.info(f"linked {n} comparisons into {site}")


@user_errors
def dashboard(
    run_dir: str | Path,
    *,
    features: int | None = None,
    out: str | Path | None = None,
    compare: str | Path | Sequence[str | Path] = (),
    force: bool = False,
    store: str | Path | None = None,
    circuit: str | Path | None = None,
    progress: bool = True,
    plugins: PluginSet | None = None,
    model_path: str | Path | None = None,
) -> DashboardResult:
    """A static feature dashboard for a finished run (`scircuits dashboard`): a sortable index and one
    page per feature, opening from disk; and circuit.html when the run holds a circuit (RUN/circuit) or
    ``circuit`` names one. ``compare``: a `scircuits compare` folder, or a list of them. ``progress``:
    False silences the libraries' bars (loading the model), as ``--no-progress`` does. ``model_path``:
    the folder of the run's model weights now, when the one the run recorded moved (``--model-path``;
    the weights must be those the run recorded)."""
    from scircuits.platform.dashboard import build_dashboard

    path_arg(run_dir, "dashboard: the run directory")
    for name, value in (("out", out), ("store", store), ("circuit", circuit), ("model_path", model_path)):
        optional_path(value, f"dashboard: {name}")
    switch(force, "dashboard: force")
    given = [compare] if is_path(compare) else list(compare) if isinstance(compare, (list, tuple)) else []
    for folder in [run_dir, *given]:
        check_local(folder if is_path(folder) else None, "folder", "dashboard")
    if not switch(progress, "dashboard: progress"):
        silence_library_progress_bars()
    summary = build_dashboard(
        run_dir,
        plugin_set(plugins),
        features=whole_number(features, "dashboard: features"),
        out=out,
        compare=path_list(compare, "dashboard: compare", "dashboard: each compare folder"),
        force=force,
        store=store,
        circuit=circuit,
        model_path=model_path,
        say=lambda m: log.info(f"[dashboard] {m}"),
    )
    fields = {k: v for k, v in vars(summary).items() if k in DashboardResult.model_fields}
    fields["circuit"] = str(summary.circuit) if summary.circuit is not None else None
    return DashboardResult(**fields, path=str(summary.out), index=str(summary.out / "index.html"))


# ----------------------------------------------------------------------------- reading what was made


@user_errors
def load_study(path: str | Path, plugins: PluginSet | None = None) -> AblateResult:
    """The results of a causal study: its folder (``causal/``), its results.json, or a run directory."""
    plugins = plugin_set(plugins)
    path = path_arg(path, "load_study: the study")
    if path.is_dir() and not results_path(path).is_file() and is_run_folder(path):
        path = path / "causal"
    return read_study(path, plugins)


def is_run_folder(path: Path) -> bool:
    """A folder `scircuits run` wrote (a study in causal/, or the pipeline's record of its stages)."""
    return (path / "causal").is_dir() or (path / "pipeline.json").is_file()


@user_errors
def load_run(path: str | Path, plugins: PluginSet | None = None) -> RunResult:
    """A finished run directory (`scircuits run`'s) as the ``RunResult`` ``scircuits.run`` returns."""
    plugins = plugin_set(plugins)
    path = path_arg(path, "load_run: the run directory")
    if not path.is_dir():
        raise ConfigError(f"{path} is not a folder: give a run directory that `scircuits run` wrote")
    if not results_path(path / "causal").is_file():
        raise ConfigError(
            f"{path} has no causal/results.json: give a run directory of a finished `scircuits run` (or "
            "run it again to finish it)"
        )
    return read_run(path, plugins)


@user_errors
def load_comparison(path: str | Path) -> CompareResult:
    """A `scircuits compare` folder (or its results.json) as the ``CompareResult`` ``compare`` returns."""
    from scircuits.platform.compare.schema import FORMAT

    folder = path_arg(path, "load_comparison: the compare folder")
    file = folder / "results.json" if folder.is_dir() else folder
    if not file.is_file():
        raise ConfigError(f"{file} does not exist: give the --out folder of `scircuits compare`")
    data = jsonvalues.load_file(file)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ConfigError(f"{file} is not a scircuits comparison (format {FORMAT!r})")
    try:
        return CompareResult.model_validate({**data, "path": str(file.parent)})
    except ValidationError as exc:
        raise ConfigError(
            f"{file} does not match the comparison schema: {describe_validation_error(exc)}"
        ) from None


@user_errors
def load_circuit(path: str | Path) -> CircuitResult:
    """A `scircuits circuit` folder (its results.json, or a run directory holding circuit/) as the
    ``CircuitResult`` ``circuit`` returns."""
    folder = path_arg(path, "load_circuit: the circuit folder")
    if folder.is_file():
        folder = folder.parent
    elif not (folder / CIRCUIT_RESULTS).is_file() and (folder / "circuit" / CIRCUIT_RESULTS).is_file():
        folder = folder / "circuit"
    return read_circuit_result(folder)


def read_circuit_result(folder: Path) -> CircuitResult:
    """``folder``/results.json as ``CircuitResult``; ConfigError in one line when it is missing, is
    not a circuit's, or does not match the schema."""
    file = folder / CIRCUIT_RESULTS
    if not file.is_file():
        raise ConfigError(
            f"{file} does not exist: give the --out folder of `scircuits circuit` (or a run directory "
            "with circuit/)"
        )
    data = jsonvalues.load_file(file, "circuit results")
    kind = CircuitResult.model_fields["format"].default
    if not isinstance(data, dict) or data.get("format") != kind:
        raise ConfigError(f"{file} is not a scircuits circuit (format {kind!r})")
    try:
        return jsonvalues.validate_nulls_as_nan(CircuitResult, {**data, "path": str(folder)})
    except ValidationError as exc:
        raise ConfigError(
            f"{file} does not match the circuit schema: {describe_validation_error(exc)}"
        ) from None


def read_study(path: str | Path, plugins: PluginSet) -> AblateResult:
    """results.json (a file or its folder) as ``AblateResult``, migrated when older; ConfigError in one
    line when it cannot be read, or when an analysis's fields do not have their types (as `scircuits
    report` refuses it)."""
    from scircuits.platform.causal.registry import analyses_of

    study = AblateResult.model_validate(read_checked_results(path, analyses_of(plugins)))
    file = Path(path)
    study.path = str(file if file.is_dir() else file.parent)
    return study


def read_checkpoint(path: str | Path) -> TrainResult:
    """A checkpoint folder's scircuits.json as ``TrainResult``."""
    from scircuits.platform.train.checkpoint import META_FILE, read_json

    meta = read_json(Path(path) / META_FILE)
    try:
        return TrainResult(
            path=str(path),
            variant=str(meta.get("variant")),
            hparams=meta.get("hparams") or {},
            d_in=int(meta["d_in"]),
            d_sae=int(meta["d_sae"]),
            config_hash=meta.get("config_hash"),
            steps=meta.get("steps"),
            tokens=meta.get("tokens"),
            seconds=meta.get("seconds"),
            metrics=meta.get("metrics") or {},
        )
    except (KeyError, TypeError, ValueError, ValidationError) as exc:
        raise ConfigError(
            f"{Path(path) / META_FILE} is not a complete scircuits checkpoint record ({exc})"
        ) from None


def read_store(path: str | Path) -> CollectResult | None:
    """What an activation store holds (None where there is no readable store)."""
    from scircuits.store import ActivationStore

    try:
        store = ActivationStore(str(path))
    except (ScircuitsError, OSError, ValueError, KeyError):
        return None
    keep = ("model", "layer", "site", "d_model", "dtype", "benchmark", "split")
    return CollectResult(
        path=str(path),
        n_examples=store.n_examples,
        n_tokens=store.n_tokens,
        complete=store.complete,
        attrs={k: v for k, v in store.attrs.items() if k in keep},
    )


def read_run(run_dir: str | Path, plugins: PluginSet) -> RunResult:
    from scircuits.platform.report.document import REPORT_HTML
    from scircuits.platform.train.checkpoint import META_FILE

    root = Path(run_dir)
    study = read_study(root / "causal", plugins)
    train_result = read_checkpoint(root / "sae") if (root / "sae" / META_FILE).is_file() else None
    store = read_store(root / "activations.zarr") if (root / "activations.zarr").is_dir() else None
    report = root / REPORT_HTML
    index = root / "dashboard" / "index.html"
    return RunResult(
        path=str(root),
        collect=store,
        train=train_result,
        study=study,
        report=str(report) if report.is_file() else None,
        dashboard=str(index) if index.is_file() else None,
        stage_seconds=stage_seconds(root),
    )


def stage_seconds(run_dir: Path) -> dict[str, float]:
    """How long each stage took (pipeline.json); a stage with no time (one that failed) is left out, and
    an unreadable pipeline.json gives none."""
    from scircuits.platform.pipeline.state import PipelineState

    try:
        stages = PipelineState(run_dir).data.stages
    except (OSError, UnicodeDecodeError):
        return {}
    return {name: stage.seconds for name, stage in stages.items() if stage.seconds is not None}


__all__ = [
    "ablate",
    "circuit",
    "collect",
    "compare",
    "dashboard",
    "load_circuit",
    "load_comparison",
    "load_run",
    "load_study",
    "run",
    "train",
    "user_errors",
]
