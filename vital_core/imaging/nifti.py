"""NIfTI-1/2 → one slice in the radiological display convention, reading only the bytes that slice needs.

Orientation: the voxel axes are matched to RAS+ (x → patient's right, y → anterior, z → superior) the
way nibabel's `as_closest_canonical` does (`io_orientation` of the affine), then the slice is laid out
for display: axial and coronal with the patient's right on the image's left (radiological) and anterior
/ superior at the top; sagittal with anterior on the left and superior at the top. Spacing: the view is
then resampled to square pixels from the affine's voxel sizes (`view.square_pixels`: the coarser axis
upsampled, linear for images, nearest neighbour for labels). The server (one slice,
streamed) and the training readers (a whole volume in memory, `NiftiVolume`) share every step after the
raw stored slice, so the same file gives the same bytes.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vital_core.imaging.spec import AXES, ImagingError, ImagingLimits, ImagingSpec, ModelImage
from vital_core.imaging.streams import ByteStream, open_stream
from vital_core.imaging.view import check_view, square_pixels
from vital_core.imaging.windows import render_grey

NIFTI1_MAGICS = (b"n+1\x00", b"ni1\x00")
_RAS_AXIS = {"sagittal": 0, "coronal": 1, "axial": 2}


def is_nifti(head: bytes) -> bool:
    """NIfTI-1 (magic at byte 344) or NIfTI-2 (magic at byte 4)."""
    return (len(head) >= 348 and bytes(head[344:348]) in NIFTI1_MAGICS) or bytes(head[4:8]) == b"n+2\x00"


@dataclass(frozen=True)
class NiftiLayout:
    """Where and how the voxels are stored, and how the voxel axes map onto RAS+."""

    dims: tuple[int, int, int]
    """Stored spatial shape (nx, ny, nz); a 2-D image has nz = 1."""
    frames: int
    """Size of the 4th dimension (volumes / channels); 1 when absent."""
    file_dtype: np.dtype
    offset: int
    slope: float | None
    inter: float | None
    ornt: np.ndarray
    """(3, 2): for each stored axis, the RAS axis it runs along and +1/-1 (nibabel `io_orientation`)."""
    zooms: tuple[float, float, float] = (1.0, 1.0, 1.0)
    """Voxel spacing in mm along each stored axis: the lengths of the affine's columns (0 = unknown)."""

    @classmethod
    def in_memory(cls, shape: tuple[int, int, int], dtype: np.dtype, affine: np.ndarray) -> NiftiLayout:
        """The layout of an array already in memory (a DICOM series) with a RAS+ voxel-to-mm `affine`."""
        return cls(tuple(shape), 1, np.dtype(dtype), 0, None, None, _orientation(affine), _zooms(affine, 3))

    @property
    def slab_bytes(self) -> int:
        return self.dims[0] * self.dims[1] * self.file_dtype.itemsize

    def stored_axis(self, axis: str) -> int:
        """The stored axis that runs along the RAS axis `axis` is perpendicular to."""
        return int(np.nonzero(self.ornt[:, 0] == _RAS_AXIS[axis])[0][0])

    def n_slices(self, axis: str) -> int:
        """Number of slices along `axis`."""
        return self.dims[self.stored_axis(axis)]

    def view_axes(self, s: int) -> tuple[int, int]:
        """(stored axis along the display rows, stored axis along the display columns) of a view across `s`."""
        rest = [a for a in range(3) if a != s]
        low, high = sorted(rest, key=lambda a: self.ornt[a, 0])
        return high, low  # `to_display`: rows run along the higher RAS axis, columns along the lower

    def view_shape(self, s: int) -> tuple[int, int]:
        """(rows, columns) of a stored slice across `s` in display orientation, before resampling."""
        r, c = self.view_axes(s)
        return self.dims[r], self.dims[c]

    def view_spacing(self, s: int) -> tuple[float, float]:
        """(row, column) spacing in mm of a view across stored axis `s` (for `view.square_pixels`)."""
        r, c = self.view_axes(s)
        return self.zooms[r], self.zooms[c]

    def locate(self, spec: ImagingSpec) -> tuple[int, int, int, int]:
        """(stored axis, stored index, canonical index, frame) for a spec; 422 when out of range."""
        s = self.stored_axis(spec.axis)
        n = self.dims[s]
        index = n // 2 if spec.slice is None else int(spec.slice)
        if not 0 <= index < n:
            raise ImagingError(
                "invalid", f"slice {index} out of range: this volume has {n} {spec.axis} slice(s)"
            )
        frame = 0 if spec.frame is None else int(spec.frame)
        if not 0 <= frame < self.frames:
            raise ImagingError(
                "invalid", f"frame {frame} out of range: this volume has {self.frames} volume(s)"
            )
        return s, (index if self.ornt[s, 1] > 0 else n - 1 - index), index, frame


def parse_header(stream: ByteStream) -> NiftiLayout:
    """Read and check a NIfTI header from the start of `stream` (400/415 for what cannot be read)."""
    import nibabel as nib

    head = bytes(stream.read_exact(348))
    size = int.from_bytes(head[:4], "little"), int.from_bytes(head[:4], "big")
    two = 540 in size
    if two:
        head += bytes(stream.read_exact(540 - 348))
    if not is_nifti(head):
        raise ImagingError("unsupported", "not a NIfTI-1/2 file")
    if not two and head[344:348] == b"ni1\x00":
        raise ImagingError(
            "unsupported", "a NIfTI header without data (.hdr/.img pair); send a single .nii(.gz)"
        )
    try:
        cls = nib.Nifti2Header if two else nib.Nifti1Header
        hdr = cls.from_fileobj(io.BytesIO(head + b"\x00" * 4))
        shape = tuple(int(d) for d in hdr.get_data_shape())
        dtype = hdr.get_data_dtype()
        slope, inter = hdr.get_slope_inter()
        offset = int(hdr.get_data_offset())
        affine = hdr.get_best_affine()
    except ImagingError:
        raise
    except Exception as exc:
        raise ImagingError("unreadable", f"unreadable NIfTI header: {exc}") from exc
    if len(shape) < 2 or min(shape) < 1:
        raise ImagingError("unreadable", f"NIfTI volume has shape {shape}; need at least 2 dimensions")
    if dtype.fields is not None or dtype.kind not in "uif" or dtype.itemsize > 8:
        raise ImagingError(
            "unsupported", f"NIfTI data type {dtype} is not supported (need integer or float voxels)"
        )
    dims = (shape + (1, 1))[:3]
    ornt = _orientation(affine)
    offset = max(offset, len(head) + 4 if two else 352)
    frames = shape[3] if len(shape) > 3 else 1
    return NiftiLayout(
        dims, frames, dtype, offset, _finite(slope), _finite(inter), ornt, _zooms(affine, len(shape))
    )


def _zooms(affine: np.ndarray, ndim: int) -> tuple[float, float, float]:
    """Voxel spacing per stored axis from the affine's column lengths; 0 (unknown) where not finite."""
    with np.errstate(all="ignore"):
        cols = np.sqrt((np.asarray(affine, dtype=np.float64)[:3, :3] ** 2).sum(axis=0))
    out = tuple(float(v) if np.isfinite(v) and v > 0 else 0.0 for v in cols)
    return out if ndim >= 3 else (out[0], out[1], 0.0)


def _finite(v) -> float | None:
    return float(v) if v is not None and np.isfinite(v) else None


def _orientation(affine: np.ndarray) -> np.ndarray:
    from nibabel.orientations import io_orientation

    identity = np.array([[0, 1], [1, 1], [2, 1]], dtype=float)
    try:
        ornt = io_orientation(np.asarray(affine, dtype=np.float64))
    except Exception:
        return identity
    if ornt.shape != (3, 2) or not np.all(np.isfinite(ornt)):
        return identity  # degenerate affine: voxel order is taken as RAS
    return ornt


def _native(arr: np.ndarray) -> np.ndarray:
    return arr.astype(arr.dtype.newbyteorder("="), copy=False)


def _scaled(arr: np.ndarray, layout: NiftiLayout) -> np.ndarray:
    slope = 1.0 if layout.slope is None else layout.slope
    inter = 0.0 if layout.inter is None else layout.inter
    if slope == 1.0 and inter == 0.0:
        return arr
    return arr.astype(np.float64) * slope + inter


def to_display(stored2d: np.ndarray, layout: NiftiLayout, s: int) -> np.ndarray:
    """A stored 2-D slice (the two stored axes other than `s`, in order) → display rows × columns."""
    rest = [a for a in range(3) if a != s]
    arr = stored2d
    if layout.ornt[rest[0], 1] < 0:
        arr = arr[::-1, :]
    if layout.ornt[rest[1], 1] < 0:
        arr = arr[:, ::-1]
    if layout.ornt[rest[0], 0] > layout.ornt[rest[1], 0]:
        arr = arr.T
    return arr.T[::-1, ::-1]  # [low RAS axis, high RAS axis] → rows from the high end, columns from the right


def _check_sizes(layout: NiftiLayout, s: int, frame: int, limits: ImagingLimits) -> None:
    nx, ny, nz = layout.dims
    rest = [layout.dims[a] for a in range(3) if a != s]
    limits.check_pixels(rest[1], rest[0], "NIfTI slice")
    limits.check_decoded(rest[0] * rest[1] * 8 + layout.slab_bytes, "NIfTI slice")
    check_view(layout.view_shape(s), layout.view_spacing(s), limits, "NIfTI slice")
    limits.check_stream(layout.offset + (frame + 1) * nz * layout.slab_bytes, "NIfTI data up to this volume")


def read_stored_slice(stream: ByteStream, layout: NiftiLayout, s: int, i: int, frame: int) -> np.ndarray:
    """The stored 2-D slice `i` along stored axis `s` of volume `frame`, streamed slab by slab."""
    nx, ny, nz = layout.dims
    base = layout.offset + frame * nz * layout.slab_bytes
    shape2 = (nx, ny)

    def slab() -> np.ndarray:
        return np.frombuffer(stream.read_exact(layout.slab_bytes), layout.file_dtype).reshape(
            shape2, order="F"
        )

    if s == 2:
        stream.skip_to(base + i * layout.slab_bytes)
        return _native(slab())
    out = np.empty((ny if s == 0 else nx, nz), dtype=layout.file_dtype.newbyteorder("="))
    stream.skip_to(base)
    for z in range(nz):
        out[:, z] = slab()[i, :] if s == 0 else slab()[:, i]
    return out


def display_values(
    stored2d: np.ndarray, layout: NiftiLayout, s: int, limits: ImagingLimits, what: str = "NIfTI slice"
) -> np.ndarray:
    """A stored slice across stored axis `s` → scaled values in display orientation with square pixels."""
    values = to_display(_scaled(stored2d, layout), layout, s)
    return square_pixels(values, layout.view_spacing(s), limits, what=what)


def render_slice(
    stored2d: np.ndarray,
    layout: NiftiLayout,
    spec: ImagingSpec,
    s: int,
    index: int,
    frame: int,
    limits: ImagingLimits,
) -> ModelImage:
    """The one step both paths share: scale, orient for display, square pixels, window → ModelImage."""
    pixels, info = render_grey(display_values(stored2d, layout, s, limits), spec)
    info.update(axis=spec.axis, slice=str(index), frame=str(frame))
    return ModelImage(pixels, "nifti", info)


def decode_nifti(stream: ByteStream, spec: ImagingSpec, limits: ImagingLimits) -> ModelImage:
    """One slice of a NIfTI stream (positioned at byte 0) → ModelImage; reads only what the slice needs."""
    layout = parse_header(stream)
    s, i, index, frame = layout.locate(spec)
    _check_sizes(layout, s, frame, limits)
    stored = read_stored_slice(stream, layout, s, i, frame)
    return render_slice(stored, layout, spec, s, index, frame, limits)


class NiftiVolume:
    """One volume (frame) of a NIfTI file held in memory, for readers that take many slices of it."""

    def __init__(self, layout: NiftiLayout, data: np.ndarray, frame: int, limits: ImagingLimits):
        self.layout = layout
        self.data = data  # (nx, ny, nz) stored order, native byte order
        self.frame = frame
        self.limits = limits  # for the square-pixel views (checked before each is allocated)

    @classmethod
    def load(
        cls, source: str | Path | bytes, frame: int = 0, limits: ImagingLimits | None = None
    ) -> NiftiVolume:
        """Read volume `frame` of a .nii / .nii.gz file or bytes (other volumes are skipped, not kept)."""
        limits = limits or ImagingLimits.local()
        if isinstance(source, (str, Path)):
            with open(source, "rb") as f:
                return cls._read(open_stream(f, limits.max_stream_bytes, "NIfTI"), frame, limits)
        return cls._read(open_stream(source, limits.max_stream_bytes, "NIfTI"), frame, limits)

    @classmethod
    def _read(cls, stream: ByteStream, frame: int, limits: ImagingLimits) -> NiftiVolume:
        layout = parse_header(stream)
        layout.locate(ImagingSpec(frame=frame))
        nx, ny, nz = layout.dims
        limits.check_stream(layout.offset + (frame + 1) * nz * layout.slab_bytes, "NIfTI data")
        stream.skip_to(layout.offset + frame * nz * layout.slab_bytes)
        raw = stream.read_exact(nz * layout.slab_bytes)
        data = _native(np.frombuffer(raw, layout.file_dtype).reshape((nx, ny, nz), order="F"))
        return cls(layout, data, frame, limits)

    def n_slices(self, axis: str = "axial") -> int:
        """Number of slices along `axis`."""
        return self.layout.n_slices(axis)

    def stored_slice(self, spec: ImagingSpec) -> tuple[np.ndarray, int, int]:
        """(stored 2-D slice, stored axis, canonical index) for spec.axis / spec.slice."""
        s, i, index, _ = self.layout.locate(ImagingSpec(axis=spec.axis, slice=spec.slice, frame=self.frame))
        # basic indexing: a view (np.take would first copy the whole volume when it is not C-ordered)
        return self.data[(slice(None),) * s + (i,)], s, index

    def values(self, axis: str, index: int) -> np.ndarray:
        """Slice `index` along `axis` of a label volume: scaled, in display orientation, square pixels by
        nearest neighbour (label values kept; the same grid as `image`, so masks stay on their images)."""
        stored, s, _ = self.stored_slice(ImagingSpec(axis=axis, slice=index))
        values = to_display(_scaled(stored, self.layout), self.layout, s)
        return square_pixels(
            values, self.layout.view_spacing(s), self.limits, labels=True, what="NIfTI label slice"
        )

    def ras_counts(self, axis: str, values: np.ndarray | None = None) -> np.ndarray:
        """Per slice along `axis` (canonical order): how many voxels are non-zero (or equal `values`)."""
        s = self.layout.stored_axis(axis)
        other = tuple(a for a in range(3) if a != s)
        hits = self.data != 0 if values is None else np.isin(self.data, values)
        counts = hits.sum(axis=other)
        return counts if self.layout.ornt[s, 1] > 0 else counts[::-1]

    def image(self, spec: ImagingSpec) -> ModelImage:
        """The model's image of one slice: the same bytes the server makes from the same file and spec."""
        stored, s, index = self.stored_slice(spec)
        stored = np.ascontiguousarray(stored)
        return render_slice(stored, self.layout, spec, s, index, self.frame, self.limits)


__all__ = [
    "AXES",
    "NiftiLayout",
    "NiftiVolume",
    "decode_nifti",
    "display_values",
    "is_nifti",
    "parse_header",
    "to_display",
]
