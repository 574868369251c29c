"""DICOM → the model's image: sizes checked from the header, one frame decoded, modality LUT → VOI → 8-bit.

Order: Modality LUT (LUT sequence or Rescale Slope/Intercept) → the request's window, else the file's
VOI LUT sequence or Window Center/Width, else the CT preset / percentiles (`windows.choose_window`) →
MONOCHROME1 inverted. Colour (RGB, YBR → RGB, PALETTE COLOR) is kept in colour. Multi-frame files
decode only the requested frame. The deflated transfer syntax is inflated as a stream through a capped
decompressor up to the requested frame, never whole. pydicom's warnings go to the log and
`info["dicom_warnings"]`, never through `warnings.catch_warnings` (process-global; see `pydicom_log`).
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from vital_core.imaging.pydicom_log import pydicom_messages, summary
from vital_core.imaging.spec import ImagingError, ImagingLimits, ImagingSpec, ModelImage
from vital_core.imaging.streams import CountingBytesIO, InflateStream
from vital_core.imaging.windows import Window, render_grey, to_uint8

DEFLATED = "1.2.840.10008.1.2.1.99"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
PIXEL_TAGS = (0x7FE00008, 0x7FE00009, 0x7FE00010)  # Float, Double Float, Pixel Data


def is_dicom(head: bytes) -> bool:
    """Part-10 file: 128-byte preamble then `DICM`."""
    return len(head) >= 132 and bytes(head[128:132]) == b"DICM"


def attr(ds: Any, name: str, cast, default=None):
    """An attribute as int/float, ImagingError(400) naming it when its value is not a number."""
    try:
        value = ds.get(name, None)
    except Exception as exc:
        raise ImagingError("unreadable", f"DICOM attribute {name} cannot be read: {exc}") from exc
    if value is None or value == "":
        return default
    if not isinstance(value, (str, bytes, int, float)) and hasattr(value, "__len__"):
        value = value[0] if len(value) else default  # multi-valued: the first value
        if value is None:
            return default
    try:
        out = cast(float(value)) if cast is int else cast(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ImagingError("unreadable", f"DICOM attribute {name} has a non-numeric value {value!r}") from exc
    if not np.isfinite(out):
        raise ImagingError("unreadable", f"DICOM attribute {name} is not finite ({value!r})")
    return out


def _meta(data: bytes) -> tuple[Any, int]:
    """(file meta dataset, offset of the main dataset)."""
    from pydicom.filereader import _read_file_meta_info, read_preamble

    f = io.BytesIO(data)
    try:
        read_preamble(f, False)
        meta = _read_file_meta_info(f)
    except Exception as exc:
        raise ImagingError("unreadable", f"unreadable DICOM file meta: {exc}") from exc
    return meta, f.tell()


def _stop_at_pixels(tag, vr, length) -> bool:
    return int(tag) in PIXEL_TAGS


def _read_head(data: bytes) -> tuple[Any, Any, Any]:
    """(header dataset without pixels — None for the deflated syntax, read later —, file meta, syntax)."""
    import pydicom

    meta, _ = _meta(data)
    syntax = str(meta.get("TransferSyntaxUID", "") or "")
    try:
        if syntax == DEFLATED:
            return None, meta, syntax  # read by _deflated
        head = pydicom.dcmread(CountingBytesIO(data, "DICOM header"), stop_before_pixels=True)
    except ImagingError:
        raise
    except Exception as exc:
        raise ImagingError("unreadable", f"unreadable DICOM: {exc}") from exc
    return head, meta, syntax


def _deflated_head(data: bytes, meta: Any, limits: ImagingLimits) -> tuple[Any, InflateStream]:
    """(header dataset, the inflating stream positioned at the pixel data element) of a deflated file."""
    from pydicom.filereader import read_dataset

    _, start = _meta(data)
    stream = InflateStream(memoryview(data)[start:], -15, limits.max_stream_bytes, "deflated DICOM dataset")
    try:
        head = read_dataset(stream, False, True, stop_when=_stop_at_pixels, defer_size=64 * 1024)
    except ImagingError:
        raise
    except Exception as exc:
        raise ImagingError("unreadable", f"unreadable deflated DICOM: {exc}") from exc
    head.file_meta = meta
    return head, stream


def read_header(data: bytes, limits: ImagingLimits) -> Any:
    """The header dataset of a Part-10 file, without pixel data (a deflated file is inflated, capped)."""
    head, meta, syntax = _read_head(data)
    return _deflated_head(data, meta, limits)[0] if syntax == DEFLATED else head


def decode_frame(data: bytes, spec: ImagingSpec, limits: ImagingLimits) -> tuple[Any, np.ndarray, dict]:
    """(header, decoded frame as stored, geometry) of the frame `spec.frame`; sizes checked first."""
    head, meta, syntax = _read_head(data)
    if syntax == DEFLATED:
        head, arr = _deflated_frame(data, meta, spec, limits)
        return head, arr, _geometry(head, spec, limits)
    geo = _geometry(head, spec, limits)
    return head, _decode_frame(data, head, geo), geo


def _deflated_frame(
    data: bytes, meta: Any, spec: ImagingSpec, limits: ImagingLimits
) -> tuple[Any, np.ndarray]:
    """Inflate (capped) the header, check sizes, skip to the requested frame, decode just that frame."""
    from pydicom.pixels import pixel_array

    head, stream = _deflated_head(data, meta, limits)
    geo = _geometry(head, spec, limits)
    element = bytes(stream.read(12))
    if len(element) < 8 or int.from_bytes(element[2:4] + element[:2], "little") not in PIXEL_TAGS:
        raise ImagingError("unreadable", "DICOM has no pixel data")
    vr = element[4:6].decode("latin-1")
    length = int.from_bytes(element[8:12], "little")
    if length == 0xFFFFFFFF:
        raise ImagingError("unreadable", "deflated DICOM with encapsulated pixel data")
    pixel_start = stream.tell()
    packed = geo["bits"] == 1 and (geo["rows"] * geo["cols"] * geo["samples"]) % 8
    first = 0 if packed else geo["frame"] * geo["frame_bytes"]
    count = (geo["frame"] + 1) * geo["frame_bytes"] if packed else geo["frame_bytes"]
    if first + count > length:
        raise ImagingError("unreadable", "DICOM pixel data is shorter than its header declares")
    stream.skip_to(pixel_start + first)
    chunk = bytes(stream.read_exact(count))
    from pydicom.dataset import FileMetaDataset

    one = head.copy()
    one.file_meta = FileMetaDataset(meta)
    one.file_meta.TransferSyntaxUID = EXPLICIT_LE
    if not packed and "NumberOfFrames" in one:
        one.NumberOfFrames = 1
    one.add_new(0x7FE00010, vr if vr in ("OB", "OW") else "OW", chunk)
    index = geo["frame"] if packed else 0
    try:
        arr = pixel_array(
            one, index=index if ("NumberOfFrames" in one and int(one.NumberOfFrames) > 1) else None
        )
    except Exception as exc:
        raise ImagingError("unreadable", f"cannot decode DICOM pixel data: {exc}") from exc
    return head, arr


def _geometry(head: Any, spec: ImagingSpec, limits: ImagingLimits) -> dict[str, int]:
    """Rows, columns, frames, samples, bits from the header, checked against the limits (before decoding)."""
    rows = attr(head, "Rows", int, 0)
    cols = attr(head, "Columns", int, 0)
    if rows < 1 or cols < 1:
        raise ImagingError(
            "unreadable",
            "DICOM has no image (no Rows/Columns: a report, structure set or other non-image object?)",
        )
    frames = attr(head, "NumberOfFrames", int, 1)
    samples = attr(head, "SamplesPerPixel", int, 1)
    bits = attr(head, "BitsAllocated", int, 0)
    if frames < 1 or samples not in (1, 3, 4) or bits not in (1, 8, 16, 32, 64):
        raise ImagingError(
            "unreadable",
            f"DICOM declares frames={frames}, samples per pixel={samples}, bits allocated={bits}",
        )
    frame = 0 if spec.frame is None else int(spec.frame)
    if not 0 <= frame < frames:
        raise ImagingError("invalid", f"frame {frame} out of range: this DICOM has {frames} frame(s)")
    frame_bytes = rows * cols * samples * max(bits // 8, 1) if bits > 1 else -(-rows * cols * samples // 8)
    limits.check_pixels(cols, rows, "DICOM frame")
    limits.check_decoded(rows * cols * samples * max(bits // 8, 1), "one DICOM frame")
    limits.check_stream(
        frames * frame_bytes, f"DICOM pixel data ({frames} frame(s) of {rows}x{cols}x{samples})"
    )
    return {
        "rows": rows,
        "cols": cols,
        "frames": frames,
        "samples": samples,
        "bits": bits,
        "frame": frame,
        "frame_bytes": frame_bytes,
    }


def _decode_frame(data: bytes, head: Any, geo: dict[str, int]) -> np.ndarray:
    """Decode only frame geo['frame'] (pydicom reads just that frame's bytes / fragments)."""
    from pydicom.pixels import pixel_array

    try:
        return pixel_array(CountingBytesIO(data, "DICOM"), index=geo["frame"] if geo["frames"] > 1 else None)
    except ImagingError:
        raise
    except (NotImplementedError, RuntimeError) as exc:
        syntax = getattr(getattr(head, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", str(syntax))
        raise ImagingError(
            "unsupported",
            f"cannot decode DICOM pixel data (transfer syntax {name}) with the installed handlers: {exc}",
        ) from exc
    except AttributeError as exc:
        if "no pixel data" in str(exc).lower() or "pixel data" in str(exc).lower():
            raise ImagingError("unreadable", "DICOM has no pixel data") from exc
        raise ImagingError("unreadable", f"cannot decode DICOM pixel data: {exc}") from exc
    except Exception as exc:
        raise ImagingError("unreadable", f"cannot decode DICOM pixel data: {exc}") from exc


def file_window(head: Any) -> Window | None:
    centre = attr(head, "WindowCenter", float)
    width = attr(head, "WindowWidth", float)
    if centre is None or width is None or width <= 0:
        return None
    func = str(head.get("VOILUTFunction", "") or "LINEAR").upper()
    return Window.centred("dicom", centre, width, sigmoid=func == "SIGMOID")


def _colour(arr: np.ndarray, head: Any, photometric: str) -> np.ndarray:
    from pydicom.pixels import apply_color_lut

    if photometric == "PALETTE COLOR":
        arr = apply_color_lut(arr, head)
    arr = arr[..., :3]
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if arr.dtype.kind == "f":
        return to_uint8(arr, Window("colour", float(np.nanmin(arr)), float(np.nanmax(arr)) or 1.0))
    stored = attr(head, "BitsStored", int, arr.dtype.itemsize * 8) if photometric != "PALETTE COLOR" else 16
    top = float(2 ** min(max(stored, 1), arr.dtype.itemsize * 8) - 1)
    return to_uint8(arr, Window("colour", 0.0, top))


def _grey(arr: np.ndarray, head: Any, spec: ImagingSpec) -> tuple[np.ndarray, dict[str, str]]:
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    slope = attr(head, "RescaleSlope", float)
    intercept = attr(head, "RescaleIntercept", float)
    if head.get("ModalityLUTSequence"):
        values = apply_modality_lut(arr, head)
    elif (slope is not None and slope != 1.0) or (intercept is not None and intercept != 0.0):
        values = arr.astype(np.float32) * np.float32(1.0 if slope is None else slope)
        values += np.float32(intercept or 0.0)
    else:
        values = arr
    modality = str(head.get("Modality", "") or "") or None
    photometric = str(head.get("PhotometricInterpretation", "MONOCHROME2") or "MONOCHROME2").upper()
    invert = photometric == "MONOCHROME1"
    explicit = spec.window is not None or spec.window_center is not None
    if not explicit and head.get("VOILUTSequence"):
        item = head.VOILUTSequence[0]
        bits = int(item.LUTDescriptor[2])
        out = apply_voi_lut(values, head, prefer_lut=True)
        pixels, info = render_grey(
            out, spec, file_window=Window("dicom_voi_lut", 0.0, float(2**bits - 1)), invert=invert
        )
    else:
        pixels, info = render_grey(values, spec, modality, file_window(head), invert)
    if modality:
        info["modality"] = modality
    return pixels, info


def decode_dicom(data: bytes, spec: ImagingSpec, limits: ImagingLimits) -> ModelImage:
    """A DICOM Part-10 file → ModelImage (one frame; 400/413/415/422 as ImagingError).

    pydicom's warnings about the file (odd values, VR mismatches) are kept with this decode, in
    `info["dicom_warnings"]` and the log, without touching the process's warning filters
    (`pydicom_log`: safe when requests decode in several threads at once).
    """
    with pydicom_messages() as messages:
        head, arr, geo = decode_frame(data, spec, limits)
        try:
            photometric = str(head.get("PhotometricInterpretation", "") or "").upper()
            if arr.ndim == 3 or photometric == "PALETTE COLOR":
                pixels, info = _colour(arr, head, photometric), {"window": "colour"}
            else:
                pixels, info = _grey(arr, head, spec)
        except ImagingError:
            raise
        except Exception as exc:
            raise ImagingError("unreadable", f"cannot apply the DICOM's LUTs: {exc}") from exc
    info["frame"] = str(geo["frame"])
    if messages:
        info["dicom_warnings"] = summary(messages)
    return ModelImage(pixels, "dicom", info)
