"""Celery workers: the GPU queue runs model jobs, the CPU queue ingests documents.

Importing this package imports nothing heavy; the Celery app is `workers.celery_app:app` and the
API only ever imports `workers.contracts` and `workers.jobstore`.
"""
