"""The HTTP API (FastAPI): documents, QA, agent jobs, summaries, job status and events,
OpenAI-compatible chat completions, health and metrics.

It enqueues work by Celery task name and reads job state from Redis; it never imports the
model, the indexes or the worker code (its only project imports are `workers.contracts` and
`workers.jobstore`; import-linter checks it, indirect imports included).
Build it with `api.main.create_app()`; `longctx serve` runs it under uvicorn.
"""
