"""A fake OpenAI with the files and fine-tuning APIs, that also serves the models it fine-tuned.

It speaks what the official SDK sends: `files.create` (multipart, purpose "fine-tune"),
`fine_tuning.jobs.create/retrieve/cancel/list`, and chat completions (from FakeOpenAI) for any
model, the fine-tuned ones included. A job moves validating_files -> running -> succeeded when
the test calls `advance(job_id)`, or by itself after `polls_per_step` retrievals at each step.

How a fine-tuned model answers: the Nth job's model takes the Nth of `styles` ("plain": as the
base model; "thorough": the base model's answer with judge_api.QUALITY_MARK, which the oracle
judge prefers); a model named in `failing` answers 500, a deployment that degraded.
"""

from __future__ import annotations

import json
import time
import uuid

from aiohttp import web

from .judge_api import QUALITY_MARK
from .openai_api import FakeOpenAI

STEPS = ["validating_files", "running", "succeeded"]
FINISHED = ("succeeded", "failed", "cancelled")


class FakeOpenAIFineTuning(FakeOpenAI):
    def __init__(self, api_key: str | None = None, polls_per_step: int | None = None):
        super().__init__(api_key=api_key)
        self.files: dict[str, dict] = {}
        self.file_bodies: dict[str, bytes] = {}
        self.jobs: dict[str, dict] = {}
        self.polls_per_step = polls_per_step
        self._polls: dict[str, int] = {}
        self.styles: list[str] = []  # the Nth job's model answers in the Nth style
        self.model_styles: dict[str, str] = {}  # or a model named here, in its style
        self.failing: set[str] = set()  # models that answer 500
        self.answered: dict[str, int] = {}  # model -> chat requests it answered

    def style_of(self, model: str) -> str:
        if model in self.model_styles:
            return self.model_styles[model]
        job = next((j for j in self.jobs.values() if j["fine_tuned_model"] == model), None)
        if job is None:
            return "plain"
        index = list(self.jobs).index(job["id"])
        return self.styles[index] if index < len(self.styles) else "plain"

    async def chat(self, request: web.Request):
        body = await request.json()
        model = body.get("model", "")
        self.answered[model] = self.answered.get(model, 0) + 1
        if model in self.failing:
            self.requests.append(body)
            return self._error(500, f"{model} is degraded")
        response = await super().chat(request)
        if self.style_of(model) == "thorough" and not body.get("stream") and response.status == 200:
            answer = json.loads(response.body)
            for choice in answer["choices"]:
                if choice["message"].get("content"):
                    choice["message"]["content"] += f" {QUALITY_MARK}"
            return web.json_response(answer)
        return response

    def app(self) -> web.Application:
        app = super().app()
        app.router.add_post("/v1/files", self.create_file)
        app.router.add_post("/v1/fine_tuning/jobs", self.create_job)
        app.router.add_get("/v1/fine_tuning/jobs", self.list_jobs)
        app.router.add_get("/v1/fine_tuning/jobs/{job_id}", self.retrieve_job)
        app.router.add_post("/v1/fine_tuning/jobs/{job_id}/cancel", self.cancel_job)
        return app

    # --- what a test drives ---------------------------------------------------------------------

    def advance(self, job_id: str, status: str | None = None) -> dict:
        """Move a job to `status`, or to its next step; succeeding names its fine-tuned model."""
        job = self.jobs[job_id]
        status = status or STEPS[min(STEPS.index(job["status"]) + 1, len(STEPS) - 1)]
        job["status"] = status
        if status in FINISHED:
            job["finished_at"] = int(time.time())
        if status == "succeeded":
            job["fine_tuned_model"] = f"ft:{job['model']}:fake-org:{job['suffix'] or 'custom'}:{job_id[-8:]}"
            job["trained_tokens"] = 1234
        if status == "failed":
            job["error"] = {
                "code": "invalid_training_file",
                "message": "the training file has bad lines",
                "param": "training_file",
            }
        return job

    # --- the API --------------------------------------------------------------------------------

    def _authorised(self, request: web.Request) -> web.Response | None:
        if self.api_key and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            given = request.headers.get("Authorization", "").removeprefix("Bearer ")
            return self._error(401, f"Incorrect API key provided: {given}")  # echoed, as OpenAI once did
        return None

    async def create_file(self, request: web.Request) -> web.Response:
        if (denied := self._authorised(request)) is not None:
            return denied
        form = await request.post()
        upload, purpose = form.get("file"), form.get("purpose")
        if upload is None or not hasattr(upload, "file"):
            return self._error(400, "'file' is required")
        if purpose != "fine-tune":
            return self._error(400, f"unexpected purpose {purpose!r}")
        data = upload.file.read()
        file_id = f"file-{uuid.uuid4().hex[:24]}"
        self.file_bodies[file_id] = data
        self.files[file_id] = {
            "id": file_id,
            "object": "file",
            "bytes": len(data),
            "created_at": int(time.time()),
            "filename": upload.filename,
            "purpose": purpose,
            "status": "processed",
        }
        return web.json_response(self.files[file_id])

    async def create_job(self, request: web.Request) -> web.Response:
        if (denied := self._authorised(request)) is not None:
            return denied
        body = await request.json()
        for key in ("training_file", "validation_file"):
            if body.get(key) is not None and body[key] not in self.files:
                return self._error(400, f"invalid {key}: {body[key]} does not exist")
        if not body.get("model") or not body.get("training_file"):
            return self._error(400, "'model' and 'training_file' are required")
        method = body.get("method") or {"type": "supervised"}
        hyper = (method.get(method["type"]) or {}).get("hyperparameters") or body.get("hyperparameters") or {}
        job_id = f"ftjob-{uuid.uuid4().hex[:24]}"
        self.jobs[job_id] = {
            "id": job_id,
            "object": "fine_tuning.job",
            "created_at": int(time.time()),
            "error": None,
            "fine_tuned_model": None,
            "finished_at": None,
            "model": body["model"],
            "organization_id": "org-fake",
            "result_files": [],
            "seed": body.get("seed") or 42,
            "status": "validating_files",
            "trained_tokens": None,
            "training_file": body["training_file"],
            "validation_file": body.get("validation_file"),
            "hyperparameters": {
                "n_epochs": hyper.get("n_epochs", "auto"),
                "batch_size": hyper.get("batch_size", "auto"),
                "learning_rate_multiplier": hyper.get("learning_rate_multiplier", "auto"),
            },
            "method": method,
            "metadata": body.get("metadata"),
            "suffix": body.get("suffix"),
            "estimated_finish": None,
            "integrations": [],
        }
        return web.json_response(self.jobs[job_id])

    def _job(self, request: web.Request) -> dict | None:
        return self.jobs.get(request.match_info["job_id"])

    async def retrieve_job(self, request: web.Request) -> web.Response:
        if (denied := self._authorised(request)) is not None:
            return denied
        job = self._job(request)
        if job is None:
            return self._error(404, f"no fine-tuning job {request.match_info['job_id']}")
        if self.polls_per_step and job["status"] in STEPS[:-1]:
            self._polls[job["id"]] = self._polls.get(job["id"], 0) + 1
            if self._polls[job["id"]] >= self.polls_per_step:
                self._polls[job["id"]] = 0
                self.advance(job["id"])
        return web.json_response(job)

    async def cancel_job(self, request: web.Request) -> web.Response:
        if (denied := self._authorised(request)) is not None:
            return denied
        job = self._job(request)
        if job is None:
            return self._error(404, f"no fine-tuning job {request.match_info['job_id']}")
        if job["status"] in FINISHED:
            return self._error(400, f"job {job['id']} has already {job['status']}")
        return web.json_response(self.advance(job["id"], "cancelled"))

    async def list_jobs(self, request: web.Request) -> web.Response:
        if (denied := self._authorised(request)) is not None:
            return denied
        return web.json_response({"object": "list", "data": list(self.jobs.values()), "has_more": False})
