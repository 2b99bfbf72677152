"""Export in the batch format SAEDashboard's Neuronpedia runner writes, so Neuronpedia tools can read a run.

``neuronpedia/batch-<i>.json``: ``{"model_id", "layer", "sae_set", "features": [...]}`` with, per feature,
the fields of SAEDashboard's NeuronpediaDashboardFeature: ``feature_index``, ``neuron_alignment_*``,
``correlated_*``, ``neg_str``/``neg_values`` and ``pos_str``/``pos_values`` (direct-path logit effects),
``frac_nonzero``, ``freq_hist_data_bar_values``/``_heights`` (activation histogram: bin centres and
counts), ``logits_hist_data_*``, ``n_prompts_total``, ``n_tokens_in_prompt``, ``dataset``,
``decoder_weights_dist`` and ``activations`` (``bin_min``, ``bin_max``, ``bin_contains``, ``tokens``,
``values``; top activations carry bin_min = -1 and bin_contains = -1, as there).

What we do not compute is left empty, never invented: correlated neurons and features, the logit
histogram and the decoder weight distribution (attention SAEs only).
``skipped_indexes.json`` lists the latents that never fire on the scanned tokens (they have no page).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

if TYPE_CHECKING:
    from scircuits.platform.dashboard.build import Extracted
    from scircuits.platform.dashboard.schema import Context, FeaturePage

BATCH_SIZE = 128


class NPActivation(BaseModel):
    bin_min: float
    bin_max: float
    bin_contains: float
    tokens: list[str]
    values: list[float]


class NPFeature(BaseModel):
    feature_index: int
    neuron_alignment_indices: list[int] = Field(default_factory=list)
    neuron_alignment_values: list[float] = Field(default_factory=list)
    neuron_alignment_l1: list[float] = Field(default_factory=list)
    correlated_neurons_indices: list[int] = Field(default_factory=list)
    correlated_neurons_l1: list[float] = Field(default_factory=list)
    correlated_neurons_pearson: list[float] = Field(default_factory=list)
    correlated_features_indices: list[int] = Field(default_factory=list)
    correlated_features_l1: list[float] = Field(default_factory=list)
    correlated_features_pearson: list[float] = Field(default_factory=list)
    neg_str: list[str]
    neg_values: list[float]
    pos_str: list[str]
    pos_values: list[float]
    frac_nonzero: float
    freq_hist_data_bar_values: list[float]
    freq_hist_data_bar_heights: list[float]
    logits_hist_data_bar_heights: list[float] = Field(default_factory=list)
    logits_hist_data_bar_values: list[float] = Field(default_factory=list)
    n_prompts_total: int
    n_tokens_in_prompt: int
    dataset: str
    decoder_weights_dist: list[float] = Field(default_factory=list)
    activations: list[NPActivation]


class NPBatch(BaseModel):
    model_id: str
    layer: int
    sae_set: str
    features: list[NPFeature]


def _activation(ctx: Context, tokens: list[str], lo: float, hi: float, contains: float) -> NPActivation:
    return NPActivation(
        bin_min=lo,
        bin_max=hi,
        bin_contains=contains,
        tokens=tokens[ctx.start : ctx.start + len(ctx.values)],
        values=[round(v, 3) for v in ctx.values],
    )


def np_feature(page: FeaturePage, extracted: Extracted) -> NPFeature:
    examples = extracted.examples
    activations = [_activation(c, examples[c.run], -1, round(page.max_activation, 3), -1) for c in page.top]
    for band in page.quantiles:
        activations += [
            _activation(
                c, examples[c.run], round(band.bin_min, 3), round(band.bin_max, 3), round(band.fraction, 4)
            )
            for c in band.contexts
        ]
    edges = page.histogram.edges
    centres = [round(math.sqrt(edges[i] * edges[i + 1]), 5) for i in range(len(edges) - 1)]
    indices, values, l1 = extracted.neuron_alignment.get(page.id, ([], [], []))
    config = extracted.inputs.config
    return NPFeature(
        feature_index=page.id,
        neuron_alignment_indices=indices,
        neuron_alignment_values=values,
        neuron_alignment_l1=l1,
        neg_str=[e.token for e in page.suppressed],
        neg_values=[round(e.logit, 4) for e in page.suppressed],
        pos_str=[e.token for e in page.promoted],
        pos_values=[round(e.logit, 4) for e in page.promoted],
        frac_nonzero=page.frequency,
        freq_hist_data_bar_values=centres,
        freq_hist_data_bar_heights=[float(c) for c in page.histogram.counts],
        n_prompts_total=extracted.n_sequences,
        n_tokens_in_prompt=0,  # sequences have their own lengths; no fixed prompt length
        dataset=f"scircuits:{config.get('benchmark')}",
        activations=activations,
    )


def write_neuronpedia(target: Path, extracted: Extracted, batch_size: int = BATCH_SIZE) -> list[Path]:
    """batch-<i>.json files of ``batch_size`` features, skipped_indexes.json and run_settings.json."""
    target.mkdir(parents=True, exist_ok=True)
    results, config = extracted.inputs.results, extracted.inputs.config
    model_id = str(config.get("model"))
    sae_set = f"{results['site']}{results['layer']}-{extracted.d_sae}"
    written = []
    for i in range(0, len(extracted.pages), batch_size):
        batch = NPBatch(
            model_id=model_id,
            layer=int(results["layer"]),
            sae_set=sae_set,
            features=[np_feature(p, extracted) for p in extracted.pages[i : i + batch_size]],
        )
        path = target / f"batch-{i // batch_size}.json"
        path.write_text(batch.model_dump_json())
        written.append(path)
    shown = {p.id for p in extracted.pages}
    skipped: dict[str, Any] = {
        "model_id": model_id,
        "layer": str(results["layer"]),
        "sae_set": sae_set,
        "skipped_indexes": [i for i in range(extracted.d_sae) if i not in shown],
    }
    (target / "skipped_indexes.json").write_text(json.dumps(skipped))
    (target / "run_settings.json").write_text(
        json.dumps(
            {
                "source": "scircuits dashboard",
                "run_dir": str(extracted.inputs.run_dir),
                "model": model_id,
                "benchmark": config.get("benchmark"),
                "layer": results["layer"],
                "site": results["site"],
                "n_features_per_batch": batch_size,
                "tokens_scanned": extracted.n_tokens,
                "first_position": extracted.inputs.first_position,
            },
            indent=2,
        )
    )
    return written
