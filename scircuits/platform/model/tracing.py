"""Reading one site of one layer with nnsight, locally or on NDIF, stopping the forward right after it.

    from scircuits.platform.model.tracing import SiteTracer, nnsight_model
    tracer = SiteTracer(loaded, layer=15, site="resid")
    rows = tracer.trace([seq.input_ids for seq in sequences])   # one (n_i, d_model) float32 tensor each

Batches are padded on the right with an attention mask and explicit position ids 0..n-1, so a real
token never attends to a pad and sits at its own position: each example's rows equal what the model
computes for it alone (up to the rounding of batched matrix products). Pad rows are dropped. The
forward stops right after the traced module (``tracer.stop()``), so layer L of N costs ~L/N of a pass.

Remote execution: ``load_remote(adapter)`` builds the nnsight model from the repo id (no weights are
downloaded; NDIF runs them) and every trace of it goes to NDIF. ``backend="local"`` runs nnsight's
offline stand-in of the same serialise/execute/deserialise path (for tests; it loads the weights
locally from the folder or cache).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from scircuits.platform.common.logs import get_logger
from scircuits.platform.contract.errors import ConfigError, ScircuitsError, WeightsUnavailableError
from scircuits.platform.contract.hf_loading import check_hub_config, weights_revision
from scircuits.platform.contract.models import LoadedModel, ModelAdapter

log = get_logger(__name__)

if TYPE_CHECKING:
    import torch

RemoteBackend = bool | str  # False: run here; True: NDIF; "local": nnsight's offline remote stand-in


@dataclass
class TracedModel:
    """An nnsight model over a LoadedModel and where its traces run."""

    nn: Any  # nnsight.modeling.transformers.TransformersModel
    remote: RemoteBackend = False

    def trace_kwargs(self) -> dict[str, Any]:
        """Keyword arguments every ``self.nn.trace(...)`` call must carry."""
        return {"remote": self.remote} if self.remote else {}

    def envoy(self, path: str) -> Any:
        """The nnsight Envoy of the module at a dotted path ("model.layers.15.mlp")."""
        return envoy_at(self.nn, path)


# The wrapper lives on the module it wraps, so it goes when the model goes.
_TRACED_ATTRIBUTE = "_scircuits_traced_model"


def envoy_at(root: Any, path: str) -> Any:
    envoy = root
    for part in path.split(".") if path else ():
        envoy = envoy[int(part)] if part.isdigit() else getattr(envoy, part)
    return envoy


def traced_model(loaded: LoadedModel) -> TracedModel:
    """The nnsight wrapper of ``loaded.model`` (made once per model and reused).

    nnsight sets pad = eos and left padding on the tokenizer it is given; it gets a copy, so
    ``loaded.tokenizer`` is left as it is.
    """
    existing = getattr(loaded.model, _TRACED_ATTRIBUTE, None)
    if existing is not None:
        return existing
    from nnsight.modeling.transformers import TransformersModel

    wrapped = TransformersModel(loaded.model, tokenizer=copy.deepcopy(loaded.tokenizer))
    traced = TracedModel(wrapped, remote=False)
    object.__setattr__(
        loaded.model, _TRACED_ATTRIBUTE, traced
    )  # not a submodule: keep it out of nn.Module's registries
    return traced


def runs_remotely(loaded: LoadedModel) -> bool:
    """Whether ``loaded`` was built by ``load_remote`` (its traces go to NDIF or its stand-in)."""
    existing = getattr(loaded.model, _TRACED_ATTRIBUTE, None)
    return bool(existing is not None and existing.remote)


def nnsight_model(loaded: LoadedModel) -> Any:
    """The nnsight ``TransformersModel`` over ``loaded`` (pass ``**traced_model(loaded).trace_kwargs()``
    to its ``trace`` so that remote models run remotely)."""
    return traced_model(loaded).nn


def ndif_api_key() -> str | None:
    key = os.environ.get("NDIF_API_KEY")
    if key:
        return key
    try:
        from nnsight import CONFIG

        return CONFIG.API.APIKEY or None
    except Exception:
        return None


def check_ndif(adapter: ModelAdapter, model_path: str | None = None) -> None:
    """Before any work of a ``--remote`` command: an NDIF key, a hub model, and NDIF serving it now
    (asked of NDIF's status page). One ConfigError line otherwise."""
    if not ndif_api_key():
        raise ConfigError(
            "--remote runs the model on NDIF and needs an API key: set NDIF_API_KEY (get one at "
            "https://login.ndif.us), or drop --remote to run the model here."
        )
    if model_path is not None:
        raise ConfigError(
            "--remote runs a hub model on NDIF, which knows it by its repository id; "
            "a local --model-path cannot be sent there. Drop one of the two."
        )
    repo = adapter.hf_id
    if not repo:
        raise ConfigError(f"model {adapter.name!r} names no hub repository to run remotely")
    import nnsight.ndif

    served = nnsight.ndif.status(raw=True)
    deployments = served.get("deployments", {}) if isinstance(served, dict) else {}
    if not deployments:
        raise ConfigError(
            "--remote: NDIF's status page (https://nnsight.net/status) could not be read or lists no "
            "model; check the network and NDIF's status, or drop --remote to run the model here."
        )
    repos = sorted({str(d.get("repo_id", name)) for name, d in deployments.items()})
    if not any(r.lower() == repo.lower() for r in repos):
        raise ConfigError(
            f"--remote: NDIF does not serve {repo} ({adapter.name}) now; it serves "
            f"{', '.join(repos[:12])}{' ...' if len(repos) > 12 else ''}. Pick one of those with "
            "--model (hf:REPO), or drop --remote."
        )


def load_remote(
    adapter: ModelAdapter, *, model_path: str | None = None, backend: RemoteBackend = True
) -> LoadedModel:
    """A LoadedModel whose weights stay on NDIF: the module tree is built on the meta device.

    ``model_path`` (a local folder) replaces the hub id; with ``backend="local"`` nothing leaves
    this machine (nnsight's offline stand-in for NDIF, used by the tests).
    """
    if backend is True and not ndif_api_key():
        raise ConfigError(
            "--remote runs the model on NDIF and needs an API key: set NDIF_API_KEY (get one at "
            "https://login.ndif.us), or drop --remote to run the model here."
        )
    if backend is True and model_path is not None:
        raise ConfigError(
            "--remote runs a hub model on NDIF, which knows it by its repository id; "
            "a local --model-path cannot be sent there. Drop one of the two."
        )
    if backend is True and not adapter.remote:
        log.warning(f"warning: {adapter.name} is not known to be served by NDIF; trying anyway")
    source = str(model_path) if model_path is not None else adapter.hf_id
    if not source:
        raise ConfigError(f"model {adapter.name!r} names no hub repository to run remotely")
    hub_commit = None if os.path.isdir(source) else check_hub_config(adapter, source)
    try:
        from nnsight.modeling.transformers import TransformersModel
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(source)
        wrapped = TransformersModel(source, task="text-generation", tokenizer=copy.deepcopy(tokenizer))
    except (OSError, ValueError) as exc:
        raise WeightsUnavailableError(
            f"cannot read the config and tokenizer of {source} for remote execution: {exc}. Remote "
            "execution needs network access to the Hugging Face hub (or a local folder via --model-path)."
        ) from None
    module = wrapped._module
    adapter = adapter.resolved_for(module)
    n_layers, d_model = adapter.config_sizes(module.config)
    if os.path.isdir(source):
        revision = weights_revision(source)
    else:
        revision = hub_commit or getattr(module.config, "_commit_hash", None) or "unknown"
    loaded = LoadedModel(
        adapter=adapter,
        model=module,
        tokenizer=tokenizer,
        model_id=source,
        revision=revision,
        dtype="remote",
        device="ndif" if backend is True else "local",
        n_layers=n_layers,
        d_model=d_model,
    )
    object.__setattr__(module, _TRACED_ATTRIBUTE, TracedModel(wrapped, remote=backend))
    return loaded


def pad_right(
    sequences: Sequence[Sequence[int]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask, position_ids), each (batch, longest), padded on the right."""
    import torch

    if not sequences:
        raise ValueError("no sequences to pad")
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), int(pad_id), dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if not len(seq):
            raise ValueError(f"sequence {row} is empty")
        input_ids[row, : len(seq)] = torch.as_tensor(list(seq), dtype=torch.long)
        attention_mask[row, : len(seq)] = 1
    position_ids = (
        torch.arange(width, dtype=torch.long).unsqueeze(0).expand(len(sequences), width).contiguous()
    )
    return input_ids, attention_mask, position_ids


def pad_token_id(tokenizer: Any) -> int:
    for name in ("pad_token_id", "eos_token_id", "unk_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    return 0  # masked out and never stored: any id in the vocabulary will do


class SiteTracer:
    """Reads the output of ``site`` in block ``layer`` for batches of token sequences."""

    def __init__(self, loaded: LoadedModel, layer: int, site: str) -> None:
        self.loaded = loaded
        self.layer = layer
        self.site = site
        self.path = loaded.site_path(layer, site)
        self.traced = traced_model(loaded)
        self.envoy = self.traced.envoy(self.path)
        self.pad_id = pad_token_id(loaded.tokenizer)
        first = next(iter(loaded.model.parameters()), None)
        self.device = first.device if first is not None and not first.is_meta else "cpu"

    def trace_padded(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor
    ) -> torch.Tensor:
        """The site's output (batch, seq, d_model) for one padded batch; the forward stops after it."""
        import torch

        envoy = self.envoy
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids}
        if not self.traced.remote:
            inputs = {k: v.to(self.device) for k, v in inputs.items()}
        with torch.no_grad():  # noqa: SIM117 - nnsight reads the inner block's own source
            with self.traced.nn.trace(**inputs, use_cache=False, **self.traced.trace_kwargs()) as tracer:
                output = envoy.output
                if isinstance(output, tuple):  # attention modules return (output, weights)
                    output = output[0]
                saved = output.save()
                tracer.stop()
        return saved

    def trace(self, sequences: Sequence[Sequence[int]]) -> list[torch.Tensor]:
        """One float32 CPU tensor (len(seq), d_model) per sequence: its rows, pads dropped."""
        input_ids, attention_mask, position_ids = pad_right(sequences, self.pad_id)
        output = self.trace_padded(input_ids, attention_mask, position_ids)
        if output.ndim != 3 or output.shape[:2] != input_ids.shape:
            raise ScircuitsError(
                f"{self.path} returned a tensor of shape {tuple(output.shape)}, expected "
                f"({input_ids.shape[0]}, {input_ids.shape[1]}, d_model): the adapter's site path is wrong"
            )
        output = output.detach().float().cpu()
        return [output[row, : len(seq)] for row, seq in enumerate(sequences)]


# The order in which a block computes its sites; nnsight needs them read in execution order.
_SITE_ORDER = {"attn": 0, "mlp": 1, "resid": 2}


class SitesTracer:
    """Reads several (layer, site) outputs in one forward, which stops after the last of them."""

    def __init__(self, loaded: LoadedModel, sites: Sequence[tuple[int, str]]) -> None:
        if not sites:
            raise ConfigError("no site to trace")
        self.loaded = loaded
        self.sites = sorted(set(sites), key=lambda s: (s[0], _SITE_ORDER.get(s[1], 3)))
        self.traced = traced_model(loaded)
        self.paths = {s: loaded.site_path(*s) for s in self.sites}
        self.envoys = {s: self.traced.envoy(path) for s, path in self.paths.items()}
        self.pad_id = pad_token_id(loaded.tokenizer)
        first = next(iter(loaded.model.parameters()), None)
        self.device = first.device if first is not None and not first.is_meta else "cpu"

    def trace_padded(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor
    ) -> dict[tuple[int, str], torch.Tensor]:
        """Each site's output (batch, seq, d_model) for one padded batch."""
        import torch

        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids}
        if not self.traced.remote:
            inputs = {k: v.to(self.device) for k, v in inputs.items()}
        saved: dict[tuple[int, str], Any] = {}
        with torch.no_grad():  # noqa: SIM117 - nnsight reads the inner block's own source
            with self.traced.nn.trace(**inputs, use_cache=False, **self.traced.trace_kwargs()) as tracer:
                for site in self.sites:
                    output = self.envoys[site].output
                    if isinstance(output, tuple):  # attention modules return (output, weights)
                        output = output[0]
                    saved[site] = output.save()
                tracer.stop()
        return saved

    def trace(self, sequences: Sequence[Sequence[int]]) -> dict[tuple[int, str], list[torch.Tensor]]:
        """Per site, one float32 CPU tensor (len(seq), d_model) per sequence, pads dropped."""
        input_ids, attention_mask, position_ids = pad_right(sequences, self.pad_id)
        outputs = self.trace_padded(input_ids, attention_mask, position_ids)
        result = {}
        for site, output in outputs.items():
            if output.ndim != 3 or output.shape[:2] != input_ids.shape:
                raise ScircuitsError(
                    f"{self.paths[site]} returned a tensor of shape {tuple(output.shape)}, expected "
                    f"({input_ids.shape[0]}, {input_ids.shape[1]}, d_model): the adapter's site path is wrong"
                )
            output = output.detach().float().cpu()
            result[site] = [output[row, : len(seq)] for row, seq in enumerate(sequences)]
        return result
