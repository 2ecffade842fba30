"""How much latency, CPU and memory llmgate adds to an LLM call, measured against its peers in one run.

One fixed-latency fake upstream (bench/upstream.py, 50 ms by default, streaming too) is shared by
every system, each run as its own process on this machine: the upstream direct, a minimal aiohttp
forwarder (the floor for a Python proxy), llmgate with plugins off, llmgate with rollout + shadow
+ traffic log on, llmgate with the semantic cache (miss and hit) and the LiteLLM proxy (pinned, in
its own venv: bench/setup_litellm.sh; skipped with the reason when it is not installed).

For each system, after a warm-up: a sequential run (one request at a time, JSON and stream),
open-loop runs at each pinned rate (bench/loadgen.py: sends on schedule whatever the answers do;
--repeats runs a rate, interleaved with the other rates, and reports each figure's median; the
targets' system and rate get --target-repeats runs),
an open-loop stream run (time to first token), and a search for the highest rate it sustains
(achieved within a few % of offered, errors under --max-error-rate). Between runs the harness waits
until the system is quiet (under 5% of a core), so work a run queued (shadow calls, log writes after
an overload) is not charged to the next one. CPU time and RSS of the system's processes are sampled
throughout. Then a memory soak (RSS over --soak seconds at a
constant rate) and a py-spy profile of one system under load.

Added latency is measured in pairs: each open-loop run of a system (pinned rates and the stream run)
comes right after a run of the upstream direct at the same rate, and a figure is the median over
the runs of the difference within each pair. Over the hour a run takes, the shared machine's own
tail drifts by more than a gateway adds (the direct p99 at 300 RPS has moved from 56 to 78 ms
between runs); a pair's two runs are seconds apart. Where the targets judge (their system at their
rate) a second direct run follows each system run, and what it adds over the first, the direct
against itself, is the resolution the report gives beside the verdict.

Writes <output-dir>/<name>.json, <name>.md (tables, targets, profile) and <name>.png (overhead
against rate). A smoke run:

    .venv/bin/python bench/overhead.py --duration 5 --rates 50,100 --soak 20 --no-search \
        --output-dir /tmp/bench-smoke
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import loadgen  # noqa: E402
import profiling  # noqa: E402
import report  # noqa: E402
from systems import (  # noqa: E402
    LITELLM_PIN,
    SYSTEMS,
    ResourceMonitor,
    Running,
    System,
    Unavailable,
    chat,
    cpu_description,
    machine_jiffies,
    machine_share,
    start_system,
    start_upstream,
    wait_quiet,
)

LATENCY_KEYS = ("latency_ms", "ttft_ms")
ACHIEVED_SHARE = 0.97  # a rate is sustained when at least this share of it is achieved ...
# Before the soak: auto-rollback keeps each variant's per-second counters for its retention (the
# rollback window, 300 s by default, and a minute), so what it holds grows with time until then.
SOAK_WARMUP = 360.0


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Bench:
    """Runs the measurements of one system at a time against the shared upstream.

    After a run that the system did not sustain, it may still be working through a backlog (a
    server that does not cancel the work of callers who gave up); the next run starts only once it
    answers promptly again (`recover`), else on a fresh process, so one overload does not spill
    into the next figure.
    """

    def __init__(self, args: argparse.Namespace, upstream: str, workdir: Path):
        self.args = args
        self.upstream = upstream
        self.workdir = workdir
        self.direct = start_system(SYSTEMS["direct"], upstream, workdir)
        self.running: Running | None = None
        self.restarts: list[dict] = []
        self.peak_rss_mb: float | None = None
        self.dialect = "chat"  # the API the load speaks (loadgen.DIALECTS)

    def spec(
        self, system: System, rate: float, duration: float, stream: bool = False, target: Running | None = None
    ) -> loadgen.LoadSpec:
        target = target or self.running
        workers = max(1, math.ceil(rate / self.args.rate_per_worker))
        return loadgen.LoadSpec(
            url=target.url,
            rate=rate,
            duration=duration,
            stream=stream,
            unique_prompts=system.unique_prompts,
            workers=workers,
            timeout=self.args.timeout,
            headers={"Authorization": f"Bearer {target.api_key}"},
            dialect=self.dialect,
        )

    def paired(
        self, system: System, rate: float, duration: float, stream: bool = False, direct_again: bool = False
    ) -> dict:
        """An open-loop run of `system` right after one of the upstream direct with the same load; the run's
        summary carries what it added over that direct run (`added`, by latency and time to first token).

        With `direct_again`, a second direct run follows the system's, and `direct_drift` is what it
        added over the first: the direct against itself, the resolution of this pair on this machine."""
        if system.kind == "direct":
            return self.open_loop(system, rate, duration, stream)
        spec = self.spec(system, rate, duration, stream, target=self.direct)
        direct = self.load(spec)
        time.sleep(self.args.pause)
        summary = self.open_loop(system, rate, duration, stream)
        summary["paired_direct"] = run_digest(direct)
        summary["added"] = differences(summary, direct)
        if direct_again:
            time.sleep(self.args.pause)
            again = self.load(spec)
            summary["direct_again"] = run_digest(again)
            summary["direct_drift"] = differences(again, direct)
        return summary

    def load(self, spec: loadgen.LoadSpec) -> dict:
        """One open-loop run's summary, with how busy the whole machine was meanwhile (`machine`)."""
        before = machine_jiffies()
        summary = loadgen.summarize(loadgen.open_loop(spec), spec.rate, spec.duration)
        if (shares := machine_share(before, machine_jiffies())) is not None:
            summary["machine"] = shares
        return summary

    def open_loop(
        self, system: System, rate: float, duration: float, stream: bool = False, may_restart: bool = True
    ) -> dict:
        spec = self.spec(system, rate, duration, stream)
        monitor = ResourceMonitor(self.running.process).start()
        summary = self.load(spec)
        resources = monitor.stop()
        summary["loadgen_workers"] = spec.workers
        if resources is not None:
            resources["cpu_percent"] = round(100 * resources["cpu_seconds"] / duration, 1)
            resources["cpu_ms_per_request"] = round(1000 * resources["cpu_seconds"] / max(1, summary["ok"]), 3)
            summary["resources"] = resources
        self.recover(system, clean=self.sustained(summary), may_restart=may_restart)
        return summary

    def sustained(self, summary: dict) -> bool:
        return (
            summary["error_rate"] is not None
            and summary["error_rate"] < self.args.max_error_rate
            and summary["achieved_rps"] >= ACHIEVED_SHARE * summary["offered_rps"]
        )

    def start(self, system: System) -> None:
        self.running = start_system(system, self.upstream, self.workdir)

    def stop(self) -> None:
        if self.running is not None:
            if self.running.process is not None:
                peak = self.running.process.peak_rss_mb()
                if peak is not None:
                    self.peak_rss_mb = max(peak, self.peak_rss_mb or 0)
            self.running.stop()
            self.running = None

    def recover(self, system: System, clean: bool, may_restart: bool = True) -> None:
        """Pause; after an overload, wait until 3 answers in a row come promptly, else restart the system."""
        time.sleep(self.args.pause)
        if self.running.process is None:
            return
        if clean:
            self.quiet(system)
            return
        prompt = self.args.latency + 1.0
        deadline = time.monotonic() + self.args.settle_timeout
        in_a_row = 0
        while time.monotonic() < deadline and in_a_row < 3:
            began = time.monotonic()
            try:
                status, _ = chat(self.running.url, api_key=self.running.api_key, timeout=self.args.timeout)
            except OSError:
                status = 0
            in_a_row = in_a_row + 1 if status == 200 and time.monotonic() - began < prompt else 0
            if in_a_row == 0:
                time.sleep(0.5)
        if in_a_row >= 3 or not may_restart:
            self.quiet(system)
            return
        log(f"  {system.name} still had a backlog after {self.args.settle_timeout:g}s: restarting it")
        self.restarts.append({"system": system.name, "at": time.strftime("%H:%M:%S")})
        self.stop()
        self.start(system)
        self.warm_up(system)

    def quiet(self, system: System) -> None:
        """Wait until the system has worked off what the last run left (shadow calls, log writes queued)."""
        took = wait_quiet(self.running.process, self.args.quiet_timeout)
        if took is None:
            log(f"  {system.name} still busy {self.args.quiet_timeout:g}s after the run: measuring on")
        elif took > 2:
            log(f"  {system.name} was busy {took:.0f}s after the run")

    def search_max(self, system: System, passed: list[float]) -> dict:
        """The highest rate sustained: grow by --search-factor from the best pinned rate, then bisect."""
        args = self.args
        probes = []

        def probe(rate: float) -> bool:
            rate = round(rate)
            summary = self.open_loop(system, rate, args.search_duration)
            ok = self.sustained(summary)
            probes.append(
                {
                    "rate": rate,
                    "sustained": ok,
                    "achieved_rps": summary["achieved_rps"],
                    "errors": summary["errors"],
                    "error_rate": summary["error_rate"],
                    "latency_ms": summary["latency_ms"],
                    "resources": summary.get("resources"),
                }
            )
            log(
                f"  search {system.name} {rate} rps: {'sustained' if ok else 'not sustained'} "
                f"(achieved {summary['achieved_rps']}, errors {summary['errors']})"
            )
            return ok

        low = max(passed) if passed else None
        high = None
        if low is None:  # not even the lowest pinned rate: look below it
            rate = min(args.rates) / 2
            while rate >= 5 and not probe(rate):
                high, rate = rate, rate / 2
            low = rate if rate >= 5 else None
            if low is None:
                return {"rate": 0, "probes": probes}
        while high is None:
            rate = low * args.search_factor
            if rate > args.max_rate:
                break
            if probe(rate):
                low = rate
            else:
                high = rate
        for _ in range(args.search_steps if high is not None else 0):
            middle = (low + high) / 2
            if probe(middle):
                low = middle
            else:
                high = middle
        best = next((p for p in probes if p["rate"] == round(low)), None)
        return {
            "rate": round(low),
            "errors": best["errors"] if best else 0,
            "capped_at_max_rate": high is None,
            "probes": probes,
        }

    def warm_up(self, system: System) -> dict:
        """Warm connections, code paths and (for the cache-hit system) the cache; check the cache header.

        At half the lowest pinned rate, so that a system that cannot take even that still gets warm.
        """
        self.open_loop(system, min(self.args.rates) / 2, self.args.warmup, may_restart=False)
        found = {}
        if system.expect_cache:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                prompt = f"a question never asked before {time.time_ns()}" if system.unique_prompts else None
                status, headers = chat(
                    self.running.url, prompt=prompt or loadgen.LoadSpec.prompt, api_key=self.running.api_key
                )
                found = {"status": status, "x-llmgate-cache": headers.get("x-llmgate-cache")}
                if found["x-llmgate-cache"] == system.expect_cache:
                    break
                time.sleep(0.5)
            if found.get("x-llmgate-cache") != system.expect_cache:
                raise Unavailable(f"{system.name}: expected x-llmgate-cache {system.expect_cache}, got {found}")
        return found

    def measure(self, system: System) -> dict:
        args = self.args
        result: dict = {"label": system.label, "kind": system.kind}
        log(f"{system.name}: starting")
        started = time.monotonic()
        self.restarts, self.peak_rss_mb = [], None
        self.start(system)
        result["start_seconds"] = round(time.monotonic() - started, 1)
        try:
            result["cache_probe"] = self.warm_up(system)
            if args.sequential:
                one = self.spec(system, 1, 1)
                result["sequential"] = loadgen.summarize(loadgen.sequential(one, args.sequential), None, None)
                one.stream = True
                result["sequential_stream"] = loadgen.summarize(loadgen.sequential(one, args.sequential), None, None)
                log(f"  {system.name} sequential: p50 {(result['sequential']['latency_ms'] or {}).get('p50')} ms")
            runs: dict[float, list[dict]] = {rate: [] for rate in args.rates}
            for rate in pinned_schedule(args, system.name):
                if runs[rate] and not self.sustained(runs[rate][0]):
                    continue  # it falls behind at this rate: one run says so
                summary = self.paired(system, rate, args.duration, direct_again=judged(system.name, rate))
                runs[rate].append(summary)
                lat = summary["latency_ms"] or {}
                added = (summary.get("added") or {}).get("latency_ms")
                drift = (summary.get("direct_drift") or {}).get("latency_ms")
                log(
                    f"  {system.name} {rate:g} rps: achieved {summary['achieved_rps']}, errors "
                    f"{summary['errors']}, p50 {lat.get('p50')} p99 {lat.get('p99')} ms"
                    + (f" ({added['p50']:+} / {added['p99']:+} ms over the direct run before)" if added else "")
                    + (f" (the direct after: {drift['p50']:+} / {drift['p99']:+})" if drift else "")
                    + f", cpu {(summary.get('resources') or {}).get('cpu_percent')}%"
                    + f", machine {(summary.get('machine') or {}).get('busy_percent')}% busy"
                )
            result["rates"] = [median_of_runs(runs[rate]) for rate in args.rates]
            if args.stream_rate:
                result["stream"] = self.paired(system, args.stream_rate, args.duration, stream=True)
                log(
                    f"  {system.name} stream {args.stream_rate:g} rps: ttft p50 "
                    f"{(result['stream']['ttft_ms'] or {}).get('p50')} ms"
                )
            if args.search:
                passed = [s["offered_rps"] for s in result["rates"] if self.sustained(s)]
                result["max_sustained"] = self.search_max(system, passed)
            if args.profile == system.name:
                result["profile"] = self.profile(system)
        finally:
            self.stop()
        result["peak_rss_mb"] = self.peak_rss_mb
        result["restarts"] = self.restarts
        log(f"{system.name}: done in {time.monotonic() - started:.0f}s")
        return result

    def profile(self, system: System) -> dict | None:
        """py-spy over the process while it serves --profile-rate; a run of its own, not in the figures."""
        process = self.running.process
        if process is None:
            return None
        args = self.args
        output = self.workdir / f"profile-{system.name}.txt"
        spy = profiling.record(process.pid, args.profile_seconds, output, subprocesses=system.kind == "litellm")
        time.sleep(1.0)  # py-spy attaches
        summary = self.open_loop(system, args.profile_rate, args.profile_seconds)
        _, errors = spy.communicate(timeout=args.profile_seconds + 60)
        if not output.exists():
            log(f"  profile of {system.name} failed: {errors.decode(errors='replace')[-500:]}")
            return {"error": errors.decode(errors="replace")[-500:]}
        collapsed = Path(args.output_dir) / f"{args.name}_profile_{system.name}.collapsed.txt"
        shutil.copyfile(output, collapsed)
        result = profiling.summarize(output)
        result.update(
            {
                "system": system.name,
                "rate": args.profile_rate,
                "seconds": args.profile_seconds,
                "cpu_percent": (summary.get("resources") or {}).get("cpu_percent"),
                "collapsed_stacks": str(collapsed),
                "latency_ms": summary["latency_ms"],
            }
        )
        log(f"  profile of {system.name}: {result['samples']} samples, stacks in {collapsed}")
        return result

    def soak(self, system: System) -> dict:
        """RSS over a long constant-rate run; growth compares the first and last tenths of the run.

        The run starts after `--soak-warmup` seconds of the same load, as soak tests do: what the
        gateway allocates once (connections, buffers, caches sized to the traffic, and the bounded
        windows auto-rollback keeps, which fill for SOAK_WARMUP) is its working set, not growth. The
        RSS before any load and at the end of the warm-up are reported beside it."""
        args = self.args
        log(f"soak {system.name}: {args.soak_rate} rps for {args.soak}s")
        if system.kind == "direct":
            raise Unavailable("the upstream direct has no process of its own to watch")
        self.peak_rss_mb = None
        self.start(system)
        try:
            rss_at_start = round(self.running.process.rss_mb(), 1)
            self.warm_up(system)
            if args.soak_warmup:
                loadgen.open_loop(self.spec(system, args.soak_rate, args.soak_warmup))
            rss_after_warmup = round(self.running.process.rss_mb(), 1)
            spec = self.spec(system, args.soak_rate, args.soak)
            monitor = ResourceMonitor(self.running.process, interval=1.0).start()
            samples = loadgen.open_loop(spec)
            resources = monitor.stop()
        finally:
            self.stop()
        peak = self.peak_rss_mb
        series = monitor.rss_series
        tenth = max(1, len(series) // 10)
        first = sum(mb for _, mb in series[:tenth]) / tenth
        last = sum(mb for _, mb in series[-tenth:]) / tenth
        summary = loadgen.summarize(samples, args.soak_rate, args.soak)
        step = max(1, len(series) // 300)
        return {
            "rate": args.soak_rate,
            "seconds": args.soak,
            "warmup_seconds": args.soak_warmup,
            "rss_at_start_mb": rss_at_start,
            "rss_after_warmup_mb": rss_after_warmup,
            "rss_first_tenth_mb": round(first, 1),
            "rss_last_tenth_mb": round(last, 1),
            "growth_percent": round(100 * (last - first) / first, 2),
            "peak_rss_mb": peak,
            "resources": resources,
            "summary": summary,
            "rss_series": series[::step],
        }


def judged(system_name: str, rate: float) -> bool:
    """Whether the targets judge this system at this rate: its pairs also measure the direct against itself."""
    return system_name == report.TARGET_SYSTEM and rate == report.TARGET_RATE


def differences(summary: dict, direct: dict) -> dict:
    """What `summary` added over `direct`, by latency and time to first token (where both have it)."""
    return {key: added for key in LATENCY_KEYS if (added := report.difference(summary, direct, key)) is not None}


def pinned_schedule(args: argparse.Namespace, system_name: str) -> list[float]:
    """The pinned rates in the order a system runs them: --repeats rounds over the rates, then, for the
    system the targets judge, more runs at the target rate up to --target-repeats: its verdict rests on a
    p99 that moves by about 10 ms from one pair to the next on a shared 2-core machine."""
    order = [rate for _ in range(args.repeats) for rate in args.rates]
    if report.TARGET_RATE in args.rates and judged(system_name, report.TARGET_RATE):
        order += [report.TARGET_RATE] * max(0, args.target_repeats - args.repeats)
    return order


def median_of_runs(runs: list[dict]) -> dict:
    """One pinned rate's figures from its repeated runs: each latency percentile's median (a stall of the
    shared machine moves one run, not the median), errors summed, the lowest achieved rate, the median
    CPU; each run's own p50 and p99 are kept under `runs`."""
    if len(runs) == 1:
        return {**runs[0], "runs": [run_digest(runs[0])]}
    combined = {
        "requests": sum(r["requests"] for r in runs),
        "ok": sum(r["ok"] for r in runs),
        "errors": sum(r["errors"] for r in runs),
        "outcomes": {},
        "offered_rps": runs[0]["offered_rps"],
        "achieved_rps": min(r["achieved_rps"] for r in runs),
        "loadgen_workers": runs[0].get("loadgen_workers"),
    }
    combined["error_rate"] = round(combined["errors"] / combined["requests"], 6) if combined["requests"] else None
    for run in runs:
        for outcome, count in run["outcomes"].items():
            combined["outcomes"][outcome] = combined["outcomes"].get(outcome, 0) + count
    for key in (*LATENCY_KEYS, "send_lag_ms"):
        present = [r[key] for r in runs if r.get(key)]
        combined[key] = (
            {
                q: (
                    sum(p[q] for p in present)
                    if q == "n"
                    else max(p[q] for p in present)
                    if q == "max"
                    else round(statistics.median(p[q] for p in present), 3)
                )
                for q in present[0]
            }
            if present
            else None
        )
    for field in ("added", "direct_drift"):  # the median of the differences within pairs, not a difference of medians
        found = {key: [r[field][key] for r in runs if key in r.get(field, {})] for key in LATENCY_KEYS}
        if any(found.values()):
            combined[field] = {
                key: {q: round(statistics.median(a[q] for a in pairs), 3) for q in report.PERCENTILES}
                for key, pairs in found.items()
                if pairs
            }
    resources = [r["resources"] for r in runs if r.get("resources")]
    if resources:
        combined["resources"] = {
            k: (
                round(statistics.median(x[k] for x in resources), 3)
                if k.startswith("cpu")
                else max(x[k] for x in resources)
            )
            for k in resources[0]
        }
    combined["runs"] = [run_digest(r) for r in runs]
    return combined


def run_digest(run: dict) -> dict:
    lat = run.get("latency_ms") or {}
    digest = {
        "p50": lat.get("p50"),
        "p99": lat.get("p99"),
        "errors": run["errors"],
        "achieved_rps": run["achieved_rps"],
    }
    for field in ("added", "direct_drift"):
        if "latency_ms" in run.get(field, {}):
            digest[field] = {q: run[field]["latency_ms"][q] for q in ("p50", "p99")}
    if run.get("machine"):
        digest["machine"] = run["machine"]
    return digest


def machine() -> dict:
    load = os.getloadavg()
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "cpu": cpu_description(),
        "load_average_at_start": [round(x, 2) for x in load],
        "litellm_pin": LITELLM_PIN,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    rates = lambda text: [float(r) for r in text.split(",") if r]  # noqa: E731
    parser.add_argument(
        "--systems",
        default=",".join(SYSTEMS),
        help=f"comma-separated, from: {', '.join(SYSTEMS)} (direct always runs first)",
    )
    parser.add_argument("--rates", type=rates, default=[100, 300, 600], help="pinned open-loop rates (RPS)")
    parser.add_argument("--duration", type=float, default=20, help="seconds of each measured run")
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="runs at each pinned rate, interleaved across the rates; figures are their medians",
    )
    parser.add_argument(
        "--target-repeats",
        type=int,
        default=7,
        help=f"runs of {report.TARGET_SYSTEM} at {report.TARGET_RATE} RPS, the targets' rate "
        "(the extra ones after the others)",
    )
    parser.add_argument("--warmup", type=float, default=3, help="seconds of load before measuring a system")
    parser.add_argument("--sequential", type=int, default=200, help="requests of the one-at-a-time runs (0: skip)")
    parser.add_argument("--stream-rate", type=float, default=100, help="rate of the streamed run (0: skip)")
    parser.add_argument(
        "--search",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="search each system's highest sustained rate",
    )
    parser.add_argument("--search-duration", type=float, default=10, help="seconds of each search probe")
    parser.add_argument("--search-factor", type=float, default=1.5)
    parser.add_argument("--search-steps", type=int, default=3, help="bisection steps after the first failure")
    parser.add_argument("--max-rate", type=float, default=5000)
    parser.add_argument("--max-error-rate", type=float, default=0.001, help="errors allowed at a sustained rate")
    parser.add_argument("--soak", type=float, default=600, help="seconds of the memory soak (0: skip)")
    parser.add_argument("--soak-rate", type=float, default=300)
    parser.add_argument(
        "--soak-warmup", type=float, default=SOAK_WARMUP, help="seconds of the same load before the soak"
    )
    parser.add_argument("--soak-systems", default="llmgate-full")
    parser.add_argument("--profile", default="llmgate-full", help="system to profile with py-spy ('' : none)")
    parser.add_argument("--profile-rate", type=float, default=300)
    parser.add_argument("--profile-seconds", type=float, default=15)
    parser.add_argument("--latency", type=float, default=0.05, help="the upstream's fixed latency (seconds)")
    parser.add_argument("--chunks", type=int, default=8, help="streamed chunks after the first token")
    parser.add_argument("--chunk-interval", type=float, default=0.002)
    parser.add_argument("--timeout", type=float, default=15, help="a request slower than this is an error")
    parser.add_argument("--rate-per-worker", type=float, default=1000, help="rate one generator process sends")
    parser.add_argument("--pause", type=float, default=1.0, help="seconds between runs, to let queues drain")
    parser.add_argument(
        "--settle-timeout",
        type=float,
        default=60,
        help="after an overload, seconds to wait for prompt answers before restarting the system",
    )
    parser.add_argument(
        "--quiet-timeout",
        type=float,
        default=20,
        help="after a run, seconds to wait for the system to go idle (under 5%% of a core)",
    )
    parser.add_argument("--output-dir", default=str(Path(__file__).resolve().parent / "results"))
    parser.add_argument("--name", default="overhead", help="file name stem of the results")
    parser.add_argument("--note", default="", help="a line for the report (e.g. 'busy machine')")
    args = parser.parse_args(argv)
    names = [n for n in args.systems.split(",") if n]
    unknown = sorted(set(names) - set(SYSTEMS))
    if unknown:
        parser.error(f"unknown systems: {', '.join(unknown)} (known: {', '.join(SYSTEMS)})")
    args.system_names = ["direct", *[n for n in names if n != "direct"]]
    args.soak_names = [n for n in args.soak_systems.split(",") if n]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {
        "meta": {
            **machine(),
            "args": {k: v for k, v in vars(args).items()},
            "note": args.note,
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        },
        "systems": {},
        "soak": {},
        "skipped": {},
    }
    workdir = Path(tempfile.mkdtemp(prefix="llmgate-bench-"))
    upstream_process, upstream = start_upstream(workdir, args.latency, args.chunks, args.chunk_interval)
    bench = Bench(args, upstream, workdir)
    try:
        for name in args.system_names:
            try:
                results["systems"][name] = bench.measure(SYSTEMS[name])
            except Unavailable as exc:
                log(f"{name}: skipped: {exc}")
                results["skipped"][name] = str(exc)
        if args.soak:
            for name in args.soak_names:
                try:
                    results["soak"][name] = bench.soak(SYSTEMS[name])
                    log(f"soak {name}: RSS growth {results['soak'][name]['growth_percent']}%")
                except Unavailable as exc:
                    results["skipped"][f"soak {name}"] = str(exc)
    finally:
        upstream_process.stop()
        results["meta"]["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
        results["meta"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
        path = out / f"{args.name}.json"
        path.write_text(json.dumps(results, indent=1))
        log(f"results: {path}")
    written = report.write(results, out, args.name)
    for p in written:
        log(f"wrote {p}")
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
