"""A corpus-trained SAE against the benchmark-trained SAE of the default run (issue 21, item 6).

    python bench/corpus_vs_benchmark.py corpus --data ../shared/data --out WORK/corpus.jsonl
    python bench/corpus_vs_benchmark.py pipeline --work WORK --tokens 2000000      # collect, train, ablate
    python bench/corpus_vs_benchmark.py table NAME=RUN/causal/results.json ...     # the comparison
    python bench/corpus_vs_benchmark.py stores --eval test.zarr SAE_DIR ...         # offline FVU only

`corpus` writes the local text corpus, one JSON line per document. What goes in (nothing of the
arithmetic benchmark, whose problems are generated, and no MATH500 row twice): GSM8K train
(question, then answer), MATH test without its MATH500 subset (problem, then solution), LogiQA eval
and test (context, question, the four options, the answer letter). The shared data has no MATH or
LogiQA train split. Documents are shuffled with a fixed seed, so any prefix of the file (what a
--tokens budget reads) mixes the three sources.

`pipeline` runs, in WORK, the three stages with the default run's settings for everything but the
data: `scircuits collect --corpus` (resid of block 15, float16, contexts of 128 tokens),
`scircuits train` (TopK, k 32, 2,304 latents, 1.2M tokens, the outliers rule with factor 10) and
`scircuits ablate` (160 test problems, top-k 1/5/20/50 against 20 matched controls, the gate on).
Every stage resumes or skips when rerun; a collection stopped early is trained on the rows it has
(train warns), and `table` reports the tokens it really holds.

`table` prints, for each study's results.json: the SAE's training data and tokens, and on the
study's arithmetic test tokens (positions >= 1, the SAE's token exclusion applied) FVU, FVU without
the massive dimensions, dead fraction, CE loss recovered, behaviour under the reconstruction alone,
then each study's top-k table. Not a test: the figures depend on the budgets.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# The default run's study settings (`scircuits run` with no flags; its pipeline.json).
LAYER, SITE = 15, "resid"
TRAIN_FLAGS = [
    "--sae", "topk", "--expansion", "4", "--lr", "0.001", "--batch-size", "4096",
    "--tokens", "1200000", "--eval-fraction", "0.05", "--exclude-tokens", "outliers",
    "--outlier-factor", "10",
]  # fmt: skip
ABLATE_FLAGS = [
    "--benchmark", "arithmetic", "--option", "n_examples=200", "--split", "test", "--limit", "160",
    "--ablation", "zero", "--rank", "attribution", "--top-k", "1,5,20,50", "--random-controls", "20",
    "--exact-top", "50", "--reconstruction-gate", "--seed", "0",
]  # fmt: skip


def gsm8k(data: Path) -> Iterator[tuple[str, str]]:
    with open(data / "gsm8k" / "train.jsonl", encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            yield "gsm8k/train", f"{row['question']}\n{row['answer']}"


def math_test(data: Path) -> Iterator[tuple[str, str]]:
    with open(data / "math" / "math500.jsonl", encoding="utf-8") as handle:
        subset = {json.loads(line)["problem"] for line in handle}
    with open(data / "math" / "test.jsonl", encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            if row["problem"] not in subset:
                yield "math/test-minus-math500", f"{row['problem']}\n{row['solution']}"


def logiqa(data: Path) -> Iterator[tuple[str, str]]:
    for name in ("eval.txt", "test.txt"):
        lines = (data / "logiqa" / name).read_text(encoding="utf-8").split("\n")
        for start in range(0, len(lines) - 7, 8):
            answer, context, question, *options = lines[start + 1 : start + 8]
            text = "\n".join([context, question, *options, f"Answer: {answer.strip().upper()}"])
            yield f"logiqa/{name.removesuffix('.txt')}", text


def documents(data: Path, seed: int = 0) -> list[tuple[str, str]]:
    docs = [*gsm8k(data), *math_test(data), *logiqa(data)]
    random.Random(seed).shuffle(docs)
    return docs


def write_corpus(data: Path, out: Path, seed: int = 0) -> dict[str, int]:
    docs = documents(data, seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as handle:
        for source, text in docs:
            handle.write(json.dumps({"text": text, "source": source}) + "\n")
    counts: dict[str, int] = {}
    for source, _ in docs:
        counts[source] = counts.get(source, 0) + 1
    return counts


def scircuits(*args: str) -> None:
    command = [str(Path(sys.executable).with_name("scircuits")), *args]
    print("$ " + " ".join(command), file=sys.stderr, flush=True)
    subprocess.run(command, check=True)


def pipeline(args: argparse.Namespace) -> None:
    work = Path(args.work)
    corpus, store, sae, study = work / "corpus.jsonl", work / "corpus.zarr", work / "sae", work / "causal"
    if not corpus.exists():
        write_corpus(Path(args.data), corpus)
    if "collect" in args.stages:
        scircuits(
            "collect", "--corpus", str(corpus), "--text-column", "text", "--context-size", "128",
            "--tokens", str(args.tokens), "--layer", str(LAYER), "--site", SITE, "--dtype", "float16",
            "--out", str(store), "--no-progress",
        )  # fmt: skip
    if "train" in args.stages:
        scircuits("train", "--store", str(store), "--out", str(sae), *TRAIN_FLAGS, "--no-progress")
    if "ablate" in args.stages:
        scircuits(
            "ablate", "--layer", str(LAYER), "--site", SITE, "--sae", str(sae), "--store", str(store),
            *ABLATE_FLAGS, "--out", str(study), "--no-progress",
        )  # fmt: skip


def training_data(results: dict[str, Any]) -> tuple[str, int | None, int | None]:
    """The SAE's training source, the tokens its store holds and the tokens it was trained on."""
    meta = json.loads((Path(results["config"]["sae"]) / "scircuits.json").read_text())
    attrs = (meta.get("store") or {}).get("attrs", {})
    source = attrs.get("data_source") or {}
    what = source.get("corpus") or f"{source.get('benchmark')} {source.get('split')}"
    return f"{source.get('kind')}: {Path(str(what)).name}", attrs.get("n_tokens"), meta.get("tokens")


def table(args: argparse.Namespace) -> None:
    from scircuits.platform.report.document import fmt, fmt_ci, md_table

    studies = {}
    for item in args.studies:
        name, _, path = item.partition("=")
        studies[name] = json.loads(Path(path).read_text())
    header = [
        "SAE", "trained on", "store tokens", "training tokens", "eval tokens", "FVU",
        "FVU, massive dims excluded", "dead fraction", "dead, training tokens", "CE loss recovered",
        "reconstruction alone: Δaccuracy", "Δlogprob", "gate",
    ]  # fmt: skip
    rows = []
    for name, r in studies.items():
        source, store_tokens, tokens = training_data(r)
        trained = r["provenance"]["sae"]["metrics"]
        m, rec, beh = r["sae_metrics_eval"], r["reconstruction"], r["behaviour"]
        rows.append([
            name, source, store_tokens, tokens, m["tokens"], fmt(m["fvu"]),
            f"{fmt(m['fvu_without_massive_dimensions'])} ({m['massive_dimensions']} dims)",
            fmt(m["dead_fraction"]), fmt(trained["dead_fraction"]), fmt(rec["ce_loss_recovered"]),
            f"{beh['accuracy_delta']:+.3f} {fmt_ci(beh['accuracy_ci'])}",
            f"{beh['logprob_delta']:+.3f} {fmt_ci(beh['logprob_ci'])}",
            "passed" if r["gate"]["passed"] else "refused",
        ])  # fmt: skip
    print(md_table(header, rows))
    for name, r in studies.items():
        print(f"\nTop-k zero ablations, {name} (80 held-out test problems; 20 matched controls):\n")
        header = [
            "k", "Δlogprob", "controls' mean", "top − control, paired", "p exact", "significant",
            "Δaccuracy", "first features",
        ]  # fmt: skip
        rows = []
        for s in r["sweeps"]:
            if s["ablation"] != r["config"]["ablation"]:
                continue
            test, diff = s["test_logprob"], s["test_logprob"]["difference"]
            rows.append([
                s["k"], f"{s['logprob_delta']:+.3f} {fmt_ci(s['logprob_ci'])}",
                f"{s['control']['logprob_delta']:+.3f}",
                f"{diff['mean']:+.3f} {fmt_ci([diff['low'], diff['high']])}", fmt(test["p_adjusted"]),
                test["significant"], f"{s['accuracy_delta']:+.3f} {fmt_ci(s['accuracy_ci'])}",
                s["features"][:5],
            ])  # fmt: skip
        print(md_table(header, rows))
        top = r["features"][0]
        print(f"\nrank 1: feature {top['id']}, firing on {top['frequency']:.3f} of tokens; faithfulness "
              + ", ".join(f"n={f['n']}: {f['value']:.3f}" for f in r["faithfulness"]))  # fmt: skip


def sources(args: argparse.Namespace) -> None:
    """Tokens per source in a corpus store: its contexts are packed again from the corpus file with
    the store's tokenizer, seed and context size, checked against the stored token ids, and each
    stream token (BOS and separators apart) is counted to the document it came from."""
    import numpy as np
    from transformers import AutoTokenizer

    from scircuits import cache_root
    from scircuits.platform.collect import corpus as packing
    from scircuits.store import ActivationStore

    store = ActivationStore(args.store)
    source = store.attrs["data_source"]
    folders = sorted((cache_root() / "models").glob("SmolLM2-135M-Instruct*"))
    tokenizer = AutoTokenizer.from_pretrained(folders[-1])
    spec = packing.CorpusSpec(source["corpus"], text_column=source["text_column"])
    origin = {}
    with open(source["corpus"], encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            origin[row["text"]] = row["source"]
    size, n_contexts = source["context_size"], store.n_tokens // source["context_size"]
    needed = n_contexts * (size - 1)
    counts: dict[str, int] = {}
    documents: dict[str, int] = {}
    stream: list[int] = []
    for text in packing.shuffled_documents(spec, source["seed"]):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if stream:
            stream.append(source["separator_token_id"])
        take = min(len(ids), needed - len(stream))
        stream.extend(ids[:take])
        counts[origin[text]] = counts.get(origin[text], 0) + take
        documents[origin[text]] = documents.get(origin[text], 0) + 1
        if len(stream) >= needed:
            break
    packed = np.array([[source["bos_token_id"], *stream[i * (size - 1) : (i + 1) * (size - 1)]]
                       for i in range(n_contexts)]).ravel()  # fmt: skip
    same = bool(np.array_equal(packed, store.token_ids[: n_contexts * size]))
    print(json.dumps({"store": args.store, "contexts": n_contexts, "tokens": store.n_tokens,
                      "token_ids_match_the_store": same, "tokens_by_source": counts,
                      "documents_by_source (the last one in part)": documents}, indent=2))  # fmt: skip


def stores(args: argparse.Namespace) -> None:
    """Each SAE on a store's tokens, as the study scores them: positions >= 1, the outliers rule of
    training applied to these rows (|x| > 10 x their median left out); FVU also without the massive
    dimensions (mean square > 100 x the median dimension's, the study's rule) and the dead fraction
    on these tokens."""
    import numpy as np
    import torch

    from scircuits.platform.manager.plugin_set import get_plugins
    from scircuits.platform.train.checkpoint import load_sae
    from scircuits.platform.train.exclusion import exclusion_from_norms, row_norms
    from scircuits.platform.train.metrics import ReconstructionStats
    from scircuits.store import ActivationStore

    store = ActivationStore(args.eval)
    norms, positions = row_norms(store)
    _, excluded = exclusion_from_norms(norms, positions, "outliers")
    keep_rows = positions >= 1
    keep_rows[excluded] = False
    x = store.read_rows(0, store.n_tokens)[keep_rows].astype(np.float64)
    square = (x**2).mean(axis=0)
    kept = square <= 100.0 * np.median(square)
    centred = x - x.mean(axis=0)
    results = {}
    for path in args.saes:
        sae, info = load_sae(path, get_plugins())
        stats = ReconstructionStats(d_sae=info["cfg"]["d_sae"])
        fired = torch.zeros(info["cfg"]["d_sae"], dtype=torch.bool)
        error = np.empty_like(x)
        with torch.no_grad():
            for start in range(0, x.shape[0], 4096):
                batch = torch.from_numpy(x[start : start + 4096]).float()
                acts = sae.encode(batch)
                x_hat = sae.decode(acts)
                stats.update(batch, x_hat, acts)
                fired |= (acts > 0).any(dim=0)
                error[start : start + 4096] = x[start : start + 4096] - x_hat.double().numpy()
        result = stats.result()
        result["fvu_without_massive_dimensions"] = float(
            (error[:, kept] ** 2).sum() / (centred[:, kept] ** 2).sum()
        )
        result["massive_dimensions"] = int((~kept).sum())
        result["dead_fraction_on_these_tokens"] = float(1 - fired.float().mean())
        results[path] = result
    print(json.dumps({"eval_store": args.eval, "eval_tokens": int(x.shape[0]), "results": results}, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("corpus", help="write the corpus file")
    p.add_argument("--data", default="../shared/data")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("pipeline", help="collect, train and ablate with the corpus")
    p.add_argument("--data", default="../shared/data")
    p.add_argument("--work", required=True)
    p.add_argument("--tokens", type=int, default=2_000_000)
    p.add_argument("--stages", default="collect,train,ablate")
    p = sub.add_parser("table", help="compare studies: NAME=PATH/results.json ...")
    p.add_argument("studies", nargs="+")
    p = sub.add_parser("sources", help="tokens per source in a corpus store (checked against it)")
    p.add_argument("store")
    p = sub.add_parser("stores", help="SAEs on a store's tokens, without the model")
    p.add_argument("saes", nargs="+")
    p.add_argument("--eval", required=True)
    args = parser.parse_args()
    if args.command == "corpus":
        print(json.dumps(write_corpus(Path(args.data), Path(args.out), args.seed)))
    elif args.command == "pipeline":
        pipeline(args)
    elif args.command == "table":
        table(args)
    elif args.command == "sources":
        sources(args)
    else:
        stores(args)


if __name__ == "__main__":
    main()
