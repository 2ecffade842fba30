"""The judges against a fake judge model: position bias gives ties, garbage gives errors, never wins."""

import pytest

from evaluators.judges import JudgeOutputError, PairwiseJudge, RubricJudge, parse_json_object
from gateway.backends.openai import OpenAIBackend
from tests.fakes.judge_api import QUALITY_MARK, FakeJudge
from tests.support import serving

QUESTION = [{"role": "user", "content": "How do I reset my password?"}]
GOOD = f"Open Settings > Security > Reset password, then follow the email link {QUALITY_MARK}"
PLAIN = "Click reset."


@pytest.fixture
def judge_server(request):
    fake = FakeJudge(getattr(request, "param", "oracle"))
    with serving(fake):
        yield fake


@pytest.fixture
async def judge_backend(judge_server):
    backend = OpenAIBackend(
        "judge",
        OpenAIBackend.Settings(kind="openai", model="judge-model", base_url=judge_server.url + "/v1", api_key="none"),
        {},
    )
    await backend.start()
    yield backend
    await backend.close()


async def test_a_truly_better_answer_wins_in_either_position(judge_backend, judge_server):
    judge = PairwiseJudge(judge_backend)
    assert (await judge.compare(QUESTION, GOOD, PLAIN)).outcome == "first"
    verdict = await judge.compare(QUESTION, PLAIN, GOOD)
    assert verdict.outcome == "second" and verdict.confidence == 80 and verdict.orders == ["B", "A"]
    assert (await judge.compare(QUESTION, PLAIN, PLAIN)).outcome == "tie"
    assert len(judge_server.requests) == 6, "each comparison asks in both orders"
    assert verdict.usage.prompt_tokens > 0


@pytest.mark.parametrize("judge_server", ["first"], indirect=True)
async def test_a_judge_that_always_prefers_the_first_position_yields_ties(judge_backend):
    judge = PairwiseJudge(judge_backend)
    for first, second in ((GOOD, PLAIN), (PLAIN, GOOD), (PLAIN, PLAIN)):
        verdict = await judge.compare(QUESTION, first, second)
        assert verdict.outcome == "tie" and verdict.orders == ["A", "A"]


@pytest.mark.parametrize("judge_server", ["garbage"], indirect=True)
async def test_garbage_from_the_judge_is_an_error_after_one_retry(judge_backend, judge_server):
    verdict = await PairwiseJudge(judge_backend).compare(QUESTION, GOOD, PLAIN)
    assert verdict.outcome == "error" and "no JSON object" in verdict.error
    assert len(judge_server.requests) == 2, "the first order is tried twice, then the judge gives up"
    rubric = await RubricJudge(judge_backend).score(QUESTION, GOOD)
    assert rubric.error and rubric.scores == {} and rubric.mean is None


@pytest.mark.parametrize("judge_server", ["flaky"], indirect=True)
async def test_malformed_output_is_retried_once(judge_backend, judge_server):
    verdict = await PairwiseJudge(judge_backend).compare(QUESTION, GOOD, PLAIN)
    assert verdict.outcome == "first"
    assert len(judge_server.requests) == 4


async def test_a_judge_that_cannot_be_reached_is_an_error_not_a_verdict(judge_backend, judge_server):
    judge_server.fail_next(500, 500, 500, 500)
    verdict = await PairwiseJudge(judge_backend).compare(QUESTION, GOOD, PLAIN)
    assert verdict.outcome == "error" and "UpstreamError" in verdict.error


async def test_rubric_scores_each_criterion(judge_backend, judge_server):
    judge = RubricJudge(judge_backend, criteria=["accuracy", "tone"])
    good = await judge.score(QUESTION, GOOD, reference="Settings > Security > Reset password")
    assert good.scores == {"accuracy": 9.0, "tone": 9.0} and good.mean == 9.0
    assert "[Reference answer]" in judge_server.requests[-1]["messages"][-1]["content"]
    assert (await judge.score(QUESTION, PLAIN)).mean == 3.0


@pytest.mark.parametrize(
    "text, expected",
    [
        ('{"winner": "A"}', {"winner": "A"}),
        ('Sure! ```json\n{"winner": "tie", "confidence": 5}\n```', {"winner": "tie", "confidence": 5}),
        ('noise {not json} then {"a": {"b": 1}} tail', {"a": {"b": 1}}),
    ],
)
def test_json_is_found_in_what_judges_really_write(text, expected):
    assert parse_json_object(text) == expected


def test_no_json_is_an_output_error():
    with pytest.raises(JudgeOutputError):
        parse_json_object("the first one")
