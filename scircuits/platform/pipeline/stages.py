"""The stages of `scircuits run`, each a unit: its config type, how the run's settings make that
config, its artifact in the run directory, its completion check, and ``run``. ``STAGES`` is their
order; a stage's key chains its config hash with the key of the stage before it, so adding a stage
is one entry in that list.

Config hashes leave out where things are (``StageConfig.volatile``: output and input paths, the
weights folder), so a run directory or a weights folder that moved is still up to date.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import scircuits.platform.causal.stage as ablate_module
import scircuits.platform.circuit.stage as circuit_module
import scircuits.platform.collect.collection as collect_module
import scircuits.platform.report.build as report_module
import scircuits.platform.train.training as training_module
from scircuits.errors import ScircuitsError
from scircuits.platform.causal.results import recorded_config_hash, results_path
from scircuits.platform.circuit.results import read_circuit
from scircuits.platform.collect.datahash import data_sha256
from scircuits.platform.common.artifacts import read_marker
from scircuits.platform.common.logs import get_logger
from scircuits.platform.config import (
    AblateConfig,
    CircuitConfig,
    CollectConfig,
    RunConfig,
    StageConfig,
    TrainConfig,
)
from scircuits.platform.dashboard import build_dashboard
from scircuits.platform.report.document import REPORT_HTML, REPORT_MD
from scircuits.platform.train.checkpoint import is_complete
from scircuits.store.reader import ActivationStore

log = get_logger(__name__)

REPORT_VERSION = 1  # bump when the report changes, to rewrite the reports of finished runs


@dataclass
class PlanContext:
    """What every stage's configuration needs beyond the run's settings."""

    run_dir: Path
    layer: int
    benchmark: Any  # the Benchmark plugin
    plugins: Any  # the PluginSet
    published_sae: str | None = None  # an SAE to study as it is: no collection, no training


class Stage:
    name: ClassVar[str]
    Config: ClassVar[type[StageConfig] | None] = None
    artifact_name: ClassVar[str]
    resumable: ClassVar[bool] = False
    # The artifact records the hash of the config that made it, so ``complete`` proves identity
    # without pipeline.json.
    self_identifying: ClassVar[bool] = True
    # Left out of a run that studies a given SAE (collection and training make one)
    makes_the_sae: ClassVar[bool] = False

    def configure(self, run: RunConfig, context: PlanContext) -> StageConfig | None:
        raise NotImplementedError

    def wanted(self, run: RunConfig) -> bool:
        """Whether the run has this stage at all (an optional analysis is asked for by a flag)."""
        return True

    def identity(self, config: StageConfig | None) -> str:
        """What the stage's key hashes: its config's hash."""
        assert config is not None
        return config.config_hash()

    def artifact(self, run_dir: Path) -> Path:
        return run_dir / self.artifact_name

    def complete(self, run_dir: Path, config: StageConfig | None) -> bool:
        raise NotImplementedError

    def started(self, run_dir: Path, config: StageConfig | None) -> bool:
        """Whether the (incomplete) artifact was started with this config, from the artifact itself."""
        return False

    def run(self, config: StageConfig | None, run_dir: Path, plugins: Any, resume: bool) -> None:
        raise NotImplementedError


def sized_options(benchmark: Any, options: dict[str, Any], needed: int | None) -> dict[str, Any]:
    """A benchmark that generates a fixed number of examples (an ``n_examples`` option) is asked for
    at least ``needed``, unless the user set it."""
    fields = getattr(getattr(benchmark, "Options", None), "model_fields", {})
    if needed is None or "n_examples" not in fields or "n_examples" in options:
        return dict(options)
    default = fields["n_examples"].default
    return {**options, "n_examples": max(needed, default if isinstance(default, int) else 0)}


class CollectStage(Stage):
    name = "collect"
    Config = CollectConfig
    artifact_name = "activations.zarr"
    resumable = True
    makes_the_sae = True

    def configure(self, run: RunConfig, context: PlanContext) -> CollectConfig:
        benchmark = context.benchmark
        settings = run.collect.model_dump()
        settings["split"] = settings["split"] or ("train" if "train" in benchmark.splits else run.split)
        benchmark.check_split(settings["split"])
        return CollectConfig(
            **{
                **settings,
                **run.shared(),
                "benchmark_options": sized_options(benchmark, run.benchmark_options, run.collect.limit),
                "layer": context.layer,
                "remote": run.remote,
                "out": str(self.artifact(context.run_dir)),
                "progress": run.progress,
                "force": run.force,
            }
        )

    def identity(self, config: StageConfig | None) -> str:
        """The config's hash and the data file's content: an edited data file redoes the run."""
        assert isinstance(config, CollectConfig)
        return f"{config.config_hash()}:{data_sha256(config.benchmark_options)}"

    def _recorded(self, run_dir: Path) -> tuple[bool, str | None]:
        try:
            store = ActivationStore(self.artifact(run_dir))
            attrs = store.attrs
            return store.complete, f"{attrs.get('config_hash')}:{attrs.get('data_sha256')}"
        except Exception:  # absent, half-written or not a store
            return False, None

    def complete(self, run_dir: Path, config: StageConfig | None) -> bool:
        done, recorded = self._recorded(run_dir)
        return done and recorded == self.identity(config)

    def started(self, run_dir: Path, config: StageConfig | None) -> bool:
        return self._recorded(run_dir)[1] == self.identity(config)

    def run(self, config: StageConfig | None, run_dir: Path, plugins: Any, resume: bool) -> None:
        collect_module.collect(config, plugins)


class TrainStage(Stage):
    name = "train"
    Config = TrainConfig
    artifact_name = "sae"
    resumable = True
    makes_the_sae = True

    def configure(self, run: RunConfig, context: PlanContext) -> TrainConfig:
        settings = run.train.model_dump()
        if settings["warmup_steps"] is None:
            settings["warmup_steps"] = min(100, max(1, settings["tokens"] // settings["batch_size"] // 10))
        return TrainConfig(
            **settings,
            store=str(context.run_dir / CollectStage.artifact_name),
            seed=run.seed,
            # an SAE is not split over GPUs: with --device auto it trains on the first one
            device="cuda" if run.device == "auto" else run.device,
            out=str(self.artifact(context.run_dir)),
            progress=run.progress,
            force=run.force,
        )

    def complete(self, run_dir: Path, config: StageConfig | None) -> bool:
        assert config is not None
        return is_complete(self.artifact(run_dir), config.config_hash())

    def started(self, run_dir: Path, config: StageConfig | None) -> bool:
        assert config is not None
        marker = read_marker(self.artifact(run_dir))
        return marker is not None and marker.identity == config.config_hash()

    def run(self, config: StageConfig | None, run_dir: Path, plugins: Any, resume: bool) -> None:
        assert isinstance(config, TrainConfig)
        training_module.train(config.model_copy(update={"resume": resume}), plugins)


class AblateStage(Stage):
    name = "ablate"
    Config = AblateConfig
    artifact_name = "causal"

    def configure(self, run: RunConfig, context: PlanContext) -> AblateConfig:
        return AblateConfig(
            **{
                **run.ablate.model_dump(),
                **run.shared(),
                "benchmark_options": sized_options(
                    context.benchmark, run.benchmark_options, run.ablate.limit
                ),
                "layer": context.layer,
                "sae": context.published_sae or str(context.run_dir / TrainStage.artifact_name),
                "store": None if context.published_sae else str(context.run_dir / CollectStage.artifact_name),
                "split": run.split,
                "out": str(self.artifact(context.run_dir)),
                "remote": run.remote,
                "progress": run.progress,
                "force": run.force,
            }
        )

    def complete(self, run_dir: Path, config: StageConfig | None) -> bool:
        assert config is not None
        return recorded_config_hash(self.artifact(run_dir)) == config.config_hash()

    def started(self, run_dir: Path, config: StageConfig | None) -> bool:
        assert config is not None
        marker = read_marker(self.artifact(run_dir))
        return marker is not None and marker.identity == config.config_hash()

    def run(self, config: StageConfig | None, run_dir: Path, plugins: Any, resume: bool) -> None:
        ablate_module.run_ablate(config, plugins)


class CircuitStage(Stage):
    """A feature circuit over ``--circuit-sae`` and the run's own SAE (RUN/circuit), only when asked."""

    name = "circuit"
    Config = CircuitConfig
    artifact_name = "circuit"

    def wanted(self, run: RunConfig) -> bool:
        return bool(run.circuit_sae)

    def configure(self, run: RunConfig, context: PlanContext) -> CircuitConfig:
        own = context.published_sae or str(context.run_dir / TrainStage.artifact_name)
        return CircuitConfig(
            model=run.model,
            benchmark=run.benchmark,
            benchmark_options=sized_options(context.benchmark, run.benchmark_options, run.ablate.limit),
            model_path=run.model_path,
            sae=[*run.circuit_sae, own],  # read in the model's order whatever the order given
            limit=run.ablate.limit,
            split=run.split,
            seed=run.seed,
            bootstrap=run.ablate.bootstrap,
            edit_from_position=run.ablate.edit_from_position,
            device="cpu" if run.device == "auto" else run.device,
            out=str(self.artifact(context.run_dir)),
            progress=run.progress,
            force=run.force,
        )

    def complete(self, run_dir: Path, config: StageConfig | None) -> bool:
        assert config is not None
        try:
            return read_circuit(self.artifact(run_dir)).config_hash == config.config_hash()
        except Exception:  # absent or unreadable: not complete
            return False

    started = AblateStage.started  # the folder's marker names the config's hash, as ablate's does

    def run(self, config: StageConfig | None, run_dir: Path, plugins: Any, resume: bool) -> None:
        assert isinstance(config, CircuitConfig)
        circuit_module.run_circuit(config, plugins)


class ReportStage(Stage):
    name = "report"
    artifact_name = REPORT_HTML
    self_identifying = False  # the pages do not record what made them: pipeline.json decides

    def configure(self, run: RunConfig, context: PlanContext) -> None:
        return None

    def identity(self, config: StageConfig | None) -> str:
        return f"report-v{REPORT_VERSION}"

    def complete(self, run_dir: Path, config: StageConfig | None) -> bool:
        return (run_dir / REPORT_HTML).is_file() and (run_dir / REPORT_MD).is_file()

    def run(self, config: StageConfig | None, run_dir: Path, plugins: Any, resume: bool) -> None:
        report_module.write_report([run_dir], plugins, out=run_dir)
        try:  # run_dir/dashboard/, linked from the report; its failure leaves the report in place
            build_dashboard(run_dir, plugins, say=_say)
        except ScircuitsError as exc:
            _say(f"dashboard: not written ({exc}); retry with `scircuits dashboard {run_dir}`")


def _say(message: str) -> None:
    log.info(f"[run] {message}")


STAGES: tuple[Stage, ...] = (CollectStage(), TrainStage(), AblateStage(), CircuitStage(), ReportStage())


def ablate_results(run_dir: Path) -> Path:
    return results_path(AblateStage().artifact(run_dir))
