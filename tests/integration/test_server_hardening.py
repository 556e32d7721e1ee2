"""Bundle manifests (schema, confined paths, every loaded file listed + verified) and the HTTP service under hostile
input: body cap before parsing, strict JSON, no 500 / no logged traceback for a client error, keep-alive kept,
inference off the event loop (/healthz answers while a batch is scored), 503 when saturated."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import threading

import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from dllm2rec.data import SeqDataset, make_split  # noqa: E402
from dllm2rec.errors import ArtifactError  # noqa: E402
from dllm2rec.serving.app import create_app  # noqa: E402
from dllm2rec.serving.bundle import export_bundle, load_bundle, read_manifest  # noqa: E402
from dllm2rec.serving.recommender import Recommender  # noqa: E402
from dllm2rec.students import build_student  # noqa: E402
from dllm2rec.students.checkpoint import save_student  # noqa: E402

N, L = 25, 4


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hard")
    sp = make_split([[1, 2], [3, 4, 5]], [3, 6], N, L)
    ds = SeqDataset("tiny-hard", N, L, [f"Film {i}" for i in range(N)], {"train": sp, "valid": sp, "test": sp})
    torch.manual_seed(0)
    save_student(build_student("gru4rec", N, max_len=L, dim=8), tmp / "run" / "best",
                 meta={"dataset_fingerprint": ds.fingerprint()})
    export_bundle(tmp / "run", ds, tmp / "bundle")
    return tmp


@pytest.fixture()
def bundle(built, tmp_path):
    b = tmp_path / "bundle"
    shutil.copytree(built / "bundle", b)
    return b


def edit_manifest(bundle, fn):
    m = json.loads((bundle / "manifest.json").read_text())
    fn(m)
    (bundle / "manifest.json").write_text(json.dumps(m))


def entry(path):
    data = path.read_bytes()
    return {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def one_line_artifact_error(fn, *needles):
    with pytest.raises(ArtifactError) as e:
        fn()
    msg = str(e.value)
    assert "\n" not in msg and len(msg) < 400, msg
    for n in needles:
        assert n in msg, (n, msg)
    return msg


# ------------------------------------------------------------------------------------------- bundle manifest
@pytest.mark.parametrize("field,value,needle", [
    ("format_version", "one", "format_version"),
    ("format_version", 0, "format_version"),
    ("files", ["model.safetensors", "student.json"], "files"),
    ("files", None, "files"),
    ("onnx", "model.onnx", "onnx"),
])
def test_malformed_manifest_is_one_line(bundle, field, value, needle):
    edit_manifest(bundle, lambda m: m.__setitem__(field, value))
    one_line_artifact_error(lambda: read_manifest(bundle), "manifest.json", needle)
    one_line_artifact_error(lambda: Recommender.load(bundle))


def test_bad_file_record_is_one_line(bundle):
    edit_manifest(bundle, lambda m: m["files"]["items.json"].__setitem__("sha256", "zz"))
    one_line_artifact_error(lambda: read_manifest(bundle), "files['items.json'].sha256")


@pytest.mark.parametrize("name", ["../secret.json", "/etc/passwd", "a/../../secret.json", "./items.json", ""])
def test_manifest_paths_are_confined_to_the_bundle(bundle, name):
    secret = bundle.parent / "secret.json"
    secret.write_text("[]")
    edit_manifest(bundle, lambda m: m["files"].__setitem__(name, entry(secret)))
    one_line_artifact_error(lambda: read_manifest(bundle), "not a plain relative path")


def test_symlink_escaping_the_bundle_is_refused(bundle):
    outside = bundle.parent / "outside.json"
    shutil.copy(bundle / "items.json", outside)
    os.remove(bundle / "items.json")
    os.symlink(outside, bundle / "items.json")  # same bytes, same hash: only the location is wrong
    one_line_artifact_error(lambda: load_bundle(bundle), "outside the bundle directory")


def test_onnx_must_be_listed_and_verified(bundle, built, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    sp = make_split([[1, 2]], [3], N, L)
    ds = SeqDataset("tiny-hard", N, L, [f"Film {i}" for i in range(N)], {"train": sp, "valid": sp, "test": sp})
    export_bundle(built / "run", ds, tmp_path / "ob", onnx=True, verify_dataset=False)
    onnx_bytes = (tmp_path / "ob" / "model.onnx").read_bytes()
    ref = Recommender.load(tmp_path / "ob", backend="onnx").recommend_one([1, 2], k=3).ids
    # 1) a model.onnx the manifest does not list is never loaded
    (bundle / "model.onnx").write_bytes(onnx_bytes)
    one_line_artifact_error(lambda: Recommender.load(bundle, backend="onnx"), "model.onnx", "not listed")
    # 2) listed but modified afterwards: the hash check catches it
    (tmp_path / "ob" / "model.onnx").write_bytes(onnx_bytes[:-1] + bytes([onnx_bytes[-1] ^ 1]))
    one_line_artifact_error(lambda: Recommender.load(tmp_path / "ob", backend="onnx"), "model.onnx", "sha256")
    # 3) the manifest names an ONNX file that 'files' does not list
    edit_manifest(bundle, lambda m: m.__setitem__("onnx", {"file": "model.onnx"}))
    one_line_artifact_error(lambda: read_manifest(bundle), "does not list model.onnx")
    # 4) listed and verified: used
    edit_manifest(bundle, lambda m: m["files"].__setitem__("model.onnx", entry(bundle / "model.onnx")))
    assert Recommender.load(bundle, backend="onnx").recommend_one([1, 2], k=3).ids == ref


# ------------------------------------------------------------------------------------------- HTTP: hostile bodies
@pytest.fixture(scope="module")
def client(built):
    with TestClient(create_app(built / "bundle", max_batch=4, max_body_bytes=4096),
                    raise_server_exceptions=False) as c:
        yield c


HOSTILE = [
    (b'{"history": [NaN]}', "body"),
    (b'{"history": [1], "k": Infinity}', "body"),
    (b'{"history": [-Infinity]}', "body"),
    (b'{"history": [1e400]}', "body"),
    (b'{"history": [' + b"9" * 3000 + b"]}", "history[0]"),
    (b'{"history": [' + b"9" * 5000 + b"]}", "body"),
    (b'{"history": [1], "k": 123456789012345678901234567890}', "k"),
    (b"[" * 2000 + b"]" * 2000, "body"),
    (b'{"history": ' + b"[" * 1500 + b"]" * 1500 + b"}", "body"),
    (b'{"history": ["\xff\xfe"]}', "body"),
    (b'{"history": [1], "\\ud800": 1}', "body"),
    (b'{"history": ["\\udc00 lone"]}', "history[0]"),
    (b'{"history": [1]} trailing', "body"),
    (b"   ", "body"),
]


@pytest.mark.parametrize("raw,field", HOSTILE, ids=[str(i) for i in range(len(HOSTILE))])
def test_hostile_json_is_a_4xx_in_the_documented_format(client, caplog, raw, field):
    caplog.set_level(logging.DEBUG)
    r = client.post("/recommend", content=raw, headers={"content-type": "application/json"})
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:300])
    body = r.json()
    assert set(body) >= {"error", "field"} and body["field"] == field, body
    assert body["error"].startswith(field) and "\n" not in body["error"] and len(r.content) < 4000, body
    assert not [rec for rec in caplog.records if rec.exc_info or rec.levelno >= logging.ERROR]


def test_body_cap_is_enforced_before_parsing(client, caplog):
    caplog.set_level(logging.DEBUG)
    big = json.dumps({"history": [1] * 3000}).encode()  # > 4096 bytes, otherwise valid
    r = client.post("/recommend", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json() == {"error": "body: request body exceeds max_body_bytes=4096",
                                                 "field": "body"}

    def chunks():  # no Content-Length: counted as it arrives
        for _ in range(10):
            yield b" " * 1000

    r = client.post("/recommend", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["field"] == "body"
    assert client.post("/recommend", json={"history": [1]}).status_code == 200
    bom = client.post("/recommend", content=b'\xef\xbb\xbf{"history": [1]}',
                      headers={"content-type": "application/json"})
    assert bom.status_code == 200  # a leading byte-order mark is tolerated (RFC 8259), as before
    assert not [rec for rec in caplog.records if rec.exc_info]


def test_many_bad_items_fail_fast(built):
    with TestClient(create_app(built / "bundle", max_history_len=10**6), raise_server_exceptions=False) as c:
        r = c.post("/recommend", content=b'{"history": [' + b",".join([b"1.5"] * 200_000) + b"]}",
                   headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["field"] == "history[0]", r.text[:300]


def test_non_json_content_type_and_unknown_routes_use_the_error_format(client):
    r = client.post("/recommend", content=b'{"history": [1]}', headers={"content-type": "text/plain"})
    assert r.status_code == 415 and r.json()["field"] == "body"
    r = client.get("/nope")
    assert r.status_code == 404 and set(r.json()) >= {"error", "field"}


# ------------------------------------------------------------------------------------------- keep-alive (uvicorn)
def _read_response(f):
    status = int(f.readline().split()[1])
    headers = {}
    while (line := f.readline().strip()):
        k, _, v = line.decode().partition(":")
        headers[k.strip().lower()] = v.strip()
    return status, headers, f.read(int(headers["content-length"]))


def test_connection_survives_bad_bodies_on_a_real_server(built, caplog):
    uvicorn = pytest.importorskip("uvicorn")
    caplog.set_level(logging.DEBUG)
    app = create_app(built / "bundle", max_batch=4)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    th = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    th.start()
    try:
        for _ in range(500):
            if server.started:
                break
            threading.Event().wait(0.02)
        conn = socket.create_connection(sock.getsockname(), timeout=30)
        f = conn.makefile("rb")
        for raw in [b'{"history": [NaN]}', b'{"history": [1e999]}', b"[" * 5000, b'{"history": ["\xff"]}',
                    b'{"history": [1]}']:
            conn.sendall(b"POST /recommend HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                         b"Content-Length: " + str(len(raw)).encode() + b"\r\n\r\n" + raw)
            status, headers, body = _read_response(f)  # same socket every time: the connection was kept
            assert status == (200 if raw == b'{"history": [1]}' else 422), body
            assert headers.get("connection", "keep-alive") != "close"
        conn.close()
    finally:
        server.should_exit = True
        th.join(30)
    assert not [rec for rec in caplog.records if rec.exc_info or rec.levelno >= logging.ERROR]


# ------------------------------------------------------------------------------------------- off the event loop
def _blocking(rec):
    entered, release, order = threading.Event(), threading.Event(), []
    real = rec.recommend

    def slow(*a, **k):  # the inference thread blocks here until the test releases it
        entered.set()
        release.wait(10)
        order.append("scored")
        return real(*a, **k)

    rec.recommend = slow
    return entered, release, order


def test_healthz_is_answered_while_a_batch_is_being_scored(built):
    rec = Recommender.load(built / "bundle")
    entered, release, order = _blocking(rec)
    results = []
    with TestClient(create_app(rec, max_batch=4)) as c:
        t = threading.Thread(target=lambda: results.append(c.post("/recommend", json={"histories": [[1], [2]]})))
        t.start()
        assert entered.wait(10)
        assert c.get("/healthz").status_code == 200 and c.get("/metadata").status_code == 200
        order.append("healthz")  # before the scoring thread was released: the event loop was free
        release.set()
        t.join(10)
    assert order == ["healthz", "scored"]
    assert results[0].status_code == 200 and len(results[0].json()["results"]) == 2


def test_saturation_is_a_503(built):
    rec = Recommender.load(built / "bundle")
    entered, release, _ = _blocking(rec)
    results = []
    with TestClient(create_app(rec, max_batch=4, max_concurrency=1)) as c:
        t = threading.Thread(target=lambda: results.append(c.post("/recommend", json={"histories": [[1]]})))
        t.start()
        assert entered.wait(10)
        r = c.post("/recommend", json={"histories": [[2]]})
        release.set()
        t.join(10)
        assert c.post("/recommend", json={"histories": [[3]]}).status_code == 200  # capacity is back
    assert r.status_code == 503 and r.headers.get("retry-after") == "1"
    assert set(r.json()) == {"error", "field"} and "max_concurrency=1" in r.json()["error"]
    assert results[0].status_code == 200


def test_serve_passes_the_limits(built, monkeypatch):
    uvicorn = pytest.importorskip("uvicorn")
    from typer.testing import CliRunner

    from dllm2rec.cli import app

    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda a, **kw: seen.update(app=a))
    r = CliRunner().invoke(app, ["serve", str(built / "bundle"), "--max-body-bytes", "100",
                                 "--max-concurrency", "3", "--workers", "1"])
    assert r.exit_code == 0, r.output
    md = TestClient(seen["app"]).get("/metadata").json()
    assert md["max_body_bytes"] == 100 and md["max_concurrency"] == 3
    r = TestClient(seen["app"]).post("/recommend", json={"history": list(range(N)) * 3})
    assert r.status_code == 413 and r.json()["field"] == "body"
    r = CliRunner().invoke(app, ["serve", str(built / "bundle"), "--max-concurrency", "0"])
    assert r.exit_code != 0 and "--max-concurrency" in str(r.exception)
