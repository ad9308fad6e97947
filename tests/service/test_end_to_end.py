"""The service end to end: the API, Redis (DB 5) and a real Celery worker running the offline
SmolLM2-135M model and MiniLM embeddings. Generation is kept short so the suite stays quick."""

from __future__ import annotations

import json

import httpx

from tests.service.conftest import upload, wait_job

EIFFEL_QUESTION = "In which year was the construction of the Eiffel Tower completed?"


def events_of(client: httpx.Client, job_id: str) -> list[tuple[str, dict]]:
    events, kind = [], None
    with client.stream("GET", f"/v1/jobs/{job_id}/events") as stream:
        for line in stream.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                events.append((kind, json.loads(line[6:])))
    return events


def test_ingest_then_ask_cites_the_span_that_holds_the_answer(client, corpus):
    eiffel = corpus["eiffel.txt"]
    listed = client.get("/v1/documents").json()["data"]
    assert {d["filename"] for d in listed} == {"eiffel.txt", "moon.txt", "coffee.txt"}
    assert client.get(f"/v1/documents/{eiffel['id']}").json()["chunks"] >= 1

    for mode in ("auto", "rag"):
        reply = client.post(
            "/v1/qa", json={"question": EIFFEL_QUESTION, "mode": mode, "max_new_tokens": 48}
        )
        assert reply.status_code == 202, reply.text
        job = wait_job(client, reply.json()["id"])
        assert job["status"] == "succeeded", job
        result = job["result"]
        assert result["mode"] == ("full" if mode == "auto" else "retrieved")
        first = result["citations"][0]
        assert first["document"] == eiffel["id"], result
        assert "1889" in first["quote"], first
        assert "1889" in result["answer"], result["answer"]  # the model's words, not a marker qa.py adds


def test_an_agent_job_records_its_trace_and_streams_its_steps(client):
    body = {"task": "Use the calculator to compute 17 * 23.", "tools": ["calculator"], "max_steps": 2,
            "max_new_tokens": 48}  # fmt: skip
    job = client.post("/v1/agent/jobs", json=body).json()
    done = wait_job(client, job["id"])
    assert done["status"] == "succeeded", done
    result = done["result"]
    assert result["steps"] == len(result["trace"])
    assert (result["stopped_reason"], result["steps"]) in {("answer", 1), ("answer", 2), ("max_steps", 2)}
    first = result["trace"][0]
    assert [c["name"] for c in first["calls"]] == ["calculator"], first["text"]
    assert [(r["status"], r["content"]) for r in first["results"]] == [("ok", "391")]
    assert result["trace"][0]["prompt_tokens"] > 0
    steps = [data for kind, data in events_of(client, job["id"]) if kind == "step"]
    assert [s["index"] for s in steps] == list(range(result["steps"]))


def test_a_summary_batch_gives_one_summary_per_document(client, corpus):
    ids = [corpus[name]["id"] for name in ("eiffel.txt", "moon.txt")]
    long_text = "\n\n".join(
        f"Chapter {i}. The harbour town of Vell{i} exports {i * 10} tonnes of salt each year. "
        f"Its mayor, Ana Ruiz{i}, opened a new lighthouse in the spring of year {1900 + i}."
        for i in range(1, 13)
    )
    long_doc = upload(client, "harbours.txt", long_text, collection="long")
    body = {"document_ids": [*ids, long_doc["id"]], "max_new_tokens": 24, "max_input_tokens": 256}
    job = client.post("/v1/summaries", json=body).json()
    done = wait_job(client, job["id"], timeout=300)
    assert done["status"] == "succeeded", done
    documents = done["result"]["documents"]
    assert [d["document"] for d in documents] == body["document_ids"]
    assert all(d["summary"].strip() for d in documents)
    assert [d["mode"] for d in documents] == ["whole", "whole", "map_reduce"]
    assert documents[2]["pieces"] >= 2
    assert done["progress"] == 1.0


def test_cancel_stops_a_running_job_between_decode_steps(client, corpus):
    body = {
        "document_ids": [corpus[n]["id"] for n in ("eiffel.txt", "moon.txt", "coffee.txt")],
        "max_new_tokens": 200,
    }
    job = client.post("/v1/summaries", json=body).json()
    with client.stream("GET", f"/v1/jobs/{job['id']}/events") as stream:
        for line in stream.iter_lines():
            if line == "event: token":
                break
    cancel = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert cancel.status_code == 200 and cancel.json()["cancel_requested"] is True, cancel.text
    done = wait_job(client, job["id"], timeout=60)
    assert done["status"] == "cancelled"
    kinds = [(kind, data) for kind, data in events_of(client, job["id"])]
    asked = next(i for i, (kind, data) in enumerate(kinds) if data.get("cancel_requested"))
    late = sum(kind == "token" for kind, _ in kinds[asked:])
    assert late < 32, f"{late} tokens after the cancel: more than a few decode steps"
    assert len(done["result"]["documents"]) < 3
    assert client.post(f"/v1/jobs/{job['id']}/cancel").json()["status"] == "cancelled"  # idempotent


def test_a_deleted_document_is_gone_from_the_listing_and_from_questions(client):
    reply = client.post("/v1/documents", files={"file": ("NOTES", b"Scratch notes about llamas.", "text/plain")},
                        data={"collection": "scratch"})  # fmt: skip
    document = wait_job(client, reply.json()["id"])["result"]["document"]
    assert document["filename"] == "NOTES.txt"  # named by its content type
    deleted = client.delete(f"/v1/documents/{document['id']}")
    assert deleted.status_code == 202
    assert wait_job(client, deleted.json()["id"])["status"] == "succeeded"
    assert client.get(f"/v1/documents/{document['id']}").status_code == 404
    assert client.get("/v1/documents", params={"collection": "scratch"}).json()["data"] == []
    gone = client.post("/v1/qa", json={"question": "llamas?", "document_ids": [document["id"]]})
    assert gone.status_code == 404
