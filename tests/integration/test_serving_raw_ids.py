"""Serving by the ids users have (issue 16): raw_ids.json in the bundle (listed + hash-checked), ``id_type`` in
requests (internal / raw / title / auto), raw ids in responses, loose title matching and its ambiguity error, and
bundles without raw ids (older exports) still serving."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from dllm2rec.cli import app as cli_app  # noqa: E402
from dllm2rec.data import SeqDataset, make_split  # noqa: E402
from dllm2rec.errors import ArtifactError  # noqa: E402
from dllm2rec.serving.app import create_app  # noqa: E402
from dllm2rec.serving.bundle import export_bundle, read_manifest, sha256_hex  # noqa: E402
from dllm2rec.serving.lookup import loose_key  # noqa: E402
from dllm2rec.serving.recommender import Recommender, RequestError  # noqa: E402
from dllm2rec.students import build_student  # noqa: E402
from dllm2rec.students.checkpoint import save_student  # noqa: E402

TITLES = ["Toy Story (1995)", "Heat (1995)", "Schindler's List (1993)", "Amélie (2001)", "Se7en",
          "The Matrix", "THE MATRIX!", "Hamlet", "hamlet", "HAMLET.", "Hamlet!", "hamlet?", "Hamlet...", "Ham-let",
          "Twin", "Twin", "Film 16", "Film 17"]
N, L = len(TITLES), 4
RAW = [str(100 + 7 * i) for i in range(N - 2)] + ["B00ASIN0001", "0042"]  # MovieLens-like ids, an ASIN, a zero


def _dataset(raw: bool = True) -> SeqDataset:
    sp = make_split([[1, 2], [3, 4, 5], [0, 6]], [3, 6, 8], N, L)
    meta = {"item_raw_ids": list(RAW)} if raw else {}
    return SeqDataset("tiny-raw", N, L, list(TITLES), {"train": sp, "valid": sp, "test": sp}, meta)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("raw")
    ds = _dataset()
    torch.manual_seed(0)
    save_student(build_student("gru4rec", N, max_len=L, dim=8), tmp / "run" / "best",
                 meta={"dataset_fingerprint": ds.fingerprint()})
    export_bundle(tmp / "run", ds, tmp / "bundle")
    export_bundle(tmp / "run", _dataset(raw=False), tmp / "plain")  # a dataset without raw ids (same fingerprint)
    return tmp


@pytest.fixture()
def bundle(built, tmp_path):
    b = tmp_path / "bundle"
    shutil.copytree(built / "bundle", b)
    return b


@pytest.fixture(scope="module")
def client(built):
    with TestClient(create_app(built / "bundle", max_batch=8), raise_server_exceptions=False) as c:
        yield c


def post(c, **body):
    return c.post("/recommend", json=body)


def assert_422(r, field, *fragments):
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["field"] == field, body
    assert body["error"].startswith(f"{field}: "), body
    for f in fragments:
        assert f in body["error"], body
    return body["error"]


# ----------------------------------------------------------------------------------------------- the bundle
def test_export_writes_listed_and_hashed_raw_ids(built):
    b = built / "bundle"
    m = read_manifest(b)
    assert json.loads((b / "raw_ids.json").read_text()) == RAW
    assert m["raw_ids"] == {"file": "raw_ids.json", "count": N}
    assert m["files"]["raw_ids.json"]["sha256"] == sha256_hex(b / "raw_ids.json")
    plain = read_manifest(built / "plain")
    assert "raw_ids.json" not in plain["files"] and plain["raw_ids"] is None
    assert not (built / "plain" / "raw_ids.json").exists()


def test_export_from_a_prepared_dataset_dir_keeps_raw_ids(built, tmp_path):
    _dataset().save(tmp_path / "data")  # meta.item_raw_ids survives save/load
    r = CliRunner().invoke(cli_app, ["export", str(built / "run"), "-d", str(tmp_path / "data"),
                                     "--out", str(tmp_path / "b")])
    assert r.exit_code == 0, r.output
    assert f"raw item ids: raw_ids.json ({N} ids" in r.output and "raw_ids.json (" in r.output
    assert Recommender.load(tmp_path / "b").raw_ids == RAW


def test_tampered_or_unlisted_raw_ids_are_refused(bundle):
    good = (bundle / "raw_ids.json").read_text()
    (bundle / "raw_ids.json").write_text(good.replace('"107"', '"108"'))  # same size, other bytes
    with pytest.raises(ArtifactError, match=r"raw_ids\.json: sha256 .* the bundle was modified"):
        Recommender.load(bundle)
    (bundle / "raw_ids.json").write_text(good)
    m = json.loads((bundle / "manifest.json").read_text())
    del m["files"]["raw_ids.json"]
    m.pop("raw_ids")  # as an old manifest, but with a raw_ids.json dropped in next to it
    (bundle / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match=r"raw_ids\.json: not listed in manifest\.json"):
        Recommender.load(bundle)
    m["raw_ids"] = {"file": "raw_ids.json"}  # named by field 'raw_ids' but not in 'files'
    (bundle / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match=r"field 'files' does not list raw_ids\.json \(named by field 'raw_ids'\)"):
        Recommender.load(bundle)


def test_malformed_raw_ids_file_is_one_line_error(bundle):
    bad = RAW[:-1] + [RAW[0]]  # a duplicate
    (bundle / "raw_ids.json").write_text(json.dumps(bad))
    m = json.loads((bundle / "manifest.json").read_text())
    data = (bundle / "raw_ids.json").read_bytes()
    m["files"]["raw_ids.json"] = {"sha256": __import__("hashlib").sha256(data).hexdigest(), "bytes": len(data)}
    (bundle / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match=rf"raw item id '{RAW[0]}' is given to items 0 and {N - 1}"):
        Recommender.load(bundle)


# ----------------------------------------------------------------------------------------------- requests
def test_raw_id_request_equals_internal_id_request(client):
    internal = [1, 2, 3]
    a = post(client, history=internal, k=5)
    b = post(client, history=[RAW[i] for i in internal], k=5, id_type="raw")
    c = post(client, history=[int(RAW[1]), RAW[2], int(RAW[3])], k=5, id_type="raw")  # ints are raw ids too
    d = post(client, history=internal, k=5, id_type="internal")
    assert a.status_code == b.status_code == c.status_code == d.status_code == 200, (b.text, c.text)
    assert a.json()["ids"] == b.json()["ids"] == c.json()["ids"] == d.json()["ids"]
    assert a.json()["scores"] == b.json()["scores"]
    batch = post(client, histories=[[RAW[0], RAW[5]], ["B00ASIN0001"]], k=4, id_type="raw").json()["results"]
    ref = post(client, histories=[[0, 5], [N - 2]], k=4).json()["results"]
    assert [x["ids"] for x in batch] == [x["ids"] for x in ref]


def test_response_carries_raw_ids(client):
    body = post(client, history=[RAW[0]], k=N - 1, id_type="raw").json()
    assert body["raw_ids"] == [RAW[i] for i in body["ids"]] and len(body["raw_ids"]) == N - 1
    assert "0042" in body["raw_ids"]  # a leading zero is kept: raw ids are strings
    res = post(client, histories=[[1], [2]], k=3).json()["results"]
    assert all(r["raw_ids"] == [RAW[i] for i in r["ids"]] for r in res)


def test_python_api_id_type(built):
    rec = Recommender.load(built / "bundle")
    a = rec.recommend([[1, 2], [0]], k=4)
    b = rec.recommend([[RAW[1], RAW[2]], [int(RAW[0])]], k=4, id_type="raw")
    assert a == b and a[0].raw_ids == [RAW[i] for i in a[0].ids]
    assert rec.recommend_one(["heat 1995"], k=3, id_type="title", title_match="loose").ids == \
        rec.recommend_one([1], k=3).ids
    assert rec.item_id("B00ASIN0001", id_type="raw") == N - 2
    with pytest.raises(RequestError, match=r"^histories\[0\]\[1\]: unknown raw item id 'nope'") as ei:
        rec.recommend([[RAW[0], "nope"]], id_type="raw")
    assert ei.value.field == "histories[0][1]"
    with pytest.raises(RequestError, match="^id_type: must be one of") as ei:
        rec.recommend([[1]], id_type="asin")
    assert ei.value.field == "id_type"


def test_unknown_raw_id_is_422_naming_field_and_value(client):
    assert_422(post(client, history=[RAW[0], "999999"], id_type="raw"), "history[1]", "unknown raw item id '999999'")
    assert_422(post(client, history=[RAW[0], 5], id_type="raw"), "history[1]", "unknown raw item id 5")
    assert_422(post(client, histories=[[RAW[0]], [RAW[1], "Heat (1995)"]], id_type="raw"),
               "histories[1][1]", "unknown raw item id 'Heat (1995)'")
    err = assert_422(post(client, history=["x" * 5000], id_type="raw"), "history[0]", "unknown raw item id 'xxx")
    assert len(err) < 200 and "…" in err  # the value is truncated, not echoed whole


def test_id_type_is_strict(client):
    assert_422(post(client, history=[1, "Heat (1995)"], id_type="internal"), "history[1]",
               "expected an internal item id (int) with id_type='internal'")
    assert_422(post(client, history=["Heat (1995)", 1], id_type="title"), "history[1]",
               "expected an item title (str) with id_type='title'")
    assert_422(post(client, history=[1], id_type="asin"), "id_type", "'auto', 'internal', 'raw' or 'title'")
    assert_422(post(client, history=[1], title_match="fuzzy"), "title_match", "'exact' or 'loose'")
    # default (auto): a raw id sent as a string is not a title; the error says how to send it
    assert_422(post(client, history=[RAW[3]]), "history[0]", f"unknown item title '{RAW[3]}'",
               "item ids must be given as integers", "pass id_type='raw'")
    assert_422(post(client, history=["B00ASIN0001"]), "history[0]", "raw item id of item 16: pass id_type='raw'")


# ----------------------------------------------------------------------------------------------- titles
def test_loose_key_rules():
    assert loose_key("Schindler's List (1993)") == "schindlers list 1993"
    assert loose_key("  AMÉLIE   (2001) ") == loose_key("Amelie 2001") == "amelie 2001"
    assert loose_key("THE MATRIX!") == loose_key("the matrix") and loose_key("Ham-let") == "ham let"


def test_loose_title_match(client):
    ref = {i: post(client, history=[i], k=4).json()["ids"] for i in (0, 2, 3, 5)}
    for text, i in [("toy story 1995", 0), ("TOY STORY (1995)", 0), ("schindlers list 1993", 2),
                    ("amelie (2001)", 3), ("The Matrix", 5)]:  # an exact title wins over its loose twins
        r = post(client, history=[text], k=4, title_match="loose")
        assert r.status_code == 200 and r.json()["ids"] == ref[i], (text, r.text)
    assert_422(post(client, history=["toy story 1995"], k=4), "history[0]", "unknown item title")  # exact default
    assert_422(post(client, history=["toy story"], title_match="loose"), "history[0]",
               "unknown item title 'toy story' (title_match='loose')", "the year is part of the title",
               "id 0 ('Toy Story (1995)')")


def test_ambiguous_loose_title_is_422_listing_a_few(client):
    assert_422(post(client, history=[1, "the matrix"], title_match="loose"), "history[1]",
               "ambiguous title 'the matrix' (title_match='loose') matches 2 items: id 5 ('The Matrix'), "
               "id 6 ('THE MATRIX!')")
    err = assert_422(post(client, histories=[[1], ["HAMLET"]], title_match="loose"), "histories[1][0]",
                     "matches 6 items: id 7 ('Hamlet'), id 8 ('hamlet'), id 9 ('HAMLET.'), id 10 ('Hamlet!'), "
                     "id 11 ('hamlet?'), … (1 more)")
    assert "Ham-let" not in err  # "ham let" is another key
    assert_422(post(client, history=["twin"], title_match="loose"), "history[0]", "matches 2 items: id 14 ('Twin')")
    assert_422(post(client, history=["Twin"]), "history[0]", "item title 'Twin' is ambiguous (ids [14, 15])")


# ----------------------------------------------------------------------------------------------- old bundles
@pytest.mark.parametrize("which", ["plain", "legacy"])
def test_bundle_without_raw_ids_still_serves(built, tmp_path, which):
    b = tmp_path / which
    shutil.copytree(built / ("plain" if which == "plain" else "bundle"), b)
    if which == "legacy":  # a manifest written before raw ids existed: no 'raw_ids' field, no raw_ids.json
        m = json.loads((b / "manifest.json").read_text())
        del m["files"]["raw_ids.json"]
        del m["raw_ids"]
        (b / "manifest.json").write_text(json.dumps(m))
        (b / "raw_ids.json").unlink()
    with TestClient(create_app(b), raise_server_exceptions=False) as c:
        r = post(c, history=[1, 2], k=3)
        assert r.status_code == 200 and r.json()["raw_ids"] == [None, None, None]
        assert r.json()["ids"] == Recommender.load(built / "bundle").recommend_one([1, 2], k=3).ids
        assert post(c, histories=[[1]], k=2).json()["results"][0]["raw_ids"] == [None, None]
        assert_422(post(c, history=[RAW[1]], id_type="raw"), "id_type",
                   "id_type: 'raw' needs the dataset's own item ids, but this bundle has none")
        md = c.get("/metadata").json()
        assert md["raw_ids"] is False and "raw" not in md["id_types"]
        assert c.get("/healthz").status_code == 200


def test_openapi_documents_the_new_fields(client):
    spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    req = schemas["RecommendRequest"]["properties"]
    assert req["id_type"]["enum"] == ["auto", "internal", "raw", "title"] and req["id_type"]["default"] == "auto"
    assert req["title_match"]["enum"] == ["exact", "loose"] and req["title_match"]["default"] == "exact"
    assert "raw_ids" in schemas["Recommendation"]["properties"]
    assert "raw_ids" in schemas["Recommendation"].get("required", [])
    md = client.get("/metadata").json()
    assert md["raw_ids"] is True and md["id_types"] == ["auto", "internal", "raw", "title"]
