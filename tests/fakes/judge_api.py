"""A fake judge model behind the OpenAI wire format, with the failure modes real judges have.

`mode`:
- "oracle": prefers the answer that contains QUALITY_MARK (tie if both or neither); rubric
  scores 9 for such an answer and 3 otherwise. It "can tell" which answer is truly better.
- "first": always says "A" (pure position bias).
- "garbage": answers prose, never the JSON asked for.
- "flaky": garbage on each prompt's first try, valid (oracle) JSON on the retry.
Asked whether two questions are the same (the semantic cache's verification), it answers
`same_questions(q1, q2)` (default: always the same); `equivalence_asked` counts those questions.
"""

from __future__ import annotations

import json
import re
import time

from aiohttp import web

from .behaviour import FakeUpstream

QUALITY_MARK = "(thorough)"


class FakeJudge(FakeUpstream):
    def __init__(self, mode: str = "oracle"):
        super().__init__()
        self.mode = mode
        self._seen: set[str] = set()
        self.same_questions = lambda first, second: True
        self.equivalence_asked = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.chat)
        return app

    def _error(self, status: int, message: str) -> web.Response:
        return web.json_response({"error": {"message": message, "type": "fake_error"}}, status=status)

    def _verdict(self, system: str, user: str) -> str:
        if self.mode == "garbage" or (self.mode == "flaky" and user not in self._seen):
            self._seen.add(user)
            return "I think both answers have merit, but on balance the first is nicer."
        if '"same"' in system:  # equivalence of two questions
            self.equivalence_asked += 1
            first = user.split("[Question 1]", 1)[1].split("[Question 2]", 1)[0].strip()
            second = user.split("[Question 2]", 1)[1].strip()
            return json.dumps({"same": bool(self.same_questions(first, second)), "reasoning": "fake"})
        if "scores" in system:  # rubric
            answer = user.split("[Answer]", 1)[1].split("[Reference answer]")[0]
            score = 9 if QUALITY_MARK in answer else 3
            keys = re.findall(r'"(\w+)": <1-10>', system)
            return json.dumps({"scores": {k: score for k in keys}, "reasoning": "fake rubric"})
        if self.mode == "first":
            return json.dumps({"winner": "A", "confidence": 90, "reasoning": "A is shown first"})
        a = user.split("[Answer A]", 1)[1].split("[Answer B]", 1)[0]
        b = user.split("[Answer B]", 1)[1]
        good_a, good_b = QUALITY_MARK in a, QUALITY_MARK in b
        winner = "A" if good_a and not good_b else "B" if good_b and not good_a else "tie"
        return "```json\n" + json.dumps({"winner": winner, "confidence": 80, "reasoning": "fake oracle"}) + "\n```"

    async def chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        if (failure := self.received(request, body)) is not None:
            return failure
        system = body["messages"][0]["content"]
        user = body["messages"][-1]["content"]
        content = self._verdict(system, user)
        return web.json_response(
            {
                "id": "chatcmpl-judge",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body["model"],
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
                ],
                "usage": {
                    "prompt_tokens": len(user.split()),
                    "completion_tokens": len(content.split()),
                    "total_tokens": len(user.split()) + len(content.split()),
                },
            }
        )
