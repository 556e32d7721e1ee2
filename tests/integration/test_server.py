"""The FastAPI service through TestClient: valid requests, every bad input (4xx naming the field), never a crash."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from dllm2rec.data import SeqDataset, make_split  # noqa: E402
from dllm2rec.serving.app import create_app  # noqa: E402
from dllm2rec.serving.bundle import export_bundle  # noqa: E402
from dllm2rec.serving.recommender import Recommender  # noqa: E402
from dllm2rec.students import build_student  # noqa: E402
from dllm2rec.students.checkpoint import save_student  # noqa: E402

N, L = 25, 4


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("srv")
    sp = make_split([[1, 2], [3, 4, 5]], [3, 6], N, L)
    ds = SeqDataset("tiny-srv", N, L, [f"Film {i}" for i in range(N)], {"train": sp, "valid": sp, "test": sp})
    torch.manual_seed(0)
    model = build_student("gru4rec", N, max_len=L, dim=8)
    save_student(model, tmp / "run" / "best", meta={"dataset": "tiny-srv", "dataset_fingerprint": ds.fingerprint(),
                                                    "metrics": {"valid/full/NDCG@20": 0.31}})
    export_bundle(tmp / "run", ds, tmp / "bundle")
    return tmp / "bundle"


@pytest.fixture(scope="module")
def client(bundle):
    app = create_app(bundle, max_batch=4)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def test_healthz_metadata_openapi(client, bundle):
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok", "model": "gru4rec", "n_items": N, "backend": "torch"}
    md = client.get("/metadata").json()
    assert md["model"]["name"] == "gru4rec"
    assert md["dataset"]["name"] == "tiny-srv" and len(md["dataset"]["fingerprint"]) == 16
    assert md["selected"]["metrics"] == {"valid/full/NDCG@20": 0.31}
    assert md["max_batch"] == 4
    spec = client.get("/openapi.json").json()
    assert "/recommend" in spec["paths"] and "RecommendRequest" in spec["components"]["schemas"]
    assert client.get("/docs").status_code == 200


def test_single_and_batch(client, bundle):
    rec = Recommender.load(bundle)
    r = client.post("/recommend", json={"history": [1, 2, 3], "k": 5})
    assert r.status_code == 200
    body = r.json()
    ref = rec.recommend_one([1, 2, 3], k=5)
    assert body["ids"] == ref.ids and body["titles"] == ref.titles and len(body["scores"]) == 5
    assert not {1, 2, 3} & set(body["ids"])
    r = client.post("/recommend", json={"history": ["Film 1", "Film 2", 3], "k": 5})
    assert r.json()["ids"] == ref.ids
    r = client.post("/recommend", json={"histories": [[1, 2, 3], ["Film 7"]], "k": 3, "exclude_history": False})
    assert r.status_code == 200
    res = r.json()["results"]
    assert len(res) == 2 and [x["ids"] for x in res] == [x.ids for x in rec.recommend([[1, 2, 3], [7]], 3, False)]
    long = list(range(20))  # longer than L: truncated to the last L, as in training
    assert client.post("/recommend", json={"history": long, "k": 3}).status_code == 200
    assert len(client.post("/recommend", json={"history": [0]}).json()["ids"]) == 10  # default k


BAD = [
    ({"history": [1, 999], "k": 3}, 422, "history[1]", "unknown item id 999"),
    ({"history": [-3]}, 422, "history[0]", "unknown item id -3"),
    ({"history": ["Film 1", "Nope"]}, 422, "history[1]", "unknown item title 'Nope'"),
    ({"histories": [[1], [2, "Nope"]]}, 422, "histories[1][1]", "unknown item title 'Nope'"),
    ({"history": ["5"]}, 422, "history[0]", "item ids must be given as integers"),
    ({"history": []}, 422, "history", "at least 1 item"),
    ({"histories": []}, 422, "histories", "at least 1 item"),
    ({"histories": [[1], []]}, 422, "histories[1]", "at least 1 item"),
    ({"history": [1], "k": 0}, 422, "k", "greater than 0"),
    ({"history": [1], "k": -2}, 422, "k", "greater than 0"),
    ({"history": [1], "k": N + 1}, 422, "k", f"between 1 and the number of items ({N})"),
    ({"history": [1], "k": "5"}, 422, "k", "valid integer"),
    ({"history": [1], "k": 2.5}, 422, "k", "valid integer"),
    ({"history": [1], "exclude_history": "yes"}, 422, "exclude_history", "valid boolean"),
    ({"history": "Film 1"}, 422, "history", "valid list"),
    ({"history": [1.5]}, 422, "history[0]", "valid"),
    ({"history": [True]}, 422, "history[0]", "valid"),
    ({"history": [None]}, 422, "history[0]", "valid"),
    ({"history": [[1]]}, 422, "history[0]", "valid"),
    ({"histories": [1, 2]}, 422, "histories[0]", "valid list"),
    ({"history": [1], "histories": [[1]]}, 422, "history", "exactly one of"),
    ({"k": 3}, 422, "history", "exactly one of"),
    ({"history": [1], "user": 7}, 422, "user", "Extra inputs"),
    ({"histories": [[1]] * 5}, 413, "histories", "batch of 5 exceeds max_batch=4"),
]


@pytest.mark.parametrize("payload,status,field,message", BAD)
def test_bad_input_is_4xx_naming_the_field(client, payload, status, field, message):
    r = client.post("/recommend", json=payload)
    assert r.status_code == status, r.text
    body = r.json()
    assert body["field"] == field, body
    assert body["error"].startswith(field) and message in body["error"], body


@pytest.mark.parametrize("raw,ctype", [(b'{"history": [1, 2', "application/json"), (b"[]", "application/json"),
                                       (b"null", "application/json"), (b"history=1", "text/plain"), (b"", None)])
def test_malformed_bodies(client, raw, ctype):
    headers = {"content-type": ctype} if ctype else {}
    r = client.post("/recommend", content=raw, headers=headers)
    assert 400 <= r.status_code < 500, (raw, r.status_code, r.text)
    assert r.json()["error"]


def test_wrong_method_and_path(client):
    assert client.get("/recommend").status_code == 405
    assert client.post("/nope", json={}).status_code == 404


def test_server_survives_everything(client):
    for payload, *_ in BAD:
        client.post("/recommend", json=payload)
    assert client.get("/healthz").status_code == 200
    assert client.post("/recommend", json={"history": [1]}).status_code == 200


def test_onnx_backend_app(bundle):
    pytest.importorskip("onnxruntime")
    with TestClient(create_app(bundle, backend="onnx")) as c:
        a = c.post("/recommend", json={"history": [1, 2], "k": 4}).json()
        assert c.get("/healthz").json()["backend"] == "onnx"
    assert a["ids"] == Recommender.load(bundle).recommend_one([1, 2], k=4).ids


def test_history_length_cap_and_internal_errors_are_contained(bundle):
    rec = Recommender.load(bundle)
    app = create_app(rec, max_batch=4, max_history_len=3)
    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.post("/recommend", json={"history": [1, 2, 3, 4]})
        assert r.status_code == 413 and r.json()["field"] == "history"
        r = c.post("/recommend", json={"histories": [[1], [1, 2, 3, 4]]})
        assert r.status_code == 413 and r.json()["field"] == "histories[1]"

        def boom(*a, **k):
            raise RuntimeError("secret internals")

        rec.recommend_one = boom  # an unexpected failure inside the model call
        r = c.post("/recommend", json={"history": [1]})
        assert r.status_code == 500 and r.json()["error"] == "internal error: RuntimeError"
        assert "secret" not in r.text
        assert c.get("/healthz").status_code == 200
