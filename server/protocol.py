"""Request and response models of the HTTP API (one file, as the OpenAPI schema shows them)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# A DICOM UID (PS3.5 §9.1): digits and dots, no leading zero in a component, at most 64 characters.
UID_PATTERN = r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$"


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
        None, ge=0, description="NIfTI: slice index along `axis`, in RAS voxel order (default: the middle)"
    )
    axis: Literal["axial", "coronal", "sagittal"] | None = Field(
        None,
        description="NIfTI: slice orientation (default axial); shown radiologically, see docs/imaging.md",
    )
    window: Literal["abdomen", "soft_tissue", "lung", "bone", "brain", "percentile"] | None = Field(
        None,
        description="intensity window preset (CT, in HU) or `percentile`; default: the DICOM's own window, "
        "else `abdomen` for CT, else percentiles",
    )
    window_center: float | None = Field(
        None, allow_inf_nan=False, description="explicit window centre; needs window_width, overrides window"
    )
    window_width: float | None = Field(None, gt=0, allow_inf_nan=False, description="explicit window width")
    top_k: int = Field(5, ge=1, le=50, description="/explain: nearest reference patches per step")
    region_fraction: float | None = Field(
        None,
        gt=0,
        le=1,
        allow_inf_nan=False,
        description="/explain: a step's region keeps the pixels whose normalised heatmap value is at least "
        "this fraction of its range (connected component of the peak); default: the model's "
        "(index_builder.regions.DEFAULT_FRACTION)",
    )
    store: bool = Field(
        False,
        description="/explain with a dicomweb reference: store an SR, heatmaps and a step-region SEG in the same study",
    )


class DicomwebRef(BaseModel):
    """An instance, or a whole series, on the configured DICOMweb server (never a URL: the server is the
    operator's)."""

    model_config = ConfigDict(extra="forbid")

    study: str = Field(..., max_length=64, pattern=UID_PATTERN, description="StudyInstanceUID")
    series: str = Field(..., max_length=64, pattern=UID_PATTERN, description="SeriesInstanceUID")
    instance: str | None = Field(
        None,
        max_length=64,
        pattern=UID_PATTERN,
        description="SOPInstanceUID; without it the whole series is retrieved and assembled into a volume",
    )
    frame: int | None = Field(
        None, ge=1, description="frame of a multi-frame instance, numbered from 1 as in DICOM (default 1)"
    )

    @model_validator(mode="after")
    def _frame_needs_instance(self) -> DicomwebRef:
        if self.frame is not None and self.instance is None:
            raise ValueError("frame: only with an 'instance' (a series view is chosen with axis and slice)")
        return self


class JSONAnswerRequest(AnswerParams):
    """JSON body: the image as base64 (or a DICOMweb reference) plus the fields above."""

    image: str | None = Field(
        None, min_length=1, description="PNG, JPEG, DICOM or NIfTI file, base64-encoded"
    )
    dicomweb: DicomwebRef | None = Field(
        None, description="instead of image: an instance (or, without `instance`, a series) on the PACS"
    )

    @model_validator(mode="after")
    def _one_source(self) -> JSONAnswerRequest:
        if (self.image is None) == (self.dicomweb is None):
            raise ValueError(
                "send exactly one of 'image' (base64 file) and 'dicomweb' (study/series/instance)"
            )
        return self


class AnswerResponse(BaseModel):
    """The answer and how it was made."""

    answer: str
    k: int
    model: str
    request_id: str
    timings_ms: dict[str, float] = Field(
        ...,
        description="milliseconds per stage and `total`; stages of a batched forward pass are the batch's; "
        "`prefix_cache_hit` is 1 when the image's prefix came from the prefix cache (no vision stage), 0 when "
        "it was computed (absent when the cache is off)",
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
    grid: list[list[float]] = Field(
        ...,
        description="contrast cosine per patch of the encoder grid (the image's mean patch feature removed)",
    )
    peak: tuple[int, int] = Field(..., description="(row, col) of the highest value")


class RLEMask(BaseModel):
    """A binary mask as COCO run-length encoding (`pycocotools.mask.decode` reads it as a dict)."""

    size: tuple[int, int] = Field(..., description="[height, width] of the original image")
    counts: str = Field(..., description="COCO compressed RLE counts (column-major runs), as a string")


class ExplainStep(BaseModel):
    step: int
    sentence: str
    heatmap: Heatmap
    nearest: list[Patch]
    box: tuple[int, int, int, int] = Field(
        ...,
        description="[x0, y0, x1, y1]: tight box of `mask` in pixel edges of the original image (x1, y1 "
        "exclusive), after the square padding and resize the encoder applies are undone",
    )
    mask: RLEMask = Field(
        ..., description="where the step looks: the heatmap's region on the original image (docs/api.md)"
    )


class StoredInstance(BaseModel):
    series_instance_uid: str
    sop_class_uid: str
    sop_instance_uid: str
    kind: str = Field(
        ..., description="sr, heatmap (with its step), or seg (DICOM Segmentation: one segment per step)"
    )
    step: int | None = None


class StoredResult(BaseModel):
    """What /explain wrote back to the PACS (store: true)."""

    study_instance_uid: str
    instances: list[StoredInstance] = Field(
        ...,
        description="the SR, then one heatmap per step, then the step-region SEG (when the source allows)",
    )


class Plane(BaseModel):
    """Which 2-D image of the source the steps' boxes and masks are on."""

    frame: int | None = Field(
        None, description="0-based frame of a multi-frame DICOM / volume of a 4-D NIfTI"
    )
    slice: int | None = Field(None, description="NIfTI: slice index along `axis` (RAS voxel order)")
    axis: str | None = Field(None, description="NIfTI: axial, coronal or sagittal (shown radiologically)")


class ExplainResponse(AnswerResponse):
    steps: list[ExplainStep]
    plane: Plane = Field(
        default_factory=Plane,
        description="the frame / slice of the source the boxes and masks are on (all null for a 2-D image)",
    )
    region_fraction: float = Field(
        ..., description="the threshold the steps' regions used (fraction of each heatmap's range)"
    )
    stored: StoredResult | None = Field(None, description="the new DICOM series, when store was asked")


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody
