"""HTTP routes: validate, call the engine, shape the response. No tensor code here."""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
from typing import Annotated, TypeVar

import peft
import torch
import transformers
from fastapi import APIRouter, Depends, Request, Security
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from server.dicom_results import Explanation as StoredExplanation
from server.dicomweb import (
    SourceInstance,
    SourceSeries,
    check_store,
    fetch_instance,
    fetch_series,
    frame_index,
    store_explanation,
)
from server.docs import key_matches
from server.errors import APIError, describe_validation
from server.explain import Explainer, Explanation
from server.images import DecodedImage, decode_image, limits_from, spec_from
from server.logs import request_id_var
from server.protocol import (
    AnswerParams,
    AnswerResponse,
    DicomwebRef,
    ErrorResponse,
    ExplainResponse,
    JSONAnswerRequest,
    Plane,
    StoredResult,
)
from server.service import Service
from vital_core import __version__
from vital_core.qtypes import auto_k

router = APIRouter()
_WHITESPACE = re.compile(r"\s+")
M = TypeVar("M", bound=BaseModel)
bearer = HTTPBearer(
    auto_error=False,
    scheme_name="APIKey",
    description="the server's API key (VITAL_API_KEY), required on model routes when one is set",
)

_ERRORS = {
    s: {"model": ErrorResponse, "description": d}
    for s, d in {
        400: "unreadable image or malformed body",
        401: "missing or wrong API key",
        404: "dicomweb: no such instance on the PACS",
        413: "body or image too large",
        415: "unsupported content or image type",
        422: "invalid fields",
        429: "queue full",
        502: "PACS unreachable, or it refused the store",
        503: "not ready, draining, or explanation not available",
        504: "timed out (the model, or the PACS)",
    }.items()
}
_BODY_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["question"],
                    "properties": {
                        "image": {"type": "string", "format": "binary"},
                        "dicomweb": {
                            "type": "string",
                            "description": "instead of image: JSON of DicomwebRef",
                        },
                        **{k: v for k, v in AnswerParams.model_json_schema()["properties"].items()},
                    },
                }
            },
            "application/json": {
                "schema": JSONAnswerRequest.model_json_schema(),
                "example": {"image": "<base64 PNG>", "question": "Where is the liver located?", "k": 4},
            },
        },
    }
}


def service_of(request: Request) -> Service:
    """The Service object the app was built with."""
    return request.app.state.service


def arrived(request: Request) -> float | None:
    """When the request's headers arrived (perf_counter), stamped by the middleware."""
    return request.scope.get("state", {}).get("arrived")


def require_key(
    request: Request, _: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)] = None
) -> None:
    """Bearer API key check (constant-time) when a key is configured."""
    if not key_matches(request.headers.get("authorization", ""), service_of(request).settings):
        raise APIError(
            401,
            "missing or invalid API key (send 'Authorization: Bearer <key>')",
            "unauthorized",
            {"WWW-Authenticate": "Bearer"},
        )


def require_ready(request: Request) -> Service:
    """The service, once the model is loaded (else 503); 503 for requests arriving after intake closed."""
    svc = service_of(request)
    if svc.refuses(arrived(request)):
        raise APIError(503, "server is shutting down; retry on another replica", "draining")
    if not svc.ready:
        if svc.load_error:
            raise APIError(503, f"model failed to load: {svc.load_error}", "not_ready")
        raise APIError(503, "model is still loading; retry shortly", "not_ready", {"Retry-After": "2"})
    return svc


Authorized = Annotated[None, Depends(require_key)]
ReadyService = Annotated[Service, Depends(require_ready)]


@router.get("/health", summary="Process is alive")
async def health() -> dict:
    """Liveness: answers as soon as the process serves HTTP."""
    return {"status": "ok"}


@router.get("/ready", summary="Model loaded and accepting work", responses={503: _ERRORS[503]})
async def ready(request: Request) -> dict:
    """Readiness: 503 until the bundle is loaded, and from the shutdown signal on."""
    svc = require_ready(request)
    if svc.draining:
        raise APIError(503, "server is shutting down; retry on another replica", "draining")
    return {"status": "ready"}


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    """Prometheus text exposition of the app's own registry."""
    return Response(generate_latest(service_of(request).metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get(
    "/info", summary="Model and service information", responses={401: _ERRORS[401], 503: _ERRORS[503]}
)
async def info(request: Request, _: Authorized) -> dict:
    """Model name, preset, K settings, versions, and whether /explain is available."""
    svc = service_of(request)
    cfg = svc.model.config if svc.model is not None else None
    return {
        "model": cfg.name if cfg else None,
        "preset": cfg.preset if cfg else None,
        "k_default": cfg.latent.k_default if cfg else None,
        "k_max": cfg.latent.k_max if cfg else None,
        "max_new_tokens": min(cfg.latent.max_new_tokens, svc.settings.max_new_tokens) if cfg else None,
        "ready": svc.ready and not svc.draining,
        "device": svc.device,
        "dtype": cfg.backbone.dtype if cfg else None,
        "explain_available": _explain_available(svc),
        "batching": {
            "enabled": svc.settings.batching,
            "max_batch_size": svc.settings.max_batch_size,
            "max_wait_ms": svc.settings.max_wait_ms,
        },
        "versions": {
            "vital": request.app.version,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
        },
    }


def _explain_available(svc: Service) -> bool:
    return svc.model is not None and svc.explain_unavailable() is None


@router.post(
    "/answer",
    summary="Answer a question about an image",
    response_model=AnswerResponse,
    responses=_ERRORS,
    openapi_extra=_BODY_DOC,
)
async def answer(request: Request, _: Authorized, svc: ReadyService) -> JSONResponse:
    """Decode the image, run K latent steps and decode the answer (scaffolding never loaded)."""
    t0 = time.perf_counter()
    data, params = await read_input(request)
    check_store(params.store, isinstance(data, DicomwebRef), explain=False)
    decoded, decode_ms, _source = await decode_input(data, params, svc)
    k, max_new = resolve_k(params, svc), resolve_max_new_tokens(params, svc)
    engine, rid = svc.loaded_engine(), request_id_var.get()
    res = await engine.submit(
        decoded.image, params.question, k, max_new, rid, svc.settings.request_timeout_s, arrived(request)
    )
    timings = {"decode_image": decode_ms, **res.timings_ms, "total": 1000 * (time.perf_counter() - t0)}
    body = AnswerResponse(
        answer=res.text,
        k=res.k,
        model=svc.loaded_model().config.name,
        request_id=rid,
        timings_ms={k_: round(v, 3) for k_, v in timings.items()},
        batch_size=res.batch_size,
        image=image_info(decoded),
    )
    return JSONResponse(body.model_dump())


@router.post(
    "/explain",
    summary="Answer and explain each latent step",
    response_model=ExplainResponse,
    responses={**_ERRORS, 404: {"model": ErrorResponse, "description": "explanation disabled"}},
    openapi_extra=_BODY_DOC,
)
async def explain(request: Request, _: Authorized, svc: ReadyService) -> JSONResponse:
    """Answer plus, per latent step: decoded sentence, heatmap, nearest reference patches.

    Runs as one job in the engine's queue: the same 429 bound, 504 timeout and drain as /answer.
    """
    t0 = time.perf_counter()
    explainer = await svc.get_explainer()  # 404/503 when not configured
    data, params = await read_input(request)
    check_store(params.store, isinstance(data, DicomwebRef), explain=True)
    decoded, decode_ms, source = await decode_input(data, params, svc)
    k, max_new = resolve_k(params, svc), resolve_max_new_tokens(params, svc)
    rid = request_id_var.get()
    result, queue_ms = await run_explanation(request, svc, explainer, decoded, params, k, max_new)
    stored = await _store(svc, source, params, result, decoded.info) if params.store else None
    timings = {
        "decode_image": decode_ms,
        "queue": queue_ms,
        **result.timings_ms,
        "total": 1000 * (time.perf_counter() - t0),
    }
    body = ExplainResponse(
        answer=result.answer,
        k=result.k,
        model=svc.loaded_model().config.name,
        request_id=rid,
        timings_ms={k_: round(v, 3) for k_, v in timings.items()},
        batch_size=1,
        image=image_info(decoded),
        steps=result.steps,
        plane=plane_of(decoded),
        region_fraction=result.region_fraction,
        stored=stored,
    )
    return JSONResponse(body.model_dump())


VIEW_FIELDS = ("axis", "slice", "instances", "sop_instance_uid")
"""Which view of a volume was served (NIfTI, DICOM series): plane, slice index, and for a series the
number of instances and, when the plane is the acquired one, the SOPInstanceUID of the instance shown."""


async def run_explanation(
    request: Request,
    svc: Service,
    explainer: Explainer,
    decoded: DecodedImage,
    params: AnswerParams,
    k: int,
    max_new: int,
) -> tuple[Explanation, float]:
    """One explanation as a job in the engine's queue (429, 504, drain as /answer); (result, queue ms).
    Shared by /explain and /v1/chat/completions with `explain: true`."""
    engine, rid = svc.loaded_engine(), request_id_var.get()
    queued, started = time.perf_counter(), []

    def run() -> Explanation:  # on the model thread, when the job's turn comes
        started.append(time.perf_counter())
        return explainer.explain(
            decoded.image, params.question, k, max_new, params.top_k, params.region_fraction
        )

    result = await engine.submit_call(run, rid, svc.settings.request_timeout_s, arrived(request))
    for stage, ms in result.timings_ms.items():
        svc.metrics.stage_latency.labels(stage).observe(ms / 1000.0)
    return result, 1000 * (started[0] - queued)


def plane_of(decoded: DecodedImage) -> Plane:
    """The frame / slice / axis the decoder took from a multi-frame DICOM or a NIfTI volume."""
    info = decoded.info
    as_int = lambda key: int(info[key]) if str(info.get(key, "")).isdigit() else None  # noqa: E731
    return Plane(frame=as_int("frame"), slice=as_int("slice"), axis=info.get("axis"))


def image_info(decoded: DecodedImage) -> dict[str, int | str]:
    """The response's `image`: format and size, and for a volume the view served (VIEW_FIELDS)."""
    info: dict[str, int | str] = {"format": decoded.format, "width": decoded.width, "height": decoded.height}
    if "axis" in decoded.info:
        info.update({k: decoded.info[k] for k in VIEW_FIELDS if k in decoded.info})
        info["slice"] = int(info["slice"])
        if "instances" in info:
            info["instances"] = int(info["instances"])
    return info


async def read_input(request: Request) -> tuple[bytes | list[bytes] | DicomwebRef, AnswerParams]:
    """Image bytes (a list: several `image` parts, one DICOM series; or a PACS reference) and validated
    fields from a multipart or JSON body (400/415/422)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        return await _read_multipart(request)
    if ctype == "application/json":
        return await _read_json(request)
    raise APIError(
        415,
        f"unsupported content type {ctype or '(none)'!r}; send multipart/form-data or application/json",
        "unsupported_media_type",
    )


async def _read_multipart(request: Request) -> tuple[bytes | list[bytes] | DicomwebRef, AnswerParams]:
    limit = service_of(request).settings.max_instances
    try:
        form = await request.form(max_files=limit, max_fields=16, max_part_size=64 * 1024)
    except (APIError, ClientDisconnect):
        raise
    except Exception as exc:
        detail = str(getattr(exc, "detail", exc))
        if detail.startswith("Too many files"):  # starlette stops counting parts at the limit
            raise APIError(
                413, f"too many image parts: the limit is {limit} instances per series", "image_too_large"
            ) from exc
        raise APIError(400, f"malformed multipart body: {detail}", "bad_request") from exc
    upload = form.get("image")
    if upload is None and isinstance(form.get("dicomweb"), str):
        return _multipart_ref(form)
    if upload is None or isinstance(upload, str):
        raise APIError(
            422, "image: a file field named 'image' (or a 'dicomweb' field) is required", "invalid_request"
        )
    fields = {k: v for k, v in form.multi_items() if k != "image"}
    if any(not isinstance(v, str) for v in fields.values()):
        raise APIError(422, "only the 'image' field may be a file", "invalid_request")
    params = _validate(AnswerParams, fields)
    uploads = form.getlist("image")
    if any(isinstance(u, str) for u in uploads):
        raise APIError(422, "image: every 'image' part must be a file", "invalid_request")
    parts = []
    for part in uploads:  # several parts: the instances of one DICOM series
        parts.append(await part.read())
        await part.close()
    return (parts if len(parts) > 1 else parts[0]), params


async def _read_json(request: Request) -> tuple[bytes | DicomwebRef, AnswerParams]:
    try:
        body = json.loads(await request.body())
    except RecursionError as exc:  # nesting deeper than the parser's stack
        raise APIError(400, "body is not valid JSON: nested too deeply", "bad_request") from exc
    except ValueError as exc:  # JSONDecodeError, bad UTF-8, integers beyond Python's digit limit
        raise APIError(400, f"body is not valid JSON: {exc}", "bad_request") from exc
    if not isinstance(body, dict):
        raise APIError(422, "JSON body must be an object with 'image' and 'question'", "invalid_request")
    req = _validate(JSONAnswerRequest, body)
    if req.dicomweb is not None:
        return req.dicomweb, AnswerParams(**req.model_dump(exclude={"image", "dicomweb"}))
    b64 = req.image.split(",", 1)[1] if req.image.startswith("data:") else req.image
    b64 = _WHITESPACE.sub("", b64)  # line-wrapped base64 (what `base64` prints by default) is fine
    try:
        data = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise APIError(400, f"image is not valid base64: {exc}", "unreadable_image") from exc
    return data, AnswerParams(**req.model_dump(exclude={"image", "dicomweb"}))


def _multipart_ref(form) -> tuple[DicomwebRef, AnswerParams]:  # starlette FormData
    fields = {k: v for k, v in form.multi_items() if k != "dicomweb"}
    if any(not isinstance(v, str) for v in fields.values()):
        raise APIError(422, "with 'dicomweb', no field may be a file", "invalid_request")
    try:
        ref = json.loads(form["dicomweb"])
    except (ValueError, RecursionError) as exc:  # also too deep, or integers beyond the digit limit
        raise APIError(422, f"dicomweb: not valid JSON: {exc}", "invalid_request") from exc
    if not isinstance(ref, dict):
        raise APIError(
            422, "dicomweb: a JSON object with study, series and (optionally) instance", "invalid_request"
        )
    return _validate(DicomwebRef, ref), _validate(AnswerParams, fields)


def _validate(model: type[M], data: dict) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise APIError(422, describe_validation(exc.errors()), "invalid_request") from exc


async def decode_input(
    data: bytes | list[bytes] | DicomwebRef, params: AnswerParams, svc: Service
) -> tuple[DecodedImage, float, SourceInstance | SourceSeries | None]:
    """(DecodedImage, ms, SourceInstance | None): a PACS reference is fetched first, then decoded."""
    t = time.perf_counter()
    source, frame = None, params.frame
    if isinstance(data, DicomwebRef) and data.instance is None:  # a whole series: one volume
        parts = await run_in_threadpool(fetch_series, svc.settings, data)
        if params.store:
            source = await run_in_threadpool(SourceSeries.of, data, parts)
        data = parts if len(parts) > 1 else parts[0][1]
    elif isinstance(data, DicomwebRef):
        frame = frame_index(data, params.frame)
        source = await run_in_threadpool(fetch_instance, svc.settings, data)
        data = source.part10
    spec = spec_from(
        axis=params.axis,
        slice=params.slice,
        frame=frame,
        window=params.window,
        window_center=params.window_center,
        window_width=params.window_width,
    )
    decoded = await run_in_threadpool(decode_image, data, spec=spec, limits=limits_from(svc.settings))
    ms = 1000 * (time.perf_counter() - t)
    svc.metrics.stage_latency.labels("decode_image").observe(ms / 1000)
    return decoded, ms, source


async def _store(
    svc: Service,
    source: SourceInstance | SourceSeries,
    params: AnswerParams,
    result: Explanation,
    view: dict[str, str],
) -> StoredResult:
    """Write the explanation back to the PACS as DICOM (SR + heatmaps); the new UIDs."""
    exp = StoredExplanation(
        question=params.question,
        answer=result.answer,
        k=result.k,
        model=svc.loaded_model().config.name,
        version=__version__,
        steps=[s.model_dump() for s in result.steps],
        frame=frame_index(source.ref, params.frame) or 0,
        region_fraction=result.region_fraction,
    )
    return await run_in_threadpool(store_explanation, svc.settings, source, exp, view)


def resolve_k(params: AnswerParams, svc: Service) -> int:
    """The request's K: default, explicit (0..K_max), or auto (from the question type)."""
    latent = svc.loaded_model().config.latent
    if params.k is None:
        return latent.k_default
    if params.k == "auto":
        return auto_k(params.question, latent.k_max)
    if not 0 <= params.k <= latent.k_max:
        raise APIError(422, f'k: must be between 0 and {latent.k_max}, or "auto"', "invalid_request")
    return params.k


def resolve_max_new_tokens(params: AnswerParams, svc: Service) -> int:
    """The request's token cap, bounded by the server's limit."""
    limit = svc.settings.max_new_tokens
    if params.max_new_tokens is None:
        return min(svc.loaded_model().config.latent.max_new_tokens, limit)
    if params.max_new_tokens > limit:
        raise APIError(422, f"max_new_tokens: must be at most {limit}", "invalid_request")
    return params.max_new_tokens
