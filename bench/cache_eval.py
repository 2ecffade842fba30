"""How often the semantic cache serves a paraphrase, and how often it serves a near-miss, on questions
it was tuned on (dev) and on questions it never saw (held-out), side by side.

Sets (one JSON object a line: query, cached, label paraphrase|near_miss, kind, domain):
- dev: bench/cache_eval_pairs.jsonl (the first set, 234 pairs, support and network operations) and
  bench/cache_dev_pairs.jsonl (360 pairs, ten domains, written apart from the code): the guards
  were tuned on these;
- held-out: bench/cache_heldout_pairs.jsonl (452 pairs, twelve domains), written blind, before any
  tuning, by someone who had not read the guards; never used to tune. Its first run (content guard
  as first written) is in bench/results/HISTORY.md;
- held-out-2: bench/cache_heldout2_pairs.jsonl (400 pairs, ten other domains), written blind after
  that run, by another writer, and run once on the code as it then stood.

Each pair is decided as the plugin decides it: a hit when the cosine similarity reaches the
threshold and no guard refuses. Modes:
- threshold: the similarity alone;
- word-guards: the guards without the content guard (the default before the content guard);
- default: every guard, as shipped;
- verifier (ceiling): the default with `verify` on and a judge that is always right: a candidate only
  the content guard refuses, or one below `verify.below`, is a hit exactly when it is a paraphrase.
  It bounds what a verifier can add; a real judge's mistakes on the near-misses it is asked about
  (`judged_near_misses`) add false hits.

    .venv/bin/python bench/cache_eval.py [--threshold 0.8] [--sweep] [--show-errors] [--pairs FILE]
                                         [--backend onnx|torch] [--output bench/results/cache_eval.json]

With --output, the sweep over thresholds is plotted (false-hit rate against paraphrase hit rate, dev
and held-out, per mode) next to the JSON as a PNG, and a Markdown table is written beside it.
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
from plugins.semantic_cache.plugin import Settings, Verify  # noqa: E402

HERE = Path(__file__).parent
PAIRS = HERE / "cache_eval_pairs.jsonl"
SETS = {
    "dev": [HERE / "cache_eval_pairs.jsonl", HERE / "cache_dev_pairs.jsonl"],
    "held-out": [HERE / "cache_heldout_pairs.jsonl"],
    "held-out-2": [HERE / "cache_heldout2_pairs.jsonl"],
}
MODES = ("threshold", "word-guards", "default", "verifier")
TARGET_FALSE_HIT = 0.01
TARGET_PARAPHRASE_HIT = 0.60
SWEEP = [round(0.5 + 0.02 * i, 2) for i in range(24)]


def load_pairs(*paths: Path) -> list[dict]:
    return [json.loads(line) for path in paths or (PAIRS,) for line in path.read_text().splitlines() if line.strip()]


def score_pairs(pairs: list[dict], model_path: str | None = None, backend: str | None = None) -> list[float]:
    """Cosine similarity of each pair, from the cache's own embedder (its default backend unless `backend`)."""
    model = load_model(model_path, backend=backend)
    queries = model.encode([p["query"] for p in pairs])
    cached = model.encode([p["cached"] for p in pairs])
    return [float(s) for s in (queries * cached).sum(axis=1)]


def refusals(pairs: list[dict], guards: GuardConfig | None) -> list[str | None]:
    """The guard that refuses each pair (None: no guard does); `guards` None: no guards at all."""
    if guards is None:
        return [None] * len(pairs)
    return [check(extract(p["query"], guards), extract(p["cached"], guards), guards) for p in pairs]


def evaluate(
    pairs: list[dict],
    similarities: list[float],
    threshold: float,
    guards: GuardConfig | None,
    verify: Verify | None = None,
    refused: list[str | None] | None = None,
) -> dict:
    """Hit rates at `threshold`; `guards` None switches every guard off; `verify` adds a judge that is
    always right (the ceiling of a verifier)."""
    refused = refusals(pairs, guards) if refused is None else refused
    kinds: dict[str, Counter] = defaultdict(Counter)
    refused_by: Counter = Counter()
    errors, judged = [], Counter()
    for pair, similarity, reason in zip(pairs, similarities, refused):
        paraphrase = pair["label"] == "paraphrase"
        above = similarity >= threshold
        if above and verify is not None and (reason == "content" or (reason is None and similarity < verify.below)):
            judged[pair["label"]] += 1
            reason = None if paraphrase else "judge"
        hit = above and reason is None
        kinds[pair["kind"]]["n"] += 1
        kinds[pair["kind"]]["hits"] += hit
        if reason and above:
            refused_by[f"{pair['label']}:{reason}"] += 1
        if hit != paraphrase:
            errors.append({**pair, "similarity": round(similarity, 4), "refused_by": reason if above else "threshold"})
    n_para = sum(p["label"] == "paraphrase" for p in pairs)
    n_near = len(pairs) - n_para
    para_hits = kinds["paraphrase"]["hits"] if "paraphrase" in kinds else 0
    near_hits = sum(c["hits"] for k, c in kinds.items() if k != "paraphrase")
    return {
        "threshold": threshold,
        "pairs": len(pairs),
        "paraphrases": n_para,
        "near_misses": n_near,
        "paraphrase_hit_rate": para_hits / n_para if n_para else None,
        "false_hit_rate": near_hits / n_near if n_near else None,
        "false_hits": near_hits,
        "judged_paraphrases": judged["paraphrase"],
        "judged_near_misses": judged["near_miss"],
        "by_kind": {
            k: {"n": c["n"], "hits": c["hits"], "rate": round(c["hits"] / c["n"], 4)}
            for k, c in sorted(kinds.items())
            if c["n"]
        },
        "refused_by": dict(sorted(refused_by.items())),
        "errors": errors,
    }


def mode_settings(mode: str, settings: Settings) -> tuple[GuardConfig | None, Verify | None]:
    if mode == "threshold":
        return None, None
    if mode == "word-guards":
        return settings.guards.model_copy(update={"content": False}), None
    verify = Verify(backend="judge") if mode == "verifier" else None
    return settings.guards, verify


def run(sets: dict[str, list[Path]], settings: Settings, threshold: float, backend: str | None) -> dict:
    """Per set and mode: the figures at `threshold` and the sweep."""
    out: dict = {}
    for name, paths in sets.items():
        pairs = load_pairs(*paths)
        similarities = score_pairs(pairs, settings.model, backend)
        out[name] = {"files": [p.name for p in paths], "modes": {}}
        for mode in MODES:
            guards, verify = mode_settings(mode, settings)
            refused = refusals(pairs, guards)
            at = evaluate(pairs, similarities, threshold, guards, verify, refused)
            sweep = [
                {k: r[k] for k in ("threshold", "paraphrase_hit_rate", "false_hit_rate", "judged_near_misses")}
                for r in (evaluate(pairs, similarities, t, guards, verify, refused) for t in SWEEP)
            ]
            out[name]["modes"][mode] = {**at, "sweep": sweep}
    return out


def markdown(result: dict, threshold: float) -> str:
    lines = [
        f"# Semantic cache decisions, threshold {threshold}",
        "",
        "| mode | set | pairs | paraphrase hits | false hits | near-misses a verifier is asked about |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for mode in MODES:
        for name, figures in result.items():
            r = figures["modes"][mode]
            judged = r["judged_near_misses"] if mode == "verifier" else "-"
            lines.append(
                f"| {mode} | {name} | {r['pairs']} | {r['paraphrase_hit_rate']:.1%} | "
                f"{r['false_hit_rate']:.1%} ({r['false_hits']}) | {judged} |"
            )
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(result), figsize=(6 * len(result), 5), sharey=True)
    for ax, (name, figures) in zip(axes if len(result) > 1 else [axes], result.items()):
        for mode in MODES:
            sweep = figures["modes"][mode]["sweep"]
            ax.plot(
                [s["false_hit_rate"] * 100 for s in sweep],
                [s["paraphrase_hit_rate"] * 100 for s in sweep],
                marker=".",
                label=mode,
            )
        ax.axvline(TARGET_FALSE_HIT * 100, color="grey", linestyle=":", linewidth=1)
        ax.axhline(TARGET_PARAPHRASE_HIT * 100, color="grey", linestyle=":", linewidth=1)
        ax.set_title(f"{name} ({figures['modes']['default']['pairs']} pairs)")
        ax.set_xlabel("false-hit rate on near-misses (%)")
        ax.set_xlim(left=-1)
        ax.grid(alpha=0.3)
    (axes[0] if len(result) > 1 else axes).set_ylabel("paraphrase hit rate (%)")
    (axes[0] if len(result) > 1 else axes).legend(title="thresholds 0.50 to 0.96")
    fig.suptitle("Semantic cache: paraphrase hits against false hits over the threshold")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threshold", type=float, default=None, help="default: the plugin's configured default")
    parser.add_argument("--pairs", type=Path, action="append", help="evaluate these files only (as one set)")
    parser.add_argument("--show-errors", action="store_true", help="list missed paraphrases and false hits")
    parser.add_argument("--sweep", action="store_true", help="print the rates at each threshold")
    parser.add_argument("--backend", choices=("onnx", "torch"), default=None, help="the embedder")
    parser.add_argument("--output", type=Path, default=None, help="write the figures as JSON (and .md, .png)")
    args = parser.parse_args(argv)
    settings = Settings()
    threshold = settings.threshold if args.threshold is None else args.threshold
    sets = {"given": args.pairs} if args.pairs else SETS
    backend = load_model(settings.model, backend=args.backend or settings.backend).backend
    result = run(sets, settings, threshold, backend)
    print(markdown(result, threshold))
    for name, figures in result.items():
        if args.sweep:
            print(f"{name}: threshold  " + "  ".join(f"{m:>18}" for m in MODES) + "   (paraphrase hit / false hit)")
            for i, t in enumerate(SWEEP):
                cells = [figures["modes"][m]["sweep"][i] for m in MODES]
                row = "  ".join(f"{c['paraphrase_hit_rate']:8.1%} /{c['false_hit_rate']:6.1%}  " for c in cells)
                print(f"  {t:.2f}       {row}")
        if args.show_errors:
            for e in sorted(figures["modes"]["default"]["errors"], key=lambda e: (e["label"], -e["similarity"])):
                print(
                    f"  [{name} {e['label']}/{e['kind']}] {e['similarity']:.3f} {e['refused_by'] or '-':<12} "
                    f"{e['query']!r} ~ {e['cached']!r}"
                )
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        figures = {
            "threshold": threshold,
            "backend": backend,
            "targets": {"false_hit_rate_max": TARGET_FALSE_HIT, "paraphrase_hit_rate_min": TARGET_PARAPHRASE_HIT},
            "sets": {
                name: {
                    "files": f["files"],
                    "modes": {m: {k: v for k, v in r.items() if k != "errors"} for m, r in f["modes"].items()},
                }
                for name, f in result.items()
            },
        }
        args.output.write_text(json.dumps(figures, indent=2) + "\n")
        args.output.with_suffix(".md").write_text(markdown(result, threshold))
        plot(result, args.output.with_suffix(".png"))
    default = [f["modes"]["default"] for f in result.values()]
    return 0 if all((r["false_hit_rate"] or 0) <= TARGET_FALSE_HIT for r in default) else 1


if __name__ == "__main__":
    sys.exit(main())
