"""The circuit's fast path (each forward starts at the first site it edits, from the clean pass
cached per batch; gradients computed once per batch) against the eager reference (every forward
runs the whole model): the same node effects, edges, curves and exact checks on the tiny model,
with sites of two kinds (resid and mlp) so both of SplitModel's splices are exercised."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scircuits.platform.causal.statistics import Bootstrap
from scircuits.platform.circuit import attribution as A
from scircuits.platform.circuit import stage
from scircuits.platform.circuit.evaluate import curves, cut_off, keep_masks, scores_keeping
from scircuits.platform.circuit.exact import exact_edge_effects, exact_node_effects
from scircuits.platform.circuit.spliced import SplicedModel
from scircuits.platform.manager.plugin_set import get_plugins
from tests import test_circuit
from tests.test_circuit import SITES, config, saved_saes, site_saes

tiny, examples = test_circuit.tiny, test_circuit.examples  # the fixtures, shared

TOL = dict(rtol=1e-4, atol=1e-5)


def assert_close(a, b, path="") -> None:
    """Nested dicts/lists of numbers (curve points, reference intervals) equal within TOL."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            assert_close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), path
        for k, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_close(x, y, f"{path}[{k}]")
    elif isinstance(a, float):
        assert b == pytest.approx(a, rel=TOL["rtol"], abs=TOL["atol"]), path
    else:
        assert a == b, path


@pytest.fixture(scope="module")
def both(tiny, examples):
    saes = site_saes(tiny.d_model)
    out = {}
    for fast in (True, False):
        model = SplicedModel(tiny, saes, fast=fast)
        batches = model.prepare(examples, 4, None, 1)
        out[fast] = (model, batches, A.baseline_of(batches, "selection-mean"))
    assert out[True][1][0].lower is not None and out[False][1][0].lower is None
    return out


def test_a_forward_started_at_any_site_gives_the_whole_models_logits(both):
    model, batches, _ = both[True]
    for cb in batches:
        whole = model.target_logits(cb.batch, None)
        for start in range(len(SITES)):
            torch.testing.assert_close(model.logits(cb, None, start), whole, rtol=1e-5, atol=1e-5)


def test_a_frozen_forward_stopped_at_a_site_recomputes_the_same_nodes_up_to_it(both):
    model, batches, _ = both[True]
    cb = batches[0]
    leaves_f, leaves_e = list(cb.features), list(cb.errors)
    _, whole = A.frozen_forward(model, cb, leaves_f, leaves_e, start=0)
    scores, part = A.frozen_forward(model, cb, leaves_f, leaves_e, start=0, stop=1)
    assert scores is None and part[2] is None
    for i in (0, 1):
        for a, b in zip(part[i], whole[i], strict=True):
            torch.testing.assert_close(a, b)


def test_the_clean_scores_of_the_preparing_pass_are_the_models(both):
    model, batches, _ = both[True]
    for cb in batches:
        assert cb.clean is not None
        torch.testing.assert_close(cb.clean[0], model.scores(cb, None)[0], rtol=1e-5, atol=1e-5)
        assert torch.equal(cb.clean[1], model.scores(cb, None)[1])


def test_node_effects_edges_and_ig_are_the_eager_ones(both):
    (fast, fb, fbase), (eager, eb, ebase) = both[True], both[False]
    nodes_fast, nodes_eager = A.node_effects(fast, fb, fbase), A.node_effects(eager, eb, ebase)
    for a, b in zip(nodes_fast, nodes_eager, strict=True):
        np.testing.assert_allclose(a, b, **TOL)
    circuit = [
        sorted({*map(int, np.argsort(-np.abs(e))[:3]), fast.sites[i].d_sae})
        for i, e in enumerate(nodes_eager)
    ]
    edges_fast = A.edge_weights(fast, fb, fbase, circuit)
    edges_eager = A.edge_weights(eager, eb, ebase, circuit)
    assert edges_fast.keys() == edges_eager.keys()
    for key, value in edges_eager.items():
        assert edges_fast[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
    assert any(abs(v) > 1e-3 for v in edges_eager.values())
    ig_fast = A.node_effects(fast, fb[:1], fbase, method="ig", ig_steps=2)
    ig_eager = A.node_effects(eager, eb[:1], ebase, method="ig", ig_steps=2)
    for a, b in zip(ig_fast, ig_eager, strict=True):
        np.testing.assert_allclose(a, b, **TOL)


def test_a_circuit_without_a_node_at_some_resid_site_scores_as_the_empty_circuit(both):
    """What the fast path's evaluation skips, checked on the eager path that runs it: a resid site
    keeping no node, with none kept after it, passes on what ∅ passes on whatever came before."""
    model, batches, base = both[False]
    d_sae = [s.d_sae for s in model.sites]
    empty = scores_keeping(model, batches, base, [])
    full = scores_keeping(model, batches, base, None)
    assert np.abs(full - empty).max() > 1e-2
    for kept in ([(0, 3), (1, d_sae[1])], [(0, d_sae[0])], [(1, 5)]):
        assert cut_off(model, *keep_masks(model, kept))
        np.testing.assert_allclose(scores_keeping(model, batches, base, kept), empty, rtol=0, atol=1e-6)
    # a resid site keeping nothing does not cut off the sites after it that keep nodes
    for kept in ([(1, 5), (2, d_sae[2])], [(0, 3), (1, 2), (2, d_sae[2])]):
        assert not cut_off(model, *keep_masks(model, kept))
        assert np.abs(scores_keeping(model, batches, base, kept) - empty).max() > 1e-4


def test_curves_and_exact_checks_are_the_eager_ones(both):
    (fast, fb, fbase), (eager, eb, ebase) = both[True], both[False]
    effects = A.node_effects(eager, eb, ebase)
    everything = [(i, j) for i, s in enumerate(eager.sites) for j in range(s.d_sae + 1)]
    ranked = sorted(everything, key=lambda n: -abs(effects[n[0]][n[1]]))
    for kept in (None, [], ranked[:5], [(1, eager.sites[1].d_sae), (2, 3)]):
        for complement in (False, True):
            np.testing.assert_allclose(
                scores_keeping(fast, fb, fbase, kept, complement),
                scores_keeping(eager, eb, ebase, kept, complement),
                **TOL,
            )
    boot = Bootstrap(sum(len(cb.layouts) for cb in eb), 50, 0)
    ref_f, points_f = curves(fast, fb, fbase, ranked, [1, 4], 2, boot, 0)
    ref_e, points_e = curves(eager, eb, ebase, ranked, [1, 4], 2, boot, 0)
    assert_close(ref_f, ref_e)
    assert_close(points_f, points_e)
    top = ranked[:6]
    np.testing.assert_allclose(
        exact_node_effects(fast, fb, fbase, top), exact_node_effects(eager, eb, ebase, top), **TOL
    )
    circuit = [[j for (s, j) in top if s == i] for i in range(len(SITES))]
    weights = A.edge_weights(eager, eb, ebase, circuit)
    edges = sorted(weights, key=lambda k: -abs(weights[k]))[:8]
    np.testing.assert_allclose(
        exact_edge_effects(fast, fb, fbase, edges), exact_edge_effects(eager, eb, ebase, edges), **TOL
    )


def test_the_command_finds_the_same_circuit_on_either_path(tiny, tmp_path, monkeypatch):
    specs = saved_saes(tmp_path, tiny.d_model)
    fast = stage.find_circuit(config(tmp_path, specs), get_plugins(), loaded=tiny)
    monkeypatch.setattr(stage, "SplicedModel", lambda loaded, saes: SplicedModel(loaded, saes, fast=False))
    eager = stage.find_circuit(config(tmp_path, specs), get_plugins(), loaded=tiny)
    assert [n.id for n in fast.nodes] == [n.id for n in eager.nodes]
    np.testing.assert_allclose([n.effect for n in fast.nodes], [n.effect for n in eager.nodes], **TOL)
    assert [(e.source, e.target) for e in fast.edges] == [(e.source, e.target) for e in eager.edges]
    np.testing.assert_allclose([e.weight for e in fast.edges], [e.weight for e in eager.edges], **TOL)
    exact = [(e.exact is None, e.opposite_sign) for e in fast.edges]
    assert exact == [(e.exact is None, e.opposite_sign) for e in eager.edges]
    np.testing.assert_allclose(
        [e.exact for e in fast.edges if e.exact is not None],
        [e.exact for e in eager.edges if e.exact is not None],
        **TOL,
    )
    assert_close([p.model_dump() for p in fast.curves], [p.model_dump() for p in eager.curves])
    assert_close(fast.reference, eager.reference)
    assert fast.exact_nodes.spearman == pytest.approx(eager.exact_nodes.spearman, abs=1e-9)
    assert fast.exact_edges.spearman == pytest.approx(eager.exact_edges.spearman, abs=1e-9)
    # the same backward passes; fewer forwards on the fast path (m(M) from the preparing pass,
    # conditions cut off at a resid site not run)
    assert fast.passes["backwards"] == eager.passes["backwards"]
    assert fast.passes["batched_backwards"] == eager.passes["batched_backwards"]
    assert fast.passes["forwards"] < eager.passes["forwards"]


def test_edge_batches_cut_from_the_selection_batches_give_the_edges_of_batches_made_at_that_size(
    both, examples
):
    """The edge pass runs on views of the selection batches (same width, the attribution's total
    gradients cut with them) instead of batches tokenised and differentiated again at its size."""
    model, _, _ = both[True]
    wide = model.prepare(examples, 8, None, 1)
    base = A.baseline_of(wide, "selection-mean")
    A.node_effects(model, wide, base)  # the attribution: total gradients kept on the wide batches
    parts = [part for cb in wide for part in cb.split(3)]
    narrow = model.prepare(examples, 3, None, 1)
    assert [p.example_indices for p in parts] == [n.example_indices for n in narrow]
    assert all(p.gradients is not None for p in parts)
    assert parts[1].batch.input_ids.shape[1] == wide[0].batch.input_ids.shape[1]  # the wide batch's width
    for part, fresh in zip(parts, narrow, strict=True):
        assert [x.example_id for x in part.layouts] == [x.example_id for x in fresh.layouts]
        torch.testing.assert_close(part.clean[0], fresh.clean[0], rtol=1e-5, atol=1e-5)
        scores, grads_f, _ = A.total_gradients(model, fresh)
        torch.testing.assert_close(part.gradients[0], scores, rtol=1e-5, atol=1e-5)
        width = fresh.batch.input_ids.shape[1]
        for g_part, g_fresh in zip(part.gradients[1], grads_f, strict=True):
            torch.testing.assert_close(g_part[:, :width], g_fresh, rtol=1e-4, atol=1e-6)
            assert not g_part[:, width:].any()  # padding gets no gradient
    effects = A.node_effects(model, wide, base)
    circuit = [
        sorted({*map(int, np.argsort(-np.abs(e))[:3]), model.sites[i].d_sae}) for i, e in enumerate(effects)
    ]
    from_parts = A.edge_weights(model, parts, base, circuit)
    from_fresh = A.edge_weights(model, narrow, base, circuit)
    assert from_parts.keys() == from_fresh.keys()
    for key, value in from_fresh.items():
        assert from_parts[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key


def test_a_site_keeping_every_node_is_left_unspliced_with_the_same_scores(both):
    """A condition leaves a site that keeps every node as the model computes it (no SAE pass) and
    starts at its first edited site: the same scores as splicing every site (the eager handler)."""
    model, batches, base = both[False]
    d_sae = [s.d_sae for s in model.sites]
    for circuit in ([(2, 3)], [(1, d_sae[1]), (2, 3)], [(1, 4)]):
        keep_f, keep_e = keep_masks(model, circuit)
        keep_f, keep_e = [~k for k in keep_f], [not k for k in keep_e]  # the complement condition
        assert keep_e[0] and bool(keep_f[0].all())  # site 0 keeps every node: left alone
        expected = []
        for cb in batches:

            def every_site(i, x, cb=cb, keep_f=keep_f, keep_e=keep_e):
                features, error = model.encode(i, x)
                patched = cb.mask[..., None] & ~keep_f[i]
                features = torch.where(patched, base.features[i], features)
                if not keep_e[i]:
                    error = torch.where(cb.mask[..., None], base.errors[i], error)
                return model.decode(i, features, error, x)

            expected.append(model.scores(cb, every_site)[0].numpy())
        got = scores_keeping(model, batches, base, circuit, complement=True)
        np.testing.assert_allclose(got, np.concatenate(expected), **TOL)
    fast, fb, fbase = both[True]
    np.testing.assert_allclose(
        scores_keeping(fast, fb, fbase, [(2, 3)], complement=True),
        scores_keeping(model, batches, base, [(2, 3)], complement=True),
        **TOL,
    )


def test_the_evaluation_in_one_wide_batch_gives_the_curves_of_narrow_batches(both, examples):
    """The held-out evaluation runs as few, wide forwards (stage.evaluation_batch_size): the same
    reference scores and curves as batches of 2 sequences."""
    model, batches, base = both[True]
    effects = A.node_effects(model, batches, base)
    everything = [(i, j) for i, s in enumerate(model.sites) for j in range(s.d_sae + 1)]
    ranked = sorted(everything, key=lambda n: -abs(effects[n[0]][n[1]]))
    boot = Bootstrap(len(examples), 50, 0)
    wide = model.prepare(examples, len(examples), None, 1)
    narrow = model.prepare(examples, 2, None, 1)
    assert len(wide) == 1 and len(narrow) == len(examples) // 2
    ref_w, points_w = curves(model, wide, base, ranked, [1, 4], 2, boot, 0)
    ref_n, points_n = curves(model, narrow, base, ranked, [1, 4], 2, boot, 0)
    assert_close(ref_w, ref_n)
    assert_close(points_w, points_n)


def test_the_evaluation_batch_fills_the_token_budget_and_never_shrinks_below_the_batch_size(tiny, examples):
    cfg = stage.CircuitConfig(batch_size=4)
    longest = max(len(s.input_ids) for s in stage.layout_examples(tiny.tokenizer, examples, None)[0])
    assert stage.evaluation_batch_size(cfg, tiny.tokenizer, examples) == stage.EVALUATION_TOKENS // longest
    big = stage.CircuitConfig(batch_size=10_000)
    assert stage.evaluation_batch_size(big, tiny.tokenizer, examples) == 10_000


def test_exact_node_checks_on_one_wide_batch_and_attribution_on_its_views_match_narrow_batches(
    both, examples
):
    """The selection is prepared in wide batches: the exact node checks run on them, the passes with
    gradients on --batch-size views of them (the wide width): the same effects as narrow batches."""
    model, _, _ = both[True]
    wide = model.prepare(examples, len(examples), None, 1)
    views = [part for cb in wide for part in cb.split(2)]
    narrow = model.prepare(examples, 2, None, 1)
    base = A.baseline_of(narrow, "selection-mean")
    for a, b in zip(A.baseline_of(views, "selection-mean").features, base.features, strict=True):
        torch.testing.assert_close(a, b)
    from_views, from_narrow = A.node_effects(model, views, base), A.node_effects(model, narrow, base)
    for a, b in zip(from_views, from_narrow, strict=True):
        np.testing.assert_allclose(a, b, **TOL)
    everything = [(i, j) for i, s in enumerate(model.sites) for j in range(s.d_sae + 1)]
    top = sorted(everything, key=lambda n: -abs(from_narrow[n[0]][n[1]]))[:5]
    np.testing.assert_allclose(
        exact_node_effects(model, wide, base, top), exact_node_effects(model, narrow, base, top), **TOL
    )
