"""OpenAI-compatible routes: `POST /v1/chat/completions` and `GET /v1/models` over the same engine.

A chat request carries one image (an `image_url` content part with a `data:` URI; remote URLs are
refused, never fetched; or a `dicomweb` reference to an instance on the configured PACS, as a content
part or an extra body field) and the question as text. VITAL's own options (`k`, `frame`, `slice`)
ride as extra body fields. The request goes through the same path as `/answer`: image decoding and its
limits, K resolution, and the engine's one bounded queue (batching, 429, 504, metrics, drain).
With `stream: true` the answer's tokens are sent as server-sent events while the batch decodes
(`server.openai_stream`). Errors: `server.openai_errors`.
Errors keep their status but take OpenAI's shape `{"error": {"message", "type", "param", "code"}}`;
invalid fields are 400, as OpenAI answers them.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import re
import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from server.errors import APIError, describe_validation
from server.logs import request_id_var
from server.openai_errors import OpenAIErrorShape, openai_error
from server.openai_stream import Stream, usage
from server.protocol import AnswerParams, DicomwebRef
from server.routes import (
    arrived,
    decode_input,
    image_info,
    plane_of,
    require_key,
    require_ready,
    resolve_k,
    resolve_max_new_tokens,
    run_explanation,
    service_of,
)

log = logging.getLogger("vital.server")
router = APIRouter(prefix="/v1", tags=["OpenAI-compatible"])
ROUTES = ("/v1/chat/completions", "/v1/models")


# -- protocol -------------------------------------------------------------------------------------
class ImageURL(BaseModel):
    url: str = Field(..., description="a data: URI, e.g. data:image/png;base64,... (remote URLs refused)")
    detail: Literal["auto", "low", "high"] | None = Field(None, description="accepted, not used")


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ImagePart(BaseModel):
    type: Literal["image_url"]
    image_url: ImageURL


class DicomwebPart(BaseModel):
    """VITAL: the image is an instance on the configured DICOMweb server (as /answer's `dicomweb`)."""

    type: Literal["dicomweb"]
    dicomweb: DicomwebRef


ContentPart = Annotated[TextPart | ImagePart | DicomwebPart, Field(discriminator="type")]


class ChatMessage(BaseModel):
    """One message; only `system`/`developer` (not used by the model) and `user` are accepted."""

    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """The chat-completions body; unknown fields are refused (400) rather than silently ignored."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(..., description="the served model's id (see GET /v1/models)")
    messages: list[ChatMessage] = Field(..., min_length=1)
    max_tokens: int | None = Field(None, ge=1, description="cap on answer tokens")
    max_completion_tokens: int | None = Field(None, ge=1, description="same as max_tokens (newer name)")
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=1, description="only 1")
    temperature: float | None = Field(None, ge=0, le=2, description="accepted; decoding is always greedy")
    top_p: float | None = Field(None, gt=0, le=1, description="accepted; decoding is always greedy")
    seed: int | None = Field(None, description="accepted; greedy decoding is deterministic anyway")
    stop: str | list[str] | None = Field(None, description="not supported: null or empty only")
    user: str | None = None
    k: int | Literal["auto"] | None = Field(None, description='VITAL: latent steps 0..K_max or "auto"')
    frame: int | None = Field(None, ge=0, description="VITAL: frame of a multi-frame DICOM")
    slice: int | None = Field(None, ge=0, description="VITAL: slice of a NIfTI volume or DICOM series")
    axis: Literal["axial", "coronal", "sagittal"] | None = Field(
        None, description="VITAL: plane of a NIfTI volume or DICOM series (a zip of instances); default axial"
    )
    dicomweb: DicomwebRef | None = Field(
        None,
        description="VITAL: instead of an image part, an instance on the PACS (study/series/instance/frame)",
    )
    explain: bool = Field(
        False,
        description="VITAL: also explain each latent step (as /explain): `vital.steps` carries each step's "
        "sentence, heatmap peak, box and mask (COCO RLE) on the original image; not with stream",
    )
    region_fraction: float | None = Field(
        None, gt=0, le=1, allow_inf_nan=False, description="VITAL, with explain: the region threshold"
    )


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: Literal["stop", "length"]


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    vital: dict[str, Any] = Field(
        ...,
        description="k, request_id, batch_size, timings_ms, image; with explain: true also steps (step, "
        "sentence, peak, box, mask), region_fraction and plane (frame / slice / axis)",
    )


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "vital"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class OpenAIErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIErrorResponse(BaseModel):
    error: OpenAIErrorBody


# -- errors ---------------------------------------------------------------------------------------
class ParamError(APIError):
    """An APIError that names the request field at fault (OpenAI's `param`)."""

    def __init__(self, status: int, message: str, code: str, param: str | None):
        super().__init__(status, message, code)
        self.param = param


def _bad(message: str, param: str | None, code: str = "invalid_request") -> ParamError:
    return ParamError(400, f"{param}: {message}" if param else message, code, param)


def _reply_error(svc, exc: APIError) -> JSONResponse:
    status = 400 if exc.status == 422 else exc.status  # OpenAI answers invalid fields with 400
    param = getattr(exc, "param", None)
    if param is None and exc.status == 422:
        m = re.match(r"^([A-Za-z_][\w.\[\]]*): ", exc.message)
        param = m.group(1) if m else None
    svc.metrics.errors.labels(exc.code, str(status)).inc()
    return JSONResponse(openai_error(status, exc.code, exc.message, param), status, headers=exc.headers)


_DOC_ERRORS = {
    s: {"model": OpenAIErrorResponse, "description": d}
    for s, d in {
        400: "invalid field, unreadable image, remote image URL",
        401: "missing or wrong API key",
        404: "unknown model",
        413: "body or image too large",
        415: "unsupported image type",
        429: "queue full",
        503: "not ready or draining",
        504: "timed out",
    }.items()
}


# -- routes ---------------------------------------------------------------------------------------
@router.get("/models", summary="The served model", response_model=ModelList, responses=_DOC_ERRORS)
async def list_models(request: Request) -> JSONResponse:
    """One entry: the served bundle's model id."""
    svc = service_of(request)
    try:
        require_key(request)
        require_ready(request)
    except APIError as exc:
        return _reply_error(svc, exc)
    return JSONResponse(ModelList(data=[_card(svc)]).model_dump())


@router.get("/models/{model_id}", summary="One model", response_model=ModelCard, responses=_DOC_ERRORS)
async def get_model(model_id: str, request: Request) -> JSONResponse:
    """The served model's card, or 404 for any other id."""
    svc = service_of(request)
    try:
        require_key(request)
        require_ready(request)
        _check_model(model_id, svc, param=None)
    except APIError as exc:
        return _reply_error(svc, exc)
    return JSONResponse(_card(svc).model_dump())


@router.post(
    "/chat/completions",
    summary="Answer a question about an image (OpenAI chat-completions shape)",
    response_model=ChatCompletion,
    responses={**_DOC_ERRORS, 200: {"content": {"text/event-stream": {}}, "description": "stream: true"}},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": ChatCompletionRequest.model_json_schema()}},
        }
    },
)
async def chat_completions(request: Request) -> Response:
    """Decode the one image, resolve K, submit to the engine; JSON or server-sent events."""
    svc = service_of(request)
    t0 = time.perf_counter()
    try:
        require_key(request)
        require_ready(request)
        req = await _read_request(request)
        _check_model(req.model, svc, param="model")
        data, question = _extract(req.messages, req.dicomweb)
        params = _params(req, question, svc)
        k, max_new = resolve_k(params, svc), resolve_max_new_tokens(params, svc)
        decoded, decode_ms, _source = await decode_input(data, params, svc)
        prompt_tokens = await run_in_threadpool(count_prompt_tokens, svc.model, decoded.image, question)
        rid = request_id_var.get()
        engine, timeout = svc.loaded_engine(), svc.settings.request_timeout_s
        if req.explain:  # one explanation job in the same queue (429, 504, drain), as /explain
            explainer = await svc.get_explainer()  # 404/503 when not configured
            exp, queue_ms = await run_explanation(request, svc, explainer, decoded, params, k, max_new)
            res = _ExplainedAnswer(exp, queue_ms)
        elif req.stream:  # answer tokens go to `tokens` while the batch decodes; the result ends the stream
            tokens: asyncio.Queue = asyncio.Queue()
            job = asyncio.create_task(
                engine.submit(
                    decoded.image, question, k, max_new, rid, timeout, arrived(request), stream=tokens
                )
            )
            job.add_done_callback(lambda _: tokens.put_nowait(None))  # after every token (same loop, FIFO)
            first = await _first_token(tokens, job)  # errors before the first token keep their HTTP status
        else:
            res = await engine.submit(decoded.image, question, k, max_new, rid, timeout, arrived(request))
    except APIError as exc:
        return _reply_error(svc, exc)
    except Exception:  # a model failure fails this request (the app's 500 handler sits outside /v1's shape)
        log.exception("chat completion failed")
        return _reply_error(svc, APIError(500, "internal server error; see the server log", "internal_error"))
    cid, created, name = f"chatcmpl-{rid}", int(time.time()), svc.model.config.name
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        stream = Stream(
            svc.model.tokenizer, cid, created, name, max_new, prompt_tokens if include_usage else None
        )
        return StreamingResponse(
            stream.events(first, tokens, job),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    finish = "length" if len(res.tokens) >= max_new else "stop"
    usage = _usage(prompt_tokens, len(res.tokens))
    timings = {"decode_image": decode_ms, **res.timings_ms, "total": 1000 * (time.perf_counter() - t0)}
    vital = {
        "k": res.k,
        "request_id": rid,
        "batch_size": res.batch_size,
        "timings_ms": {k_: round(v, 3) for k_, v in timings.items()},
        "image": image_info(decoded),
    }
    if req.explain:
        vital["region_fraction"] = res.explanation.region_fraction
        vital["plane"] = plane_of(decoded).model_dump()
        vital["steps"] = [
            {
                "step": s.step,
                "sentence": s.sentence,
                "peak": list(s.heatmap.peak),
                "box": list(s.box),
                "mask": s.mask.model_dump(),
            }
            for s in res.explanation.steps
        ]
    body = ChatCompletion(
        id=cid,
        created=created,
        model=name,
        usage=usage,
        vital=vital,
        choices=[Choice(message=AssistantMessage(content=res.text), finish_reason=finish)],
    )
    return JSONResponse(body.model_dump())


class _ExplainedAnswer:
    """An explanation in the shape the chat reply reads from an engine result (text, tokens, k, timings)."""

    def __init__(self, explanation, queue_ms: float):  # server.explain.Explanation
        self.explanation = explanation
        self.text, self.tokens, self.k = explanation.answer, explanation.tokens, explanation.k
        self.batch_size = 1
        self.timings_ms = {"queue": queue_ms, **explanation.timings_ms}


def _usage(prompt: int, completion: int) -> Usage:
    return Usage(**usage(prompt, completion))


async def _first_token(tokens: asyncio.Queue, job: asyncio.Task) -> int | None:
    """The first streamed token, or None when the job ended without one (its error is raised here)."""
    try:
        first = await tokens.get()
    except asyncio.CancelledError:
        job.cancel()
        raise
    if first is None:
        job.result()  # raises the job's APIError (429, 503, 504) or model failure
    return first


# -- request handling -----------------------------------------------------------------------------
async def _read_request(request: Request) -> ChatCompletionRequest:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise APIError(
            415,
            f"unsupported content type {ctype or '(none)'!r}; send application/json",
            "unsupported_media_type",
        )
    try:
        body = json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _bad(f"body is not valid JSON: {exc}", None, "bad_request") from exc
    if not isinstance(body, dict):
        raise _bad("the body must be a JSON object with 'model' and 'messages'", None)
    try:
        return ChatCompletionRequest.model_validate(body)
    except ValidationError as exc:
        raise _invalid(exc.errors()) from exc


def _invalid(errors: list[dict]) -> ParamError:
    """A 400 for pydantic errors, naming the first offending field as `param`."""
    param = ".".join(str(x) for x in errors[0].get("loc", ())) or None
    return ParamError(400, describe_validation(errors), "invalid_request", param)


def _check_model(model_id: str, svc, param: str | None) -> None:
    name = svc.model.config.name
    if model_id != name:
        message = f"the model {model_id!r} does not exist; this server serves {name!r}"
        raise ParamError(404, message, "model_not_found", param)


def _card(svc) -> ModelCard:
    return ModelCard(id=svc.model.config.name, created=int(svc.started))


def _extract(messages: list[ChatMessage], ref: DicomwebRef | None = None) -> tuple[bytes | DicomwebRef, str]:
    """The one image (its bytes, or a PACS reference) and the question (the user messages' text, joined)."""
    images: list[tuple[str | DicomwebRef, str]] = [(ref, "dicomweb")] if ref is not None else []
    texts: list[str] = []
    for i, msg in enumerate(messages):
        if msg.role in ("assistant", "tool"):
            raise _bad(
                f"role {msg.role!r} is not supported: VITAL answers one question about one image "
                "(send system/user messages only)",
                f"messages[{i}].role",
            )
        if msg.role != "user" or msg.content is None:
            continue  # system/developer prompts are not part of VITAL's prompt (documented)
        if isinstance(msg.content, str):
            texts.append(msg.content)
            continue
        for j, part in enumerate(msg.content):
            if isinstance(part, TextPart):
                texts.append(part.text)
            elif isinstance(part, DicomwebPart):
                images.append((part.dicomweb, f"messages[{i}].content[{j}].dicomweb"))
            else:
                images.append((part.image_url.url, f"messages[{i}].content[{j}].image_url.url"))
    if len(images) != 1:
        raise _bad(
            f"exactly one image is needed (an image_url content part with a data: URI, or a dicomweb "
            f"reference), got {len(images)}",
            "messages",
        )
    question = "\n".join(t.strip() for t in texts if t.strip())
    if not question:
        raise _bad("the question is missing: add a text part to the user message", "messages")
    source, where = images[0]
    return (source if isinstance(source, DicomwebRef) else decode_data_uri(source, where)), question


def decode_data_uri(url: str, param: str = "image_url.url") -> bytes:
    """Bytes of a base64 `data:` URI; any other URL is refused (never fetched)."""
    scheme = url.split(":", 1)[0].lower() if ":" in url[:16] else ""
    if scheme in ("http", "https"):
        raise _bad(
            "remote image URLs are not fetched; send the image inline as a data: URI "
            "(data:image/png;base64,...)",
            param,
            "remote_image_url",
        )
    if scheme != "data":
        raise _bad(
            "the image URL must be a data: URI (data:<media type>;base64,<data>)", param, "invalid_image_url"
        )
    header, sep, payload = url.partition(",")
    if not sep or not header.lower().endswith(";base64"):
        raise _bad(
            "the data: URI must be base64-encoded (data:<media type>;base64,<data>)",
            param,
            "invalid_image_url",
        )
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _bad(f"the image is not valid base64: {exc}", param, "unreadable_image") from exc


def _params(req: ChatCompletionRequest, question: str, svc) -> AnswerParams:
    """The /answer parameters this request means (with the server's limits checked)."""
    if req.stop:
        raise _bad("stop sequences are not supported", "stop")
    if req.explain and req.stream:
        raise _bad(
            "explain: true cannot stream (the steps come with the whole answer); send stream: false",
            "explain",
        )
    if req.region_fraction is not None and not req.explain:
        raise _bad("region_fraction needs explain: true", "region_fraction")
    limit = svc.settings.max_new_tokens
    max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    name = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
    if max_tokens is not None and max_tokens > limit:
        raise _bad(f"must be at most {limit} on this server", name)
    try:
        return AnswerParams(
            question=question,
            k=req.k,
            max_new_tokens=max_tokens,
            frame=req.frame,
            slice=req.slice,
            axis=req.axis,
            region_fraction=req.region_fraction,
        )
    except ValidationError as exc:  # the question's length is the only check left to fail here
        raise _bad(describe_validation(exc.errors()), "messages") from exc


def count_prompt_tokens(model, image, question: str) -> int:
    """Tokens of the model's prompt for this image and question (image tokens included), no pixels."""
    from vital_core.preprocess import chat_prompt

    proc = model.processor
    n_image = proc.get_number_of_image_patches(image.height, image.width, {}) // proc.merge_size**2
    return len(model.tokenizer(chat_prompt(question, n_image), add_special_tokens=False)["input_ids"])


def install(app: FastAPI) -> None:
    """Add the /v1 routes and their error shape to an app (after its other middleware)."""
    app.include_router(router)
    app.add_middleware(OpenAIErrorShape)
