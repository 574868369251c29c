"""A DICOM series (single-frame instances) → one volume with true geometry → any plane, as for NIfTI.

Assembly, in this order (every refusal an ImagingError naming the problem):

1. **Bounds before parsing**: instance count (`max_instances`) and total bytes (`max_series_bytes`), 413.
2. **Headers only** (no pixels): one series (`SeriesInstanceUID`) and one modality, no SOPInstanceUID twice,
   single-frame greyscale images (MONOCHROME1/2) of one size, one orientation (`ImageOrientationPatient`,
   direction cosines within 1e-3) and one `PixelSpacing` (within 0.1 %); otherwise 422.
3. **Geometry**: the slice normal is the cross product of the orientation's row and column directions;
   instances are sorted by `ImagePositionPatient` projected on it (never by InstanceNumber or file order).
   Two positions closer than 0.01 mm are duplicates; consecutive positions must be evenly spaced (within
   1 % of the median step; a step of 1.5 steps or more is a missing slice); the step between positions must
   run along the normal (an in-plane shift over 1 % of the step is a gantry tilt or a sheared series, which
   would need resampling: refused). All 422. The slice spacing is the mean step.
4. **Volume bound before decoding**: slices × rows × columns × bytes per voxel ≤ `max_volume_bytes`, 413.
   Voxels are Rescale Slope / Intercept applied **per instance**, kept as int16 when every instance's mapped
   range is integral and fits, else float32.
5. **Views**: the voxel axes (columns, rows, slices) and the patient-space affine (LPS → RAS+) give a
   `NiftiLayout`, so orientation, the radiological display convention, the `axis` / `slice` rule and the
   square-pixel rule (`view.py`) are the NIfTI ones; the intensity rule is the DICOM one (`windows.py`:
   the request's window, else the window of the instance served — for a reformatted plane the middle
   instance's —, else the CT preset / percentiles; MONOCHROME1 inverted). The image's `info` names the plane
   (`axis`), the `slice`, the series, the number of instances and, when the plane is the acquired one, the
   `sop_instance_uid` of the instance shown.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from vital_core.imaging.dicom import attr, decode_frame, file_window, is_dicom, read_header
from vital_core.imaging.nifti import NiftiLayout, NiftiVolume, display_values
from vital_core.imaging.pydicom_log import pydicom_messages, summary
from vital_core.imaging.spec import ImagingError, ImagingLimits, ImagingSpec, ModelImage
from vital_core.imaging.windows import render_grey

DUPLICATE_MM = 0.01
"""Two slice positions closer than this along the normal are the same position."""
STEP_TOLERANCE = 0.01
"""Steps between slice positions may differ from the median step by this fraction."""
TILT_TOLERANCE = 0.01
"""In-plane shift between consecutive positions allowed, as a fraction of the step (about 0.6°)."""
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def _invalid(message: str) -> ImagingError:
    return ImagingError("invalid", f"DICOM series: {message}")


def _floats(ds: Any, name: str, n: int, where: str) -> np.ndarray:
    """A multi-valued numeric attribute as n floats; 422 naming the instance when absent or malformed."""
    try:
        value = ds.get(name, None)
        out = np.array([float(v) for v in (value if value is not None else [])], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise _invalid(f"{where}: {name} is not numeric ({exc})") from exc
    if out.shape != (n,) or not np.all(np.isfinite(out)):
        raise _invalid(f"{where}: {name} must have {n} finite values (it is needed to place the slice)")
    return out


@dataclass
class Instance:
    """One single-frame instance: its bytes, header and place in the series."""

    data: bytes
    head: Any
    name: str
    sop: str
    position: np.ndarray  # ImagePositionPatient (LPS, mm)


def _headers(sources: Sequence[tuple[str, bytes]], limits: ImagingLimits) -> list[Instance]:
    """Parse every header (no pixels) after checking the count and total bytes."""
    if not sources:
        raise ImagingError("unreadable", "the series has no instances")
    if len(sources) > limits.max_instances:
        raise ImagingError(
            "too_large", f"the series has {len(sources)} instances; the limit is {limits.max_instances}"
        )
    total = sum(len(data) for _, data in sources)
    if total > limits.max_series_bytes:
        raise ImagingError(
            "too_large", f"the series' instances total {total} bytes; the limit is {limits.max_series_bytes}"
        )
    out = []
    for name, data in sources:
        if not is_dicom(data[:132]):
            raise ImagingError("unsupported", f"DICOM series, instance {name}: not a DICOM Part-10 file")
        try:
            head = read_header(data, limits)
        except ImagingError as exc:
            raise ImagingError(exc.kind, f"DICOM series, instance {name}: {exc.message}") from exc
        sop = str(head.get("SOPInstanceUID", "") or "")
        out.append(Instance(data, head, name, sop, _floats(head, "ImagePositionPatient", 3, name)))
    return out


def _same(instances: list[Instance], name: str, what: str) -> str:
    values = {str(i.head.get(name, "") or "") for i in instances}
    if len(values) > 1:
        shown = ", ".join(sorted(v or "(none)" for v in values)[:4])
        raise _invalid(f"{what}: {len(values)} different {name} values ({shown}); send one series")
    return values.pop()


def _check_instances(instances: list[Instance]) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """(orientation (6,), pixel spacing (2,), (rows, cols)) shared by all instances; 422 otherwise."""
    _same(instances, "SeriesInstanceUID", "mixed series")
    _same(instances, "Modality", "mixed modalities")
    seen: dict[str, str] = {}
    for inst in instances:
        if inst.sop and inst.sop in seen:
            raise _invalid(f"instance {inst.sop} is sent twice ({seen[inst.sop]} and {inst.name})")
        seen[inst.sop] = inst.name
    first = instances[0]
    orient = _floats(first.head, "ImageOrientationPatient", 6, first.name)
    spacing = _floats(first.head, "PixelSpacing", 2, first.name)
    shape = (attr(first.head, "Rows", int, 0), attr(first.head, "Columns", int, 0))
    if min(shape) < 1:
        raise _invalid(f"{first.name} has no image (Rows/Columns missing)")
    if np.any(spacing <= 0):
        raise _invalid(f"{first.name}: PixelSpacing must be positive, got {spacing.tolist()}")
    for inst in instances:
        frames = attr(inst.head, "NumberOfFrames", int, 1)
        photometric = str(inst.head.get("PhotometricInterpretation", "") or "").upper()
        if frames != 1:
            raise _invalid(f"{inst.name} has {frames} frames; a series is single-frame instances")
        if (
            photometric not in ("MONOCHROME1", "MONOCHROME2")
            or attr(inst.head, "SamplesPerPixel", int, 1) != 1
        ):
            raise ImagingError(
                "unsupported",
                f"DICOM series: {inst.name} is {photometric or 'not greyscale'}; need MONOCHROME1/2",
            )
        if (attr(inst.head, "Rows", int, 0), attr(inst.head, "Columns", int, 0)) != shape:
            raise _invalid(f"inconsistent image size: {inst.name} differs from {first.name}")
        o = _floats(inst.head, "ImageOrientationPatient", 6, inst.name)
        if np.max(np.abs(o - orient)) > 1e-3:
            raise _invalid(
                f"inconsistent orientation: {inst.name} has {o.tolist()}, {first.name} {orient.tolist()}"
            )
        p = _floats(inst.head, "PixelSpacing", 2, inst.name)
        if np.max(np.abs(p - spacing) / spacing) > 1e-3:
            raise _invalid(
                f"inconsistent pixel spacing: {inst.name} has {p.tolist()}, {first.name} {spacing.tolist()}"
            )
    _same(instances, "PhotometricInterpretation", "mixed photometric interpretations")
    return orient, spacing, shape


def _normal(orient: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    row, col = orient[:3], orient[3:]
    if abs(np.linalg.norm(row) - 1) > 1e-2 or abs(np.linalg.norm(col) - 1) > 1e-2 or abs(row @ col) > 1e-2:
        raise _invalid(f"ImageOrientationPatient {orient.tolist()} is not two orthogonal unit vectors")
    row, col = row / np.linalg.norm(row), col / np.linalg.norm(col)
    normal = np.cross(row, col)
    return row, col, normal / np.linalg.norm(normal)


def _sort_and_space(instances: list[Instance], normal: np.ndarray) -> tuple[list[Instance], float]:
    """Instances sorted along the normal and the slice spacing; 422 for duplicates, gaps, uneven steps, tilt."""
    depth = np.array([i.position @ normal for i in instances])
    order = np.argsort(depth, kind="stable")
    instances = [instances[k] for k in order]
    depth = depth[order]
    if len(instances) == 1:
        thickness = attr(instances[0].head, "SliceThickness", float, 0.0) or 0.0
        return instances, float(thickness) if thickness > 0 else 0.0
    steps = np.diff(depth)
    k = int(np.argmin(steps))
    if steps[k] < DUPLICATE_MM:
        raise _invalid(
            f"duplicated slice position {depth[k]:.2f} mm along the normal "
            f"({instances[k].name} and {instances[k + 1].name})"
        )
    median = float(np.median(steps))
    for k, step in enumerate(steps):
        if step >= 1.5 * median:
            raise _invalid(
                f"missing slice(s): a gap of {step:.2f} mm between {instances[k].name} and "
                f"{instances[k + 1].name} where the slice spacing is {median:.2f} mm"
            )
        if abs(step - median) > STEP_TOLERANCE * median:
            raise _invalid(
                f"uneven slice spacing: {step:.3f} mm between {instances[k].name} and "
                f"{instances[k + 1].name}, {median:.3f} mm elsewhere"
            )
    shifts = np.diff(np.stack([i.position for i in instances]), axis=0)
    in_plane = np.linalg.norm(shifts - np.outer(shifts @ normal, normal), axis=1)
    k = int(np.argmax(in_plane))
    if in_plane[k] > TILT_TOLERANCE * median:
        angle = np.degrees(np.arctan2(in_plane[k], steps[k]))
        raise _invalid(
            f"slice positions do not run along the slice normal (gantry tilt or a sheared series, "
            f"{angle:.1f}°); resample it to an orthogonal volume first"
        )
    return instances, float((depth[-1] - depth[0]) / (len(depth) - 1))


def _rescale(head: Any) -> tuple[float, float]:
    slope = attr(head, "RescaleSlope", float, 1.0)
    intercept = attr(head, "RescaleIntercept", float, 0.0)
    if head.get("ModalityLUTSequence"):
        raise ImagingError(
            "unsupported", "DICOM series: a Modality LUT Sequence is not supported in a series"
        )
    return (1.0 if slope is None else slope), (0.0 if intercept is None else intercept)


def _voxel_dtype(instances: list[Instance]) -> np.dtype:
    """int16 when every instance's stored range maps to integers that fit, else float32."""
    for inst in instances:
        slope, intercept = _rescale(inst.head)
        bits = attr(inst.head, "BitsStored", int, 16)
        signed = attr(inst.head, "PixelRepresentation", int, 0) == 1
        lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
        ends = (slope * lo + intercept, slope * hi + intercept)
        integral = float(slope).is_integer() and float(intercept).is_integer()
        if not integral or min(ends) < -32768 or max(ends) > 32767:
            return np.dtype(np.float32)
    return np.dtype(np.int16)


class DicomSeries:
    """A DICOM series assembled into one volume with true geometry; `image(spec)` gives any plane."""

    def __init__(
        self, volume: NiftiVolume, instances: list[Instance], affine: np.ndarray, messages: list[str]
    ):
        self.volume = volume
        self.instances = instances  # sorted along the slice normal (= stored slice axis 2)
        self.affine = affine  # RAS+ mm of voxel (column, row, slice)
        self.messages = messages  # pydicom's warnings while reading

    @classmethod
    def load(
        cls, sources: Sequence[bytes | tuple[str, bytes]], limits: ImagingLimits | None = None
    ) -> DicomSeries:
        """Assemble instances (bytes, or (name, bytes) for messages); ImagingError 400/413/415/422."""
        limits = limits or ImagingLimits()
        named = [s if isinstance(s, tuple) else (f"#{k + 1}", s) for k, s in enumerate(sources)]
        with pydicom_messages() as messages:
            instances = _headers(named, limits)
            orient, spacing, (rows, cols) = _check_instances(instances)
            row, col, normal = _normal(orient)
            instances, step = _sort_and_space(instances, normal)
            dtype = _voxel_dtype(instances)
            n = len(instances)
            nbytes = n * rows * cols * dtype.itemsize
            if nbytes > limits.max_volume_bytes:
                raise ImagingError(
                    "too_large",
                    f"the series' volume ({n} x {rows} x {cols} voxels, {nbytes} bytes) exceeds the limit of "
                    f"{limits.max_volume_bytes} bytes",
                )
            data = np.empty((n, rows, cols), dtype=dtype)  # (slices, rows, columns)
            for k, inst in enumerate(instances):
                data[k] = _decode_instance(inst, limits, dtype)
                inst.data = b""  # the volume holds the pixels now; a kept DicomSeries keeps headers only
        lps = np.eye(4)
        lps[:3, 0] = row * spacing[1]  # column index j runs along the row direction, by column spacing
        lps[:3, 1] = col * spacing[0]  # row index i runs along the column direction, by row spacing
        lps[:3, 2] = normal * step
        lps[:3, 3] = instances[0].position
        affine = np.eye(4)
        affine[:3] = _LPS_TO_RAS @ lps[:3]
        stored = data.transpose(2, 1, 0)  # (columns, rows, slices): the NIfTI voxel order, a view
        layout = NiftiLayout.in_memory(stored.shape, dtype, affine)
        return cls(NiftiVolume(layout, stored, 0, limits), instances, affine, messages)

    def n_slices(self, axis: str = "axial") -> int:
        """Number of slices along `axis`."""
        return self.volume.n_slices(axis)

    def plane_geometry(self, spec: ImagingSpec, shape: tuple[int, int]) -> dict[str, str]:
        """Where the served view (of `shape`, after square pixels) lies in patient space (LPS, DICOM strings)."""
        return _plane_geometry(self.volume, self.affine, spec, shape)

    def image(self, spec: ImagingSpec) -> ModelImage:
        """The model's image of one plane: the NIfTI view rules, the DICOM intensity rule."""
        stored, s, index = self.volume.stored_slice(spec)
        layout = self.volume.layout
        values = display_values(
            np.ascontiguousarray(stored), layout, s, self.volume.limits, "DICOM series view"
        )
        native = s == 2  # the acquired plane: one instance, the one shown
        stored_index = layout.locate(ImagingSpec(axis=spec.axis, slice=index))[1]
        source = self.instances[stored_index if native else len(self.instances) // 2]
        head = source.head
        modality = str(head.get("Modality", "") or "") or None
        invert = str(head.get("PhotometricInterpretation", "") or "").upper() == "MONOCHROME1"
        pixels, info = render_grey(values, spec, modality, file_window(head), invert)
        info.update(axis=spec.axis, slice=str(index), frame="0", instances=str(len(self.instances)))
        info["series_instance_uid"] = str(head.get("SeriesInstanceUID", "") or "")
        if modality:
            info["modality"] = modality
        if native:
            info["sop_instance_uid"] = source.sop
        info.update(self.plane_geometry(spec, pixels.shape[:2]))
        if self.messages:
            info["dicom_warnings"] = summary(self.messages)
        return ModelImage(pixels, "dicom", info)


def _ds(values) -> str:
    return "\\".join(f"{float(v):.6g}" for v in values)


def _plane_geometry(volume: NiftiVolume, affine: np.ndarray, spec: ImagingSpec, shape) -> dict[str, str]:
    """The served view's ImageOrientationPatient, ImagePositionPatient and PixelSpacing (LPS, DICOM strings).

    The display mapping is read off `to_display` itself (stored voxel indices pushed through it), so the
    geometry follows the same flips as the pixels; the square-pixel resampling moves the first pixel centre
    to (0.5 · n / m − 0.5) source pixels and sets the spacing to n / m source pixels along the coarse axis.
    """
    from vital_core.imaging.nifti import to_display

    layout = volume.layout
    s, i, _, _ = layout.locate(ImagingSpec(axis=spec.axis, slice=spec.slice))
    rest = [a for a in range(3) if a != s]
    dims = [layout.dims[a] for a in rest]
    grids = np.meshgrid(np.arange(dims[0]), np.arange(dims[1]), indexing="ij")
    disp = [to_display(g, layout, s) for g in grids]  # per display pixel: index along rest[0], rest[1]

    def world(r: float, c: float) -> np.ndarray:
        rr, cc = int(r), int(c)
        vox = np.zeros(4)
        vox[3], vox[s] = 1.0, i
        for k, a in enumerate(rest):
            base = disp[k][rr, cc]
            step_r = disp[k][min(rr + 1, disp[k].shape[0] - 1), cc] - base if disp[k].shape[0] > 1 else 0
            step_c = disp[k][rr, min(cc + 1, disp[k].shape[1] - 1)] - base if disp[k].shape[1] > 1 else 0
            vox[a] = base + step_r * (r - rr) + step_c * (c - cc)
        return (affine @ vox)[:3] * np.array([-1.0, -1.0, 1.0])  # RAS → LPS

    n_rows, n_cols = disp[0].shape
    m_rows, m_cols = shape
    r0, c0 = 0.5 * n_rows / m_rows - 0.5, 0.5 * n_cols / m_cols - 0.5  # first pixel centres, source pixels
    dr, dc = n_rows / m_rows, n_cols / m_cols
    origin = world(r0, c0)
    down = world(r0 + dr, c0) - origin if m_rows > 1 else np.zeros(3)
    across = world(r0, c0 + dc) - origin if m_cols > 1 else np.zeros(3)
    norm = lambda v: v / np.linalg.norm(v) if np.linalg.norm(v) > 0 else v  # noqa: E731
    return {
        "image_orientation_patient": _ds([*norm(across), *norm(down)]),
        "image_position_patient": _ds(origin),
        "pixel_spacing": _ds([np.linalg.norm(down), np.linalg.norm(across)]),
    }


def _decode_instance(inst: Instance, limits: ImagingLimits, dtype: np.dtype) -> np.ndarray:
    """One instance's frame, Rescale Slope / Intercept applied (its own), as `dtype`."""
    try:
        _, arr, _ = decode_frame(inst.data, ImagingSpec(), limits)
    except ImagingError as exc:
        raise ImagingError(exc.kind, f"DICOM series, instance {inst.name}: {exc.message}") from exc
    slope, intercept = _rescale(inst.head)
    if arr.ndim != 2:
        raise ImagingError("unsupported", f"DICOM series: {inst.name} is not a greyscale image")
    if dtype == np.int16:
        return (arr.astype(np.int32) * int(slope) + int(intercept)).astype(np.int16)
    return arr.astype(np.float32) * np.float32(slope) + np.float32(intercept)


def decode_series(
    sources: Sequence[bytes | tuple[str, bytes]], spec: ImagingSpec, limits: ImagingLimits
) -> ModelImage:
    """A series of single-frame instances → the model's image of the plane `spec` asks for."""
    if spec.frame not in (None, 0):
        raise ImagingError("invalid", f"frame {spec.frame} out of range: a series view has 1 frame")
    return DicomSeries.load(sources, limits).image(spec)


__all__ = ["DicomSeries", "decode_series"]
