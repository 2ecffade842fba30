"""The overhead harness measures what it says: an open-loop schedule, complete answers, TTFT, resources, report.

Run with: .venv/bin/python -m pytest bench/test_overhead_harness.py -q
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import loadgen  # noqa: E402
import profiling  # noqa: E402
import report  # noqa: E402
from systems import SYSTEMS, ResourceMonitor, _spawn, start_system, start_upstream, wait_quiet  # noqa: E402


@pytest.fixture(scope="module")
def slow_upstream(tmp_path_factory):
    """An upstream that takes 3 s to answer: longer than the whole 1 s schedule of a test run."""
    process, origin = start_upstream(tmp_path_factory.mktemp("slow"), latency=3.0, chunks=3, chunk_interval=0.01)
    yield origin
    process.stop()


@pytest.fixture(scope="module")
def fast_upstream(tmp_path_factory):
    process, origin = start_upstream(tmp_path_factory.mktemp("fast"), latency=0.02, chunks=3, chunk_interval=0.005)
    yield origin
    process.stop()


def test_sends_on_schedule_without_waiting_for_answers(slow_upstream):
    spec = loadgen.LoadSpec(url=slow_upstream + "/v1/chat/completions", rate=20, duration=1.0, timeout=30)
    samples = loadgen.open_loop(spec)
    assert len(samples) == 20
    assert all(s.outcome == loadgen.OK for s in samples)
    last_sent = max(s.due + s.lag for s in samples)
    first_answer = min(s.due + s.latency for s in samples)
    assert last_sent < first_answer  # every request left before any answer came back: open loop
    assert sorted(s.due for s in samples) == pytest.approx([i / 20 for i in range(20)])
    assert all(s.latency >= 3.0 for s in samples)  # counted from when each was due


def test_two_workers_share_one_schedule(fast_upstream):
    spec = loadgen.LoadSpec(url=fast_upstream + "/v1/chat/completions", rate=40, duration=1.0, workers=2)
    samples = loadgen.open_loop(spec)
    assert sorted(s.due for s in samples) == pytest.approx([i / 40 for i in range(40)])
    summary = loadgen.summarize(samples, 40, 1.0)
    assert summary["ok"] == 40 and summary["errors"] == 0 and summary["error_rate"] == 0
    assert summary["latency_ms"]["p50"] >= 20.0


def test_streams_report_time_to_first_token_before_the_last_byte(fast_upstream):
    spec = loadgen.LoadSpec(url=fast_upstream + "/v1/chat/completions", stream=True)
    samples = loadgen.sequential(spec, 5)
    assert [s.outcome for s in samples] == [loadgen.OK] * 5
    assert all(0.019 <= s.ttft < s.latency for s in samples)  # uvloop's timers are whole milliseconds


def test_errors_are_counted_not_hidden(fast_upstream):
    spec = loadgen.LoadSpec(url=fast_upstream + "/v1/no-such-endpoint", rate=20, duration=0.5)
    summary = loadgen.summarize(loadgen.open_loop(spec), 20, 0.5)
    assert summary["ok"] == 0 and summary["errors"] == 10
    assert summary["outcomes"] == {"http_404": 10}
    assert summary["latency_ms"] is None


def test_forwarder_passes_answers_and_its_resources_are_sampled(fast_upstream, tmp_path):
    running = start_system(SYSTEMS["forwarder"], fast_upstream, tmp_path)
    try:
        monitor = ResourceMonitor(running.process, interval=0.05).start()
        spec = loadgen.LoadSpec(url=running.url, rate=50, duration=1.0)
        summary = loadgen.summarize(loadgen.open_loop(spec), 50, 1.0)
        resources = monitor.stop()
        stream = loadgen.sequential(loadgen.LoadSpec(url=running.url, stream=True), 3)
    finally:
        running.stop()
    assert summary["ok"] == 50
    assert resources["cpu_seconds"] > 0 and resources["rss_peak_mb"] > 10
    assert [s.outcome for s in stream] == [loadgen.OK] * 3
    assert running.process.popen.poll() is not None  # stopped


def test_the_forwarder_and_the_upstream_speak_every_dialect_the_load_can_send(fast_upstream, tmp_path):
    running = start_system(SYSTEMS["forwarder"], fast_upstream, tmp_path)
    try:
        outcomes = {
            dialect: loadgen.summarize(
                loadgen.open_loop(loadgen.LoadSpec(url=running.url, rate=20, duration=0.5, dialect=dialect)), 20, 0.5
            )["outcomes"]
            for dialect in loadgen.DIALECTS
        }
    finally:
        running.stop()
    assert outcomes == {dialect: {"ok": 10} for dialect in loadgen.DIALECTS}
    assert loadgen.dialect_url(running.url, "messages").endswith("/v1/messages")


def test_a_system_s_run_is_paired_with_a_direct_run_and_carries_what_it_added_over_it(fast_upstream, tmp_path):
    import overhead

    args = overhead.parse_args(["--pause", "0", "--quiet-timeout", "5"])
    bench = overhead.Bench(args, fast_upstream, tmp_path)
    bench.running = start_system(SYSTEMS["forwarder"], fast_upstream, tmp_path)
    try:
        summary = bench.paired(SYSTEMS["forwarder"], 50, 1.0, direct_again=True)
        stream = bench.paired(SYSTEMS["forwarder"], 20, 1.0, stream=True)
    finally:
        bench.running.stop()
    assert summary["ok"] == 50 and summary["paired_direct"]["achieved_rps"] == 50
    direct, again = summary["paired_direct"], summary["direct_again"]
    assert summary["added"]["latency_ms"]["p50"] == round(summary["latency_ms"]["p50"] - direct["p50"], 3)
    assert summary["added"]["latency_ms"]["p99"] == round(summary["latency_ms"]["p99"] - direct["p99"], 3)
    # the direct against itself: the run after the system's, over the run before it
    assert again["achieved_rps"] == 50 and summary["direct_drift"]["latency_ms"]["p99"] == round(
        again["p99"] - direct["p99"], 3
    )
    assert set(stream["added"]) == {"latency_ms", "ttft_ms"} and "direct_drift" not in stream
    digest = overhead.run_digest(summary)
    assert digest["added"] == {q: summary["added"]["latency_ms"][q] for q in ("p50", "p99")}
    assert digest["direct_drift"] == {q: summary["direct_drift"]["latency_ms"][q] for q in ("p50", "p99")}
    assert 0 < summary["machine"]["busy_percent"] <= 100 and summary["machine"]["steal_percent"] >= 0


def test_the_targets_system_gets_more_runs_at_the_targets_rate_after_the_rounds_over_every_rate():
    import overhead

    args = overhead.parse_args([])
    assert (args.repeats, args.target_repeats) == (3, 7)
    assert overhead.pinned_schedule(args, "forwarder") == [100, 300, 600] * 3
    assert overhead.pinned_schedule(args, report.TARGET_SYSTEM) == [100, 300, 600] * 3 + [300] * 4
    assert overhead.pinned_schedule(overhead.parse_args(["--rates", "100,600"]), report.TARGET_SYSTEM) == [100, 600] * 3
    assert (
        overhead.pinned_schedule(overhead.parse_args(["--target-repeats", "2"]), report.TARGET_SYSTEM)
        == [100, 300, 600] * 3
    )


def test_added_latency_is_the_median_of_the_differences_within_pairs_so_the_machine_s_drift_stays_out():
    """The direct runs before a system's three runs drift 55 -> 75 ms at p99; the system adds 2, 3, 1 ms."""
    import overhead

    runs = []
    for (direct_p99, p99, again_p99), busy in zip(
        ((55.0, 57.0, 59.0), (65.0, 68.0, 61.0), (75.0, 76.0, 75.5)), (60.0, 75.5, 70.0)
    ):
        run = {
            **_summary(300, 52.5, 54.0, p99),
            "requests": 100,
            "outcomes": {"ok": 100},
            "machine": {"busy_percent": busy, "steal_percent": 0.5},
        }
        run["added"] = {"latency_ms": {"p50": 0.5, "p95": 1.0, "p99": round(p99 - direct_p99, 3)}}
        run["direct_drift"] = {"latency_ms": {"p50": 0.0, "p95": 0.5, "p99": round(again_p99 - direct_p99, 3)}}
        runs.append(run)
    combined = overhead.median_of_runs(runs)
    assert combined["added"]["latency_ms"] == {"p50": 0.5, "p95": 1.0, "p99": 2.0}
    assert combined["direct_drift"]["latency_ms"] == {"p50": 0.0, "p95": 0.5, "p99": 0.5}  # of 4, -4, 0.5
    assert combined["latency_ms"]["p99"] == 68.0  # what a difference of medians would take, against a direct 55: 13
    assert [run["added"]["p99"] for run in combined["runs"]] == [2.0, 3.0, 1.0]
    results = {
        "meta": {"args": {}},
        "systems": {
            "direct": {"label": "direct", "rates": [_summary(300, 52.0, 53.0, 55.0)]},
            "llmgate-full": {"label": "full", "rates": [combined]},
        },
    }
    assert report.overheads(results)["llmgate-full"][300]["p99"] == 2.0
    p99_row = report.targets(results)[1]
    assert p99_row["value"] == "2.0 (runs: 2.00, 3.00, 1.00)" and p99_row["met"] is True
    seen = report.resolution(results)
    assert [run["p99"] for run in seen["runs"]] == [4.0, -4.0, 0.5] and seen["median"]["p99"] == 0.5
    assert (seen["busy_percent"], seen["steal_percent"]) == ([60.0, 75.5, 70.0], [0.5, 0.5, 0.5])
    results["meta"]["args"] = {"latency": 0.05, "chunks": 8, "duration": 20, "warmup": 3, "stream_rate": 100}
    results["meta"].update(
        started="now", cpus=2, cpu="AMD EPYC, AVX2", platform="linux", python="3.11", load_average_at_start=[0, 0, 0]
    )
    text = report.markdown(results)
    assert text.splitlines()[2].startswith("Machine: 2 CPUs (AMD EPYC, AVX2), linux, Python 3.11;")
    assert "by 0.00 ms at p50 and 0.50 ms at p99 at the median (p99 runs: 4.00, -4.00, 0.50)" in text
    assert "cores were 60-75.5% busy, and the hypervisor took 0.5% at most" in text


def _summary(rate: float, p50: float, p95: float, p99: float) -> dict:
    return {
        "offered_rps": rate,
        "achieved_rps": rate,
        "errors": 0,
        "error_rate": 0.0,
        "ok": 100,
        "latency_ms": {"p50": p50, "p95": p95, "p99": p99},
        "send_lag_ms": {"p50": 0.1, "p99": 0.5},
    }


def test_report_subtracts_direct_and_judges_the_targets(tmp_path):
    results = {
        "meta": {
            "started": "now",
            "cpus": 2,
            "platform": "test",
            "python": "3",
            "load_average_at_start": [0, 0, 0],
            "args": {
                "latency": 0.05,
                "chunks": 8,
                "duration": 10,
                "warmup": 2,
                "stream_rate": 100,
                "max_error_rate": 0.001,
                "search_duration": 5,
            },
        },
        "systems": {
            "direct": {
                "label": "upstream direct",
                "rates": [_summary(300, 51.0, 53.0, 55.0)],
                "max_sustained": {"rate": 3000, "errors": 0, "probes": []},
            },
            "forwarder": {"label": "forwarder", "rates": [_summary(300, 51.5, 53.5, 57.0)]},
            "llmgate-full": {
                "label": "llmgate full",
                "rates": [_summary(300, 52.0, 55.5, 60.0)],
                "max_sustained": {"rate": 900, "errors": 0, "probes": []},
            },
            "litellm": {
                "label": "LiteLLM",
                "rates": [_summary(300, 70.0, 90.0, 150.0)],
                "max_sustained": {"rate": 200, "errors": 0, "probes": []},
            },
            "llmgate-full-2w": {
                "label": "llmgate full, 2 workers",
                "rates": [],
                "max_sustained": {"rate": 1100, "errors": 0, "probes": []},
            },
        },
        "soak": {
            "llmgate-full": {
                "rate": 300,
                "seconds": 600,
                "rss_first_tenth_mb": 100.0,
                "rss_last_tenth_mb": 103.0,
                "growth_percent": 3.0,
                "summary": {"errors": 0},
                "rss_series": [[0, 100.0], [600, 103.0]],
            }
        },
    }
    assert report.overheads(results)["llmgate-full"][300] == {"p50": 1.0, "p95": 2.5, "p99": 5.0}
    verdicts = {row["target"]: row["met"] for row in report.targets(results)}
    assert list(verdicts.values()) == [True, True, True, False, True]  # 2 workers: 1100 / 900 is 1.22x
    written = report.write(results, tmp_path, "overhead")
    markdown = (tmp_path / "overhead.md").read_text()
    assert "| llmgate full | 300 | 300 | 0 | 52.00 | 55.50 | 60.00 | 1.00 | 2.50 | 5.00 |" in markdown
    assert "900 vs 200 RPS (4.50x)" in markdown
    assert "1100 vs 900 RPS (1.22x), 0 errors" in markdown
    assert "the floor for a Python proxy, added 0.50 ms at p50 and 2.00 ms at p99 at 300 RPS" in markdown
    assert (tmp_path / "overhead.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "overhead.json").read_text())["targets"][0]["met"] is True
    assert len(written) == 3


def test_profile_summary_charges_library_time_to_the_calling_module(tmp_path):
    stacks = tmp_path / "stacks.txt"
    stacks.write_text(
        "run (asyncio/runners.py:118);chat_completions (/work/main/gateway/proxy.py:200);"
        "dumps (/usr/lib/python3.11/json/__init__.py:231) 30\n"
        "run (asyncio/runners.py:118);after_response (/work/main/plugins/traffic_log/plugin.py:80) 10\n"
    )
    summary = profiling.summarize(stacks)
    assert summary["samples"] == 40
    owners = {row["function"]: row["share"] for row in summary["by_owner"]}
    assert owners == {"gateway/proxy": 0.75, "plugins/traffic_log": 0.25}
    areas = {row["function"]: row["share"] for row in summary["by_area"]}
    assert areas == {"json": 0.75, "plugins/traffic_log": 0.25}
    assert summary["top_self"][0]["function"].startswith("dumps (")


def test_profile_summary_leaves_out_samples_caught_waiting_or_inside_a_c_event_loop(tmp_path):
    source = (profiling.STDLIB / "selectors.py").read_text().splitlines()
    epoll = next(i for i, text in enumerate(source) if text.lstrip().startswith("class EpollSelector"))
    poll = next(i for i, text in enumerate(source[epoll:], epoll + 1) if "self._selector.poll(" in text)
    runners = (profiling.STDLIB / "asyncio" / "runners.py").read_text().splitlines()
    run_loop = next(i for i, text in enumerate(runners, 1) if "self._loop.run_until_complete(" in text)
    stacks = tmp_path / "stacks.txt"
    stacks.write_text(
        f"run_forever (asyncio/base_events.py:607);EpollSelector.select (selectors.py:{poll}) 60\n"
        f"run_forever (asyncio/base_events.py:607);EpollSelector.select (selectors.py:{poll + 2}) 5\n"
        "run (asyncio/runners.py:118);chat_completions (/work/main/gateway/proxy.py:200) 35\n"
        f"cmd_serve (gateway/cli/__init__.py:56);Runner.run (asyncio/runners.py:{run_loop}) 25\n"
    )  # inside uvloop
    summary = profiling.summarize(stacks)
    assert (summary["samples"], summary["waiting_samples"]) == (40, 60)  # the line after the call is work
    assert summary["event_loop_samples"] == 25
    assert {row["function"] for row in summary["by_owner"]} == {"asyncio", "gateway/proxy"}


def test_the_flame_graph_draws_each_frame_as_wide_as_its_samples_and_leaves_waits_out(tmp_path):
    import xml.dom.minidom

    source = (profiling.STDLIB / "selectors.py").read_text().splitlines()
    epoll = next(i for i, text in enumerate(source) if text.lstrip().startswith("class EpollSelector"))
    poll = next(i for i, text in enumerate(source[epoll:], epoll + 1) if "self._selector.poll(" in text)
    stacks = tmp_path / "stacks.txt"
    stacks.write_text(
        "run (asyncio/runners.py:118);serve (/work/main/gateway/proxy.py:200);dumps (json/__init__.py:231) 30\n"
        "run (asyncio/runners.py:118);after_response (/work/main/plugins/traffic_log/plugin.py:80) 10\n"
        f"run_forever (asyncio/base_events.py:607);EpollSelector.select (selectors.py:{poll}) 60\n"
    )
    svg = tmp_path / "flame.svg"
    assert profiling.flamegraph_svg(stacks, svg, "test", width=420) == 40
    groups = xml.dom.minidom.parse(str(svg)).getElementsByTagName("g")
    title, rect = (lambda g: g.getElementsByTagName("title")[0]), (lambda g: g.getElementsByTagName("rect")[0])
    rects = {title(g).firstChild.data: float(rect(g).getAttribute("width")) for g in groups}
    assert rects["run (asyncio/runners.py): 40 samples, 100.0%"] == 400
    assert rects["serve (gateway/proxy.py): 30 samples, 75.0%"] == 300
    assert not any("EpollSelector" in title for title in rects)
    text = profiling.top_markdown(
        profiling.summarize(stacks),
        {"system": "s", "rate": 300, "seconds": 10, "sample_rate": 200, "dialect": "chat", "started": "now"}
        | {"svg": "flame.svg", "collapsed": "stacks.txt"},
    )
    assert "| 1 | `dumps (json/__init__.py)` | 30 | 75.0% |" in text


def test_the_floor_table_sets_the_whole_config_against_the_forwarder_and_chat_completions():
    import plugin_costs

    def row(name, cpu):
        return {"name": name, "cpu_ms_per_request": cpu, "runs": [cpu]}

    floors = plugin_costs.floor_figures(
        {
            "chat": [row(plugin_costs.CORE, 0.8), row(plugin_costs.WHOLE, 1.0), row(plugin_costs.FORWARDER, 0.45)],
            "messages": [row(plugin_costs.WHOLE, 1.2), row(plugin_costs.FORWARDER, 0.5)],
            plugin_costs.AGENT: [row(plugin_costs.WHOLE, 2.2), row(plugin_costs.FORWARDER, 0.66)],
        }
    )
    assert floors["chat"]["ratio"] == 2.22 and floors["chat"]["ratio_met"] is False
    assert floors["messages"]["ratio"] == 2.4 and floors["messages"]["whole_minus_chat"] == 0.2
    # an agent's larger body is shown against the forwarder, but judged by no dialect's target
    agent = floors[plugin_costs.AGENT]
    assert agent["ratio"] == 3.33 and agent["ratio_met"] is None and agent["whole_minus_chat"] is None


def test_repeated_runs_report_each_percentile_s_median_so_one_stalled_run_does_not_move_it():
    import overhead

    runs = []
    for p50, p99, errors, achieved in ((52.0, 55.0, 0, 300.0), (58.0, 95.0, 2, 297.5), (52.4, 56.0, 0, 300.0)):
        run = {
            **_summary(300, p50, p50 + 1, p99),
            "errors": errors,
            "achieved_rps": achieved,
            "requests": 6000,
            "outcomes": {"ok": 6000 - errors, **({"timeout": errors} if errors else {})},
            "resources": {
                "cpu_seconds": 10.0,
                "cpu_percent": 50.0,
                "cpu_ms_per_request": 1.5,
                "rss_start_mb": 80.0,
                "rss_end_mb": 81.0,
                "rss_peak_mb": 82.0 + errors,
            },
        }
        run["latency_ms"].update({"n": 6000 - errors, "max": p99 + 5})
        runs.append(run)
    combined = overhead.median_of_runs(runs)
    assert combined["latency_ms"]["p50"] == 52.4 and combined["latency_ms"]["p99"] == 56.0
    assert combined["latency_ms"]["max"] == 100.0 and combined["latency_ms"]["n"] == 17998
    assert combined["errors"] == 2 and combined["requests"] == 18000 and combined["outcomes"]["timeout"] == 2
    assert combined["achieved_rps"] == 297.5 and combined["resources"]["rss_peak_mb"] == 84.0
    assert [run["p50"] for run in combined["runs"]] == [52.0, 58.0, 52.4]
    assert overhead.median_of_runs(runs[:1])["latency_ms"]["p50"] == 52.0


def test_a_run_waits_until_the_system_is_quiet_after_the_last_one(tmp_path):
    """A process still busy (a backlog of shadow calls, say) is waited for; a quiet one is not."""
    busy_for_a_second = "import time\nend = time.monotonic() + 1.5\nwhile time.monotonic() < end: pass\ntime.sleep(60)"
    process = _spawn("backlog", [sys.executable, "-c", busy_for_a_second], tmp_path)
    try:
        waited = wait_quiet(process, timeout=10)
        assert waited is not None and 0.8 <= waited < 5
        assert wait_quiet(process, timeout=10) < 1  # now idle: one window
    finally:
        process.stop()
    spinning = _spawn("spinning", [sys.executable, "-c", "while True: pass"], tmp_path)
    try:
        assert wait_quiet(spinning, timeout=1) is None  # never idle: the caller is told, not held forever
    finally:
        spinning.stop()


def test_plugin_costs_measure_each_request_path_plugin_of_the_full_config_alone_over_its_core(tmp_path):
    import plugin_costs
    import yaml
    from systems import _llmgate_config

    plugins = plugin_costs.request_path_plugins()
    assert {"traffic_log", "shadow", "rollout", "auto_rollback"} <= set(plugins)
    # off in the config, or never waited on
    assert not {"semantic_cache", "judge", "backends", "console"} & set(plugins)
    measured = plugin_costs.systems_to_measure(["shadow"])
    assert list(measured) == [plugin_costs.CORE, "shadow", plugin_costs.WHOLE]
    for name, wanted in ((plugin_costs.CORE, set()), ("shadow", {"shadow"})):
        home = tmp_path / name
        home.mkdir()
        config = yaml.safe_load(_llmgate_config(measured[name], home).read_text())
        enabled = {p for p, s in config["plugins"].items() if (s or {}).get("enabled", True)}
        assert enabled == wanted
        assert config["routes"]["bench"]["shadow"] == ["up-shadow"]  # the core keeps the config's routes
    shadow = yaml.safe_load(_llmgate_config(measured["shadow"], tmp_path).read_text())["plugins"]["shadow"]
    assert shadow["sample_rate"] == 0.25  # the plugin's own settings kept


def test_a_plugin_s_cost_is_the_median_of_what_it_added_over_the_core_run_beside_it():
    """The machine drifts between pairs (the core's own runs go 1.40, 1.60, 1.80): each pair is compared within."""
    import plugin_costs

    def run(cpu, p50):
        return {"cpu_ms_per_request": cpu, "p50": p50, "p99": p50 + 10, "errors": 0, "achieved_rps": 300.0}

    core = [run(1.40, 54.0), run(1.60, 55.0), run(1.80, 54.5)]
    traffic_log = [run(1.75, 55.0), run(1.70, 55.5), run(2.60, 60.0)]
    runs = {plugin_costs.CORE: core, "traffic_log": traffic_log}
    pairs = {"traffic_log": [{"core": c, "measured": m} for c, m in zip(core, traffic_log)]}
    rows = {row["name"]: row for row in plugin_costs.costs(runs, pairs, rate=300)}
    log = rows["traffic_log"]
    assert log["added_runs"] == [0.35, 0.1, 0.8] and log["added_cpu_ms"] == 0.35
    assert log["added_core_share"] == 0.105  # 0.35 ms x 300 a second
    assert log["added_p50"] == 1.0 and log["cpu_ms_per_request"] == 1.75
    assert rows[plugin_costs.CORE]["added_cpu_ms"] is None and rows[plugin_costs.CORE]["cpu_ms_per_request"] == 1.6
    whole = {**log, "name": plugin_costs.WHOLE, "added_cpu_ms": 0.6}
    text = plugin_costs.markdown(
        {
            "meta": {
                "rate": 300,
                "started": "now",
                "cpus": 2,
                "platform": "p",
                "python": "3",
                "load_average_at_start": [0],
                "duration": 15,
                "repeats": 3,
            },
            "costs": [*rows.values(), whole],
        }
    )
    assert "| traffic_log | 1.750 | 0.350 | 10.5% |" in text
    assert "add 0.350 ms of CPU a request between them; the whole config adds 0.600 ms" in text


def test_cli_startup_times_whole_processes_and_reports_each_against_its_target():
    import cli_startup

    figures = cli_startup.measure(str(Path(sys.executable).with_name("llmgate")), ["--help"], runs=3)
    assert figures["runs"] == 3 and 0 < figures["min_s"] <= figures["median_s"] <= figures["p90_s"] <= figures["max_s"]
    results = {
        "meta": {"cpus": 2, "platform": "p", "python": "3", "load_average_at_start": [0], "finished": "now", "runs": 3},
        "commands": {
            "llmgate --help": {**figures, "p90_s": 0.25, "target_s": 0.3},
            "llmgate status --help": {**figures, "p90_s": 0.35, "target_s": 0.3},
            "llmgate check-config f.yaml": {**figures, "target_s": None},
        },
    }
    text = cli_startup.markdown(results)
    assert "| `llmgate --help` |" in text and text.count("| yes |") == 1 and text.count("| no |") == 1
    assert "| `llmgate check-config f.yaml` |" in text and text.rstrip().endswith("| - | - |")
