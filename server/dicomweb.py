"""The configured PACS over DICOMweb: WADO-RS to read an instance or a series, STOW-RS to store results.

Only the server named by VITAL_DICOMWEB_URL is ever contacted; a request names UIDs, never a URL.
Every PACS failure becomes an APIError: unknown UID 404, unreachable 502, slow 504, refused 502.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import pydicom
import requests

from server.errors import APIError
from server.protocol import DicomwebRef, StoredInstance, StoredResult
from server.settings import Settings

if TYPE_CHECKING:
    from server.dicom_results import Explanation

log = logging.getLogger("vital.dicomweb")
T = TypeVar("T")


@dataclass
class SourceInstance:
    """A retrieved instance: its reference, the dataset, and its Part-10 bytes for the image decoder."""

    ref: DicomwebRef
    dataset: pydicom.Dataset
    part10: bytes


@dataclass
class SourceSeries:
    """A retrieved series: its reference and every instance's header (sorted as retrieved), for the SR."""

    ref: DicomwebRef
    headers: list[pydicom.Dataset]

    @classmethod
    def of(cls, ref: DicomwebRef, parts: list[tuple[str, bytes]]) -> SourceSeries:
        """Headers (no pixels) of the retrieved instances."""
        heads = [pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True) for _, data in parts]
        return cls(ref, heads)


def client_for(settings: Settings):  # dicomweb_client.DICOMwebClient
    """A DICOMweb client for the configured server (400 when none is configured)."""
    from dicomweb_client import DICOMwebClient

    if not settings.dicomweb_url:
        raise APIError(
            400,
            "dicomweb: this server has no PACS configured (VITAL_DICOMWEB_URL); send the image bytes instead",
            "dicomweb_not_configured",
        )
    session = requests.Session()
    session.trust_env = False  # the operator's URL, not a proxy picked up from the environment
    if settings.dicomweb_username:
        password = settings.dicomweb_password.get_secret_value() if settings.dicomweb_password else ""
        session.auth = (settings.dicomweb_username, password)
    session.hooks["response"].append(_size_guard(settings.max_body_bytes))
    headers = {}
    if settings.dicomweb_auth_header:
        headers["Authorization"] = settings.dicomweb_auth_header.get_secret_value()
    client = DICOMwebClient(
        settings.dicomweb_url.rstrip("/"),
        session=session,
        headers=headers,
        timeout=(settings.dicomweb_connect_timeout_s, settings.dicomweb_timeout_s),
    )
    client.set_http_retry_params(retry=False)  # the operator's timeouts hold: no hidden 5x backoff
    return client


def _size_guard(limit: int) -> Callable:
    """A response hook: a PACS reply declaring more than `limit` bytes gets 413 before it is read."""

    def check(response: requests.Response, *args, **kwargs) -> None:
        size = int(response.headers.get("Content-Length") or 0)
        if size > limit:
            response.close()
            raise APIError(
                413,
                f"the PACS instance is {size} bytes; the limit is {limit} (VITAL_MAX_BODY_BYTES)",
                "image_too_large",
            )

    return check


def pacs_call(what: str, fn: Callable[[], T], *, not_found: str | None = None) -> T:
    """Run one PACS request, mapping its failures to API errors (never a 500)."""
    try:
        return fn()
    except APIError:
        raise
    except requests.Timeout as exc:
        raise APIError(504, f"the PACS did not answer in time ({what})", "pacs_timeout") from exc
    except requests.ConnectionError as exc:
        log.warning("PACS %s: %s", what, exc)  # the PACS address stays in the log, not in the reply
        raise APIError(502, f"the PACS is unreachable ({what}): {_reason(exc)}", "pacs_unreachable") from exc
    except requests.HTTPError as exc:
        status = exc.response.status_code if exc.response is not None else 0
        if status == 404 and not_found:
            raise APIError(404, not_found, "dicomweb_not_found") from exc
        code = "pacs_store_refused" if what == "store" else "pacs_error"
        raise APIError(502, f"the PACS answered HTTP {status} ({what})", code) from exc
    except requests.RequestException as exc:
        log.warning("PACS %s: %s", what, exc)
        raise APIError(502, f"PACS request failed ({what}): {_reason(exc)}", "pacs_error") from exc
    except Exception as exc:  # malformed multipart, unparsable DICOM from the PACS
        log.exception("PACS %s: unusable reply", what)
        raise APIError(502, f"the PACS sent an unusable reply ({what}): {exc}", "pacs_error") from exc


def _reason(exc: Exception) -> str:
    """The OS-level reason (e.g. 'connection refused'), without hosts or URLs."""
    text = str(exc).lower()
    for reason in ("connection refused", "connection reset", "name or service not known", "no route to host"):
        if reason in text:
            return reason
    return type(exc).__name__


def fetch_instance(settings: Settings, ref: DicomwebRef, client=None) -> SourceInstance:
    """WADO-RS retrieve of one instance, as a dataset and as Part-10 bytes."""
    client = client or client_for(settings)
    ds = pacs_call(
        "retrieve",
        lambda: client.retrieve_instance(ref.study, ref.series, ref.instance),
        not_found=f"dicomweb: no instance {ref.instance} in series {ref.series} of study {ref.study} on the PACS",
    )
    if ds.get("SOPInstanceUID") != ref.instance:
        raise APIError(502, "the PACS returned a different instance than the one asked for", "pacs_error")
    buf = io.BytesIO()
    try:
        pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    except Exception as exc:
        raise APIError(
            502, f"the PACS instance cannot be written as a DICOM file: {exc}", "pacs_error"
        ) from exc
    return SourceInstance(ref=ref, dataset=ds, part10=buf.getvalue())


def fetch_series(settings: Settings, ref: DicomwebRef) -> list[tuple[str, bytes]]:
    """WADO-RS retrieve of every instance of a series, as (SOPInstanceUID, Part-10 bytes).

    Bounded before and while retrieving: the QIDO-RS listing asks for at most VITAL_MAX_INSTANCES + 1
    instances (413 beyond), each reply is refused beyond VITAL_MAX_BODY_BYTES (the session's size guard),
    and the running total beyond VITAL_MAX_SERIES_BYTES is a 413 before the next instance is fetched.
    """
    client = client_for(settings)
    where = f"series {ref.series} of study {ref.study}"
    found = pacs_call(
        "search",
        lambda: client.search_for_instances(
            ref.study, ref.series, fields=["00080018"], limit=settings.max_instances + 1
        ),
        not_found=f"dicomweb: no {where} on the PACS",
    )
    uids = list(dict.fromkeys(str(item.get("00080018", {}).get("Value", [""])[0]) for item in found))
    uids = [u for u in uids if u]
    if not uids:
        raise APIError(404, f"dicomweb: no instances in {where} on the PACS", "dicomweb_not_found")
    if len(uids) > settings.max_instances:
        raise APIError(
            413,
            f"dicomweb: {where} has more than {settings.max_instances} instances (VITAL_MAX_INSTANCES)",
            "image_too_large",
        )
    out, total = [], 0
    for uid in uids:
        part = fetch_instance(settings, DicomwebRef(study=ref.study, series=ref.series, instance=uid), client)
        total += len(part.part10)
        if total > settings.max_series_bytes:
            raise APIError(
                413,
                f"dicomweb: {where} exceeds {settings.max_series_bytes} bytes (VITAL_MAX_SERIES_BYTES)",
                "image_too_large",
            )
        out.append((uid, part.part10))
    return out


def store_instances(settings: Settings, study_uid: str, datasets: Sequence[pydicom.Dataset]) -> None:
    """STOW-RS into `study_uid`, then check the PACS holds every instance (502 when it refused any)."""
    client = client_for(settings)
    reply = pacs_call("store", lambda: client.store_instances(list(datasets), study_instance_uid=study_uid))
    failed = [str(it.get("ReferencedSOPInstanceUID", "?")) for it in reply.get("FailedSOPSequence", [])]
    if failed:
        raise APIError(
            502, f"the PACS refused {len(failed)} instance(s): {', '.join(failed)}", "pacs_store_refused"
        )
    series = {ds.SeriesInstanceUID for ds in datasets}
    held: set[str] = set()
    for uid in series:  # some PACS accept the upload and then drop it (filters): look, don't trust
        found = pacs_call(
            "store",
            lambda uid=uid: client.search_for_instances(study_uid, uid, fields=["00080018"]),
        )
        held |= {str(item.get("00080018", {}).get("Value", [""])[0]) for item in found}
    missing = [ds.SOPInstanceUID for ds in datasets if ds.SOPInstanceUID not in held]
    if missing:
        raise APIError(
            502,
            f"the PACS accepted but did not keep {len(missing)} of {len(datasets)} instance(s)",
            "pacs_store_refused",
        )


def frame_index(ref: DicomwebRef, frame: int | None) -> int | None:
    """The 0-based frame for the decoder: the reference's (1-based, as DICOM counts) or the request's."""
    if ref.frame is not None and frame is not None:
        raise APIError(422, "frame: give it once, inside 'dicomweb' (numbered from 1)", "invalid_request")
    return ref.frame - 1 if ref.frame is not None else frame


def check_store(store: bool, by_reference: bool, *, explain: bool) -> None:
    """422 when `store` is asked where nothing can be stored."""
    if store and not explain:
        raise APIError(422, "store: only /explain writes results back to the PACS", "invalid_request")
    if store and not by_reference:
        raise APIError(
            422, "store: needs a 'dicomweb' reference (results go into the source's study)", "invalid_request"
        )


def store_explanation(
    settings: Settings, source: SourceInstance | SourceSeries, exp: Explanation, view: dict | None = None
) -> StoredResult:
    """Build the SR, the heatmap images and the step-region SEG for `exp` (an Explanation) and STOW them
    into the source's study.

    For a series, `view` is the served image's info: a view in the acquired plane references its one
    instance (as an uploaded instance would); a reformatted plane references the series, with the plane,
    slice and the plane's geometry in the SR and every instance as the heatmaps' source images.
    """
    from server.dicom_results import SeriesView, build_results

    plane = None
    if isinstance(source, SourceSeries):
        view = view or {}
        by_uid = {str(h.SOPInstanceUID): h for h in source.headers}
        served = by_uid.get(str(view.get("sop_instance_uid", "")))
        plane = SeriesView.of(view, source.headers, served)
        base = served if served is not None else source.headers[len(source.headers) // 2]
    else:
        base = source.dataset
    try:
        sr, heatmaps, seg = build_results(base, exp, plane)
    except Exception as exc:  # highdicom refuses sources that lack attributes it must copy
        raise APIError(
            422, f"cannot build DICOM results from this source instance: {exc}", "dicom_build_failed"
        ) from exc
    extra = [seg] if seg is not None else []
    store_instances(settings, source.ref.study, [*heatmaps, *extra, sr])

    def kind(ds) -> str:
        return "sr" if ds is sr else "seg" if ds is seg else "heatmap"

    return StoredResult(
        study_instance_uid=source.ref.study,
        instances=[
            StoredInstance(
                kind=kind(ds),
                step=int(ds.InstanceNumber) if kind(ds) == "heatmap" else None,
                series_instance_uid=str(ds.SeriesInstanceUID),
                sop_class_uid=str(ds.SOPClassUID),
                sop_instance_uid=str(ds.SOPInstanceUID),
            )
            for ds in [sr, *heatmaps, *extra]
        ],
    )
