"""One pydantic config per stage. The same object serves the CLI, the config file and the artifact.

A config file is TOML or YAML; it may hold the stage's fields at top level or under a table named
after the stage (``[collect]``, ``[train]``, ``[ablate]``, ``[run]``). Flags override the file.
Each artifact records ``config_hash()``: the hash of the fields that change what the stage makes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from scircuits.platform.errors import ConfigError
from scircuits.platform.options import describe_validation_error

C = TypeVar("C", bound="StageConfig")


def read_config_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    text = path.read_text()
    try:
        if path.suffix == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib  # type: ignore[no-redef]
            data = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            raise ConfigError(f"config file {path}: use a .toml, .yaml or .yml file")
    except ConfigError:
        raise
    except Exception as exc:  # tomllib.TOMLDecodeError, yaml.YAMLError
        raise ConfigError(f"config file {path} is not valid {path.suffix[1:].upper()}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a table of settings, not {type(data).__name__}")
    return data


class StageConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    stage: ClassVar[str] = ""
    # Fields that do not change the artifact (where it goes, how fast, how it is shown).
    volatile: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def from_sources(
        cls: type[C], config_file: str | Path | None = None, overrides: Mapping[str, Any] | None = None
    ) -> C:
        values: dict[str, Any] = {}
        if config_file is not None:
            data = read_config_file(config_file)
            section = data.get(cls.stage)
            values.update(section if isinstance(section, dict) else data)
        values.update({k: v for k, v in (overrides or {}).items() if v is not None})
        return cls.validated(values)

    @classmethod
    def validated(cls: type[C], values: Mapping[str, Any]) -> C:
        try:
            return cls(**values)
        except ValidationError as exc:
            raise ConfigError(f"invalid {cls.stage} config: {describe_validation_error(exc)}") from None

    def identity(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude=set(self.volatile))

    def config_hash(self) -> str:
        blob = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


SiteName = Literal["resid", "mlp", "attn"]


class CollectConfig(StageConfig):
    stage: ClassVar[str] = "collect"
    volatile: ClassVar[frozenset[str]] = frozenset({"out", "device", "batch_size", "progress", "chunk_rows"})

    model: str = "smollm2-135m"
    benchmark: str = "arithmetic"
    benchmark_options: dict[str, Any] = Field(default_factory=dict)
    layer: int | None = Field(default=None, ge=0)
    site: SiteName = "resid"
    split: str = "test"
    limit: int | None = Field(default=None, gt=0)
    seed: int = 0
    batch_size: int = Field(default=16, gt=0)
    dtype: Literal["float16", "float32"] = "float16"
    # The model's compute dtype; "auto": float32 on CPU, bfloat16 on a GPU.
    model_dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    max_length: int | None = Field(default=None, gt=0)  # longer sequences keep the end of the prompt
    device: str = "cpu"
    model_path: str | None = None
    remote: bool = False
    out: str = "activations.zarr"
    chunk_rows: int | None = Field(default=None, gt=0)  # rows per store chunk (new stores); None: ~4 MiB
    progress: bool = True


class TrainConfig(StageConfig):
    stage: ClassVar[str] = "train"
    volatile: ClassVar[frozenset[str]] = frozenset(
        {"out", "device", "resume", "progress", "nproc", "log_every", "checkpoint_every", "tracker"}
    )

    store: str = ""
    sae: str = "topk"
    hparams: dict[str, Any] = Field(default_factory=dict)  # variant hyperparameters (k, l1, ...)
    expansion: int = Field(default=8, gt=0)
    # Adam learning rate; None: the width rule 2e-4 / sqrt(d_sae / 2**14) (sparsify's default,
    # scircuits.platform.training.width_scaled_lr), resolved when training starts and recorded in the
    # checkpoint's scircuits.json
    lr: float | None = Field(default=None, gt=0)
    batch_size: int = Field(default=4096, gt=0)
    epochs: int | None = Field(default=None, gt=0)
    tokens: int | None = Field(default=None, gt=0)
    eval_fraction: float = Field(default=0.05, ge=0, lt=1)
    eval_every: int = Field(default=200, gt=0)
    log_every: int = Field(default=50, gt=0)
    warmup_steps: int = Field(default=100, ge=0)
    grad_clip: float | None = 1.0
    bf16: bool = False
    device: str = "cpu"
    nproc: int = Field(default=1, gt=0)
    seed: int = 0
    resume: bool = False
    preset: str | None = None
    out: str = "sae"
    progress: bool = True
    eval_tokens: int = Field(default=65536, gt=0)  # held-out tokens per evaluation
    checkpoint_every: int = Field(default=500, gt=0)  # steps between resumable checkpoints
    decay_fraction: float = Field(default=0.2, ge=0, le=1)  # final share of steps with linear lr decay
    tracker: Literal["none", "wandb", "tensorboard"] = "none"


class AblateConfig(StageConfig):
    stage: ClassVar[str] = "ablate"
    volatile: ClassVar[frozenset[str]] = frozenset({"out", "device", "batch_size", "progress"})

    model: str = "smollm2-135m"
    benchmark: str = "arithmetic"
    benchmark_options: dict[str, Any] = Field(default_factory=dict)
    layer: int | None = Field(default=None, ge=0)
    site: SiteName = "resid"
    sae: str = ""  # checkpoint directory
    store: str | None = None  # activation store, for top-activating contexts
    ablation: str = "zero"
    ablation_options: dict[str, Any] = Field(default_factory=dict)
    rank: Literal["attribution", "activation"] = "attribution"
    top_k: list[int] = Field(default_factory=lambda: [1, 5, 10, 50])
    random_controls: int = Field(default=5, ge=0)
    exact_top: int = Field(default=20, ge=0)
    limit: int | None = Field(default=None, gt=0)
    split: str = "test"
    seed: int = 0
    bootstrap: int = Field(default=1000, gt=0)
    splice_tolerance: float = Field(default=1e-3, gt=0)
    splice_check_examples: int | None = Field(default=32, gt=0)  # None: every example
    # features are edited at positions >= this; 1 leaves the first token alone (the attention sink,
    # whose huge activations make any feature firing there look essential)
    edit_from_position: int = Field(default=1, ge=0)
    faithfulness_n: list[int] = Field(default_factory=lambda: [1, 2, 5, 10, 20, 50, 100, 200])
    max_length: int | None = Field(default=None, gt=1)
    batch_size: int = Field(default=16, gt=0)
    device: str = "cpu"
    model_path: str | None = None
    out: str = "causal"
    progress: bool = True


class RunConfig(StageConfig):
    stage: ClassVar[str] = "run"
    volatile: ClassVar[frozenset[str]] = frozenset({"out", "device", "progress", "model_path"})

    model: str = "smollm2-135m"
    benchmark: str = "arithmetic"
    benchmark_options: dict[str, Any] = Field(default_factory=dict)
    layer: int | None = Field(default=None, ge=0)
    site: SiteName = "resid"
    sae: str = "topk"
    ablation: str = "zero"
    limit: int | None = Field(default=160, gt=0)  # evaluation examples (ablate); None: all
    split: str = "test"
    seed: int = 0
    device: str = "cpu"
    model_path: str | None = None
    remote: bool = False
    out: str = "runs"
    progress: bool = True
    # collect: examples traced for SAE training, from collect_split (None: "train" when the benchmark
    # has it, else `split`); a benchmark with an `n_examples` option is sized to fit both limits
    collect_split: str | None = None
    collect_limit: int | None = Field(default=2000, gt=0)
    # train
    train_tokens: int = Field(default=1_200_000, gt=0)
    expansion: int = Field(default=4, gt=0)
    sae_hparams: dict[str, Any] = Field(default_factory=dict)
    train_lr: float | None = Field(default=None, gt=0)  # None: the width rule (see TrainConfig.lr)
    train_batch_size: int = Field(default=4096, gt=0)
    # ablate
    rank: Literal["attribution", "activation"] = "attribution"
    top_k: list[int] = Field(default_factory=lambda: [1, 5, 20, 50])
    random_controls: int = Field(default=3, ge=0)
    exact_top: int = Field(default=10, ge=0)
    faithfulness_n: list[int] = Field(default_factory=lambda: [1, 5, 10, 20, 50, 100])
    bootstrap: int = Field(default=1000, gt=0)
    edit_from_position: int = Field(default=1, ge=0)  # see AblateConfig
