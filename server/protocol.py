"""Request and response models of the HTTP API (one file, as the OpenAPI schema shows them)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class AnswerParams(BaseModel):
    """Fields of /answer and /explain besides the image (multipart fields or JSON keys)."""

    model_config = ConfigDict(extra="forbid")

    question: str = Field(..., min_length=1, max_length=2000, description="the question about the image")
    k: int | Literal["auto"] | None = Field(
        None,
        description='latent steps 0..K_max, or "auto" (depth from the question type); default: the model\'s',
    )
    max_new_tokens: int | None = Field(None, ge=1, description="cap on answer tokens (default: the model's)")
    frame: int | None = Field(None, ge=0, description="frame of a multi-frame DICOM (default 0)")
    slice: int | None = Field(
        None, ge=0, description="slice of a NIfTI volume along its third axis (default middle)"
    )
    top_k: int = Field(5, ge=1, le=50, description="/explain: nearest reference patches per step")


class JSONAnswerRequest(AnswerParams):
    """JSON body: the image as base64 plus the fields above."""

    image: str = Field(..., min_length=1, description="PNG, JPEG, DICOM or NIfTI file, base64-encoded")


class AnswerResponse(BaseModel):
    """The answer and how it was made."""

    answer: str
    k: int
    model: str
    request_id: str
    timings_ms: dict[str, float] = Field(
        ...,
        description="milliseconds per stage and `total`; stages of a batched forward pass are the batch's",
    )
    batch_size: int = Field(..., description="requests that shared this forward pass")
    image: dict[str, int | str] = Field(..., description="decoded image format and size")


class Patch(BaseModel):
    image_id: str
    row: int
    col: int
    score: float


class Heatmap(BaseModel):
    png_base64: str = Field(..., description="colour-mapped overlay on the model's view of the image")
    grid: list[list[float]] = Field(..., description="cosine per patch of the encoder grid")
    peak: tuple[int, int] = Field(..., description="(row, col) of the highest cosine")


class ExplainStep(BaseModel):
    step: int
    sentence: str
    heatmap: Heatmap
    nearest: list[Patch]


class ExplainResponse(AnswerResponse):
    steps: list[ExplainStep]


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody
