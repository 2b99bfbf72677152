"""One pydantic config per stage. The same object serves the CLI (its options are generated from
the fields: ``scircuits.platform.config.options``), the config file and the artifact.

Every setting is declared once: name, type, default and help (``Field(description=...)``).
A config file is TOML or YAML; it may hold the stage's fields at top level or under a table named
after the stage (``[collect]``, ``[train]``, ``[ablate]``, ``[run]``). Flags override the file.
Each artifact records ``config_hash()``: the hash of the fields that change what the stage makes.

The fields that name a plugin object (model, benchmark, SAE variant, ablation) default to None, "the
plugin set's default": the object its plugin marks ``default = True`` (docs/plugins.md, "Defaults").
``with_plugin_defaults(plugins)`` fills them where the work is planned, before any hash is taken, so
the resolved config, its hash and everything recorded name the object used.

``RunConfig`` is composed of the stage configs: the settings every stage shares, and one section
per stage (``collect``, ``train``, ``ablate``) made from that stage's config with the fields the run
sets itself left out and the run's own defaults.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, TypeVar, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    model_validator,
)
from pydantic_core import PydanticUndefined

from scircuits.platform.common.fingerprint import weights_fingerprint
from scircuits.platform.config.files import read_config_file
from scircuits.platform.contract.errors import ConfigError
from scircuits.platform.contract.options import describe_validation_error
from scircuits.store.location import local_path
from scircuits.store.remote import check_url, is_url

# the settings that may name a URL (checked by StageConfig.urls_supported)
URL_FIELDS = frozenset({"out", "store", "sae", "circuit_sae"})

if TYPE_CHECKING:
    from scircuits.platform.manager.plugin_set import PluginSet

C = TypeVar("C", bound="StageConfig")


# the tables a config file may hold: one per command that reads --config
STAGE_TABLES = ("collect", "train", "ablate", "run", "circuit")


def check_tables(cls: type[StageConfig], data: Mapping[str, Any], config_file: str | Path) -> None:
    """Refuse a table the command would not read: another command's table where this command's is
    absent, or a table of no command (a typo, with the closest name)."""
    own = isinstance(data.get(cls.stage), dict)
    for name in [k for k, v in data.items() if isinstance(v, dict) and k != cls.stage]:
        if name in cls.model_fields or (own and name in STAGE_TABLES):
            continue  # a dict setting (refused in from_sources beside a stage table), or a shared file
        if name in STAGE_TABLES:
            tables = f"[{name}] and its [{name}.*] tables are" if name == "run" else f"[{name}] is"
            raise ConfigError(
                f"config file {config_file}: {tables} read by `scircuits {name} --config`; `scircuits "
                f"{cls.stage}` reads the [{cls.stage}] table or top-level settings"
            )
        close = difflib.get_close_matches(name, [*STAGE_TABLES, *cls.model_fields], n=1)
        hint = f"; did you mean [{close[0]}]?" if close else ""
        known = ", ".join(f"[{t}]" for t in STAGE_TABLES)
        raise ConfigError(f"config file {config_file}: unknown table [{name}]{hint} (tables: {known})")


def counts(example: str) -> AfterValidator:
    """A list of distinct positive integers (numbers of features, circuit sizes)."""

    def check(values: list[int]) -> list[int]:
        if not values or any(v <= 0 for v in values):
            raise ValueError(f"give positive integers, e.g. {example}")
        if len(set(values)) < len(values):
            raise ValueError(f"give each number once, e.g. {example}")
        return values

    return AfterValidator(check)


def distinct(values: list[str]) -> list[str]:
    repeated = sorted({v for v in values if values.count(v) > 1})
    if repeated:
        raise ValueError(f"{', '.join(repeated)} given more than once; give each once")
    return values


def looks_like_path(value: str) -> bool:
    """A folder rather than a name: a path separator or a leading '.', and no scheme (hf:, s3://)."""
    return ":" not in value and ("/" in value or os.sep in value or value.startswith("."))


def plugin_default_help(what: str, family: str) -> str:
    return f"{what} (see `scircuits {family}`); default: the plugin set's default, marked * there."


# Every config refuses NaN and inf in a number field (pydantic's allow_inf_nan): no setting means
# "not a number", so none is let through to the work.
STRICT = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


def optional_numbers(model: type[BaseModel]) -> frozenset[str]:
    """The int or float fields of ``model`` that may be None."""
    names = set()
    for name, info in model.model_fields.items():
        args = get_args(info.annotation)
        numbers = {a for a in args if a is not type(None)}
        if type(None) in args and numbers and numbers <= {int, float}:
            names.add(name)
    return frozenset(names)


def none_as_unset(model: type[BaseModel], values: Any) -> Any:
    """``none`` (any case) for a number that may be unset (``--grad-clip none``, ``limit = "none"`` in a
    config file) is None, as the help says ("none: no clipping", "none: all")."""
    if not isinstance(values, dict):
        return values
    numbers = optional_numbers(model)
    return {
        name: None
        if name in numbers and isinstance(value, str) and value.strip().lower() == "none"
        else value
        for name, value in values.items()
    }


class StageConfig(BaseModel):
    model_config = STRICT

    stage: ClassVar[str] = ""
    # Fields that do not change the artifact (where it goes, how fast, how it is shown).
    volatile: ClassVar[frozenset[str]] = frozenset()
    # Fields that say where an input is: the hash records only whether one is given, so that a
    # moved run directory or weights folder keeps its hashes (the stages chain to the inputs' own
    # identities); ``model_path`` records its weights' fingerprint instead (below).
    located: ClassVar[frozenset[str]] = frozenset()
    # Fields that name a plugin object -> its family; None there means the family's default.
    plugin_fields: ClassVar[Mapping[str, str]] = {}
    # Paths that must be local (the others may be fsspec URLs such as s3://, docs/scale.md).
    local_only: ClassVar[frozenset[str]] = frozenset({"model_path"})
    # settings of which one replaces the other: a flag setting one drops the other from the file
    either_or: ClassVar[Mapping[str, str]] = {}

    def with_plugin_defaults(self: C, plugins: PluginSet) -> C:
        """This config with every plugin field left None set to ``plugins``' default for it."""
        update = {
            name: plugins.registries[family].default()
            for name, family in self.plugin_fields.items()
            if getattr(self, name) is None
        }
        return self.model_copy(update=update) if update else self

    @classmethod
    def from_sources(
        cls: type[C], config_file: str | Path | None = None, overrides: Mapping[str, Any] | None = None
    ) -> C:
        name = cls.__name__
        if config_file is not None and not isinstance(config_file, (str, os.PathLike)):
            raise ConfigError(
                f"{name}.from_sources: the first argument is a config file's path (or None), not the "
                f"{type(config_file).__name__} {config_file!r:.40}: give the settings second, "
                f"{name}.from_sources(None, {{...}})"
            )
        if overrides is not None and not isinstance(overrides, Mapping):
            raise ConfigError(
                f"{name}.from_sources: the settings (the second argument) must be a dict, not the "
                f"{type(overrides).__name__} {overrides!r:.40}"
            )
        values: dict[str, Any] = {}
        if config_file is not None:
            data = read_config_file(config_file)
            check_tables(cls, data, config_file)
            section = data.get(cls.stage)
            if isinstance(section, dict):
                ignored = sorted(
                    k
                    for k, v in data.items()
                    if not isinstance(v, dict) or (k in cls.model_fields and k not in STAGE_TABLES)
                )
                if ignored:
                    raise ConfigError(
                        f"config file {config_file}: the top-level setting(s) {', '.join(ignored)} would be "
                        f"ignored because a [{cls.stage}] table exists; move them into [{cls.stage}]"
                    )
            values.update(section if isinstance(section, dict) else data)
            cls.check_file_values(values, config_file)
        given = {k: v for k, v in (overrides or {}).items() if v is not None}
        for name in given:
            other = cls.either_or.get(name)
            if other is not None and other not in given:
                values.pop(other, None)
        values.update(given)
        return cls.validated(values)

    @classmethod
    def check_file_values(cls, values: Mapping[str, Any], config_file: str | Path) -> None:
        """Refuse settings a config file gives twice (no-op here; ``RunConfig`` has flat names)."""

    @classmethod
    def known_names(cls, loc: tuple[Any, ...]) -> dict[str, str]:
        """Names a mistyped setting at ``loc`` may be close to -> the setting to suggest."""
        return {name: name for name in cls.model_fields}

    @model_validator(mode="before")
    @classmethod
    def no_bool_for_numbers(cls, values: Any) -> Any:
        return reject_bool_numbers(cls, values)

    @model_validator(mode="before")
    @classmethod
    def none_means_unset(cls, values: Any) -> Any:
        return none_as_unset(cls, values)

    @model_validator(mode="before")
    @classmethod
    def file_urls_as_paths(cls, values: Any) -> Any:
        """``file:///data/x`` is the local path ``/data/x`` (Path() would read it as ``file:/data/x``,
        a folder under the working directory)."""
        if isinstance(values, dict):
            return {name: file_url_as_path(value) for name, value in values.items()}
        return values

    @model_validator(mode="before")
    @classmethod
    def model_folders_absolute(cls, values: Any) -> Any:
        """A model named by a local path after its prefix (``PREFIX:some/folder``) is recorded with the
        absolute path, so a later command from another folder (dashboard, circuit) finds it."""
        if isinstance(values, dict) and isinstance(values.get("model"), str):
            folder = local_model_folder(values["model"])
            if folder is not None:
                prefix = values["model"].split(":", 1)[0]
                values = {**values, "model": f"{prefix}:{folder.resolve()}"}
        return values

    @model_validator(mode="after")
    def local_paths_are_local(self: C) -> C:
        for name in self.local_only & type(self).model_fields.keys():
            value = getattr(self, name)
            if isinstance(value, str) and is_url(value):
                raise ConfigError(
                    f"{self.flag_of((name,))} {value} is a URL, but it must be a local folder: copy it "
                    "here first (stores, SAE checkpoints and output folders may be URLs; docs/scale.md)"
                )
        return self

    @model_validator(mode="after")
    def urls_supported(self: C) -> C:
        """An output folder, a store or an SAE given as a URL of a scheme this platform cannot use
        (``foo://``, ``hf://``) or with no location (a bare ``s3://``) is one line, before any work."""
        for name in URL_FIELDS & type(self).model_fields.keys():
            value = getattr(self, name)
            for item in value if isinstance(value, list) else [value]:
                if isinstance(item, str):
                    check_url(item, self.flag_of((name,)) or "", ConfigError)
        return self

    def __init__(self, **values: Any) -> None:
        # a config built in Python (the API, a notebook) refuses a bad value as the CLI does: one line
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise type(self).config_error(exc, values) from None

    @classmethod
    def validated(cls: type[C], values: Mapping[str, Any]) -> C:
        return cls(**values)

    @classmethod
    def config_error(cls, exc: ValidationError, values: Mapping[str, Any]) -> ConfigError:
        """The one-line ConfigError of a failed validation: the fields, their flags, and a hint."""
        errors = exc.errors()
        parts = [cls.unknown_setting(e["loc"], values) for e in errors if e["type"] == "extra_forbidden"]
        others = [e for e in errors if e["type"] != "extra_forbidden"]
        if others:
            rest = ValidationError.from_exception_data(exc.title, others)  # type: ignore[arg-type]
            flags = sorted({f for f in (cls.flag_of(e["loc"]) for e in others) if f})
            named = f" ({', '.join(flags)})" if flags else ""
            parts.append(f"{describe_validation_error(rest)}{named}")
        return ConfigError(f"invalid {cls.stage} config: {'; '.join(parts)}")

    @classmethod
    def unknown_setting(cls, loc: tuple[Any, ...], values: Mapping[str, Any]) -> str:
        """``unknown setting 'expnsion'; did you mean 'expansion'?``, or where an SAE hyperparameter
        goes."""
        key = str(loc[-1]) if loc else "?"
        where = ".".join(map(str, loc))
        message = f"unknown setting {where!r}"
        known = cls.known_names(loc)
        close = difflib.get_close_matches(key, list(known), n=1)
        if close:
            return f"{message}; did you mean {known[close[0]]!r}?"
        if "hparams" in cls.model_fields:  # the variants' own names are known to the plugins, not here
            value = values.get(key)
            return (
                f"{message}; if it is an SAE hyperparameter (`scircuits saes`), it goes in hparams: "
                f"`hparams = {{{key} = {value!r}}}` in the config file, or --sae-option {key}={value}"
            )
        return f"{message}; see `scircuits {cls.stage} --help` for the settings"

    @classmethod
    def flag_of(cls, loc: tuple[Any, ...]) -> str | None:
        """The command-line flag of a field's error location, e.g. ``--ablate-min-ce-loss-recovered``."""
        if not loc or not isinstance(loc[0], str):
            return None
        return "--" + loc[0].replace("_", "-")

    def identity(self) -> dict[str, Any]:
        values = self.model_dump(mode="json", exclude=set(self.volatile))
        model = values.get("model")
        folder = local_model_folder(model) if isinstance(model, str) else None
        if folder is not None:  # the weights, wherever the folder lies
            values["model"] = f"{model.split(':', 1)[0]}:weights:{weights_fingerprint(folder)}"
        for name in self.located & values.keys():
            if values[name] in (None, ""):
                values[name] = None
            elif name == "model_path":  # other weights in the same folder are another model
                given = str(values[name])  # (a recorded identity, read back, is kept as it is)
                values[name] = (
                    given if given.startswith("weights:") else f"weights:{weights_fingerprint(given)}"
                )
            else:
                values[name] = "given"
        return values

    def config_hash(self) -> str:
        blob = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


SiteName = Literal["resid", "mlp", "attn"]
# widest SAE a run may ask for (256 x d_model: a million latents on a 4096-wide model); the memory an
# SAE needs is also checked against the machine before training (train.training.check_sae_memory)
MAX_EXPANSION = 256


def local_model_folder(model: str) -> Path | None:
    """The local file or folder a ``PREFIX:PATH`` model name names (e.g. a folder of weights), or None
    (a plain adapter name, a hub id, a path that does not exist)."""
    prefix, colon, rest = model.partition(":")
    if not colon or not prefix or not rest or is_url(model):
        return None
    path = Path(rest).expanduser()
    return path if path.exists() else None


def file_url_as_path(value: Any) -> Any:
    if isinstance(value, str) and value.startswith("file://"):
        return str(local_path(value))
    if isinstance(value, list):
        return [file_url_as_path(v) for v in value]
    return value


def reject_bool_numbers(cls: type[BaseModel], values: Any) -> Any:
    """``limit: true`` is not 1: a number field takes no true/false."""
    if isinstance(values, dict):
        for name, value in values.items():
            field = cls.model_fields.get(name)
            if isinstance(value, bool) and field is not None and _numeric(field.annotation):
                raise ValueError(f"{name} must be a number, got {value!r}")
    return values


def _numeric(annotation: Any) -> bool:
    """Whether a field's type is a number (int or float, optionally None), and not bool."""
    args = get_args(annotation) or (annotation,)
    return any(a in (int, float) for a in args) and bool not in args


def D(default: Any = None, description: str = "", **constraints: Any) -> Any:
    """A field: its default, help text and constraints, declared once."""
    factory = default in (dict, list) or (isinstance(default, type) and issubclass(default, BaseModel))
    if factory or (callable(default) and not isinstance(default, type)):
        return Field(default_factory=default, description=description, **constraints)
    return Field(default=default, description=description, **constraints)


# Collect settings of the corpus source and of multi-site and sharded collection. Left at their
# defaults they are left out of the identity, so a benchmark collection's hash is what it was.
CORPUS_FIELDS = frozenset(
    {"corpus", "text_column", "corpus_split", "corpus_config", "context_size", "tokens"}
)
MULTI_FIELDS = frozenset({"layers", "sites"})
# What a corpus collection never reads.
BENCHMARK_FIELDS = frozenset({"benchmark", "benchmark_options", "split", "limit", "max_length"})


class CollectConfig(StageConfig):
    stage: ClassVar[str] = "collect"
    volatile: ClassVar[frozenset[str]] = frozenset(
        {"out", "device", "batch_size", "progress", "chunk_rows", "force", "nproc"}
    )
    located: ClassVar[frozenset[str]] = frozenset({"model_path"})

    plugin_fields: ClassVar[Mapping[str, str]] = {"model": "models", "benchmark": "benchmarks"}

    model: str | None = D(None, plugin_default_help("Model adapter name, or hf:ORG/NAME", "models"))
    benchmark: str | None = D(None, plugin_default_help("Benchmark name", "benchmarks"))
    benchmark_options: dict[str, Any] = D(dict, "Benchmark options (--option KEY=VALUE, --data).")
    layer: int | None = D(None, "Block to read; default: the adapter's default (the middle block).", ge=0)
    site: SiteName = D("resid", "resid = the block's output; mlp / attn = those sub-modules' outputs.")
    split: str = D("test", "Benchmark split.")
    limit: int | None = D(None, "Number of benchmark examples to trace (default: all).", gt=0)
    seed: int = D(0, "Seed of the benchmark's example order.", ge=0)
    batch_size: int = D(16, "Examples per forward pass.", gt=0)
    dtype: Literal["float16", "float32", "bfloat16"] = D(
        "float16", "Stored activation dtype (bfloat16 is kept as its 16 bits, docs/formats.md)."
    )
    model_dtype: Literal["auto", "float32", "bfloat16", "float16"] = D(
        "auto", "Compute dtype of the model; auto = float32 on CPU, bfloat16 on a GPU."
    )
    max_length: int | None = D(
        None, "Truncate longer sequences, keeping the end of the prompt (at least 2 tokens).", gt=1
    )
    device: str = D("cpu", "cpu, cuda, cuda:0, ...")
    model_path: str | None = D(None, "Load the weights from this local folder.")
    remote: bool = D(False, "Run the model on NDIF (needs NDIF_API_KEY).")
    out: str = D("activations.zarr", "Store path (a folder, or an fsspec URL).")
    chunk_rows: int | None = D(None, "Rows per store chunk of a new store (default: ~4 MiB of rows).", gt=0)
    progress: bool = D(True, "Show progress.")
    force: bool = D(
        False,
        "Instead of refusing, move aside (not delete) a folder at --out that is not this collection's store.",
    )
    corpus: str | None = D(
        None,
        "Collect from a text corpus instead of a benchmark: a .txt/.jsonl/.parquet file or folder, or a "
        "Hugging Face dataset id (hub:ID), streamed.",
    )
    text_column: str = D(
        "text", "Corpus: the column (.jsonl key, parquet or dataset column) holding the text."
    )
    corpus_split: str = D("train", "Corpus: the Hugging Face dataset's split.")
    corpus_config: str | None = D(None, "Corpus: the Hugging Face dataset's configuration name.")
    context_size: int = D(128, "Corpus: tokens per packed context (BOS first).", ge=2)
    tokens: int | None = D(None, "Corpus: stop after this many tokens (whole contexts, rounded up).", gt=0)
    layers: str | None = D(
        None, "Several blocks in one forward, e.g. 3,6,9,12: one store per site, joined by a manifest."
    )
    sites: str | None = D(None, "Several sites in one forward, e.g. resid,mlp,attn (with --layers, --layer).")
    nproc: int = D(
        1, "Collect in this many processes (torch.distributed; gloo on CPU), one shard each.", gt=0
    )

    def identity(self) -> dict[str, Any]:
        values = super().identity()
        fields = type(self).model_fields
        defaults = {name: fields[name].get_default(call_default_factory=True) for name in values}
        for name in CORPUS_FIELDS | MULTI_FIELDS:
            if name in values and values[name] == defaults[name]:
                del values[name]
        # the blocks and sites are a set: --layers 2,1 collects what 1,2 does
        if "layers" in values:
            values["layers"] = ",".join(str(layer) for layer in self._layers())
        if "sites" in values:
            values["sites"] = ",".join(s for s in get_args(SiteName) if s in self._sites())
        if self.corpus is not None:
            for name in BENCHMARK_FIELDS:
                values.pop(name, None)
        return values

    def with_plugin_defaults(self, plugins: PluginSet) -> CollectConfig:
        """As a stage's; a corpus collection reads no benchmark, so none is filled in."""
        resolved = super().with_plugin_defaults(plugins)
        if self.corpus is not None and self.benchmark is None:
            resolved = resolved.model_copy(update={"benchmark": None})
        return resolved

    @model_validator(mode="after")
    def one_source_and_one_site_list(self) -> CollectConfig:
        self.site_list()  # read here: a bad --layers or --sites is one line up front
        if self.layers is not None and self.layer is not None and self.layer not in self._layers():
            raise ConfigError(
                f"--layer {self.layer} and --layers {self.layers}: give one (--layers lists every block)"
            )
        if self.sites is not None and self.site != "resid" and self.site not in self._sites():
            raise ConfigError(
                f"--site {self.site} and --sites {self.sites}: give one (--sites lists every site)"
            )
        if self.corpus is not None:
            given = [name for name in sorted(BENCHMARK_FIELDS) if self._benchmark_setting(name)]
            if given:
                flags = ", ".join(
                    "--data/--option" if n == "benchmark_options" else self.flag_of((n,)) or n for n in given
                )
                raise ConfigError(
                    f"--corpus {self.corpus} and {flags}: a corpus collection reads no benchmark; give "
                    "--corpus or the benchmark's settings, not both"
                )
        return self

    def _benchmark_setting(self, name: str) -> bool:
        """Whether a benchmark setting is given (split: other than its default)."""
        value = getattr(self, name)
        return value != "test" if name == "split" else value not in (None, {})

    def _layers(self) -> list[int]:
        # an empty --layers is refused by _int_list, not read as "not given"
        return _int_list(self.layers, "--layers") if self.layers is not None else [self.layer]  # type: ignore[list-item]

    def _sites(self) -> list[str]:
        if self.sites is None:
            return [self.site]
        refuse_empty_items(self.sites, "--sites")
        sites = [s.strip() for s in self.sites.split(",") if s.strip()]
        if not sites:
            raise ConfigError("--sites: give at least one site, e.g. resid or resid,mlp")
        if len(set(sites)) < len(sites):
            raise ConfigError(f"--sites {self.sites}: give each site once, e.g. resid,mlp")
        return sites

    def site_list(self, default_layer: int | None = None) -> list[tuple[int | None, str]]:
        """The (layer, site) pairs to collect: --layers x --sites, else --layer and --site."""
        return [(layer, site) for layer in self._layers() for site in self._sites()]


def empty_item(text: str) -> str | None:
    """The one-line reason a comma list holds an empty item (``0,,1``, ``1,``), or None."""
    parts = str(text).split(",")
    # only commas (``,``) names nothing at all: each flag says what to give instead
    if len(parts) > 1 and any(not part.strip() for part in parts) and any(part.strip() for part in parts):
        return f"{text!r} has an empty item between commas; remove the extra comma"
    return None


def refuse_empty_items(text: str, flag: str) -> None:
    reason = empty_item(text)
    if reason is not None:
        raise ConfigError(f"{flag} {reason}")


def _int_list(text: str, flag: str) -> list[int]:
    refuse_empty_items(text, flag)
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(
            f"{flag}: give comma-separated block numbers, e.g. 3,6,9,12 (not {text!r})"
        ) from None
    if not values or any(v < 0 for v in values):
        raise ConfigError(f"{flag}: give comma-separated non-negative block numbers (got {text!r})")
    if len(set(values)) < len(values):
        raise ConfigError(f"{flag} {text}: give each block once, e.g. 3,6,9,12")
    return sorted(values)


class TrainConfig(StageConfig):
    stage: ClassVar[str] = "train"
    volatile: ClassVar[frozenset[str]] = frozenset(
        {"out", "device", "resume", "progress", "nproc", "log_every", "checkpoint_every", "tracker", "force"}
    )
    located: ClassVar[frozenset[str]] = frozenset({"store"})
    plugin_fields: ClassVar[Mapping[str, str]] = {"sae": "saes"}
    either_or: ClassVar[Mapping[str, str]] = {"tokens": "epochs", "epochs": "tokens"}

    store: str = D("", "Activation store to train on.")
    sae: str | None = D(None, plugin_default_help("SAE variant", "saes"))
    hparams: dict[str, Any] = D(dict, "Variant hyperparameters (k, l1, ...).")
    expansion: int = D(8, "d_sae = expansion x d_model (at most 256).", gt=0, le=MAX_EXPANSION)
    lr: float | None = D(
        None,
        "Adam learning rate; default: 2e-4 * sqrt(2**14 / d_sae) * sqrt(batch_size / 64) (sparsify's "
        "width rule with square-root batch scaling; docs/training.md).",
        gt=0,
    )
    batch_size: int = D(4096, "Global batch in tokens (split evenly over --nproc processes).", gt=0)
    epochs: int | None = D(None, "Passes over the training split.", gt=0)
    tokens: int | None = D(None, "Train on this many tokens instead of whole epochs.", gt=0)
    eval_fraction: float = D(0.05, "Share of examples held out for evaluation.", ge=0, lt=1)
    eval_every: int = D(200, "Steps between evaluations.", gt=0)
    log_every: int = D(50, "Steps between training-log lines.", gt=0)
    warmup_steps: int | None = D(
        None, "Linear learning-rate warm-up steps; default: a tenth of the steps, at most 100.", ge=0
    )
    grad_clip: float | None = D(1.0, "Clip the gradient norm to this (none: no clipping).", gt=0)
    bf16: bool = D(False, "bfloat16 encoder product (float32 weights).")
    device: str = D("cpu", "cpu, cuda, cuda:0; a comma list spreads several SAEs over devices.")
    nproc: int = D(1, "Data-parallel processes (torch.distributed DDP) for one SAE.", gt=0)
    seed: int = D(
        0, "Seed; initialisation and batch order draw from independent streams derived from it.", ge=0
    )
    resume: bool = D(False, "Continue from the last checkpoint in --out.")
    preset: str | None = D(
        None, "A named preset of the variant's hyperparameters (see `scircuits saes --json`)."
    )
    out: str = D("sae", "Checkpoint directory (with several SAEs: one sub-directory each).")
    progress: bool = D(True, "Show progress.")
    eval_tokens: int = D(65536, "Held-out tokens per evaluation.", gt=0)
    checkpoint_every: int = D(500, "Steps between resumable checkpoints.", gt=0)
    decay_fraction: float = D(0.2, "Final share of steps with a linear learning-rate decay.", ge=0, le=1)
    tracker: Literal["none", "wandb", "tensorboard"] = D("none", "Also log to wandb or tensorboard.")
    force: bool = D(
        False,
        "Instead of refusing, move aside (not delete) a folder of other files, or an unresumed state.",
    )
    exclude_tokens: Literal["outliers", "none"] = D(
        "outliers",
        "Tokens left out of fitting, the input scale and the metrics: outliers = position 0 where it is "
        "an attention sink and any token with |x| > --outlier-factor x the median (docs/training.md); "
        "none = every token.",
    )
    outlier_factor: float = D(10.0, "Norm cutoff of --exclude-tokens outliers, in medians.", gt=1)

    # bumped when the same settings train differently (2: seeds split into init and data streams;
    # 3: run-relative AuxK window, latent usage measured on training tokens), so a
    # checkpoint of the older recipe is not taken as this config's
    recipe: ClassVar[int] = 3

    def identity(self) -> dict[str, Any]:
        return {**super().identity(), "recipe": self.recipe}

    @model_validator(mode="after")
    def one_length_and_a_variant(self) -> TrainConfig:
        if self.tokens is not None and self.epochs is not None:
            raise ConfigError(
                f"--tokens {self.tokens} and --epochs {self.epochs}: give one (--tokens trains on that "
                "many tokens, --epochs on whole passes)"
            )
        if self.sae and looks_like_path(self.sae) and not Path(self.sae).is_dir():
            raise ConfigError(
                f"--sae {self.sae}: no such checkpoint folder; `scircuits train` takes an SAE variant name "
                "(see `scircuits saes`), and a checkpoint is studied with `scircuits ablate --sae FOLDER`"
            )
        return self


class AblateConfig(StageConfig):
    stage: ClassVar[str] = "ablate"
    volatile: ClassVar[frozenset[str]] = frozenset({"out", "device", "batch_size", "progress", "force"})
    located: ClassVar[frozenset[str]] = frozenset({"sae", "store", "model_path"})
    plugin_fields: ClassVar[Mapping[str, str]] = {
        "model": "models",
        "benchmark": "benchmarks",
        "ablation": "ablations",
    }

    model: str | None = D(None, plugin_default_help("Model adapter name", "models"))
    benchmark: str | None = D(None, plugin_default_help("Benchmark name", "benchmarks"))
    benchmark_options: dict[str, Any] = D(dict, "Benchmark options (--option KEY=VALUE, --data).")
    layer: int | None = D(None, "Block of the site; default: the layer the SAE was trained on.", ge=0)
    site: SiteName = D("resid", "Site of the SAE.")
    sae: str = D(
        "",
        "SAE: a checkpoint folder (from `scircuits train`, SAELens, or a published layout), "
        "hf:REPO[/PATH][@REV] or saelens:RELEASE/SAE_ID (docs/formats.md, 'Published SAEs').",
    )
    store: str | None = D(None, "Activation store, for the features' top-activating contexts.")
    ablation: str | None = D(None, plugin_default_help("Ablation", "ablations"))
    ablation_options: dict[str, Any] = D(dict, "Ablation options (--ablation-option KEY=VALUE).")
    rank: Literal["attribution", "activation"] = D("attribution", "How features are ranked.")
    sweep_also: list[str] | None = D(
        None,
        "Further ablations swept over top_k beside --ablation, without controls (default: those their "
        "plugins mark as companions, i.e. mean; none: an empty list).",
    )
    top_k: Annotated[list[int], counts("[1, 5, 20, 50]")] = D(
        lambda: [1, 5, 10, 50], "Numbers of top features to ablate."
    )
    random_controls: int = D(
        20,
        "Matched control sets per k (below 80 for 4 k values the k values are tested in a fixed "
        "sequence, largest first, on the exact permutation p; see docs/metrics.md).",
        ge=0,
    )
    selection_fraction: float = D(
        0.5,
        "Share of the examples features are ranked on; effects are measured on the rest (0: same).",
        ge=0,
        lt=1,
    )
    exact_top: int = D(50, "Top features ablated one at a time (all of them when the SAE has fewer).", ge=0)
    limit: int | None = D(
        None,
        "Number of evaluation examples (default: all); at least 2, one to rank features on and one "
        "to measure them on.",
        gt=1,
    )
    split: str = D("test", "Benchmark split to evaluate on.")
    seed: int = D(0, "Seed of examples, controls and bootstrap.", ge=0)
    bootstrap: int = D(1000, "Bootstrap replicates.", gt=0)
    splice_tolerance: float | None = D(
        None,
        "Largest |logit difference| the splice may cause; default: per model dtype (float32 1e-3, "
        "bfloat16 and float16 in docs/scale.md, 'Choosing dtypes').",
        gt=0,
    )
    reconstruction_gate: bool = D(
        True,
        "Refuse an SAE that does not reconstruct the site (limits below); off only to study a poor or "
        "random SAE on purpose.",
    )
    max_relative_error: float = D(
        0.5,
        "Reconstruction gate: largest per-token relative error |x - x̂|²/|x|² of the SAE on the evaluation "
        "tokens.",
        gt=0,
    )
    max_error_growth: float = D(
        3.0,
        "Reconstruction gate: largest ratio of that error to the one the checkpoint recorded on its "
        "training store.",
        gt=1,
    )
    min_ce_loss_recovered: float = D(
        0.5, "Reconstruction gate: smallest CE loss recovered (0 to 1).", ge=0, le=1
    )
    splice_check_examples: int | None = D(
        32, "Examples the splice is checked on through nnsight (none: every example).", gt=0
    )
    edit_from_position: int = D(
        1, "Edit features only at positions >= this (1 spares the first token, the attention sink).", ge=0
    )
    faithfulness_n: Annotated[list[int], counts("[1, 5, 10, 50]")] = D(
        lambda: [1, 2, 5, 10, 20, 50, 100, 200],
        "Numbers of top features kept (those above the SAE's latents are left out).",
    )
    max_length: int | None = D(None, "Truncate longer sequences, keeping the end of the prompt.", gt=1)
    batch_size: int = D(16, "Sequences per forward pass.", gt=0)
    device: str = D("cpu", "cpu, cuda, cuda:N, or auto (the model split over the visible GPUs).")
    model_dtype: Literal["auto", "float32", "bfloat16", "float16"] = D(
        "float32",
        "Compute dtype of the model in every condition (auto = float32 on CPU, bfloat16 on a GPU); the "
        "SAE stays float32.",
    )
    study_dtype: Literal["float32", "bfloat16"] = D(
        "float32",
        "Compute dtype of the blocks above the site in every condition (bfloat16 autocast, the residual "
        "stream, norms, unembedding and log-probs float32; only on hardware with native bfloat16: AMX, "
        "avx512_bf16 or a GPU). The lower blocks, the SAE and the attribution stay in --model-dtype.",
    )
    exclude_tokens: Literal["auto", "outliers", "none"] = D(
        "auto",
        "Tokens the study scores and the reconstruction-alone condition replaces: auto = the rule the SAE's "
        "training recorded, or for an SAE that records none (a published one) outliers measured on the "
        "study's own tokens; outliers = position 0 where it is an attention sink and any token with |x| > "
        "10 x the median, measured on the study's tokens; none = every token. The splice covers every token.",
    )
    model_path: str | None = D(None, "Load the weights from this local folder.")
    remote: bool = D(
        False,
        "Run the model on NDIF (needs NDIF_API_KEY); the SAE, the edit values and the statistics stay here.",
    )
    out: str = D("causal", "Output folder.")
    progress: bool = D(True, "Show progress.")
    force: bool = D(
        False, "Move aside (never delete) a folder at --out that scircuits did not write instead of refusing."
    )

    def resolved_model_dtype(self) -> str:
        return resolve_model_dtype(self.model_dtype, self.device)

    def resolved_splice_tolerance(self) -> float:
        if self.splice_tolerance is not None:
            return self.splice_tolerance
        return SPLICE_TOLERANCE[self.resolved_model_dtype()]

    def resolved_fast_path_tolerance(self) -> float:
        """The fast path's (the conditions' upper blocks, in --study-dtype) against nnsight: the
        splice's; in bfloat16 at least ``STUDY_TOLERANCE``'s. A given --splice-tolerance holds for both."""
        if self.splice_tolerance is not None or self.study_dtype == "float32":
            return self.resolved_splice_tolerance()
        return max(self.resolved_splice_tolerance(), STUDY_TOLERANCE[self.study_dtype])

    def identity(self) -> dict[str, Any]:
        """``remote`` counts only when set, and the float32 defaults hash as before the dtype and its
        tolerance were settings, so that local float32 studies keep the hash they had."""
        values = super().identity()
        if not values.get("remote"):
            values.pop("remote", None)
        values["splice_tolerance"] = self.resolved_splice_tolerance()
        if values.get("model_dtype") == "float32":
            del values["model_dtype"]
        if values.get("exclude_tokens") == "auto":  # what a study with a recorded rule always did
            del values["exclude_tokens"]
        if values.get("study_dtype") == "float32":  # what every study did before the setting
            del values["study_dtype"]
        return values


def resolve_model_dtype(model_dtype: str, device: str) -> str:
    """``auto`` is float32 on the CPU and bfloat16 on a GPU; any other value stands."""
    if model_dtype != "auto":
        return model_dtype
    return "float32" if device == "cpu" else "bfloat16"


# Largest |logit difference| the exact splice may cause, by the model's compute dtype. The unedited
# splice reproduces a bfloat16 model exactly (x̂ + (x - x̂) rounds back to x), but an edited value is
# no bfloat16 number: one-ulp rounding flips between the fast path and nnsight carry through the
# upper blocks. Measured on an H200 (docs/scale.md, 'Model dtypes'): 0 unedited, 0.469 edited in
# bfloat16 on SmolLM2; float16 (3 more mantissa bits) is set 4x tighter, not measured.
SPLICE_TOLERANCE: dict[str, float] = {"float32": 1e-3, "bfloat16": 1.0, "float16": 0.25}

# Largest |logit difference| of the fast path with its upper blocks' matrix products in bfloat16
# (--study-dtype; the residual stream, norms and unembedding float32) against nnsight in float32, on
# every position's logits: 0.462 unedited and 0.516 with 16 features zeroed on SmolLM2-135M at layer
# 15 (32 examples of the default study, bfloat16 emulated on the CPU: the same roundings); set at
# about twice that (docs/scale.md, 'The study's dtype').
STUDY_TOLERANCE: dict[str, float] = {"bfloat16": 1.0}


# ----------------------------------------------------------------------------- the run


def section(
    name: str,
    config: type[StageConfig],
    leave_out: set[str],
    defaults: Mapping[str, Any],
    descriptions: Mapping[str, str] | None = None,
    optional: set[str] | None = None,
) -> type[BaseModel]:
    """The fields of ``config`` minus ``leave_out``, with the run's ``defaults`` (and help where the
    run's meaning differs); ``optional`` fields also accept None (the run then decides)."""
    fields: dict[str, Any] = {}
    for field_name, info in config.model_fields.items():
        if field_name in leave_out:
            continue
        info = copy.copy(info)
        annotation = info.annotation
        if field_name in (optional or set()):
            annotation = annotation | None  # type: ignore[operator]
        if field_name in defaults:
            value = defaults[field_name]
            info.default, info.default_factory = (
                (PydanticUndefined, value) if callable(value) else (value, None)
            )
        if descriptions and field_name in descriptions:
            info.description = descriptions[field_name]
        fields[field_name] = (annotation, info)
    return create_model(  # type: ignore[call-overload,no-any-return]
        name,
        __config__=STRICT,
        __validators__={
            "no_bool_for_numbers": model_validator(mode="before")(classmethod(reject_bool_numbers)),
            "none_means_unset": model_validator(mode="before")(classmethod(none_as_unset)),
        },
        **fields,
    )


RUN_SHARED = {"model", "benchmark", "benchmark_options", "layer", "site", "seed", "device", "model_path"}
RUN_SETS = {"out", "progress", "force"}

RunCollect = section(
    "RunCollect",
    CollectConfig,
    RUN_SHARED | RUN_SETS | {"remote"} | CORPUS_FIELDS | MULTI_FIELDS | {"nproc"},
    {"limit": 2000, "split": None},
    {
        "split": "Split traced for SAE training; default: train if the benchmark has it, else --split.",
        "limit": "Examples traced for SAE training.",
    },
    optional={"split"},
)
RunTrain = section(
    "RunTrain",
    TrainConfig,
    RUN_SETS | {"store", "seed", "device", "resume"},
    # lr pinned: without the sinks the width/batch rule (4.3e-3 here) reconstructs typical tokens
    # better than 1e-3 but leaves about half of the latents dead (silent for the whole AuxK window)
    # where 1e-3 leaves under 1% (docs/training.md, "Real activations: the rate on the default store")
    {"tokens": 1_200_000, "expansion": 4, "lr": 1e-3, "warmup_steps": None},
    {
        "sae": plugin_default_help(
            "SAE variant to train, or an SAE to study without collecting or training: a checkpoint "
            "folder, hf:REPO/PATH or saelens:RELEASE/SAE_ID",
            "saes",
        ),
        "tokens": "SAE training tokens.",
        "batch_size": "SAE training batch, in tokens.",
        "warmup_steps": "Learning-rate warm-up steps; default: a tenth of the steps, at most 100.",
    },
    optional={"warmup_steps"},
)
RunAblate = section(
    "RunAblate",
    AblateConfig,
    RUN_SHARED | RUN_SETS | {"sae", "store", "split", "remote"},
    {
        "limit": 160,
        "top_k": lambda: [1, 5, 20, 50],
        "exact_top": 50,
        "faithfulness_n": lambda: [1, 5, 10, 20, 50, 100],
    },
    {"limit": "Evaluation examples for the causal stage (none: all)."},
)

# flat names (flags, and keys of a flat [run] table) -> (section, field); every other section field
# is reachable as <section>_<field>, e.g. train_lr, collect_batch_size, ablate_splice_tolerance
RUN_FLAT_NAMES: dict[str, tuple[str, str]] = {
    "limit": ("ablate", "limit"),
    "sae": ("train", "sae"),
    "sae_hparams": ("train", "hparams"),
    "expansion": ("train", "expansion"),
    "ablation": ("ablate", "ablation"),
    "rank": ("ablate", "rank"),
    "top_k": ("ablate", "top_k"),
    "random_controls": ("ablate", "random_controls"),
    "exact_top": ("ablate", "exact_top"),
    "faithfulness_n": ("ablate", "faithfulness_n"),
    "bootstrap": ("ablate", "bootstrap"),
    "edit_from_position": ("ablate", "edit_from_position"),
    "study_dtype": ("ablate", "study_dtype"),
}
RUN_SECTIONS: dict[str, type[BaseModel]] = {"collect": RunCollect, "train": RunTrain, "ablate": RunAblate}
# a flat name setting one of these replaces the other in its section's table (a flag over a file)
EITHER_OR = {("train", "tokens"): "epochs", ("train", "epochs"): "tokens"}


def flat_run_names() -> dict[str, tuple[str, str]]:
    """Every flat name of a run section field: the names above, else <section>_<field>."""
    taken = {v: k for k, v in RUN_FLAT_NAMES.items()}
    return {
        taken.get((s, f), f"{s}_{f}"): (s, f) for s, model in RUN_SECTIONS.items() for f in model.model_fields
    }


class RunConfig(StageConfig):
    stage: ClassVar[str] = "run"
    volatile: ClassVar[frozenset[str]] = frozenset({"out", "device", "progress", "force"})
    located: ClassVar[frozenset[str]] = frozenset({"model_path"})
    plugin_fields: ClassVar[Mapping[str, str]] = {"model": "models", "benchmark": "benchmarks"}
    either_or: ClassVar[Mapping[str, str]] = {"train_tokens": "train_epochs", "train_epochs": "train_tokens"}
    # fields of the sections that name a plugin object -> its family
    section_plugin_fields: ClassVar[Mapping[tuple[str, str], str]] = {
        ("train", "sae"): "saes",
        ("ablate", "ablation"): "ablations",
    }

    model: str | None = D(None, plugin_default_help("Model adapter name", "models"))
    benchmark: str | None = D(None, plugin_default_help("Benchmark name", "benchmarks"))
    benchmark_options: dict[str, Any] = D(dict, "Benchmark options (--option KEY=VALUE, --data).")
    layer: int | None = D(None, "Block of the site; default: the adapter's default.", ge=0)
    site: SiteName = D("resid", "Site of the SAE.")
    split: str = D("test", "Benchmark split to evaluate on.")
    seed: int = D(0, "Seed of examples, SAE training, controls and bootstrap.", ge=0)
    device: str = D("cpu", "cpu, cuda, ...")
    model_path: str | None = D(None, "Load the weights from this local folder.")
    remote: bool = D(
        False, "Run the model on NDIF, for collection and the causal study (needs NDIF_API_KEY)."
    )
    out: str = D("runs", "Parent folder of the run directory.")
    progress: bool = D(True, "Show progress.")
    force: bool = D(
        False, "Move aside (never delete) what a stage cannot prove it wrote instead of refusing."
    )
    circuit_sae: Annotated[list[str], AfterValidator(distinct)] = D(
        list,
        "SAEs at other sites of the same model (checkpoint folders, hf:..., saelens:...): after the study, "
        "a feature circuit over them and the run's own SAE is found into RUN/circuit and reported "
        "(docs/circuits.md; none: no circuit).",
    )
    circuit_layers: str | None = D(
        None,
        "Blocks of extra sites (at --site), e.g. 3,9,21: the run collects them in one forward (as "
        "`collect --layers`), trains their SAEs in one joint pass with the run's SAE settings (as `train "
        "--store COLLECTION`), then finds a feature circuit over them and its own SAE into RUN/circuit "
        "(docs/circuits.md; none: no circuit).",
    )
    collect: RunCollect = D(RunCollect, "Collection settings (the [run.collect] table).")  # type: ignore[valid-type]
    train: RunTrain = D(RunTrain, "SAE training settings (the [run.train] table).")  # type: ignore[valid-type]
    ablate: RunAblate = D(RunAblate, "Causal-study settings (the [run.ablate] table).")  # type: ignore[valid-type]

    @model_validator(mode="before")
    @classmethod
    def nest_flat_names(cls, values: Any) -> Any:
        """Flat names (``train_tokens``, ``limit``, ...) go into their section; they win over the
        section's table (flags override the config file)."""
        if not isinstance(values, dict):
            return values
        values = dict(values)
        names = flat_run_names()
        flats = [k for k in values if k in names]
        given = {names[k] for k in flats}
        for flat in flats:
            section_name, field_name = names[flat]
            current = values.get(section_name)
            if isinstance(current, BaseModel):
                current = current.model_dump(exclude_unset=True)
            table = dict(current or {})
            other = EITHER_OR.get((section_name, field_name))
            if other is not None and (section_name, other) not in given:
                table.pop(other, None)  # --train-epochs replaces the file's tokens, and the reverse
            values[section_name] = {**table, field_name: values.pop(flat)}
        return values

    @classmethod
    def flag_of(cls, loc: tuple[Any, ...]) -> str | None:
        if len(loc) >= 2 and loc[0] in RUN_SECTIONS:
            flat = {v: k for k, v in flat_run_names().items()}.get((str(loc[0]), str(loc[1])))
            return None if flat is None else "--" + flat.replace("_", "-")
        return super().flag_of(loc)

    def with_plugin_defaults(self, plugins: PluginSet) -> RunConfig:
        resolved = StageConfig.with_plugin_defaults(self, plugins)
        for (section_name, field_name), family in self.section_plugin_fields.items():
            part = getattr(resolved, section_name)
            if getattr(part, field_name) is None:
                part = part.model_copy(update={field_name: plugins.registries[family].default()})
                resolved = resolved.model_copy(update={section_name: part})
        return resolved

    @model_validator(mode="after")
    def circuit_layers_are_blocks(self) -> RunConfig:
        if self.circuit_layers is not None:
            _int_list(self.circuit_layers, "--circuit-layers")  # read here: a bad list is one line up front
        return self

    @model_validator(mode="after")
    def trains_by_tokens_on_a_known_sae(self) -> RunConfig:
        if self.train.epochs is not None and self.train.tokens is not None:
            if "tokens" in self.train.model_fields_set:
                raise ConfigError(
                    f"--train-tokens {self.train.tokens} and --train-epochs {self.train.epochs}: give one "
                    "(--train-tokens trains on that many tokens, --train-epochs on whole passes)"
                )
            self.train = self.train.model_copy(update={"tokens": None})  # epochs replace the default tokens
        sae = self.train.sae
        if sae and looks_like_path(sae) and not is_url(sae) and not Path(sae).is_dir():
            raise ConfigError(
                f"--sae {sae}: no such checkpoint folder (--sae takes an SAE variant name, see `scircuits "
                "saes`, or an existing checkpoint folder, hf:REPO/PATH or saelens:RELEASE/SAE_ID)"
            )
        return self

    @classmethod
    def check_file_values(cls, values: Mapping[str, Any], config_file: str | Path) -> None:
        """A flat name and its section's table setting the same field is refused, naming both."""
        names = flat_run_names()
        for flat in [k for k in values if k in names]:
            section_name, field_name = names[flat]
            table = values.get(section_name)
            if isinstance(table, dict) and field_name in table:
                raise ConfigError(
                    f"config file {config_file}: {flat} is set twice, {flat} = {values[flat]!r} in [run] and "
                    f"{field_name} = {table[field_name]!r} in [run.{section_name}]; keep one"
                )

    @classmethod
    def known_names(cls, loc: tuple[Any, ...]) -> dict[str, str]:
        """In a section its fields; at top level the flat names, also reached by their field's name
        (``tokns`` -> ``train_tokens``)."""
        if len(loc) >= 2 and loc[0] in RUN_SECTIONS:
            return {name: name for name in RUN_SECTIONS[str(loc[0])].model_fields}
        flat = flat_run_names()
        known = {field_name: name for name, (_, field_name) in flat.items()}
        known.update({name: name for name in [*cls.model_fields, *flat]})
        return known

    def circuit_layer_list(self) -> list[int]:
        """``--circuit-layers`` as sorted distinct blocks (empty when not given)."""
        return _int_list(self.circuit_layers, "--circuit-layers") if self.circuit_layers else []

    def shared(self) -> dict[str, Any]:
        """The settings every stage config takes from the run."""
        return {name: getattr(self, name) for name in RUN_SHARED}
