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
from scircuits.platform.causal.registry import analyses_of
from scircuits.platform.causal.results import recorded_analyses, recorded_config_hash, results_path
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
from scircuits.platform.contract.errors import ConfigError
from scircuits.platform.contract.models import tl_hook_name
from scircuits.platform.dashboard import build_dashboard
from scircuits.platform.report.document import REPORT_HTML, REPORT_MD
from scircuits.platform.train.checkpoint import is_complete
from scircuits.platform.train.joint import one_collection, train_joint, write_index
from scircuits.store.collection import is_collection, read_manifest, site_key
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
    n_layers: int | None = None  # the model's blocks, where --circuit-layers needs them checked


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

    def stale(self, run_dir: Path, plugins: Any) -> str | None:
        """Why a complete artifact of the same settings is out of date with the installed plugins
        (None: it is not)."""
        return None

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

    def stores(self, run_dir: Path, config: StageConfig | None) -> list[Path]:
        """The stores the stage writes: the artifact itself (one site)."""
        return [self.artifact(run_dir)]

    def _recorded(self, run_dir: Path, config: StageConfig | None) -> tuple[bool, str | None]:
        done, identities = True, set()
        for path in self.stores(run_dir, config):
            try:
                store = ActivationStore(path)
                attrs = store.attrs
                done = done and store.complete
                identities.add(f"{attrs.get('config_hash')}:{attrs.get('data_sha256')}")
            except Exception:  # absent, half-written or not a store
                return False, None
        return done, identities.pop() if len(identities) == 1 else None

    def complete(self, run_dir: Path, config: StageConfig | None) -> bool:
        done, recorded = self._recorded(run_dir, config)
        return done and recorded == self.identity(config)

    def started(self, run_dir: Path, config: StageConfig | None) -> bool:
        return self._recorded(run_dir, config)[1] == self.identity(config)

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
        if settings["warmup_steps"] is None and settings["tokens"] is not None:  # else train resolves it
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

    def stale(self, run_dir: Path, plugins: Any) -> str | None:
        """A study made before an analysis was installed lacks its section: it is run again."""
        recorded = recorded_analyses(self.artifact(run_dir))
        if recorded is None:
            return None
        new = sorted({a.name for a in analyses_of(plugins)} - set(recorded))
        return f"the analyses {', '.join(new)} were installed since it ran" if new else None

    def run(self, config: StageConfig | None, run_dir: Path, plugins: Any, resume: bool) -> None:
        ablate_module.run_ablate(config, plugins)


def circuit_layers(run: RunConfig, context: PlanContext) -> list[int]:
    """The blocks of ``--circuit-layers`` other than the run's own, each checked against the model
    (one line listing the blocks it has)."""
    adapter = context.plugins.models.get(run.model)
    layers = run.circuit_layer_list()
    for layer in layers:
        try:
            adapter.resolve_site(layer, run.site, context.n_layers)
        except ConfigError as exc:
            raise ConfigError(f"--circuit-layers {run.circuit_layers}: {exc}") from None
    extra = [layer for layer in layers if layer != context.layer]
    if not extra:
        raise ConfigError(
            f"--circuit-layers {run.circuit_layers}: only the run's own block ({run.site}{context.layer}), "
            "whose SAE is in the circuit already; give other blocks too, e.g. 3,9"
        )
    return extra


class CircuitCollectStage(CollectStage):
    """The sites of ``--circuit-layers`` (at the run's --site, the run's own block left out) collected
    in one forward over the run's collection examples: a collection (one store for one site) in
    RUN/circuit_activations; only when asked."""

    name = "circuit_collect"
    artifact_name = "circuit_activations"
    makes_the_sae = False  # a run of a given SAE collects the circuit's other sites too

    def wanted(self, run: RunConfig) -> bool:
        return bool(run.circuit_layers)

    def configure(self, run: RunConfig, context: PlanContext) -> CollectConfig:
        layers = circuit_layers(run, context)
        several = ",".join(map(str, layers)) if len(layers) > 1 else None
        return (
            super()
            .configure(run, context)
            .model_copy(
                update={"layer": layers[0], "layers": several, "out": str(self.artifact(context.run_dir))}
            )
        )

    def stores(self, run_dir: Path, config: StageConfig | None) -> list[Path]:
        assert isinstance(config, CollectConfig)
        pairs = config.site_list()
        if len(pairs) == 1:
            return [self.artifact(run_dir)]
        return [self.artifact(run_dir) / site_key(layer or 0, site) for layer, site in pairs]


class CircuitTrainStage(TrainStage):
    """One SAE per site of RUN/circuit_activations, with the run's SAE settings, trained in one joint
    pass over the collection (as `scircuits train --store COLLECTION`) into RUN/circuit_saes/<hook
    name>/ with an index.json; only when asked."""

    name = "circuit_train"
    artifact_name = "circuit_saes"
    makes_the_sae = False

    def wanted(self, run: RunConfig) -> bool:
        return bool(run.circuit_layers)

    def configure(self, run: RunConfig, context: PlanContext) -> TrainConfig:
        circuit_layers(run, context)
        return (
            super()
            .configure(run, context)
            .model_copy(update={"store": str(context.run_dir / CircuitCollectStage.artifact_name)})
        )

    @staticmethod
    def folders(run_dir: Path, run: RunConfig, context: PlanContext) -> list[Path]:
        """The checkpoint folders of the circuit's extra sites, in the model's order."""
        root = run_dir / CircuitTrainStage.artifact_name
        return [root / tl_hook_name(layer, run.site) for layer in circuit_layers(run, context)]

    def jobs(self, config: TrainConfig) -> list[TrainConfig]:
        """One config per store the collection stage wrote (none before it has), each into the folder
        of its hook name; they share the config's hash (a store and a folder are where, not what)."""
        collection, root = Path(config.store), Path(config.out)
        if not collection.is_dir():
            return []
        stores = (
            [collection / key for key in read_manifest(collection).sites]
            if (is_collection(collection))
            else [collection]
        )
        jobs = []
        for store in stores:
            attrs = ActivationStore(store).attrs
            folder = root / tl_hook_name(int(attrs["layer"]), str(attrs["site"]))
            jobs.append(config.model_copy(update={"store": str(store), "out": str(folder)}))
        return jobs

    def _jobs_or_none(self, config: StageConfig | None) -> list[TrainConfig]:
        assert isinstance(config, TrainConfig)
        try:
            return self.jobs(config)
        except Exception:  # the collection is absent or damaged: nothing of this stage is there
            return []

    def complete(self, run_dir: Path, config: StageConfig | None) -> bool:
        jobs = self._jobs_or_none(config)
        return bool(jobs) and all(is_complete(Path(job.out), job.config_hash()) for job in jobs)

    def started(self, run_dir: Path, config: StageConfig | None) -> bool:
        markers = [read_marker(Path(job.out)) for job in self._jobs_or_none(config)]
        return any(m is not None and m.identity == config.config_hash() for m in markers)  # type: ignore[union-attr]

    def run(self, config: StageConfig | None, run_dir: Path, plugins: Any, resume: bool) -> None:
        assert isinstance(config, TrainConfig)
        jobs = [job.model_copy(update={"resume": resume}) for job in self.jobs(config)]
        if len(jobs) == 1:
            training_module.train(jobs[0], plugins)
            return
        sites = one_collection([job.store for job in jobs])
        assert sites is not None  # the sites of the collection the stage before wrote
        write_index(Path(config.out), sites, jobs, plugins)
        train_joint(jobs, plugins, show_progress=config.progress)


class CircuitStage(Stage):
    """A feature circuit over ``--circuit-sae``, the SAEs of ``--circuit-layers`` and the run's own SAE
    (RUN/circuit), only when asked."""

    name = "circuit"
    Config = CircuitConfig
    artifact_name = "circuit"

    def wanted(self, run: RunConfig) -> bool:
        return bool(run.circuit_sae) or bool(run.circuit_layers)

    def configure(self, run: RunConfig, context: PlanContext) -> CircuitConfig:
        own = context.published_sae or str(context.run_dir / TrainStage.artifact_name)
        trained = CircuitTrainStage.folders(context.run_dir, run, context) if run.circuit_layers else []
        return CircuitConfig(
            model=run.model,
            benchmark=run.benchmark,
            benchmark_options=sized_options(context.benchmark, run.benchmark_options, run.ablate.limit),
            model_path=run.model_path,
            sae=[*run.circuit_sae, *map(str, trained), own],  # read in the model order, whatever is given
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


STAGES: tuple[Stage, ...] = (
    CollectStage(),
    TrainStage(),
    AblateStage(),
    CircuitCollectStage(),
    CircuitTrainStage(),
    CircuitStage(),
    ReportStage(),
)


def ablate_results(run_dir: Path) -> Path:
    return results_path(AblateStage().artifact(run_dir))
