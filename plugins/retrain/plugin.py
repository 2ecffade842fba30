"""retrain: the retraining launcher of the fine-tuning flywheel, its jobs, and `llmgate retrain`.

A job takes a dataset directory (flywheel/dataset/builder.py builds them) to a provider (Bedrock model
customization or OpenAI fine-tuning, plugins/retrain/providers.py), polls it to completion, puts
the trained model in service (Bedrock: provisioned throughput or a custom model deployment), and
registers it as a backend and a shadow of the job's route (gateway/admin/registry.py), so the
route's traffic is mirrored to it and the shadow report compares it with the live model.

Jobs live in the state store under `retrain:job:<id>`, so a job survives restarts of the CLI and
the daemon and, with Redis, every replica sees it. Each poll step holds a lease on its job, so
`llmgate retrain wait` and a daemon never advance the same job at once. In the daemon (this plugin
enabled; off by default because it creates paid resources) a background task polls the jobs that
are still moving and registers finished models directly; the CLI registers them through the
admin API. States: starting -> training -> trained -> deploying -> ready -> registered, or
failed / cancelling -> cancelled.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import logging
import os
import secrets
import socket
import sys
import time
from typing import Any, Awaitable, Callable

from pydantic import BaseModel, ConfigDict, Field

from gateway.background import stop_tasks
from gateway.cli.client import AdminClient
from gateway.config import load_config
from gateway.errors import GatewayError, Scrubber
from gateway.hookspecs import hookimpl
from gateway.state import open_state_store

from .providers import (
    BedrockProvider,
    BedrockSettings,
    Dataset,
    OpenAIProvider,
    OpenAIProviderSettings,
    Provider,
    RetrainError,
)

log = logging.getLogger("llmgate.retrain")

JOB_KEY = "retrain:job:"
MOVING = ("starting", "training", "cancelling", "trained", "deploying", "ready")
FINISHED = ("registered", "failed", "cancelled")
STEP_LEASE_SECONDS = 300.0  # longest one poll step may take before another poller may try
HISTORY = 20


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    bedrock: BedrockSettings = BedrockSettings()
    openai: OpenAIProviderSettings = OpenAIProviderSettings()
    poll_interval: float = Field(60.0, gt=0, description="seconds between polls of the jobs still moving")
    min_examples: int = Field(10, ge=1, description="training examples a dataset needs before a job may start")


Register = Callable[[dict, dict], Awaitable[None]]  # (job, backend entry) -> registered
EPOCH_NAMES = ("n_epochs", "epochCount")
DEFAULT_EPOCHS = 3  # OpenAI's "auto" and the Bedrock families' defaults are 1 to 5: a middle guess


class CostCap(BaseModel):
    """What training costs and the most one job may cost; the estimate counts the training file's
    tokens (4 characters a token) times the epochs, the provider's training price per token."""

    model_config = ConfigDict(extra="forbid")
    usd_per_million_tokens: float = Field(gt=0, description="the provider's training price per million tokens")
    max_usd: float | None = Field(None, gt=0, description="refuse a job whose estimate is more than this")


def estimate_cost(dataset: Dataset, hyperparameters: dict[str, Any], cost: CostCap) -> dict[str, Any]:
    """The job's estimated training cost, before anything is sent."""
    tokens = (dataset.train.stat().st_size + 3) // 4
    epochs = next((hyperparameters[k] for k in EPOCH_NAMES if isinstance(hyperparameters.get(k), int)), DEFAULT_EPOCHS)
    usd = tokens * epochs * cost.usd_per_million_tokens / 1_000_000
    return {"tokens": tokens, "epochs": epochs, "usd": round(usd, 6), "cap_usd": cost.max_usd}


def describe(exc: BaseException) -> str:
    """A provider failure in the operator's terms: the service's code and message, never a credential."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict) and "Error" in response:  # botocore ClientError
        error = response["Error"]
        return f"{error.get('Code', 'Error')}: {error.get('Message', '')}".strip()
    message = getattr(exc, "message", None)
    return f"{type(exc).__name__}: {message or exc}"


def providers_for(settings: Settings, config) -> dict[str, Provider]:
    backends = config.settings.backends
    return {
        "bedrock": BedrockProvider(settings.bedrock, backends.get(settings.bedrock.serve_like or "")),
        "openai": OpenAIProvider(settings.openai, backends.get(settings.openai.backend or "")),
    }


def _new_id() -> str:
    return f"rt-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(3)}"


class Launcher:
    """Starts, advances, cancels and lists jobs; provider calls run on a worker thread."""

    def __init__(
        self,
        store,
        providers: dict[str, Provider],
        register: Register,
        holder: str,
        min_examples: int = 10,
        scrub: Callable[[str], str] = str,
    ):
        self.scrub = scrub  # removes configured secrets from provider messages before they are stored
        self.store = store
        self.providers = providers
        self.register = register
        self.holder = holder
        self.min_examples = min_examples

    # --- the job records ----------------------------------------------------------------------

    async def get(self, job_id: str) -> dict:
        job = await self.store.get(JOB_KEY + job_id)
        if job is None:
            raise RetrainError(f"no retraining job '{job_id}'")
        return job

    async def jobs(self) -> list[dict]:
        return sorted((await self.store.items(JOB_KEY)).values(), key=lambda j: j["created"])

    async def _change(self, job_id: str, **fields) -> dict:
        now = time.time()

        def change(old: dict | None) -> dict:
            if old is None:
                raise RetrainError(f"no retraining job '{job_id}'")
            if old.get("status") in FINISHED and fields.get("status", old["status"]) != old["status"]:
                return old  # a poll that raced a cancel (or a second poller) never reopens a finished job
            new = {**old, **fields, "updated": now}
            if fields.get("status") and fields["status"] != old.get("status"):
                new["history"] = [*old.get("history", []), {"ts": now, "status": fields["status"]}][-HISTORY:]
            return new

        return (await self.store.update(JOB_KEY + job_id, change))[1]

    def _provider(self, name: str) -> Provider:
        if name not in self.providers:
            raise RetrainError(f"unknown provider '{name}' (known: {', '.join(sorted(self.providers))})")
        return self.providers[name]

    # --- operations ---------------------------------------------------------------------------

    async def launch(
        self,
        provider_name: str,
        dataset_dir: str,
        route: str,
        *,
        base_model: str | None = None,
        hyperparameters: dict[str, Any] | None = None,
        backend_name: str | None = None,
        origin: str = "cli",
        register_as: str = "shadow",
        cost: "CostCap | None" = None,
        details: dict[str, Any] | None = None,
    ) -> dict:
        """Check everything that can be checked here, record the job, then upload and create it.

        `register_as` "shadow" mirrors the route's traffic to the model once it serves; "backend"
        only registers it (the flywheel gates it offline first). `cost` refuses a job whose
        estimate is over its cap before anything is uploaded."""
        provider = self._provider(provider_name)
        dataset = Dataset.read(dataset_dir)
        base = provider.base_model(base_model)
        provider.check_dataset(dataset, base)
        if dataset.train_examples < self.min_examples:
            raise RetrainError(
                f"{dataset.path}: {dataset.train_examples} training examples, fewer than the "
                f"{self.min_examples} a job needs (plugins.retrain.min_examples)"
            )
        checked = provider.check_hyperparameters(base, hyperparameters or {})
        estimate = estimate_cost(dataset, checked, cost) if cost is not None else None
        if estimate is not None and cost.max_usd is not None and estimate["usd"] > cost.max_usd:
            raise RetrainError(
                f"the job's estimated cost ${estimate['usd']:.2f} ({estimate['tokens']:,} tokens x "
                f"{estimate['epochs']} epochs at ${cost.usd_per_million_tokens:g} a million) is over the cap "
                f"${cost.max_usd:g}: not started"
            )
        job_id, now = _new_id(), time.time()
        job = {
            "id": job_id,
            "provider": provider_name,
            "route": route,
            "status": "starting",
            "history": [{"ts": now, "status": "starting"}],
            "dataset": dataset.summary(),
            "base_model": base,
            "hyperparameters": checked,
            "backend_name": backend_name or f"{route}-{job_id}",
            "origin": origin,
            "register_as": register_as,
            "estimated_cost": estimate,
            "details": details or {},
            "created": now,
            "updated": now,
            "last_polled": None,
            "provider_job": None,
            "provider_status": None,
            "result_model": None,
            "serving_model": None,
            "error": None,
        }
        await self.store.set(JOB_KEY + job_id, job)  # recorded first: a launch that dies half-way leaves a trace
        try:
            fields = await asyncio.to_thread(provider.start, job_id, dataset, base, checked, job["backend_name"])
        except RetrainError as exc:
            await self._change(job_id, status="failed", error=str(exc))
            raise
        except Exception as exc:
            problem = self.scrub(describe(exc))
            await self._change(job_id, status="failed", error=problem)
            raise RetrainError(f"{provider_name} refused the job: {problem}") from None
        log.info("retraining job %s started on %s for route %s", job_id, provider_name, route)
        return await self._change(job_id, status="training", **fields)

    async def advance(self, job_id: str) -> dict:
        """Poll one job as far as it goes now (training -> trained -> deploying -> ready -> registered)."""
        lease = f"retrain:{job_id}"
        if not await self.store.acquire_lease(lease, self.holder, STEP_LEASE_SECONDS):
            return await self.get(job_id)  # another poller is on it
        try:
            job = await self.get(job_id)
            while job["status"] in MOVING and job["status"] != "starting":
                before = job["status"]
                job = await self._step(job)
                if job["status"] == before or job["status"] not in ("trained", "ready"):
                    break
            return job
        finally:
            await self.store.acquire_lease(lease, self.holder, 0.001)  # let go at once

    async def _step(self, job: dict) -> dict:
        provider, status = self._provider(job["provider"]), job["status"]
        try:
            if status in ("training", "cancelling"):
                fields = await asyncio.to_thread(provider.training, job)
            elif status == "trained":
                fields = await asyncio.to_thread(provider.deploy, job)
            elif status == "deploying":
                fields = await asyncio.to_thread(provider.deployment, job)
            else:  # ready
                await self.register(job, provider.serving_backend(job))
                fields = {"status": "registered", "registered_at": time.time(), "error": None}
        except Exception as exc:  # the provider or the gateway failed this time: keep the state, say why
            problem = self.scrub(str(exc) if isinstance(exc, RetrainError) else describe(exc))
            log.warning("retraining job %s: %s step failed: %s", job["id"], status, problem)
            return await self._change(job["id"], last_polled=time.time(), error=f"{status}: {problem}")
        if fields.get("status") not in ("failed",):
            fields.setdefault("error", None)
        return await self._change(job["id"], last_polled=time.time(), **fields)

    async def wait(
        self, job_id: str, interval: float, timeout: float | None = None, report: Callable[[dict], None] | None = None
    ) -> dict:
        """Advance a job until it finishes (or `timeout` seconds pass), reporting each change."""
        deadline = None if timeout is None else time.monotonic() + timeout
        seen = None
        while True:
            job = await self.advance(job_id)
            if report and (job["status"], job.get("error")) != seen:
                seen = (job["status"], job.get("error"))
                report(job)
            if job["status"] in FINISHED or (deadline is not None and time.monotonic() >= deadline):
                return job
            await asyncio.sleep(interval)

    async def cancel(self, job_id: str) -> dict:
        job = await self.get(job_id)
        if job["status"] in FINISHED:
            hint = (
                f"; to stop its traffic: DELETE /admin/models/{job['backend_name']}"
                if job["status"] == "registered"
                else ""
            )
            raise RetrainError(f"job {job_id} is already {job['status']}{hint}")
        fields: dict[str, Any] = {"status": "cancelled"}
        if job["status"] in ("training", "cancelling", "deploying") or job.get("deployment"):
            try:
                fields = await asyncio.to_thread(self._provider(job["provider"]).cancel, job)
            except Exception as exc:
                raise RetrainError(
                    f"{job['provider']} did not stop job {job_id}: {self.scrub(describe(exc))}"
                ) from None
        return await self._change(job_id, cancelled_at=time.time(), **fields)


# --- the daemon's side ----------------------------------------------------------------------------


class Retrain:
    """In the daemon: polls the jobs still moving and registers their models directly."""

    Settings = Settings
    DEFAULT_ENABLED = False  # it deploys paid resources (provisioned throughput) as jobs finish: opt in

    def __init__(self, settings: Settings):
        self.settings = settings
        self.launcher: Launcher | None = None
        self.recent: list[dict] = []
        self._task: asyncio.Task | None = None

    @hookimpl
    def config_problems(self, config):
        backends, problems = config.settings.backends, []
        like = self.settings.bedrock.serve_like
        if like and (backends.get(like) or {}).get("kind") != "bedrock":
            problems.append(f"plugins.retrain.bedrock.serve_like: '{like}' is not a configured bedrock backend")
        named = self.settings.openai.backend
        if named and (backends.get(named) or {}).get("kind") != "openai":
            problems.append(f"plugins.retrain.openai.backend: '{named}' is not a configured openai backend")
        return problems

    @hookimpl
    async def startup(self, gateway):
        from gateway.admin import registry as models_registry  # aiohttp: the daemon's, not `llmgate retrain`'s

        async def register(job: dict, backend: dict) -> None:
            await models_registry.register(
                gateway,
                job["backend_name"],
                backend,
                shadow_routes(job),
                f"retrain ({job['id']})",
                reason=registered_reason(job),
                details={"job": job["id"], "result_model": job.get("result_model"), **(job.get("details") or {})},
            )

        holder = f"gateway@{socket.gethostname()}:{os.getpid()}"
        self.launcher = Launcher(
            gateway.store,
            providers_for(self.settings, gateway.file_config),
            register,
            holder,
            self.settings.min_examples,
            scrub=lambda text: gateway.scrub(text),
        )
        self._task = asyncio.create_task(self._poll_forever(), name="retrain poller")

    @hookimpl
    async def shutdown(self, gateway):
        await stop_tasks([self._task])

    @hookimpl
    def admin_status(self, gateway):
        return {"retrain": {"jobs": self.recent}}

    async def poll_once(self) -> None:
        """Advance every job still moving; one failing job never stops the others."""
        jobs = await self.launcher.jobs()
        for job in jobs:
            if job["status"] in MOVING and job["status"] != "starting":
                try:
                    await self.launcher.advance(job["id"])
                except Exception:
                    log.exception("retraining job %s could not be polled", job["id"])
        self.recent = [_summary(j) for j in (await self.launcher.jobs())[-10:]]

    async def _poll_forever(self) -> None:
        while True:
            try:
                await self.poll_once()
            except Exception as exc:  # the state store is away: try again next round
                log.warning("retraining jobs not polled: %s", exc)
            await asyncio.sleep(self.settings.poll_interval)


def _summary(job: dict) -> dict:
    return {
        k: job.get(k)
        for k in (
            "id",
            "provider",
            "route",
            "status",
            "provider_status",
            "backend_name",
            "serving_model",
            "error",
            "created",
            "last_polled",
        )
    }


# --- the command line -----------------------------------------------------------------------------


def settings_from(config) -> Settings:
    return config.plugin_options("retrain", Settings)


def shadow_routes(job: dict) -> list[str]:
    """Where a finished job's model is mirrored: its route, unless the job says it is gated first."""
    return [job["route"]] if job.get("register_as", "shadow") == "shadow" else []


def registered_reason(job: dict) -> str:
    """The register_model event's reason: the job, and why an operator launched it when they said."""
    return f"retraining job {job['id']} finished" + (f" (launched: {job['reason']})" if job.get("reason") else "")


async def _audit(store, kind: str, job: dict, actor: str, reason: str | None) -> None:
    """A launch or cancel from the command line, in the same audit trail as the admin API's changes."""
    await store.append_event(
        {
            "kind": kind,
            "route": job["route"],
            "actor": actor,
            "before": None,
            "after": {"job": job["id"], "status": job["status"]},
            "reason": reason,
            "ts": time.time(),
            "job": job["id"],
            "provider": job["provider"],
        }
    )


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def _print_job(job: dict) -> None:
    model = job.get("serving_model") or job.get("result_model") or "-"
    provider_status = f" ({job['provider_status']})" if job.get("provider_status") else ""
    print(
        f"{job['id']}  {job['provider']:<7} {job['route']:<16} {job['status']}{provider_status}  "
        f"backend {job.get('backend_name')}  model {model}  created {_when(job.get('created'))}  "
        f"polled {_when(job.get('last_polled'))}" + (f"\n    error: {job['error']}" if job.get("error") else "")
    )


def _bedrock_overrides(settings: Settings, args: argparse.Namespace) -> Settings:
    changes = {
        key: getattr(args, key)
        for key in ("role_arn", "bucket", "deployment", "model_units")
        if getattr(args, key, None) is not None
    }
    return settings.model_copy(update={"bedrock": settings.bedrock.model_copy(update=changes)}) if changes else settings


async def _run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    settings = _bedrock_overrides(settings_from(config), args)
    client = AdminClient(getattr(args, "url", None))

    async def register(job: dict, backend: dict) -> None:
        await asyncio.to_thread(
            client.post,
            "/admin/models",
            {
                "name": job["backend_name"],
                "backend": backend,
                "shadow": shadow_routes(job),
                "reason": registered_reason(job),
                "details": {"job": job["id"], "result_model": job.get("result_model"), **(job.get("details") or {})},
            },
        )

    store = open_state_store(config.settings.state)
    await store.open()
    try:
        holder = f"cli:{getpass.getuser()}@{socket.gethostname()}:{os.getpid()}"
        launcher = Launcher(
            store,
            providers_for(settings, config),
            register,
            holder,
            settings.min_examples,
            scrub=Scrubber(config.secrets),
        )
        command = args.retrain_command
        if command == "status":
            jobs = [await launcher.get(args.job)] if args.job else await launcher.jobs()
            if args.json:
                print(json.dumps(jobs, indent=2, sort_keys=True))
            elif not jobs:
                print("no retraining jobs")
            for job in [] if args.json else jobs:
                _print_job(job)
            return 0
        if command == "cancel":
            job = await launcher.cancel(args.job)
            await _audit(store, "retrain_cancel", job, client.actor, args.reason)
            _print_job(job)
            return 0
        if command == "launch":
            if args.route not in config.settings.routes:
                raise RetrainError(
                    f"no route '{args.route}' in {config.source} "
                    f"(routes: {', '.join(sorted(config.settings.routes)) or 'none'})"
                )
            job = await launcher.launch(
                args.provider,
                args.dataset,
                args.route,
                base_model=args.base_model,
                hyperparameters=dict(args.hyperparameter),
                backend_name=args.name,
            )
            if args.reason:  # kept on the job: its model's register_model event says it too
                job = await launcher._change(job["id"], reason=args.reason)
            await _audit(store, "retrain_launch", job, client.actor, args.reason)
            _print_job(job)
            if not args.wait:
                print(f"poll it with: llmgate retrain wait {job['id']}")
                return 0
            job_id = job["id"]
        else:  # wait
            job_id = args.job
        job = await launcher.wait(job_id, args.poll_interval, args.timeout, report=_print_job)
        return 0 if job["status"] == "registered" else 1
    finally:
        await store.close()


def main(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_run(args))
    except (RetrainError, GatewayError) as exc:  # GatewayError: the state store is unreachable
        print(f"llmgate retrain: {exc}", file=sys.stderr)
        return 2
