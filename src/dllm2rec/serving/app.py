"""FastAPI service over a ``Recommender`` (``dllm2rec serve`` runs it with uvicorn).

    POST /recommend   {"history": [12, "Heat", 3], "k": 10, "exclude_history": true}  -> {ids, titles, scores, raw_ids}
                      {"histories": [[12, 3], ["Heat"]], "k": 10}                     -> {results: [...]}
                      {"history": ["1", 50], "id_type": "raw"}       (the dataset's own item ids, raw_ids.json)
                      {"history": ["toy story 1995"], "title_match": "loose"}   (case/punctuation-insensitive)
    GET  /healthz     liveness + readiness
    GET  /metadata    model, dataset (+ fingerprint), metrics the checkpoint was selected with, backend
    GET  /docs        OpenAPI UI (/openapi.json)

Every client error is a 4xx ``{"error": "<field>: <message>", "field": "<field>"}`` (never a 500, never a logged
traceback, the connection stays usable): wrong types, malformed JSON (invalid UTF-8, ``NaN``/``Infinity``,
integers over 4,300 digits, nesting too deep), unknown item id/raw id/title (also a huge integer), an ambiguous
title, ``id_type="raw"`` on a bundle without raw ids, empty history, k outside 1..N → 422; a body over
``max_body_bytes``, a batch over ``max_batch`` or a history over ``max_history_len`` → 413; a non-JSON content type
→ 415; more than ``max_concurrency`` requests in flight → 503 (with ``Retry-After``).

How: a pure-ASGI middleware counts body bytes *before* anything parses them (``Content-Length`` over the cap is
refused unread); ``/recommend`` then parses (strict ``json``), validates (cheap size/type pre-checks first, so a
huge invalid body cannot make pydantic build millions of errors) and scores in a small worker pool
(``workers`` threads, ``anyio``), so ``/healthz`` and ``/metadata`` are answered while a heavy batch is scored.
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    model_validator,
)
from starlette.exceptions import HTTPException as StarletteHTTPException

from dllm2rec.serving.recommender import Recommender, RequestError, _short

log = logging.getLogger("dllm2rec.serving")

MAX_BODY_BYTES = 1 << 20

Item = Annotated[Union[StrictInt, StrictStr], Field(
    description="an item: with id_type 'auto' an internal id (integer) or a title (string); 'internal': an integer "
                "0..N-1; 'raw': one of the dataset's own item ids (string, or an integer meaning its decimal "
                "string); 'title': a title (string)")]
History = Annotated[list[Item], Field(min_length=1, description="items the user interacted with, oldest first")]


class RecommendRequest(BaseModel):
    """Give exactly one of ``history`` (one user) or ``histories`` (a batch)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"history": [12, 7, 3], "k": 10, "exclude_history": True},
                     {"histories": [[12, 7], [5]], "k": 5},
                     {"history": ["1", "50", 181], "id_type": "raw", "k": 5},
                     {"history": ["toy story 1995", "HEAT"], "id_type": "title", "title_match": "loose"}]})

    history: History | None = None
    histories: Annotated[list[History], Field(min_length=1)] | None = None
    k: Annotated[StrictInt, Field(gt=0, description="how many items to return (1..N)")] = 10
    exclude_history: StrictBool = Field(True, description="never recommend an item already in the history")
    id_type: Literal["auto", "internal", "raw", "title"] = Field(
        "auto", description="what the history items are: 'auto' (default: integer = internal id, string = title), "
                            "'internal' (internal ids 0..N-1), 'raw' (the dataset's own item ids, e.g. MovieLens ids "
                            "or ASINs; needs a bundle with raw ids, see GET /metadata 'raw_ids'), 'title'")
    title_match: Literal["exact", "loose"] = Field(
        "exact", description="'exact' (case-sensitive) or 'loose': an exact title still wins, else titles are "
                             "compared casefolded, accents/apostrophes dropped, other punctuation as spaces, "
                             "whitespace collapsed (a year such as '(1995)' is kept); several matches -> 422")

    @model_validator(mode="after")
    def _one_of(self) -> "RecommendRequest":
        if (self.history is None) == (self.histories is None):
            raise ValueError("give exactly one of 'history' (one user) or 'histories' (a batch)")
        return self


class Recommendation(BaseModel):
    ids: list[int] = Field(description="internal item ids (0..N-1), best first")
    titles: list[str] = Field(description="their titles")
    scores: list[float] = Field(description="their scores (higher is better)")
    raw_ids: list[str | None] = Field(description="their ids in the dataset (e.g. MovieLens ids, ASINs); null "
                                                     "entries when the bundle has no raw ids")


class BatchRecommendation(BaseModel):
    results: list[Recommendation]


class Health(BaseModel):
    status: str
    model: str
    n_items: int
    backend: str


class ErrorBody(BaseModel):
    error: str = Field(description="'<field>: <message>', one line")
    field: str = Field(description="the offending input (history[2], k, histories, body), '' if none")


class ClientError(Exception):
    """A bad request found before the Recommender: ``status``, ``field`` and a one-line message."""

    def __init__(self, status: int, field: str, message: str):
        super().__init__(message)
        self.status, self.field = status, field


def _safe_json(content: Any) -> bytes:
    # ASCII escapes: a lone surrogate from a JSON "\ud800" escape in a client string can never break rendering
    return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


class _SafeJSONResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        return _safe_json(content)


def _error(status: int, field: str, message: str, detail: Any = None, headers: dict | None = None) -> JSONResponse:
    body: dict[str, Any] = {"error": message, "field": field}
    if detail is not None:
        body["detail"] = detail
    return _SafeJSONResponse(status_code=status, content=body, headers=headers)


def _loc_to_field(loc: tuple | list) -> str:
    parts = [p for p in loc if p != "body"]
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        elif p in ("int", "str", "function-after[_one_of()]") or str(p).startswith("function-"):
            continue  # union-member / validator names pydantic adds to the location
        else:
            out += ("." if out else "") + _short(str(p), 40).strip("'")
    return out or "body"


def _validation_error(errs: list[dict[str, Any]]) -> JSONResponse:
    first = errs[0] if errs else {"loc": ("body",), "msg": "invalid request"}
    field = _loc_to_field(first.get("loc", ("body",)))
    msg = str(first.get("msg", "invalid")).removeprefix("Value error, ")
    if first.get("type") == "json_invalid":
        field, msg = "body", f"malformed JSON ({(first.get('ctx') or {}).get('error', msg)})"
    elif field == "body" and "exactly one of" in msg:
        field = "history"
    # no echo of the client's input: it may be huge, deeply nested or not representable in JSON
    detail = [{"loc": [p if isinstance(p, int) else _short(str(p), 40).strip("'") for p in e.get("loc", ())],
               "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))} for e in errs[:5]]
    return _error(422, field, f"{field}: {msg}", detail)


# --------------------------------------------------------------------------------------------- body cap (ASGI)
class BodyLimit:
    """Pure-ASGI middleware: at most ``max_bytes`` of request body reach the app. A ``Content-Length`` over the
    cap is answered 413 without reading the body; a chunked body is counted as it arrives and cut at the cap."""

    def __init__(self, app, max_bytes: int = MAX_BODY_BYTES):
        self.app, self.max_bytes = app, int(max_bytes)

    async def _too_large(self, send) -> None:
        body = _safe_json({"error": f"body: request body exceeds max_body_bytes={self.max_bytes}", "field": "body"})
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})  # the unread rest of the body cannot be skipped
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for k, v in scope.get("headers", ()):
            if k == b"content-length":
                if v.strip().isdigit() and int(v) > self.max_bytes:
                    return await self._too_large(send)
                break
        chunks, total = [], 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return  # the client went away before sending its body
            chunk = msg.get("body", b"")
            total += len(chunk)
            if total > self.max_bytes:
                return await self._too_large(send)
            chunks.append(chunk)
            if not msg.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


# --------------------------------------------------------------------------------------------- strict JSON
def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON (numbers must be finite)")


def _parse_float(s: str) -> float:
    v = float(s)
    if not math.isfinite(v):
        raise ValueError(f"number {s[:30]} is out of range")
    return v


def parse_json_body(body: bytes) -> Any:
    """Strict JSON: UTF-8, finite numbers, integers up to 4,300 digits; else a ClientError (422, field body)."""
    if not body.strip():
        raise ClientError(422, "body", "body: empty request body (expected a JSON object)")
    try:
        text = body.decode("utf-8-sig")  # a leading BOM is ignored (RFC 8259 allows it), nothing else
    except UnicodeDecodeError as e:
        raise ClientError(422, "body", f"body: malformed JSON (invalid UTF-8 at byte {e.start})") from None
    try:
        # no parse_int hook (a Python call per id made a 256k-id batch 4x slower); Python itself refuses integers
        # over 4,300 digits, and an out-of-range id or k is a 422 naming the field (shown as "<N-bit integer>")
        return json.loads(text, parse_constant=_reject_constant, parse_float=_parse_float)
    except json.JSONDecodeError as e:
        raise ClientError(422, "body", f"body: malformed JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except RecursionError:
        raise ClientError(422, "body", "body: malformed JSON (nested too deeply)") from None
    except ValueError as e:
        raise ClientError(422, "body", f"body: malformed JSON ({e})") from None


_JSON_TYPE = {bool: "boolean", type(None): "null", float: "number", list: "array", dict: "object"}


def _precheck(obj: Any, max_batch: int, max_history_len: int) -> None:
    """Size caps and item types before pydantic (which would build one error per bad item: 500k for 1 MB)."""
    if not isinstance(obj, dict):
        return

    def items(row: list, field: str) -> None:
        if len(row) > max_history_len:
            raise ClientError(413, field, f"{field}: {len(row)} items exceed max_history_len={max_history_len}")
        for j, x in enumerate(row):
            if type(x) is not int and type(x) is not str:
                got = _JSON_TYPE.get(type(x), "value")
                raise ClientError(422, f"{field}[{j}]", f"{field}[{j}]: Input should be a valid integer or string "
                                                        f"(an item id, raw id or title), got {got}")

    if isinstance(obj.get("history"), list):
        items(obj["history"], "history")
    hs = obj.get("histories")
    if isinstance(hs, list):
        if len(hs) > max_batch:
            raise ClientError(413, "histories", f"histories: batch of {len(hs)} exceeds max_batch={max_batch}")
        for i, row in enumerate(hs):
            if isinstance(row, list):
                items(row, f"histories[{i}]")


def _is_json(ctype: str | None) -> bool:
    if not ctype:
        return True  # lenient: curl without -H
    main = ctype.split(";", 1)[0].strip().lower()
    return main == "application/json" or (main.startswith("application/") and main.endswith("+json"))


# --------------------------------------------------------------------------------------------- app
def create_app(bundle_or_recommender: str | Path | Recommender, backend: str = "torch", max_batch: int = 256,
               max_history_len: int = 10_000, max_body_bytes: int = MAX_BODY_BYTES, max_concurrency: int = 32,
               workers: int = 2, **recommender_kwargs: Any) -> FastAPI:
    """The FastAPI app for a bundle path (loaded now, every file hash-checked) or a ready ``Recommender``.

    ``max_concurrency``: /recommend requests in flight (being scored or waiting for one of the ``workers``
    threads); one more is answered 503 at once."""
    for name, v in (("max_batch", max_batch), ("max_history_len", max_history_len), ("max_concurrency",
                    max_concurrency), ("workers", workers)):
        if int(v) < 1:
            raise ValueError(f"{name} must be >= 1, got {v}")
    if int(max_body_bytes) < 0:
        raise ValueError(f"max_body_bytes must be >= 0, got {max_body_bytes}")
    rec = bundle_or_recommender if isinstance(bundle_or_recommender, Recommender) else \
        Recommender.load(bundle_or_recommender, backend=backend, max_batch=max(max_batch, 1), **recommender_kwargs)
    meta = rec.metadata()
    name = (meta.get("model") or {}).get("name", "student")
    app = FastAPI(title="dllm2rec recommender",
                  description=f"Top-k next-item recommendations from a distilled {name} student "
                              f"({rec.n_items} items, histories truncated to the last {rec.max_len}).",
                  version=str(meta.get("created") or "1"))
    app.add_middleware(BodyLimit, max_bytes=int(max_body_bytes))
    app.state.recommender = rec
    app.state.max_batch = int(max_batch)
    app.state.inflight = 0
    limiter = anyio.CapacityLimiter(int(workers))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_error(list(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, "", str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestError)
    async def _request_error(request: Request, exc: RequestError) -> JSONResponse:
        return _error(422, exc.field, str(exc))

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:  # a server bug: logged, never leaked
        log.exception("internal error on %s", request.url.path)
        return _error(500, "", f"internal error: {type(exc).__name__}")

    def handle(body: bytes, ctype: str | None) -> JSONResponse:
        """Parse, validate and score one /recommend body (runs in a worker thread)."""
        try:
            if not _is_json(ctype):
                raise ClientError(415, "body", f"body: expected Content-Type application/json, got {_short(ctype)}")
            obj = parse_json_body(body)
            _precheck(obj, app.state.max_batch, max_history_len)
            try:
                req = RecommendRequest.model_validate(obj)
            except ValidationError as e:
                return _validation_error(e.errors(include_url=False))
            if req.k > rec.n_items:
                raise ClientError(422, "k", f"k: must be between 1 and the number of items ({rec.n_items}), "
                                            f"got {_short(req.k)}")
            how = {"exclude_history": req.exclude_history, "id_type": req.id_type, "title_match": req.title_match}
            if req.history is not None:
                r = rec.recommend_one(req.history, k=req.k, **how)
                # a Response is sent as is (no second validation pass of our own output): lower latency
                return JSONResponse({"ids": r.ids, "titles": r.titles, "scores": r.scores, "raw_ids": r.raw_ids})
            out = rec.recommend(req.histories, k=req.k, **how)
            return JSONResponse({"results": [{"ids": r.ids, "titles": r.titles, "scores": r.scores,
                                              "raw_ids": r.raw_ids} for r in out]})
        except ClientError as e:
            return _error(e.status, e.field, str(e))
        except RequestError as e:
            return _error(422, e.field, str(e))

    @app.get("/healthz", response_model=Health, summary="Liveness/readiness")
    async def healthz() -> Health:
        return Health(status="ok", model=name, n_items=rec.n_items, backend=rec.backend)

    @app.get("/metadata", summary="Model, dataset fingerprint and the metrics the checkpoint was selected with")
    async def metadata() -> dict[str, Any]:
        return {**meta, "max_batch": app.state.max_batch, "max_history_len": max_history_len,
                "max_body_bytes": int(max_body_bytes), "max_concurrency": int(max_concurrency)}

    err = {"model": ErrorBody}
    @app.post("/recommend", response_model=Union[Recommendation, BatchRecommendation],
              summary="Top-k items for one history or a batch of histories",
              openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                  "schema": {"$ref": "#/components/schemas/RecommendRequest"}}}}},
              responses={413: {**err, "description": "body over max_body_bytes, batch over max_batch or history "
                                                    "over max_history_len"},
                         415: {**err, "description": "body is not JSON"},
                         422: {**err, "description": "invalid input; 'error' names the field"},
                         503: {**err, "description": "max_concurrency requests already in flight; retry"}})
    async def recommend(request: Request):
        body = await request.body()  # at most max_body_bytes (BodyLimit)
        if app.state.inflight >= max_concurrency:
            return _error(503, "", f"server busy: {app.state.inflight} requests in flight "
                                   f"(max_concurrency={max_concurrency}); retry shortly", headers={"Retry-After": "1"})
        app.state.inflight += 1  # the event loop is single-threaded: no lock needed
        try:
            return await anyio.to_thread.run_sync(handle, body, request.headers.get("content-type"), limiter=limiter)
        finally:
            app.state.inflight -= 1

    def openapi() -> dict[str, Any]:  # the body is parsed by hand (strictly, off the loop): publish its schema
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            spec = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            schemas = spec.setdefault("components", {}).setdefault("schemas", {})
            s = RecommendRequest.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(s.pop("$defs", {}))
            schemas["RecommendRequest"] = s
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
