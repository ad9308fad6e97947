"""What the API and the workers agree on: settings, task names, queues, job and request schemas.

The API imports only this module and `workers.jobstore` (import-linter contracts keep it so);
both depend on pydantic, pydantic-settings and redis, never on the model, the indexes or the
worker code. Tasks are sent by name (`TASK_NAMES`) to the queue of their kind (`QUEUES`); the
message carries only the job id, the request lives in the job record (see `workers.jobstore`).
"""

from __future__ import annotations

import json
from enum import Enum
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import platformdirs
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Configuration of the API and the workers, from `LONGCTX_*` environment variables."""

    model_config = SettingsConfigDict(
        env_prefix="LONGCTX_", extra="ignore", protected_namespaces=()
    )

    redis_url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = "longctx"
    # Uploads and the document store; the same default as `longctx ingest` (the user data folder).
    data_dir: Path = Field(default_factory=lambda: Path(platformdirs.user_data_dir("longctx")))
    model_path: str | None = None  # None: the offline default (Qwen2.5-Coder-0.5B-Instruct GGUF); or a shipped model name
    model_name: str = "longctx"  # the id /v1/models reports and chat requests may name
    engine_factory: str = "model_core:load_engine"  # "module:function(path, dtype=, device=)"
    device: str = "cpu"
    dtype: str = "float32"
    attention: str | None = None  # attention backend (eager, sdpa, flash, ...); None: by device
    long_context: Literal["none", "yarn", "dca"] | None = None  # None: as config.json says
    dca_chunk_size: int | None = None  # DCA sizes (None: config.json or 3/4 and 1/16 of trained)
    dca_local_size: int | None = None
    yarn_factor: float | None = None
    quantize: Literal["gguf", "int8", "int4", "int4x2", "bf16", "none"] | None = None  # None: GGUF files quantized ("gguf"), folders float
    api_keys: str = ""  # comma-separated bearer keys; empty: no authentication
    enable_python_tool: bool = False  # the agent's sandboxed Python tool (off unless enabled)
    max_upload_bytes: int = 20 * 1024 * 1024
    max_prompt_chars: int = 1_000_000  # cheap bound in the API; the worker checks the token window
    max_new_tokens_limit: int = 4096
    max_prompt_tokens: int | None = (
        None  # chat prompts over this many tokens: 400 (None: the window)
    )
    rate_limit_per_minute: int = 600  # requests per client per minute; 0: unlimited
    job_ttl_s: int = 7 * 24 * 3600
    visibility_timeout_s: int = 4 * 3600  # above the hard time limit: no redelivery of live jobs
    task_soft_time_limit_s: int = 3 * 3600
    task_time_limit_s: int = 3 * 3600 + 300
    result_expires_s: int = 24 * 3600
    lease_s: float = 60.0  # a running job whose worker is silent this long is failed
    heartbeat_s: float = 5.0
    cancel_poll_s: float = 0.25
    reaper_interval_s: float = 5.0
    requeue_after_s: float = 600.0  # a queued job unclaimed this long after its send is re-sent
    max_attempts: int = 3  # deliveries of one job before it is failed (no redelivery loops)
    sync_wait_s: float = 600.0  # how long /v1/chat/completions waits for its job
    redis_timeout_s: float = 5.0

    def engine_options(self) -> dict[str, Any]:
        """Keyword arguments for `model_core.load_engine` beyond path, dtype and device (set ones only)."""
        options: dict[str, Any] = {}
        if self.attention:
            options["attention"] = self.attention
        if self.long_context:
            options["long_context"] = self.long_context
        sizes = {"chunk_size": self.dca_chunk_size, "local_size": self.dca_local_size,
                 "factor": self.yarn_factor}
        if any(value is not None for value in sizes.values()):
            options["long_context_options"] = {k: v for k, v in sizes.items() if v is not None}
        if self.quantize:
            options["quantize"] = self.quantize
        return options

    def api_key_list(self) -> list[str]:
        return [key.strip() for key in self.api_keys.split(",") if key.strip()]


@lru_cache
def get_settings() -> Settings:
    return Settings()


class JobKind(str, Enum):
    ingest = "ingest"
    delete_document = "delete_document"
    qa = "qa"
    agent = "agent"
    summarize = "summarize"
    chat = "chat"


class JobStatus(str, Enum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


TERMINAL = frozenset({JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled})
TASK_NAMES: dict[JobKind, str] = {kind: f"longctx.{kind.value}" for kind in JobKind}
QUEUES: dict[JobKind, str] = {
    JobKind.ingest: "cpu",
    JobKind.delete_document: "cpu",
    JobKind.qa: "gpu",
    JobKind.agent: "gpu",
    JobKind.summarize: "gpu",
    JobKind.chat: "gpu",
}


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings shared by the producer (API) and the consumers (workers)."""
    from kombu import Queue

    return {
        "broker_url": settings.redis_url,
        "result_backend": settings.redis_url,
        "task_queues": (Queue("gpu"), Queue("cpu")),
        "task_default_queue": "cpu",
        "task_routes": {TASK_NAMES[kind]: {"queue": QUEUES[kind]} for kind in JobKind},
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_acks_late": True,  # a crash mid-task redelivers the message
        "task_reject_on_worker_lost": True,  # ...even when the child was killed by a signal
        "worker_prefetch_multiplier": 1,  # one long GPU job must not hold others back
        "task_track_started": True,
        "task_soft_time_limit": settings.task_soft_time_limit_s,
        "task_time_limit": settings.task_time_limit_s,
        "result_expires": settings.result_expires_s,
        "broker_transport_options": {"visibility_timeout": settings.visibility_timeout_s},
        "result_backend_transport_options": {"visibility_timeout": settings.visibility_timeout_s},
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,  # keep reconnecting while Redis is away
        "broker_connection_timeout": 2,
        "task_publish_retry_policy": {
            "max_retries": 2,
            "interval_start": 0,
            "interval_step": 0.2,
            "interval_max": 0.5,
        },
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "worker_hijack_root_logger": False,
    }


# ---- requests carried by jobs (validated by the API, read again by the worker) ----


class IngestRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str  # relative to data_dir; written by the API, never chosen by the client
    filename: str
    collection: str = "default"
    sha256: str
    size: int


class DeleteDocumentRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    document_id: str


class QARequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    question: str = Field(min_length=1, max_length=20_000)
    collection: str | None = None
    document_ids: list[str] | None = Field(default=None, max_length=1000)
    mode: Literal["auto", "stuff", "rag"] = "auto"
    max_new_tokens: int = Field(default=256, ge=1, le=8192)
    top_k: int = Field(default=6, ge=1, le=100)


class AgentRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    task: str = Field(min_length=1, max_length=50_000)
    tools: list[Literal["search", "read", "calculator", "python"]] = Field(
        default=["search", "read", "calculator"], max_length=4
    )
    max_steps: int = Field(default=6, ge=1, le=32)
    max_new_tokens: int = Field(default=256, ge=1, le=8192)
    collection: str | None = Field(default=None, max_length=200)  # search only this collection


class SummarizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    document_ids: list[str] = Field(min_length=1, max_length=1000)
    max_new_tokens: int = Field(default=200, ge=1, le=8192)
    instructions: str | None = Field(default=None, max_length=2000)
    max_input_tokens: int | None = Field(
        default=None, ge=256, description="tokens per model call (default: the window)"
    )

    @field_validator("document_ids")
    @classmethod
    def _unique(cls, ids: list[str]) -> list[str]:
        return list(dict.fromkeys(ids))


class ChatRequest(BaseModel):
    """The subset of OpenAI's chat completion request the engine honours; unknown fields pass."""

    model_config = ConfigDict(extra="allow")
    model: str
    messages: list[dict[str, Any]] = Field(min_length=1)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int | None = Field(default=None, ge=1, le=1)
    stream: bool | None = False
    stream_options: dict[str, Any] | None = None
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)

    @field_validator("messages")
    @classmethod
    def _renderable(cls, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Refuse in the API what the worker could not render (roles, content parts, arguments)."""
        for index, message in enumerate(messages):
            if message.get("role") not in CHAT_ROLES:
                raise ValueError(f"message {index}: role must be one of {', '.join(CHAT_ROLES)}")
            content = message.get("content")
            parts = content if isinstance(content, list) else []
            if not (content is None or isinstance(content, (str, list))) or any(
                not isinstance(p, dict)
                or p.get("type") != "text"
                or not isinstance(p.get("text", ""), str)
                for p in parts
            ):
                raise ValueError(
                    f"message {index}: content must be a string or a list of text parts"
                )
            for call in message.get("tool_calls") or []:
                arguments = (
                    (call.get("function") or {}).get("arguments")
                    if isinstance(call, dict)
                    else None
                )
                if isinstance(arguments, str) and arguments.strip():
                    try:
                        json.loads(arguments)
                    except ValueError:
                        raise ValueError(
                            f"message {index}: tool call arguments are not JSON"
                        ) from None
        return messages


CHAT_ROLES = ("system", "developer", "user", "assistant", "tool")

REQUEST_TYPES: dict[JobKind, type[BaseModel]] = {
    JobKind.ingest: IngestRequest,
    JobKind.delete_document: DeleteDocumentRequest,
    JobKind.qa: QARequest,
    JobKind.agent: AgentRequest,
    JobKind.summarize: SummarizeRequest,
    JobKind.chat: ChatRequest,
}


# ---- job records ----


class JobError(BaseModel):
    type: str
    message: str
    user_error: bool = False


class Job(BaseModel):
    id: str
    kind: JobKind
    status: JobStatus
    progress: float = 0.0
    progress_message: str | None = None
    request: dict[str, Any] = {}
    result: Any = None
    error: JobError | None = None
    attempts: int = 0
    worker: str | None = None
    cancel_requested: bool = False
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    updated_at: float


class DocumentRecord(BaseModel):
    """What the API lists about a document; written by the ingest worker."""

    id: str
    source: str
    filename: str
    collection: str
    sha256: str
    size: int
    kind: str | None = None
    title: str | None = None
    chars: int | None = None
    chunks: int | None = None
    pages: int | None = None
    created_at: float
