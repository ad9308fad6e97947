"""Documents: upload (ingested by the CPU worker), list, get, delete.

Uploads are checked before anything is written: not empty, not over the size limit, a known
type, text that decodes as UTF-8, a PDF that opens. The file is stored under
`data_dir/uploads/<sha256>/<cleaned name>`; the client's name is reduced to a plain base name,
so no upload path can leave the data folder.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import tempfile
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Query, Request, Response, UploadFile
from pydantic import BaseModel

from api.deps import IdempotencyKey, JobsDep, Principal, SettingsDep, submit
from api.errors import ApiError
from api.schemas import JobPublic, job_public
from workers.contracts import DeleteDocumentRequest, DocumentRecord, IngestRequest, JobKind

router = APIRouter(prefix="/v1/documents", tags=["documents"])
SUFFIXES = {
    ".txt": "text",
    ".md": "text",
    ".markdown": "text",
    ".html": "text",
    ".htm": "text",
    ".pdf": "pdf",
}
TYPE_SUFFIXES = {
    "text/plain": ".txt",
    "text/markdown": ".md",
    "text/html": ".html",
    "application/pdf": ".pdf",
}
_CHUNK = 1 << 20


class DocumentList(BaseModel):
    object: str = "list"
    data: list[DocumentRecord]


def clean_filename(name: str | None) -> str:
    base = re.split(r"[\\/]", name or "")[-1]
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", base).strip("._") or "document"
    stem, suffix = os.path.splitext(base)
    return stem[:100] + suffix.lower()[:10]


def read_limited(upload: UploadFile, limit: int) -> bytes:
    data = bytearray()
    while chunk := upload.file.read(_CHUNK):
        data += chunk
        if len(data) > limit:
            raise ApiError(
                413, f"the file is larger than the limit of {limit} bytes", code="file_too_large"
            )
    return bytes(data)


def check_content(data: bytes, suffix: str) -> None:
    if not data.strip():
        raise ApiError(400, "the file is empty", code="empty_file")
    if SUFFIXES[suffix] == "pdf":
        check_pdf(data)
        return
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(
            400,
            f"a {suffix} file must be UTF-8 text (byte {exc.start} is not)",
            code="bad_encoding",
        ) from None


def check_pdf(data: bytes) -> None:
    from pypdf import PdfReader

    if not data.startswith(b"%PDF-"):
        raise ApiError(400, "broken PDF: it does not start with %PDF-", code="broken_pdf")
    try:
        reader = PdfReader(io.BytesIO(data), strict=False)
        if len(reader.pages) == 0:
            raise ValueError("no pages")
        reader.pages[0].extract_text()
    except ApiError:
        raise
    except Exception as exc:  # pypdf raises many types for damaged files
        raise ApiError(400, f"broken PDF: {exc}", code="broken_pdf") from None


def store_upload(data_dir: Path, digest: str, filename: str, data: bytes) -> str:
    relative = Path("uploads") / digest / filename
    target = data_dir / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        with tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as tmp:
            tmp.write(data)
        os.replace(tmp.name, target)
    return relative.as_posix()


@router.post("", status_code=202, response_model=JobPublic)
def upload_document(
    request: Request,
    response: Response,
    principal: Principal,
    settings: SettingsDep,
    file: Annotated[UploadFile, File(description="txt, md, html or pdf")],
    collection: Annotated[
        str, Form(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.-]+$")
    ] = "default",
    key: IdempotencyKey = None,
) -> Any:
    """Upload a document; the returned ingest job's result names the new document."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > settings.max_upload_bytes + 64 * 1024:
        raise ApiError(
            413,
            f"the request is larger than the limit of {settings.max_upload_bytes} bytes",
            code="file_too_large",
        )
    filename = clean_filename(file.filename)
    suffix = os.path.splitext(filename)[1]
    by_type = TYPE_SUFFIXES.get((file.content_type or "").split(";")[0].strip().lower())
    if suffix not in SUFFIXES and by_type:  # "LICENSE" sent as text/plain
        filename, suffix = filename + by_type, by_type
    if suffix not in SUFFIXES:
        raise ApiError(
            415,
            f"unsupported file type {suffix or '(none)'!r}; use one of {', '.join(SUFFIXES)}",
            code="unsupported_type",
        )
    data = read_limited(file, settings.max_upload_bytes)
    check_content(data, suffix)
    digest = hashlib.sha256(data).hexdigest()
    path = store_upload(settings.data_dir, digest, filename, data)
    body = IngestRequest(
        path=path, filename=filename, collection=collection, sha256=digest, size=len(data)
    )
    return job_public(submit(request, response, JobKind.ingest, body, principal, key))


@router.get("", response_model=DocumentList)
def list_documents(
    jobs: JobsDep, _: Principal, collection: Annotated[str | None, Query(max_length=100)] = None
) -> Any:
    return {"object": "list", "data": jobs.list_documents(collection)}


@router.get("/{document_id}", response_model=DocumentRecord)
def get_document(document_id: str, jobs: JobsDep, _: Principal) -> Any:
    record = jobs.get_document(document_id)
    if record is None:
        raise ApiError(404, f"no document with id {document_id!r}", code="document_not_found")
    return record


@router.delete("/{document_id}", status_code=202, response_model=JobPublic)
def delete_document(
    document_id: str,
    request: Request,
    response: Response,
    jobs: JobsDep,
    principal: Principal,
    key: IdempotencyKey = None,
) -> Any:
    """Delete a document from the index (a CPU job; the listing drops it when the job ends)."""
    if jobs.get_document(document_id) is None:
        raise ApiError(404, f"no document with id {document_id!r}", code="document_not_found")
    return job_public(
        submit(
            request,
            response,
            JobKind.delete_document,
            DeleteDocumentRequest(document_id=document_id),
            principal,
            key,
        )
    )
