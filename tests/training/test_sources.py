"""Source readers: MSD NIfTI volumes (3-D and 4-D), BiomedParse PNG layouts, CSV folders; windowing."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from server.images import decode_image
from training.sources import (
    canonical_modality,
    infer_target_type,
    read_biomedparse,
    read_folder,
    read_msd,
    write_pairs,
)
from training.sources.biomedparse import parse_image_stem, parse_mask_stem
from training.sources.msd import pick_channel
from vital_core.imaging import ImagingSpec

N = 32  # in-plane voxels


def _save(arr: np.ndarray, path: Path, affine: np.ndarray | None = None) -> None:
    nib.save(nib.Nifti1Image(arr, np.eye(4) if affine is None else affine), str(path))


def liver_volume() -> tuple[np.ndarray, np.ndarray]:
    """(CT in HU, labels) of shape (x, y, z) = (32, 32, 6) in RAS voxel order."""
    ct = np.full((N, N, 6), -1000.0, dtype=np.float32)
    seg = np.zeros((N, N, 6), dtype=np.uint8)
    ct[4:20, 4:20, :] = 30.0
    seg[4:16, 4:16, 1:5] = 1  # liver: 144 px on slices 1-4
    seg[20:28, 20:27, 2] = 2  # tumor: 56 px on slice 2 (too small)
    seg[18:30, 18:28, 3] = 2  # tumor: 120 px on slice 3
    ct[N - 1, N - 1, :] = 3000.0  # marker at max x (patient right), max y (anterior)
    return ct, seg


@pytest.fixture(scope="module")
def msd_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("msd")
    liver = root / "Task03_Liver"
    for sub in ("imagesTr", "labelsTr"):
        (liver / sub).mkdir(parents=True)
        (liver / sub / "._liver_0.nii.gz").write_bytes(b"\x00\x05\x16\x07AppleDouble junk")
    (liver / "dataset.json").write_text(
        json.dumps(
            {
                "name": "Liver",
                "modality": {"0": "CT"},
                "labels": {"0": "background", "1": "liver", "2": "cancer"},
            }
        )
    )
    ct, seg = liver_volume()
    _save(ct, liver / "imagesTr" / "liver_0.nii.gz")
    _save(seg, liver / "labelsTr" / "liver_0.nii.gz")
    # the same anatomy stored in LPS voxel order: x and y flipped, affine says so
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[0, 3] = flip[1, 3] = N - 1
    _save(ct[::-1, ::-1].copy(), liver / "imagesTr" / "liver_1.nii.gz", flip)
    _save(seg[::-1, ::-1].copy(), liver / "labelsTr" / "liver_1.nii.gz", flip)

    brain = root / "Task01_BrainTumour"
    for sub in ("imagesTr", "labelsTr"):
        (brain / sub).mkdir(parents=True)
    (brain / "dataset.json").write_text(
        json.dumps(
            {
                "modality": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"},
                "labels": {
                    "0": "background",
                    "1": "edema",
                    "2": "non-enhancing tumor",
                    "3": "enhancing tumour",
                },
            }
        )
    )
    mri = np.zeros((N, N, 3, 4), dtype=np.float32)
    mri[2:30, 2:30, :, 0] = np.linspace(100, 500, 28, dtype=np.float32)[:, None, None]  # FLAIR
    mri[..., 1:] = 7.0
    lab = np.zeros((N, N, 3), dtype=np.uint8)
    lab[5:20, 5:20, 1] = 1  # edema, 225 px
    lab[22:26, 22:26, 1] = 3  # enhancing, 16 px: present, not kept
    _save(mri, brain / "imagesTr" / "BRATS_001.nii.gz")
    _save(lab, brain / "labelsTr" / "BRATS_001.nii.gz")
    return root


def test_msd_slices_labels_and_threshold(msd_root):
    recs = list(read_msd(msd_root / "Task03_Liver"))
    liver0 = [r for r in recs if r.case == "Task03_Liver/liver_0"]
    assert sorted((r.target, int(r.extra["slice"])) for r in liver0) == [
        ("liver", 1),
        ("liver", 2),
        ("liver", 3),
        ("liver", 4),
        ("liver tumor", 3),
    ]
    assert {r.target_type for r in liver0} == {"organ", "tumor"}
    r2 = next(r for r in liver0 if r.extra["slice"] == "2")
    assert r2.present == ("liver", "liver tumor")  # the small tumor is present even though not kept
    assert all(r.mask.sum() >= 100 and r.modality == "CT" and r.source == "msd" for r in liver0)
    assert len({r.id for r in recs}) == len(recs) == 10  # `._` files skipped, both volumes read
    assert len(list(read_msd(msd_root / "Task03_Liver", max_slices_per_label=2))) == 2 * 2 + 2


def test_msd_display_orientation_and_window(msd_root):
    recs = {(r.case, r.extra["slice"], r.target): r for r in read_msd(msd_root / "Task03_Liver")}
    a = recs[("Task03_Liver/liver_0", "3", "liver")]
    b = recs[("Task03_Liver/liver_1", "3", "liver")]
    # RAS and LPS storage of the same anatomy give the same picture
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    # patient right + anterior marker -> top-left corner (radiological convention)
    assert a.image[0, 0] == 255 and a.image[-1, -1] == 0
    # liver voxels (x 4..15, y 4..15) -> rows N-16..N-5, columns N-16..N-5
    rows, cols = np.nonzero(a.mask)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (N - 16, N - 5, N - 16, N - 5)
    # one window per slice, the one a request can name: CT without a window → the abdomen preset
    assert a.extra["window"] == "abdomen" and a.image[rows[0], cols[0]] == 121  # 30 HU in W400/L40
    tumor = recs[("Task03_Liver/liver_0", "3", "liver tumor")]
    assert tumor.extra["window"] == "abdomen" and tumor.image_key == a.image_key
    lung = next(iter(read_msd(msd_root / "Task03_Liver", spec=ImagingSpec(window="lung"))))
    assert lung.extra["window"] == "lung" and lung.image_key.endswith("-lung")


def test_msd_images_are_what_the_server_serves(msd_root):
    """The same NIfTI through the MSD reader and through the server's decoding: identical bytes."""
    for spec in (ImagingSpec(), ImagingSpec(window="bone"), ImagingSpec(axis="coronal")):
        for rec in read_msd(msd_root / "Task03_Liver", spec=spec, min_pixels=10):
            case = rec.case.split("/")[1]
            data = (msd_root / "Task03_Liver" / "imagesTr" / f"{case}.nii.gz").read_bytes()
            fields = {k: v for k, v in rec.extra.items() if k in ("axis", "slice", "frame", "window")}
            served = decode_image(data, spec=ImagingSpec.from_fields(fields))
            assert np.asarray(served.image).tobytes() == rec.image.tobytes() and served.image.mode == "L"
    (rec,) = list(read_msd(msd_root / "Task01_BrainTumour"))  # 4-D: the FLAIR channel is frame 0
    data = (msd_root / "Task01_BrainTumour" / "imagesTr" / "BRATS_001.nii.gz").read_bytes()
    served = decode_image(
        data, spec=ImagingSpec(slice=int(rec.extra["slice"]), frame=int(rec.extra["frame"]))
    )
    assert np.array_equal(np.asarray(served.image), rec.image)


def test_msd_4d_channel_and_mri_scaling(msd_root):
    (rec,) = list(read_msd(msd_root / "Task01_BrainTumour"))
    assert rec.modality == "MRI" and rec.extra["channel"] == "FLAIR" and rec.extra["window"] == "percentile"
    assert rec.target == "peritumoral edema" and rec.target_type == "lesion"
    assert rec.present == ("enhancing tumor", "peritumoral edema")
    assert rec.image.dtype == np.uint8 and rec.image.max() == 255 and rec.image.min() == 0
    assert pick_channel(["T2", "ADC"]) == 0 and pick_channel(["ADC", "T2"]) == 1 and pick_channel(["x"]) == 0


def test_write_pairs_writes_each_image_once(msd_root, tmp_path):
    recs = list(write_pairs(read_msd(msd_root / "Task03_Liver"), tmp_path))
    assert len(list((tmp_path / "masks").glob("*.png"))) == len(recs) == 10
    assert len(list((tmp_path / "images").glob("*.png"))) == 8  # slice 3 of each volume shared by 2 targets
    mask = np.asarray(Image.open(recs[0].mask))
    assert set(np.unique(mask)) == {0, 255} and Image.open(recs[0].image).mode == "L"


@pytest.mark.parametrize(
    "target,ttype",
    [
        ("liver", "organ"),
        ("liver tumor", "tumor"),
        ("polyp", "lesion"),
        ("COVID-19 infection", "lesion"),
        ("neoplastic cells", "cell"),
        ("optic disc", "retinal structure"),
        ("hepatic vessel", "vessel"),
        ("glandular structure", "tissue"),
        ("left heart ventricle", "organ"),
        ("lower-grade glioma", "tumor"),
    ],
)
def test_target_types(target, ttype):
    assert infer_target_type(target) == ttype


def test_modalities():
    assert canonical_modality("MRI-FLAIR") == "MRI" and canonical_modality("X-Ray") == "X-ray"
    assert canonical_modality("Endoscope") == "Endoscopy" and canonical_modality("Weird") == "Weird"


# -- BiomedParse ----------------------------------------------------------------------------------


def _png(path: Path, value: int = 0, box: tuple[int, int, int, int] | None = None, rgb: bool = False) -> None:
    arr = np.full((16, 16), value, dtype=np.uint8)
    if box:
        y0, y1, x0, x1 = box
        arr[y0:y1, x0:x1] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.stack([arr] * 3, -1) if rgb else arr).save(path)


def test_biomedparse_name_parsing():
    assert parse_image_stem("amos_0001_slice_010_CT_abdomen") == ("amos_0001_slice_010", "CT", "abdomen")
    stems = {"img_001_CT_abdomen", "img_001_CT_abdomen_2"}
    assert parse_mask_stem("img_001_CT_abdomen_liver+tumor", stems) == ("img_001_CT_abdomen", "liver tumor")
    assert parse_mask_stem("img_001_CT_abdomen_2_kidney", stems) == ("img_001_CT_abdomen_2", "kidney")
    assert parse_mask_stem("other_CT_x_liver", stems) is None


def test_biomedparse_mask_folder_layout(tmp_path):
    root = tmp_path / "bp"
    img = "amos_0001_slice_010_CT_abdomen"
    _png(root / "amos22" / "CT" / "train" / f"{img}.png", 40, rgb=True)
    _png(root / "amos22" / "CT" / "train_mask" / f"{img}_liver.png", box=(2, 10, 2, 10))
    _png(root / "amos22" / "CT" / "train_mask" / f"{img}_liver+tumor.png", box=(4, 6, 4, 6))
    _png(root / "amos22" / "CT" / "train_mask" / f"{img}_spleen.png")  # empty: skipped
    _png(root / "amos22" / "CT" / "train_mask" / "._junk_CT_x_liver.png")
    _png(root / "amos22" / "CT" / "test" / "amos_0002_slice_001_CT_abdomen.png", 10, rgb=True)
    _png(root / "amos22" / "CT" / "test_mask" / "amos_0002_slice_001_CT_abdomen_kidney.png", box=(1, 9, 1, 9))
    recs = sorted(read_biomedparse(root), key=lambda r: r.target)
    assert [(r.target, r.target_type, r.split) for r in recs] == [
        ("kidney", "organ", "test"),
        ("liver", "organ", "train"),
        ("liver tumor", "tumor", "train"),
    ]
    liver = recs[1]
    assert liver.subset == "amos22/CT" and liver.modality == "CT" and liver.extra["site"] == "abdomen"
    assert liver.case == "amos22/CT/amos_0001" and liver.present == ("liver", "liver tumor")
    assert liver.image == root / "amos22" / "CT" / "train" / f"{img}.png"


def test_biomedparse_same_folder_layout(tmp_path):
    root = tmp_path / "Kvasir"
    _png(root / "img_07_Endoscope_colon.png", 50, rgb=True)
    _png(root / "img_07_Endoscope_colon_polyp.png", box=(3, 9, 3, 9))
    (rec,) = list(read_biomedparse(root))
    assert (
        rec.target == "polyp" and rec.modality == "Endoscopy" and rec.subset == "Kvasir" and rec.split == ""
    )
    out = list(write_pairs([rec], tmp_path / "out"))[0]
    served = decode_image((root / "img_07_Endoscope_colon.png").read_bytes())
    assert np.array_equal(np.asarray(Image.open(out.image)), np.asarray(served.image))


# -- CSV folder -----------------------------------------------------------------------------------


def test_folder_csv(tmp_path):
    _png(tmp_path / "a.png", 30)
    _png(tmp_path / "a_liver.png", box=(1, 8, 1, 8))
    _png(tmp_path / "a_kidney.png", box=(9, 14, 9, 14))
    (tmp_path / "pairs.csv").write_text(
        "image,mask,target,target_type,modality,question,answer\n"
        "a.png,a_liver.png,Liver,,ct,,\n"
        "a.png,a_kidney.png,kidney,organ,CT,Where is the kidney?,The kidney is in the lower right part of the image.\n"
    )
    recs = list(read_folder(tmp_path / "pairs.csv"))
    assert [(r.target, r.target_type, r.modality) for r in recs] == [
        ("liver", "organ", "CT"),
        ("kidney", "organ", "CT"),
    ]
    assert recs[0].present == ("kidney", "liver") and recs[1].question == "Where is the kidney?"
    assert recs[1].answer.startswith("The kidney") and recs[0].case == recs[1].case == "pairs/a"
    (tmp_path / "bad.csv").write_text("image,mask,target\na.png,a_liver.png,liver\n")
    with pytest.raises(ValueError, match="missing column"):
        list(read_folder(tmp_path / "bad.csv"))
    (tmp_path / "gone.csv").write_text("image,mask,target,modality\na.png,nope.png,liver,CT\n")
    with pytest.raises(ValueError, match=r"gone.csv:2: mask file not found"):
        list(read_folder(tmp_path / "gone.csv"))


# -- one imaging path: orientation through every reader, bytes equal to the server's -------------------


def marker_stored_as(codes: str, oblique: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(CT volume, label volume, affine): a marker on the patient's LEFT, stored in axis order `codes`."""
    from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, ornt_transform

    ct = np.full((20, 16, 12), -1000.0, dtype=np.float32)
    ct[4:16, 3:13, :] = 40.0  # body
    ct[5:8, 9:12, 4:8] = 300.0  # marker: low x = patient's left, anterior
    seg = np.zeros(ct.shape, dtype=np.uint8)
    seg[5:8, 9:12, 4:8] = 1
    ornt = ornt_transform(axcodes2ornt("RAS"), axcodes2ornt(codes))
    affine = inv_ornt_aff(ornt, ct.shape)
    if oblique:
        a = np.deg2rad(25)
        affine = (
            np.array(
                [[np.cos(a), -np.sin(a), 0, 0], [np.sin(a), np.cos(a), 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
            )
            @ affine
        )
    return apply_orientation(ct, ornt), apply_orientation(seg, ornt), affine


@pytest.mark.parametrize("codes,oblique", [("RAS", False), ("LPS", False), ("SAL", False), ("LPS", True)])
def test_marker_lands_on_image_right_through_every_reader(tmp_path, codes, oblique):
    ct, seg, affine = marker_stored_as(codes, oblique)
    task = tmp_path / "Task09_Spleen"
    for sub in ("imagesTr", "labelsTr"):
        (task / sub).mkdir(parents=True)
    (task / "dataset.json").write_text(
        json.dumps({"modality": {"0": "CT"}, "labels": {"0": "background", "1": "spleen"}})
    )
    _save(ct, task / "imagesTr" / "s_0.nii.gz", affine)
    _save(seg, task / "labelsTr" / "s_0.nii.gz", affine)
    (tmp_path / "pairs.csv").write_text(
        "image,mask,target,modality,slice\nTask09_Spleen/imagesTr/s_0.nii.gz,Task09_Spleen/labelsTr/s_0.nii.gz,spleen,CT,5\n"
    )
    msd = [r for r in read_msd(task, min_pixels=5) if r.extra["slice"] == "5"]
    folder = list(write_pairs(read_folder(tmp_path / "pairs.csv"), tmp_path / "out"))
    served = decode_image((task / "imagesTr" / "s_0.nii.gz").read_bytes(), spec=ImagingSpec(slice=5))
    images = [msd[0].image, np.asarray(Image.open(folder[0].image)), np.asarray(served.image)]
    masks = [msd[0].mask, np.asarray(Image.open(folder[0].mask)) > 0]
    for img in images:
        assert img.shape == (16, 20) and np.array_equal(img, images[0])  # byte-identical everywhere
        rows, cols = np.nonzero(img == img.max())
        assert cols.min() > 10 and rows.max() < 8  # patient's left → image right; anterior → top
    for mask in masks:
        assert np.array_equal(mask, img == img.max())


def test_ct_dicom_through_the_folder_reader_is_what_the_server_serves(tmp_path):
    from pydicom.data import get_testdata_file

    dcm = Path(get_testdata_file("CT_small.dcm"))
    (tmp_path / "ct.dcm").write_bytes(dcm.read_bytes())
    _png(tmp_path / "m.png")  # 16x16: the wrong size for a 128x128 image
    Image.fromarray(np.zeros((128, 128), np.uint8)).save(tmp_path / "m128.png")
    (tmp_path / "pairs.csv").write_text(
        "image,mask,target,modality,window\nct.dcm,m128.png,liver,CT,\nct.dcm,m128.png,lung,CT,lung\n"
    )
    written = list(write_pairs(read_folder(tmp_path / "pairs.csv"), tmp_path / "out"))
    for rec, spec in zip(written, (ImagingSpec(), ImagingSpec(window="lung"))):
        served = decode_image(dcm.read_bytes(), spec=spec)
        assert np.asarray(Image.open(rec.image)).tobytes() == np.asarray(served.image).tobytes()
    assert written[0].image != written[1].image  # two windows, two images
    (tmp_path / "bad.csv").write_text("image,mask,target,modality\nct.dcm,m.png,liver,CT\n")
    with pytest.raises(ValueError, match="mask is"):
        list(write_pairs(read_folder(tmp_path / "bad.csv"), tmp_path / "out2"))
    (tmp_path / "badspec.csv").write_text("image,mask,target,modality,axis\nct.dcm,m.png,liver,CT,oblique\n")
    with pytest.raises(ValueError, match="badspec.csv:2: axis"):
        list(read_folder(tmp_path / "badspec.csv"))


def test_anisotropic_volume_square_pixels_through_every_reader(tmp_path):
    """0.7 x 0.7 mm pixels, 5 mm slices: every reader and the server show a sphere round, masks aligned."""
    shape, spacing, radius = (64, 56, 16), (0.7, 0.7, 5.0), 15.0
    axes = [
        ((np.arange(n)[:, None] + (np.arange(k) + 0.5) / k - 0.5) - n // 2) * mm
        for n, mm, k in zip(shape, spacing, (2, 2, 10))
    ]  # (n, k) sub-voxel positions in mm: partial-volume voxels
    d2 = axes[0][:, None, None, :, None, None] ** 2 + axes[1][None, :, None, None, :, None] ** 2
    d2 = d2 + axes[2][None, None, :, None, None, :] ** 2
    ct = ((d2 <= radius**2).mean(axis=(3, 4, 5)) * 1000.0).astype(np.float32)
    seg = (ct >= 500).astype(np.uint8)
    affine = np.diag([-0.7, -0.7, 5.0, 1.0])  # LPS storage of the RAS arrays, flipped to match
    task = tmp_path / "Task09_Spleen"
    for sub in ("imagesTr", "labelsTr"):
        (task / sub).mkdir(parents=True)
    (task / "dataset.json").write_text(
        json.dumps({"modality": {"0": "CT"}, "labels": {"0": "background", "1": "spleen"}})
    )
    _save(ct[::-1, ::-1].copy(), task / "imagesTr" / "s_0.nii.gz", affine)
    _save(seg[::-1, ::-1].copy(), task / "labelsTr" / "s_0.nii.gz", affine)
    (tmp_path / "pairs.csv").write_text(
        "image,mask,target,modality,axis,slice,window_center,window_width\n"
        "Task09_Spleen/imagesTr/s_0.nii.gz,Task09_Spleen/labelsTr/s_0.nii.gz,spleen,CT,coronal,28,500,1000\n"
    )
    spec = ImagingSpec(axis="coronal", window_center=500.0, window_width=1000.0)
    msd = next(r for r in read_msd(task, spec=spec, min_pixels=5) if r.extra["slice"] == "28")
    (folder,) = list(write_pairs(read_folder(tmp_path / "pairs.csv"), tmp_path / "out"))
    served = decode_image(
        (task / "imagesTr" / "s_0.nii.gz").read_bytes(),
        spec=ImagingSpec(axis="coronal", slice=28, window_center=500.0, window_width=1000.0),
    )
    images = [msd.image, np.asarray(Image.open(folder.image)), np.asarray(served.image)]
    masks = [msd.mask, np.asarray(Image.open(folder.mask)) > 0]
    for img in images:
        assert img.shape == (114, 64) and np.array_equal(img, images[0])  # 16 · 5 / 0.7 = 114.3 rows
        rows, cols = np.nonzero(img >= 128)
        aspect = (rows.max() - rows.min() + 1) / (cols.max() - cols.min() + 1)
        assert abs(aspect - 1.0) <= 0.05, aspect
    for mask in masks:  # nearest-neighbour labels on the image's grid
        assert mask.shape == images[0].shape
        assert images[0][mask].mean() > 200 and images[0][~mask].mean() < 40


def test_a_dicom_series_folder_or_zip_through_the_folder_reader_is_what_the_server_serves(tmp_path, volumes):
    """`vital build-questions` readers take a series (a folder of instances, or a zip) like the server."""
    import io
    import zipfile

    files = volumes.ct_series(seed=7)
    (tmp_path / "ct").mkdir()
    for k, data in enumerate(files):
        (tmp_path / "ct" / f"IM{k:04d}").write_bytes(data)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for k, data in enumerate(files):
            zf.writestr(f"IM{k:04d}", data)
    (tmp_path / "ct.zip").write_bytes(buf.getvalue())
    Image.fromarray(np.zeros((171, 128), np.uint8)).save(tmp_path / "m.png")  # the coronal view's size
    (tmp_path / "pairs.csv").write_text(
        "image,mask,target,modality,axis,slice\nct,m.png,liver,CT,coronal,50\nct.zip,m.png,liver,CT,coronal,50\n"
    )
    written = list(write_pairs(read_folder(tmp_path / "pairs.csv"), tmp_path / "out"))
    served = decode_image(buf.getvalue(), spec=ImagingSpec(axis="coronal", slice=50))  # a zip upload
    assert served.info["instances"] == "24" and (served.width, served.height) == (128, 171)
    for rec in written:
        assert np.asarray(Image.open(rec.image)).tobytes() == np.asarray(served.image).tobytes()
