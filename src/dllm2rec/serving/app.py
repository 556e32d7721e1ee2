"""FastAPI service over a ``Recommender`` (``dllm2rec serve`` runs it with uvicorn).

    POST /recommend   {"history": [12, "Heat", 3], "k": 10, "exclude_history": true}        -> {ids, titles, scores}
                      {"histories": [[12, 3], ["Heat"]], "k": 10}                           -> {results: [...]}
    GET  /healthz     liveness + readiness
    GET  /metadata    model, dataset (+ fingerprint), metrics the checkpoint was selected with, backend
    GET  /docs        OpenAPI UI (/openapi.json)

Every bad input is a 4xx whose ``error`` names the field (``history[2]``, ``k``, ``histories``...): wrong types
and malformed JSON 422 (pydantic), unknown item id/title 422, empty history 422, k outside 1..N 422, a batch over
``max_batch`` 413. Handlers are ``async`` and call the Recommender directly on the event loop: one model call is
well under a millisecond, so this avoids the thread-pool hop and keeps the shared buffers single-threaded.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any, Union

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, model_validator

from dllm2rec.serving.recommender import Recommender, RequestError

log = logging.getLogger("dllm2rec.serving")

Item = Annotated[Union[StrictInt, StrictStr], Field(description="an item id (integer) or an exact item title")]
History = Annotated[list[Item], Field(min_length=1, description="items the user interacted with, oldest first")]


class RecommendRequest(BaseModel):
    """Give exactly one of ``history`` (one user) or ``histories`` (a batch)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"history": [12, 7, 3], "k": 10, "exclude_history": True},
                     {"histories": [[12, 7], [5]], "k": 5}]})

    history: History | None = None
    histories: Annotated[list[History], Field(min_length=1)] | None = None
    k: Annotated[StrictInt, Field(gt=0, description="how many items to return (1..N)")] = 10
    exclude_history: StrictBool = Field(True, description="never recommend an item already in the history")

    @model_validator(mode="after")
    def _one_of(self) -> "RecommendRequest":
        if (self.history is None) == (self.histories is None):
            raise ValueError("give exactly one of 'history' (one user) or 'histories' (a batch)")
        return self


class Recommendation(BaseModel):
    ids: list[int]
    titles: list[str]
    scores: list[float]


class BatchRecommendation(BaseModel):
    results: list[Recommendation]


class Health(BaseModel):
    status: str
    model: str
    n_items: int
    backend: str


def _error(status: int, field: str, message: str, detail: Any = None) -> JSONResponse:
    body: dict[str, Any] = {"error": message, "field": field}
    if detail is not None:
        body["detail"] = detail
    return JSONResponse(status_code=status, content=body)


def _loc_to_field(loc: tuple | list) -> str:
    parts = [p for p in loc if p != "body"]
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        elif p in ("int", "str", "function-after[_one_of()]") or str(p).startswith("function-"):
            continue  # union-member / validator names pydantic adds to the location
        else:
            out += ("." if out else "") + str(p)
    return out or "body"


def create_app(bundle_or_recommender: str | Path | Recommender, backend: str = "torch", max_batch: int = 256,
               max_history_len: int = 10_000, **recommender_kwargs: Any) -> FastAPI:
    """The FastAPI app for a bundle path (loaded now) or a ready ``Recommender``."""
    rec = bundle_or_recommender if isinstance(bundle_or_recommender, Recommender) else \
        Recommender.load(bundle_or_recommender, backend=backend, max_batch=max(max_batch, 1), **recommender_kwargs)
    meta = rec.metadata()
    name = (meta.get("model") or {}).get("name", "student")
    app = FastAPI(title="dllm2rec recommender",
                  description=f"Top-k next-item recommendations from a distilled {name} student "
                              f"({rec.n_items} items, histories truncated to the last {rec.max_len}).",
                  version=str(meta.get("created") or "1"))
    app.state.recommender = rec
    app.state.max_batch = int(max_batch)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errs = exc.errors()
        first = errs[0] if errs else {"loc": ("body",), "msg": "invalid request"}
        field = _loc_to_field(first.get("loc", ("body",)))
        msg = str(first.get("msg", "invalid"))
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        if first.get("type") == "json_invalid":
            field, msg = "body", f"malformed JSON ({(first.get('ctx') or {}).get('error', msg)})"
        elif field == "body" and "exactly one of" in msg:
            field = "history"
        return _error(422, field, f"{field}: {msg}", jsonable_encoder(errs, custom_encoder={Exception: str}))

    @app.exception_handler(RequestError)
    async def _request_error(request: Request, exc: RequestError) -> JSONResponse:
        return _error(422, exc.field, str(exc))

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:  # never crash, never leak a traceback
        log.exception("internal error on %s", request.url.path)
        return _error(500, "", f"internal error: {type(exc).__name__}")

    @app.get("/healthz", response_model=Health, summary="Liveness/readiness")
    async def healthz() -> Health:
        return Health(status="ok", model=name, n_items=rec.n_items, backend=rec.backend)

    @app.get("/metadata", summary="Model, dataset fingerprint and the metrics the checkpoint was selected with")
    async def metadata() -> dict[str, Any]:
        return {**meta, "max_batch": app.state.max_batch, "max_history_len": max_history_len}

    @app.post("/recommend", response_model=Union[Recommendation, BatchRecommendation],
              summary="Top-k items for one history or a batch of histories",
              responses={413: {"description": "batch larger than max_batch"},
                         422: {"description": "invalid input; 'error' names the field"}})
    async def recommend(req: RecommendRequest):
        if req.k > rec.n_items:
            return _error(422, "k", f"k: must be between 1 and the number of items ({rec.n_items}), got {req.k}")
        if req.history is not None:
            if len(req.history) > max_history_len:
                return _error(413, "history", f"history: {len(req.history)} items exceed max_history_len="
                                              f"{max_history_len}")
            r = rec.recommend_one(req.history, k=req.k, exclude_history=req.exclude_history)
            # a Response is sent as is (no second validation pass of our own output): lower latency
            return JSONResponse({"ids": r.ids, "titles": r.titles, "scores": r.scores})
        hs = req.histories
        if len(hs) > app.state.max_batch:
            return _error(413, "histories", f"histories: batch of {len(hs)} exceeds max_batch={app.state.max_batch}")
        for i, h in enumerate(hs):
            if len(h) > max_history_len:
                return _error(413, f"histories[{i}]", f"histories[{i}]: {len(h)} items exceed max_history_len="
                                                      f"{max_history_len}")
        out = rec.recommend(hs, k=req.k, exclude_history=req.exclude_history)
        return JSONResponse({"results": [{"ids": r.ids, "titles": r.titles, "scores": r.scores} for r in out]})

    return app
