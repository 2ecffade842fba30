"""How often the semantic cache serves a paraphrase, and how often it would serve a near-miss.

Reads bench/cache_eval_pairs.jsonl (query, cached query, label paraphrase|near_miss, kind), embeds
both sides with the cache's embedder, and decides each pair exactly as the plugin does: a hit when
the cosine similarity reaches the threshold and no guard refuses. Reports the paraphrase hit rate
and the false-hit rate on near-misses at the configured threshold (the plugin's default unless
--threshold), per kind, and which guard refused what.

    .venv/bin/python bench/cache_eval.py [--threshold 0.8] [--sweep] [--no-guards] [--show-errors] [--json]
                                         [--backend onnx|torch] [--output bench/results/cache_eval.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.text.embeddings import load_model  # noqa: E402
from plugins.semantic_cache.guards import GuardConfig, check, extract  # noqa: E402
from plugins.semantic_cache.plugin import Settings  # noqa: E402

PAIRS = Path(__file__).with_name("cache_eval_pairs.jsonl")
TARGET_FALSE_HIT = 0.01
TARGET_PARAPHRASE_HIT = 0.60


def load_pairs(path: Path = PAIRS) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def score_pairs(pairs: list[dict], model_path: str | None = None, backend: str | None = None) -> list[float]:
    """Cosine similarity of each pair, from the cache's own embedder (its default backend unless `backend`)."""
    model = load_model(model_path, backend=backend)
    queries = model.encode([p["query"] for p in pairs])
    cached = model.encode([p["cached"] for p in pairs])
    return [float(s) for s in (queries * cached).sum(axis=1)]


def evaluate(pairs: list[dict], similarities: list[float], threshold: float, guards: GuardConfig | None) -> dict:
    """Hit rates at `threshold`; `guards` None switches every guard off."""
    kinds: dict[str, Counter] = defaultdict(Counter)
    refused_by: Counter = Counter()
    errors = []
    for pair, similarity in zip(pairs, similarities):
        reason = None
        if similarity >= threshold and guards is not None:
            reason = check(extract(pair["query"], guards), extract(pair["cached"], guards), guards)
        hit = similarity >= threshold and reason is None
        kinds[pair["kind"]]["n"] += 1
        kinds[pair["kind"]]["hits"] += hit
        if reason and similarity >= threshold:
            refused_by[f"{pair['label']}:{reason}"] += 1
        if hit != (pair["label"] == "paraphrase"):
            errors.append({**pair, "similarity": round(similarity, 4), "refused_by": reason})
    paraphrases = [s for p, s in zip(pairs, similarities) if p["label"] == "paraphrase"]
    near = [s for p, s in zip(pairs, similarities) if p["label"] == "near_miss"]
    para_hits = kinds["paraphrase"]["hits"] if "paraphrase" in kinds else 0
    near_hits = sum(c["hits"] for k, c in kinds.items() if k != "paraphrase")
    return {
        "threshold": threshold,
        "guards": guards is not None,
        "pairs": len(pairs),
        "paraphrases": len(paraphrases),
        "near_misses": len(near),
        "paraphrase_hit_rate": para_hits / len(paraphrases) if paraphrases else None,
        "false_hit_rate": near_hits / len(near) if near else None,
        "false_hits": near_hits,
        "by_kind": {
            k: {"n": c["n"], "hits": c["hits"], "rate": round(c["hits"] / c["n"], 4)}
            for k, c in sorted(kinds.items())
            if c["n"]
        },
        "refused_by": dict(sorted(refused_by.items())),
        "near_miss_similarity_above_threshold": sum(s >= threshold for s in near),
        "errors": errors,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threshold", type=float, default=None, help="default: the plugin's configured default")
    parser.add_argument("--pairs", type=Path, default=PAIRS)
    parser.add_argument("--no-guards", action="store_true", help="the threshold alone")
    parser.add_argument("--sweep", action="store_true", help="rates at thresholds 0.60 to 0.95")
    parser.add_argument("--show-errors", action="store_true", help="list missed paraphrases and false hits")
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--backend",
        choices=("onnx", "torch"),
        default=None,
        help="the embedder (default: the plugin's configured default)",
    )
    parser.add_argument("--output", type=Path, default=None, help="also write the figures (no errors) as JSON here")
    args = parser.parse_args(argv)
    settings = Settings()
    threshold = settings.threshold if args.threshold is None else args.threshold
    guards = None if args.no_guards else settings.guards
    pairs = load_pairs(args.pairs)
    model = load_model(settings.model, backend=args.backend or settings.backend)
    similarities = score_pairs(pairs, settings.model, model.backend)
    result = evaluate(pairs, similarities, threshold, guards)
    result["backend"] = model.backend
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        figures = {k: v for k, v in result.items() if k != "errors"}
        figures["targets"] = {"false_hit_rate_max": TARGET_FALSE_HIT, "paraphrase_hit_rate_min": TARGET_PARAPHRASE_HIT}
        args.output.write_text(json.dumps(figures, indent=2) + "\n")
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k != "errors" or args.show_errors}, indent=2))
    else:
        print(
            f"{result['pairs']} pairs ({result['paraphrases']} paraphrases, {result['near_misses']} near-misses), "
            f"threshold {threshold}, guards {'on' if guards else 'off'}, {model.backend} embedder"
        )
        if result["paraphrases"]:
            print(f"paraphrase hit rate {result['paraphrase_hit_rate']:.1%} (target >= {TARGET_PARAPHRASE_HIT:.0%})")
        if result["near_misses"]:
            print(
                f"false-hit rate      {result['false_hit_rate']:.1%} ({result['false_hits']} pairs; "
                f"target <= {TARGET_FALSE_HIT:.0%}); {result['near_miss_similarity_above_threshold']} near-misses "
                "were above the threshold"
            )
        for kind, c in result["by_kind"].items():
            print(f"  {kind:<10} {c['hits']:>3}/{c['n']:<3} hit")
        print("refused by guard:", ", ".join(f"{k} {v}" for k, v in result["refused_by"].items()) or "none")
        if args.sweep:
            print("threshold  paraphrase-hit  false-hit  (guards %s)" % ("on" if guards else "off"))
            for t in [x / 100 for x in range(60, 96, 2)]:
                r = evaluate(pairs, similarities, t, guards)
                print(f"  {t:.2f}     {r['paraphrase_hit_rate'] or 0:6.1%}        {r['false_hit_rate'] or 0:6.1%}")
        if args.show_errors:
            for e in sorted(result["errors"], key=lambda e: (e["label"], -e["similarity"])):
                print(
                    f"  [{e['label']}/{e['kind']}] {e['similarity']:.3f} {e['refused_by'] or '-':<12} "
                    f"{e['query']!r} ~ {e['cached']!r}"
                )
    ok = (result["false_hit_rate"] or 0) <= TARGET_FALSE_HIT and (
        result["paraphrase_hit_rate"] is None or result["paraphrase_hit_rate"] >= TARGET_PARAPHRASE_HIT
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
