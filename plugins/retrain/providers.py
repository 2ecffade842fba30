"""The fine-tuning providers behind the retraining launcher: Bedrock model customization and OpenAI fine-tuning.

Each provider does the provider's half of a job with its official SDK (boto3, openai): check the
hyperparameters against the names and bounds the provider documents, upload the dataset, create
the job, read its state, stop it, and (Bedrock) put the trained model in service. The calls
block; the launcher (plugin.py) runs them on a worker thread. A provider's own states
are mapped onto the launcher's: training, trained, deploying, ready, failed, cancelled.
"""

from __future__ import annotations

import hashlib
import json
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class RetrainError(Exception):
    """A launch or a step cannot be done as asked; the message says what to change."""


# The dataset formats (flywheel/dataset/formats.py) and the base-model families that train on each.
FORMATS = ("openai", "bedrock", "nova", "titan", "llama")
BEDROCK_FORMATS = [
    ("anthropic.claude", "bedrock"),
    ("amazon.nova-", "nova"),
    ("amazon.titan-text", "titan"),
    ("meta.llama", "llama"),
]


def bedrock_format(base_model: str) -> str | None:
    """The dataset format a Bedrock base model trains on (None: a family llmgate does not build for)."""
    model_id = base_model.rsplit("foundation-model/", 1)[-1]
    return next((fmt for prefix, fmt in BEDROCK_FORMATS if model_id.startswith(prefix)), None)


# --- the dataset directory -----------------------------------------------------------------------


@dataclass
class Dataset:
    """DIR/train.jsonl, DIR/validation.jsonl (optional), DIR/manifest.json ({"format": one of FORMATS, ...})."""

    path: Path
    format: str
    train: Path
    validation: Path | None
    train_examples: int
    validation_examples: int
    digest: str  # sha256 over the files sent, so a job says exactly what it was trained on

    @classmethod
    def read(cls, directory: str | Path) -> "Dataset":
        path = Path(directory)
        try:
            manifest = json.loads((path / "manifest.json").read_text())
        except FileNotFoundError:
            raise RetrainError(f"{path}: no manifest.json (is this a dataset directory?)") from None
        except (OSError, ValueError) as exc:
            raise RetrainError(f"{path / 'manifest.json'}: cannot be read as JSON: {exc}") from None
        if not isinstance(manifest, dict) or manifest.get("format") not in FORMATS:
            raise RetrainError(f"{path / 'manifest.json'}: 'format' must be one of {', '.join(FORMATS)}")
        train = path / "train.jsonl"
        if not train.is_file():
            raise RetrainError(f"{path}: no train.jsonl")
        validation = path / "validation.jsonl"
        validation = validation if validation.is_file() and validation.stat().st_size else None
        digest = hashlib.sha256()
        counts = []
        for file in (train, validation):
            if file is None:
                counts.append(0)
                continue
            data = file.read_bytes()
            digest.update(file.name.encode() + b"\0" + data)
            counts.append(sum(1 for line in data.splitlines() if line.strip()))
        return cls(path, manifest["format"], train, validation, counts[0], counts[1], digest.hexdigest())

    def summary(self) -> dict[str, Any]:
        return {
            "dir": str(self.path),
            "format": self.format,
            "sha256": self.digest,
            "train_examples": self.train_examples,
            "validation_examples": self.validation_examples,
        }


def dataset_size(directory: str | Path) -> int:
    """Training examples in a dataset directory: the manifest's count when it has one, else the lines."""
    path = Path(directory)
    try:
        counts = json.loads((path / "manifest.json").read_text()).get("counts") or {}
        if isinstance(counts.get("train"), int):
            return counts["train"]
    except (OSError, ValueError, AttributeError):
        pass
    try:
        return sum(1 for line in (path / "train.jsonl").read_bytes().splitlines() if line.strip())
    except OSError:
        return 0


# --- hyperparameters: the provider's names and bounds ---------------------------------------------


@dataclass(frozen=True)
class Bound:
    kind: type
    low: float
    high: float
    low_open: bool = False  # the low end itself is not allowed (a multiplier must be > 0)

    def describe(self) -> str:
        return f"{'more than ' if self.low_open else ''}{self.low:g} to {self.high:g}" + (
            " (a whole number)" if self.kind is int else ""
        )


# Bedrock documents them per base-model family ("Custom model hyperparameters", Bedrock user guide).
BEDROCK_HYPERPARAMETERS: list[tuple[str, dict[str, Bound]]] = [
    (
        "anthropic.claude-3-haiku",
        {
            "epochCount": Bound(int, 1, 10),
            "batchSize": Bound(int, 4, 256),
            "learningRateMultiplier": Bound(float, 0.1, 2),
            "earlyStoppingThreshold": Bound(float, 0, 0.1),
            "earlyStoppingPatience": Bound(int, 1, 10),
        },
    ),
    (
        "amazon.nova-",
        {
            "epochCount": Bound(int, 1, 5),
            "learningRate": Bound(float, 1e-6, 1e-4),
            "learningRateWarmupSteps": Bound(int, 0, 100),
        },
    ),
    (
        "amazon.titan-text-premier",
        {
            "epochCount": Bound(int, 1, 5),
            "batchSize": Bound(int, 1, 1),
            "learningRate": Bound(float, 1e-7, 1e-5),
            "learningRateWarmupSteps": Bound(int, 0, 20),
        },
    ),
    (
        "amazon.titan-text-",
        {
            "epochCount": Bound(int, 1, 10),
            "batchSize": Bound(int, 1, 64),
            "learningRate": Bound(float, 0, 1),
            "learningRateWarmupSteps": Bound(int, 0, 250),
        },
    ),
    (
        "meta.llama",
        {"epochCount": Bound(int, 1, 10), "batchSize": Bound(int, 1, 1), "learningRate": Bound(float, 5e-6, 0.1)},
    ),
]
# OpenAI's supervised fine-tuning ("auto" lets OpenAI choose any of them).
OPENAI_HYPERPARAMETERS: dict[str, Bound] = {
    "n_epochs": Bound(int, 1, 50),
    "batch_size": Bound(int, 1, 256),
    "learning_rate_multiplier": Bound(float, 0, 10, low_open=True),
}


def bedrock_bounds(base_model: str) -> dict[str, Bound] | None:
    model_id = base_model.rsplit("foundation-model/", 1)[-1]
    return next((bounds for prefix, bounds in BEDROCK_HYPERPARAMETERS if model_id.startswith(prefix)), None)


def check_hyperparameters(
    given: dict[str, Any], bounds: dict[str, Bound], where: str, allow_auto: bool = False
) -> dict[str, int | float | str]:
    """Typed values within bounds, or a RetrainError naming every problem."""
    checked, problems = {}, []
    for name, raw in given.items():
        bound = bounds.get(name)
        if bound is None:
            problems.append(f"'{name}' is not a hyperparameter of {where} (known: {', '.join(bounds)})")
            continue
        if allow_auto and raw == "auto":
            checked[name] = "auto"
            continue
        try:
            value = float(raw)
            if bound.kind is int:
                if value != int(value):
                    raise ValueError
                value = int(value)
        except (TypeError, ValueError):
            problems.append(f"{name}={raw}: not a number{' (a whole number is needed)' if bound.kind is int else ''}")
            continue
        if value < bound.low or value > bound.high or (bound.low_open and value == bound.low):
            problems.append(f"{name}={raw} is out of bounds for {where}: {bound.describe()}")
            continue
        checked[name] = value
    if problems:
        raise RetrainError("hyperparameters refused: " + "; ".join(problems))
    return checked


# --- settings -----------------------------------------------------------------------------------


class BedrockSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    region: str | None = None
    endpoint_url: str | None = Field(None, description="the Bedrock control plane (a private endpoint)")
    s3_endpoint_url: str | None = None
    profile: str | None = None
    role_arn: str | None = Field(None, description="the service role Bedrock assumes to read and write the bucket")
    bucket: str | None = Field(None, description="where the dataset is uploaded and the job writes its output")
    prefix: str = "llmgate/retrain"
    base_model: str | None = None
    deployment: Literal["provisioned", "custom_deployment", "none"] = Field(
        "provisioned",
        description="how the trained model is served: provisioned throughput, a custom model "
        "deployment (on demand), or none (register the custom model ARN as it is)",
    )
    model_units: int = Field(1, ge=1, description="provisioned throughput model units")
    serve_like: str | None = Field(
        None,
        description="a configured bedrock backend whose settings (region, runtime "
        "endpoint, credentials) the new backend copies",
    )


class OpenAIProviderSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    backend: str | None = Field(
        None,
        description="a configured openai backend (needed to launch a job): its base_url and api_key make "
        "the fine-tuning calls unless set here, and the new model is registered like it (a key by reference)",
    )
    base_url: str | None = None
    api_key: str | None = None
    base_model: str | None = None


# --- providers ----------------------------------------------------------------------------------


class Provider(ABC):
    """The provider's half of a retraining job. Every method blocks (an SDK call) and returns plain data."""

    name: str
    dataset_format: str

    @abstractmethod
    def base_model(self, given: str | None) -> str: ...

    @abstractmethod
    def check_hyperparameters(self, base_model: str, given: dict[str, Any]) -> dict[str, Any]: ...

    @abstractmethod
    def start(
        self, job_id: str, dataset: Dataset, base_model: str, hyperparameters: dict[str, Any], model_name: str
    ) -> dict[str, Any]:
        """Upload the dataset and create the job; the job record's provider fields (provider_job, ...)."""

    @abstractmethod
    def training(self, job: dict) -> dict[str, Any]:
        """The job's training state: {"status": training|trained|failed|cancelled, "provider_status", ...}."""

    @abstractmethod
    def deploy(self, job: dict) -> dict[str, Any]:
        """Put a trained model in service: {"status": deploying|ready, "serving_model"?, "deployment"?}."""

    @abstractmethod
    def deployment(self, job: dict) -> dict[str, Any]:
        """A deployment's state: {"status": deploying|ready|failed, "serving_model"?, "error"?}."""

    @abstractmethod
    def cancel(self, job: dict) -> dict[str, Any]:
        """Stop the job (or its deployment); the fields to record."""

    @abstractmethod
    def serving_backend(self, job: dict) -> dict[str, Any]:
        """The backend entry that serves the new model (see gateway.admin.registry)."""

    def check_dataset(self, dataset: Dataset, base_model: str | None = None) -> None:
        if dataset.format != self.dataset_format:
            raise RetrainError(
                f"{dataset.path}: the dataset is in {dataset.format} format; {self.name} needs "
                f"{self.dataset_format} (build it with that format)"
            )


class BedrockProvider(Provider):
    """CreateModelCustomizationJob on the dataset uploaded to S3; then provisioned throughput or a deployment."""

    name = "bedrock"
    dataset_format = "bedrock"
    TRAINING = {
        "InProgress": "training",
        "Stopping": "cancelling",
        "Completed": "trained",
        "Failed": "failed",
        "Stopped": "cancelled",
    }

    def __init__(self, settings: BedrockSettings, runtime: dict[str, Any] | None = None):
        self.settings = settings
        self.runtime = runtime or {}  # the serve_like backend's settings, for the region when none is set
        self._clients: dict[str, Any] = {}

    def _client(self, service: str):
        if service not in self._clients:
            import boto3  # start-up: boto3 is slow to import, and only Bedrock jobs need it
            from botocore.config import Config as BotoConfig

            session = boto3.session.Session(profile_name=self.settings.profile) if self.settings.profile else boto3
            region = self.settings.region or self.runtime.get("region")
            endpoint = self.settings.endpoint_url if service == "bedrock" else self.settings.s3_endpoint_url
            self._clients[service] = session.client(
                service, region_name=region, endpoint_url=endpoint, config=BotoConfig(retries={"mode": "standard"})
            )
        return self._clients[service]

    @staticmethod
    def _names(job_id: str) -> str:
        return f"llmgate-{job_id}"

    def base_model(self, given: str | None) -> str:
        model = given or self.settings.base_model
        if not model:
            raise RetrainError("name the base model: --base-model or plugins.retrain.bedrock.base_model")
        return model

    def check_dataset(self, dataset: Dataset, base_model: str | None = None) -> None:
        """Each Bedrock family trains on its own record shape: Claude, Nova, Titan, Llama."""
        wanted = bedrock_format(base_model) if base_model else None
        allowed = {fmt for _, fmt in BEDROCK_FORMATS}
        if (wanted and dataset.format != wanted) or dataset.format not in allowed:
            needs = wanted or " or ".join(sorted(allowed))
            raise RetrainError(
                f"{dataset.path}: the dataset is in {dataset.format} format; bedrock needs {needs}"
                f"{f' for {base_model}' if wanted else ''} (build it with that format)"
            )

    def check_hyperparameters(self, base_model: str, given: dict[str, Any]) -> dict[str, Any]:
        bounds = bedrock_bounds(base_model)
        if bounds is None:
            if given:
                families = ", ".join(prefix for prefix, _ in BEDROCK_HYPERPARAMETERS)
                raise RetrainError(
                    f"no hyperparameter bounds known for {base_model} (known families: {families}); "
                    "launch without hyperparameters to use Bedrock's defaults"
                )
            return {}
        return check_hyperparameters(given, bounds, base_model)

    def start(self, job_id, dataset, base_model, hyperparameters, model_name) -> dict[str, Any]:
        missing = [k for k in ("role_arn", "bucket") if not getattr(self.settings, k)]
        if missing:
            raise RetrainError(
                "bedrock needs "
                + " and ".join(f"plugins.retrain.bedrock.{k} (--{k.replace('_', '-')})" for k in missing)
            )
        bucket, prefix = self.settings.bucket, f"{self.settings.prefix.strip('/')}/{job_id}"
        model_name = re.sub(r"[^0-9A-Za-z]+", "-", model_name).strip("-")[:63]  # Bedrock's name pattern
        s3 = self._client("s3")
        s3.upload_file(str(dataset.train), bucket, f"{prefix}/train.jsonl")
        request: dict[str, Any] = {
            "jobName": self._names(job_id),
            "customModelName": model_name,
            "roleArn": self.settings.role_arn,
            "baseModelIdentifier": base_model,
            "customizationType": "FINE_TUNING",
            "clientRequestToken": job_id,
            "trainingDataConfig": {"s3Uri": f"s3://{bucket}/{prefix}/train.jsonl"},
            "outputDataConfig": {"s3Uri": f"s3://{bucket}/{prefix}/output/"},
            "hyperParameters": {
                k: format(v, "g") if isinstance(v, float) else str(v) for k, v in hyperparameters.items()
            },
        }
        if dataset.validation is not None:
            s3.upload_file(str(dataset.validation), bucket, f"{prefix}/validation.jsonl")
            request["validationDataConfig"] = {"validators": [{"s3Uri": f"s3://{bucket}/{prefix}/validation.jsonl"}]}
        arn = self._client("bedrock").create_model_customization_job(**request)["jobArn"]
        return {
            "provider_job": self._names(job_id),
            "provider_job_arn": arn,
            "custom_model_name": model_name,
            "uploads": f"s3://{bucket}/{prefix}/",
        }

    def training(self, job: dict) -> dict[str, Any]:
        # Looked up by name: the API takes a name or an ARN, and the name works everywhere.
        found = self._client("bedrock").get_model_customization_job(jobIdentifier=job["provider_job"])
        state = {"provider_status": found["status"], "status": self.TRAINING.get(found["status"], "training")}
        if found["status"] == "Completed":
            state["result_model"] = found.get("outputModelArn")
        elif found["status"] == "Failed":
            state["error"] = found.get("failureMessage") or "the customization job failed"
        if metrics := found.get("trainingMetrics"):
            state["metrics"] = metrics
        return state

    def deploy(self, job: dict) -> dict[str, Any]:
        model, client, name = job["result_model"], self._client("bedrock"), self._names(job["id"])
        if self.settings.deployment == "none":
            return {"status": "ready", "serving_model": model}
        if self.settings.deployment == "provisioned":
            arn = client.create_provisioned_model_throughput(
                modelUnits=self.settings.model_units,
                provisionedModelName=name,
                modelId=model,
                clientRequestToken=f"{job['id']}-pt",
            )["provisionedModelArn"]
            return {"status": "deploying", "deployment": {"mode": "provisioned", "arn": arn}}
        arn = client.create_custom_model_deployment(
            modelDeploymentName=name, modelArn=model, clientRequestToken=f"{job['id']}-cd"
        )["customModelDeploymentArn"]
        return {"status": "deploying", "deployment": {"mode": "custom_deployment", "arn": arn}}

    def deployment(self, job: dict) -> dict[str, Any]:
        deployment, client = job["deployment"], self._client("bedrock")
        if deployment["mode"] == "provisioned":
            found = client.get_provisioned_model_throughput(provisionedModelId=deployment["arn"])
            ready, failed = found["status"] == "InService", found["status"] == "Failed"
        else:
            found = client.get_custom_model_deployment(customModelDeploymentIdentifier=deployment["arn"])
            ready, failed = found["status"] == "Active", found["status"] == "Failed"
        state: dict[str, Any] = {
            "provider_status": found["status"],
            "status": "ready" if ready else "failed" if failed else "deploying",
        }
        if ready:
            state["serving_model"] = deployment["arn"]
        if failed:
            state["error"] = found.get("failureMessage") or f"the {deployment['mode']} deployment failed"
        return state

    def cancel(self, job: dict) -> dict[str, Any]:
        client = self._client("bedrock")
        if job.get("deployment"):  # stop paying for throughput nobody will use
            deployment = job["deployment"]
            if deployment["mode"] == "provisioned":
                client.delete_provisioned_model_throughput(provisionedModelId=deployment["arn"])
            else:
                client.delete_custom_model_deployment(customModelDeploymentIdentifier=deployment["arn"])
            return {"status": "cancelled"}
        client.stop_model_customization_job(jobIdentifier=job["provider_job"])
        found = client.get_model_customization_job(jobIdentifier=job["provider_job"])
        return {"provider_status": found["status"], "status": self.TRAINING.get(found["status"], "cancelling")}

    def serving_backend(self, job: dict) -> dict[str, Any]:
        if self.settings.serve_like:
            return {"like": self.settings.serve_like, "model": job["serving_model"]}
        region = self.settings.region or self.runtime.get("region")
        return {"kind": "bedrock", "model": job["serving_model"], "region": region}


class OpenAIProvider(Provider):
    """files.create(purpose="fine-tune") and fine_tuning.jobs.create; the result serves as soon as it exists."""

    name = "openai"
    dataset_format = "openai"
    TRAINING = {
        "validating_files": "training",
        "queued": "training",
        "running": "training",
        "succeeded": "trained",
        "failed": "failed",
        "cancelled": "cancelled",
    }

    def __init__(self, settings: OpenAIProviderSettings, backend: dict[str, Any] | None = None):
        self.settings = settings
        self.backend = backend or {}  # the configured backend named by settings.backend
        self._client = None

    def client(self):
        if self._client is None:
            import openai  # start-up: the SDK is a dependency, imported only when an OpenAI job runs

            base_url = self.settings.base_url or self.backend.get("base_url") or "https://api.openai.com/v1"
            api_key = self.settings.api_key or self.backend.get("api_key")
            if not api_key or api_key == "none":
                raise RetrainError(
                    "openai needs an API key: plugins.retrain.openai.backend (a configured openai "
                    "backend with api_key) or plugins.retrain.openai.api_key: ${OPENAI_API_KEY}"
                )
            self._client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=2, timeout=120)
        return self._client

    def base_model(self, given: str | None) -> str:
        model = given or self.settings.base_model
        if not model:
            raise RetrainError("name the base model: --base-model or plugins.retrain.openai.base_model")
        return model

    def check_hyperparameters(self, base_model: str, given: dict[str, Any]) -> dict[str, Any]:
        return check_hyperparameters(
            given, OPENAI_HYPERPARAMETERS, f"OpenAI fine-tuning of {base_model}", allow_auto=True
        )

    def start(self, job_id, dataset, base_model, hyperparameters, model_name) -> dict[str, Any]:
        self.serving_backend({"serving_model": base_model})  # refused before anything is paid for, not once trained
        client = self.client()
        with dataset.train.open("rb") as f:
            training_file = client.files.create(file=(f"{job_id}-train.jsonl", f), purpose="fine-tune").id
        validation_file = None
        if dataset.validation is not None:
            with dataset.validation.open("rb") as f:
                validation_file = client.files.create(file=(f"{job_id}-validation.jsonl", f), purpose="fine-tune").id
        method = (
            {"type": "supervised", "supervised": {"hyperparameters": hyperparameters}}
            if hyperparameters
            else {"type": "supervised"}
        )
        created = client.fine_tuning.jobs.create(
            model=base_model,
            training_file=training_file,
            method=method,
            suffix=model_name[:64],
            metadata={"llmgate_job": job_id},
            **({"validation_file": validation_file} if validation_file else {}),
        )
        return {
            "provider_job": created.id,
            "provider_status": created.status,
            "training_file": training_file,
            "validation_file": validation_file,
        }

    def training(self, job: dict) -> dict[str, Any]:
        found = self.client().fine_tuning.jobs.retrieve(job["provider_job"])
        state = {"provider_status": found.status, "status": self.TRAINING.get(found.status, "training")}
        if found.status == "succeeded":
            state["result_model"] = found.fine_tuned_model
        elif found.status == "failed":
            state["error"] = found.error.message if found.error else "the fine-tuning job failed"
        if found.trained_tokens:
            state["metrics"] = {"trained_tokens": found.trained_tokens}
        return state

    def deploy(self, job: dict) -> dict[str, Any]:
        return {"status": "ready", "serving_model": job["result_model"]}  # OpenAI serves it at once

    def deployment(self, job: dict) -> dict[str, Any]:
        return {"status": "ready", "serving_model": job["result_model"]}

    def cancel(self, job: dict) -> dict[str, Any]:
        found = self.client().fine_tuning.jobs.cancel(job["provider_job"])
        return {"provider_status": found.status, "status": self.TRAINING.get(found.status, "cancelling")}

    def serving_backend(self, job: dict) -> dict[str, Any]:
        """Served like the configured backend: a registration names its key by reference, never carries one."""
        if not self.settings.backend:
            raise RetrainError(
                "plugins.retrain.openai.backend is not set: name the configured openai backend the trained "
                "model is served like (its base_url and key), since a registration carries no key"
            )
        return {"like": self.settings.backend, "model": job["serving_model"]}
