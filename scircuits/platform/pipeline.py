"""`scircuits run`: collect -> train -> ablate -> report into one run directory (DESIGN.md).

    runs/<model>__<benchmark>__<site><layer>/
      activations.zarr/  sae/  causal/  report.md  report.html  figures/  pipeline.json

Each stage has a key: the hash of its own configuration and of the keys of the stages it reads
from, so a changed flag redoes the stage it affects and every stage after it. ``pipeline.json``
records each stage's key when it starts and when it is complete. A stage is skipped when its
artifact is complete and was made under the current key; it is continued (collection and
training resume) when it was started under the current key; otherwise its stale artifact is
removed and the stage is redone. The model's weights are checked before anything runs.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scircuits.platform.config import AblateConfig, CollectConfig, RunConfig, TrainConfig
from scircuits.platform.errors import ConfigError, ScircuitsError
from scircuits.platform.provenance import now_iso

STATE_FILE = "pipeline.json"
STORE_DIR = "activations.zarr"
SAE_DIR = "sae"
CAUSAL_DIR = "causal"
REPORT_VERSION = 1
STAGES = ("collect", "train", "ablate", "report")


def run_dir_name(model: str, benchmark: str, site: str, layer: int) -> str:
    safe = lambda text: "".join(c if c.isalnum() or c in "-._" else "-" for c in text)  # noqa: E731
    return f"{safe(model)}__{safe(benchmark)}__{site}{layer}"


def chained_key(config_hash: str, *upstream: str) -> str:
    return hashlib.sha256("|".join((config_hash, *upstream)).encode()).hexdigest()[:16]


@dataclass
class Plan:
    """The stage configurations of one run, and the key of each stage."""

    run_dir: Path
    layer: int
    collect: CollectConfig
    train: TrainConfig
    ablate: AblateConfig
    keys: dict[str, str]


def sized_options(benchmark: Any, options: dict[str, Any], needed: int | None) -> dict[str, Any]:
    """A benchmark that generates a fixed number of examples (an ``n_examples`` option) is asked for
    at least ``needed``, unless the user set it."""
    fields = getattr(getattr(benchmark, "Options", None), "model_fields", {})
    if needed is None or "n_examples" not in fields or "n_examples" in options:
        return dict(options)
    default = fields["n_examples"].default
    return {**options, "n_examples": max(needed, default if isinstance(default, int) else 0)}


def resolve_layer(adapter: Any, config: RunConfig) -> int:
    """The layer of the run, known before any weights load (it names the run directory)."""
    n_layers = adapter.n_layers
    if not n_layers:  # an adapter that learns its sizes from the config (e.g. hf:ORG/NAME)
        n_layers = config_layer_count(config.model_path or adapter.hf_id)
    return adapter.resolve_site(config.layer, config.site, n_layers)


def config_layer_count(source: str) -> int:
    from transformers import AutoConfig

    from scircuits.platform.hf_loading import config_sizes

    try:
        return config_sizes(AutoConfig.from_pretrained(source))[0]
    except OSError as exc:
        from scircuits.platform.errors import WeightsUnavailableError

        raise WeightsUnavailableError(
            f"cannot read the configuration of {source}: {exc}. Give --model-path "
            f"DIR (a folder with config.json and the weights)"
        ) from None


def plan(config: RunConfig) -> Plan:
    from scircuits.platform.plugins import get_plugins

    plugins = get_plugins()
    adapter = plugins.models.get(config.model)
    benchmark = plugins.benchmarks.get(config.benchmark)
    benchmark.check_split(config.split)
    collect_split = config.collect_split or ("train" if "train" in benchmark.splits else config.split)
    benchmark.check_split(collect_split)
    layer = resolve_layer(adapter, config)
    run_dir = Path(config.out) / run_dir_name(config.model, config.benchmark, config.site, layer)
    collect_options = sized_options(benchmark, config.benchmark_options, config.collect_limit)
    options = sized_options(benchmark, config.benchmark_options, config.limit)

    collect = CollectConfig(
        model=config.model,
        benchmark=config.benchmark,
        benchmark_options=collect_options,
        layer=layer,
        site=config.site,
        split=collect_split,
        limit=config.collect_limit,
        seed=config.seed,
        device=config.device,
        model_path=config.model_path,
        remote=config.remote,
        out=str(run_dir / STORE_DIR),
        progress=config.progress,
    )
    train = TrainConfig(
        store=str(run_dir / STORE_DIR),
        sae=config.sae,
        hparams=config.sae_hparams,
        expansion=config.expansion,
        lr=config.train_lr,
        tokens=config.train_tokens,
        batch_size=config.train_batch_size,
        seed=config.seed,
        device=config.device,
        out=str(run_dir / SAE_DIR),
        progress=config.progress,
        warmup_steps=min(100, max(1, config.train_tokens // config.train_batch_size // 10)),
    )
    ablate = AblateConfig(
        model=config.model,
        benchmark=config.benchmark,
        benchmark_options=options,
        layer=layer,
        site=config.site,
        sae=str(run_dir / SAE_DIR),
        store=str(run_dir / STORE_DIR),
        ablation=config.ablation,
        rank=config.rank,
        top_k=config.top_k,
        random_controls=config.random_controls,
        exact_top=config.exact_top,
        faithfulness_n=config.faithfulness_n,
        limit=config.limit,
        split=config.split,
        seed=config.seed,
        bootstrap=config.bootstrap,
        edit_from_position=config.edit_from_position,
        device=config.device,
        model_path=config.model_path,
        out=str(run_dir / CAUSAL_DIR),
        progress=config.progress,
    )
    keys = {"collect": chained_key(collect.config_hash())}
    keys["train"] = chained_key(train.config_hash(), keys["collect"])
    keys["ablate"] = chained_key(ablate.config_hash(), keys["train"])
    keys["report"] = chained_key(f"report-v{REPORT_VERSION}", keys["ablate"])
    return Plan(run_dir, layer, collect, train, ablate, keys)


class PipelineState:
    """pipeline.json: per stage, the key it was started and completed under."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / STATE_FILE
        self.data: dict[str, Any] = {"stages": {}}
        if self.path.is_file():
            try:
                self.data = json.loads(self.path.read_text())
            except json.JSONDecodeError:
                self.data = {"stages": {}}
        self.data.setdefault("stages", {})

    def stage(self, name: str) -> dict[str, Any]:
        return self.data["stages"].get(name, {})

    def record(self, name: str, **values: Any) -> None:
        self.data["stages"][name] = {**self.stage(name), **values}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.data, indent=2))
        tmp.replace(self.path)


def store_complete(path: Path) -> bool:
    if not (path / "zarr.json").is_file():
        return False
    try:
        attrs = json.loads((path / "zarr.json").read_text()).get("attributes", {})
    except (json.JSONDecodeError, OSError):
        return False
    return bool(attrs.get("complete"))


def sae_complete(path: Path, config_hash: str) -> bool:
    from scircuits.platform.checkpoint import is_complete

    return is_complete(path, config_hash)


def results_complete(path: Path, config_hash: str) -> bool:
    results = path / "results.json"
    if not results.is_file():
        return False
    try:
        return json.loads(results.read_text()).get("config_hash") == config_hash
    except json.JSONDecodeError:
        return False


def report_complete(run_dir: Path) -> bool:
    return (run_dir / "report.html").is_file() and (run_dir / "report.md").is_file()


def remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def say(message: str) -> None:
    print(f"[run] {message}", file=sys.stderr, flush=True)


def check_model_weights(config: RunConfig) -> None:
    """Stop before any work when the weights cannot be had (WeightsUnavailableError names the ways)."""
    from scircuits.platform.errors import WeightsUnavailableError
    from scircuits.platform.hf_loading import check_weights_available
    from scircuits.platform.plugins import get_plugins

    adapter = get_plugins().models.get(config.model)
    try:
        check_weights_available(adapter, config.model_path)
    except WeightsUnavailableError as exc:
        if config.remote:
            raise WeightsUnavailableError(
                f"{exc} (--remote covers collection only: the causal stage runs the model hundreds of "
                "times on this machine, so it needs the weights here)"
            ) from None
        raise


def check_examples(the_plan: Plan) -> None:
    """Ask the benchmark for the first example of each stage now, so that bad benchmark options or
    splits stop the run before any work."""
    from scircuits.platform.plugins import get_plugins

    for stage in (the_plan.collect, the_plan.ablate):
        benchmark = get_plugins().benchmarks.get(stage.benchmark)
        first = next(
            iter(benchmark.examples(stage.split, stage.limit, stage.seed, stage.benchmark_options)), None
        )
        if first is None:
            raise ConfigError(
                f"benchmark {stage.benchmark!r} gives no examples for split {stage.split!r} "
                f"with options {stage.benchmark_options}"
            )


def run_pipeline(config: RunConfig) -> Path:
    """Run (or continue) the whole study; returns the run directory."""
    started = time.monotonic()
    the_plan = plan(config)
    check_model_weights(config)
    check_examples(the_plan)
    run_dir = the_plan.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    state = PipelineState(run_dir)
    state.data["run_config"] = config.model_dump(mode="json")
    say(f"run directory {run_dir}")

    def stage(
        name: str, artifact: Path, complete: Callable[[], bool], work: Callable[[bool], Any], resumable: bool
    ) -> None:
        key = the_plan.keys[name]
        recorded = state.stage(name)
        if recorded.get("completed_key") == key and complete():
            say(f"{name}: up to date ({artifact}), skipped")
            return
        same_start = recorded.get("started_key") == key
        if artifact.exists() and not (resumable and same_start):
            say(f"{name}: removing {artifact}, made with other settings")
            remove(artifact)
        resume = resumable and same_start and artifact.exists()
        say(f"{name}: {'continuing' if resume else 'starting'}")
        state.record(name, started_key=key, completed_key=None, started=now_iso())
        t0 = time.monotonic()
        work(resume)
        state.record(name, completed_key=key, completed=now_iso(), seconds=round(time.monotonic() - t0, 1))

    def do_collect(resume: bool) -> None:
        from scircuits.platform.collect import collect

        collect(the_plan.collect)

    def do_train(resume: bool) -> None:
        from scircuits.platform.training import train

        train(the_plan.train.model_copy(update={"resume": resume}))

    def do_ablate(resume: bool) -> None:
        from scircuits.platform.causal import run_ablate

        run_ablate(the_plan.ablate)

    def do_report(resume: bool) -> None:
        from scircuits.platform.dashboard import build_dashboard
        from scircuits.platform.report import write_report

        write_report([run_dir], out=run_dir)
        try:  # run_dir/dashboard/, linked from the report; its failure leaves the report in place
            build_dashboard(run_dir, say=say)
        except ScircuitsError as exc:
            say(f"dashboard: not written ({exc}); retry with `scircuits dashboard {run_dir}`")

    stage(
        "collect",
        run_dir / STORE_DIR,
        lambda: store_complete(run_dir / STORE_DIR),
        do_collect,
        resumable=True,
    )
    stage(
        "train",
        run_dir / SAE_DIR,
        lambda: sae_complete(run_dir / SAE_DIR, the_plan.train.config_hash()),
        do_train,
        resumable=True,
    )
    stage(
        "ablate",
        run_dir / CAUSAL_DIR,
        lambda: results_complete(run_dir / CAUSAL_DIR, the_plan.ablate.config_hash()),
        do_ablate,
        resumable=False,
    )
    stage("report", run_dir / "report.html", lambda: report_complete(run_dir), do_report, resumable=False)
    state.record("run", completed=now_iso(), seconds=round(time.monotonic() - started, 1))
    say(f"done in {time.monotonic() - started:.0f} s: {run_dir / 'report.html'}")
    return run_dir
