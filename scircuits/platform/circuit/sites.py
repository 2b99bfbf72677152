"""The SAEs of a circuit, one per site, read and checked together: every SAE must name its site,
come from the model studied and be given in the model's order; no site twice."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scircuits.platform.causal.stage import sae_site
from scircuits.platform.common.logs import get_logger
from scircuits.platform.common.remote import checkpoint_folders, is_url
from scircuits.platform.config.stages import refuse_empty_items
from scircuits.platform.contract.errors import ConfigError
from scircuits.platform.model.tracing import _SITE_ORDER
from scircuits.platform.train.checkpoint import CFG_FILE, load_sae

log = get_logger(__name__)


@dataclass
class SiteSAE:
    """One site of the circuit and the SAE spliced there."""

    layer: int
    site: str
    sae: Any
    spec: str
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.site}{self.layer}"

    @property
    def d_sae(self) -> int:
        return int(self.sae.W_dec.shape[0])

    @property
    def d_in(self) -> int:
        return int(self.sae.W_dec.shape[1])

    @property
    def order(self) -> tuple[int, int]:
        return (self.layer, _SITE_ORDER.get(self.site, 3))

    def _store_attr(self, name: str) -> str | None:
        meta = self.info.get("meta") if isinstance(self.info.get("meta"), dict) else {}
        store = meta.get("store") if isinstance(meta.get("store"), dict) else {}
        attrs = store.get("attrs") if isinstance(store.get("attrs"), dict) else {}
        value = attrs.get(name)
        return str(value) if value else None

    @property
    def trained_model(self) -> str | None:
        """The model the SAE's training store was collected from (ours), or None when unrecorded."""
        return self._store_attr("model")

    @property
    def trained_revision(self) -> str | None:
        """The revision of the weights that store was collected from (a hub commit, or a content hash
        ``sha256:``/``sha256-sampled:`` of local files), or None when unrecorded."""
        return self._store_attr("model_revision")


def check_trained_on(saes: list[SiteSAE], revision: str | None, model_name: str) -> None:
    """ConfigError when an SAE's training activations came from other weights than ``revision`` (the
    loaded model's), both being content hashes of one kind; a differing hub commit is only logged
    (a new commit may hold the same weights)."""
    for s in saes:
        trained = s.trained_revision
        if not trained or not revision or trained == revision:
            continue
        kind, other = trained.split(":", 1)[0], revision.split(":", 1)[0]
        if kind == other and kind.startswith("sha256"):
            raise ConfigError(
                f"the SAE {s.spec} was trained on activations of other weights ({trained[:24]}...) than "
                f"{model_name} loaded here ({revision[:24]}...): give SAEs trained on this model"
            )
        log.warning(
            f"[circuit] the SAE {s.spec} was trained on revision {trained} of its model; {model_name} "
            f"is at {revision} here"
        )


def expand_spec(spec: str) -> list[str]:
    """A local folder without cfg.json whose sub-folders are checkpoints (`scircuits train` on several
    stores writes one per site) stands for those sub-folders, and so does such a folder at a URL
    (published by `train --out URL`); any other spec for itself."""
    if is_url(spec):
        return checkpoint_folders(spec, CFG_FILE) or [spec]
    folder = Path(spec)
    if folder.is_dir() and not (folder / CFG_FILE).is_file():
        inner = sorted(p for p in folder.iterdir() if p.is_dir() and (p / CFG_FILE).is_file())
        if inner:
            return [str(p) for p in inner]
    return [spec]


def site_of(spec: str, info: dict[str, Any], adapter: Any) -> tuple[int, str]:
    """(layer, site) of an SAE: its training store's attributes, else its hook name."""
    layer, site = sae_site(info)
    hook = info.get("hook_name")
    if hook and not info.get("meta"):
        layer, site = adapter.site_of_hook(str(hook))
    if layer is None or site is None:
        raise ConfigError(
            f"the SAE {spec} records no site (no training store, no hook name): a circuit needs each SAE's "
            "site; use a checkpoint of `scircuits train` or a published SAE with a hook name"
        )
    return int(layer), str(site)


def load_site_saes(
    specs: list[str], plugins: Any, adapter: Any, model_name: str, width: int | None = None
) -> list[SiteSAE]:
    """Read every SAE and check them together (before the model loads); ``width``: the model's, when
    known before it loads."""
    groups = [expand_spec(spec) for spec in specs]
    if sum(len(g) for g in groups) < 2:
        for group in groups:  # what is wrong with the one given, if anything, says more
            for spec in group:
                load_sae(spec, plugins)
        raise ConfigError(
            "a circuit needs SAEs at two sites or more: give --sae once per site (or a folder holding "
            "one checkpoint per site)"
        )
    loaded: list[SiteSAE] = []
    for group in groups:
        found = []
        for spec in group:
            sae, info = load_sae(spec, plugins)
            layer, site = site_of(spec, info, adapter)
            if site not in adapter.site_paths:
                raise ConfigError(
                    f"the SAE {spec} reads the {site!r} site, which {model_name} does not declare (its "
                    f"sites: {', '.join(adapter.site_paths)})"
                )
            found.append(SiteSAE(layer, site, sae, spec, dict(info)))
        # a folder's checkpoints are named by their stores, not ordered: put them in the model's order
        loaded.extend(sorted(found, key=lambda s: s.order) if len(group) > 1 else found)
    models = {s.trained_model for s in loaded if s.trained_model}
    if len(models) > 1:
        listed = "; ".join(f"{s.spec}: {s.trained_model}" for s in loaded if s.trained_model)
        raise ConfigError(f"the SAEs come from different models ({listed}); give SAEs of one model")
    widths = {s.d_in for s in loaded}
    if len(widths) > 1:
        listed = "; ".join(f"{s.spec}: {s.d_in}" for s in loaded)
        raise ConfigError(f"the SAEs read different widths ({listed}): they come from different models")
    if width and widths != {width}:
        raise ConfigError(
            f"the SAEs read width {widths.pop()}, but {model_name} has width {width}: they were "
            "made for another model"
        )
    names = [s.name for s in loaded]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"two SAEs read the same site ({', '.join(twice)}); give one SAE per site")
    ordered = sorted(loaded, key=lambda s: s.order)
    if [s.name for s in ordered] != names:
        raise ConfigError(
            f"the SAEs are out of the model's order ({', '.join(names)}); give them in the order the "
            f"model computes their sites: {', '.join(s.name for s in ordered)}"
        )
    return loaded


def choose_sites(saes: list[SiteSAE], sites: str | None) -> list[SiteSAE]:
    """The SAEs of the sites ``--sites`` names (all when None); a site without an SAE is refused."""
    if sites is None:
        return saes
    refuse_empty_items(sites, "--sites")
    wanted = [s.strip() for s in sites.split(",") if s.strip()]
    by_name = {s.name: s for s in saes}
    missing = [w for w in wanted if w not in by_name]
    if missing:
        raise ConfigError(
            f"--sites {sites}: no SAE for {', '.join(missing)}; the sites with an SAE are "
            f"{', '.join(by_name)}"
        )
    chosen = [s for s in saes if s.name in set(wanted)]
    if len(chosen) < 2:
        raise ConfigError(f"--sites {sites}: a circuit needs two sites or more")
    return chosen
