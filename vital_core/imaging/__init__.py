"""The one imaging path: DICOM / NIfTI / PNG / JPEG / ... → the model's image, for training and serving alike.

`load_model_image(bytes_or_path, ImagingSpec(...))` is the call; `docs/imaging.md` states the display
convention (radiological), square pixels for anisotropic volumes (`view.py`), the window presets and the limits.
"""

from vital_core.imaging.decode import SUPPORTED, decode_bytes, load_model_image, series_files, sniff
from vital_core.imaging.nifti import NiftiVolume
from vital_core.imaging.series import DicomSeries, decode_series
from vital_core.imaging.spec import AXES, ImagingError, ImagingLimits, ImagingSpec, ModelImage
from vital_core.imaging.view import square_pixels, square_shape
from vital_core.imaging.windows import (
    DEFAULT_CT_PRESET,
    PERCENTILES,
    WINDOW_NAMES,
    WINDOW_PRESETS,
    Window,
    percentile_range,
    render_grey,
    to_uint8,
)

__all__ = [
    "AXES",
    "DicomSeries",
    "DEFAULT_CT_PRESET",
    "PERCENTILES",
    "SUPPORTED",
    "WINDOW_NAMES",
    "WINDOW_PRESETS",
    "ImagingError",
    "ImagingLimits",
    "ImagingSpec",
    "ModelImage",
    "NiftiVolume",
    "Window",
    "decode_bytes",
    "decode_series",
    "load_model_image",
    "percentile_range",
    "render_grey",
    "series_files",
    "sniff",
    "square_pixels",
    "square_shape",
    "to_uint8",
]
