"""NIfTI reading, validation, normalisation and atomic writing."""

from __future__ import annotations

import gzip
import io
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from conftest import load_nifti
from instasal.errors import ImageError, InstasalWarning, OutputExistsError
from instasal.io import (
    Subject,
    load_image,
    load_mask,
    read_subject,
    voxel_to_world,
    write_nifti,
    zscore_nonzero,
)


def test_read_subject_keeps_data_affine_and_geometry(two_channel_files, oblique_affine):
    paths, data = two_channel_files
    subject = read_subject(paths)
    np.testing.assert_array_equal(subject.data, data)
    np.testing.assert_allclose(subject.affine, oblique_affine, atol=1e-5)
    assert subject.channel_names == ("ch0", "ch1")  # unnamed: the model's card names them
    np.testing.assert_allclose(subject.spacing, (0.9, 1.1, 2.5), rtol=1e-5)
    assert subject.voxel_volume_mm3 == pytest.approx(0.9 * 1.1 * 2.5, rel=1e-5)
    assert subject.name == "sub-01"


def test_read_subject_from_one_4d_file(tmp_path, two_channel_files, oblique_affine):
    _, data = two_channel_files
    path = tmp_path / "stack.nii.gz"
    nib.save(nib.Nifti1Image(np.moveaxis(data, 0, -1), oblique_affine), path)
    subject = read_subject(path)
    np.testing.assert_array_equal(subject.data, data)


def test_voxel_to_world_matches_nibabel_apply_affine(oblique_affine, rng):
    voxels = rng.uniform(0, 10, size=(5, 3))
    expected = nib.affines.apply_affine(oblique_affine, voxels)
    np.testing.assert_allclose(voxel_to_world(oblique_affine, voxels), expected)


def test_missing_file_names_it(tmp_path):
    with pytest.raises(ImageError, match=r"nope\.nii\.gz: file not found"):
        read_subject([tmp_path / "nope.nii.gz"])


def test_not_a_nifti_names_it(tmp_path):
    path = tmp_path / "notes.nii.gz"
    path.write_text("hello")
    with pytest.raises(ImageError, match=r"notes\.nii\.gz: not a readable NIfTI"):
        read_subject([path])


def test_truncated_gzip_names_it(tmp_path, two_channel_files):
    paths, _ = two_channel_files
    payload = paths[0].read_bytes()
    truncated = tmp_path / "cut.nii.gz"
    truncated.write_bytes(payload[: len(payload) // 2])
    with pytest.raises(ImageError, match=r"cut\.nii\.gz: (truncated|not a readable)"):
        read_subject([truncated, paths[1]])


def test_not_3d_names_it(tmp_path, oblique_affine):
    path = tmp_path / "plane.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((4, 4, 3, 2), np.float32), oblique_affine), path)
    other = tmp_path / "other.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((4, 4, 3), np.float32), oblique_affine), other)
    with pytest.raises(ImageError, match=r"plane\.nii\.gz: expected a 3D image"):
        read_subject([path, other])


def test_shape_mismatch_names_the_file(tmp_path, two_channel_files, oblique_affine, rng):
    paths, _ = two_channel_files
    odd = tmp_path / "odd_T1w.nii.gz"
    nib.save(nib.Nifti1Image(rng.random((12, 10, 9)).astype(np.float32), oblique_affine), odd)
    with pytest.raises(ImageError, match=r"odd_T1w\.nii\.gz: shape \(12, 10, 9\) differs"):
        read_subject([paths[0], odd])


def test_affine_mismatch_reports_max_difference(tmp_path, two_channel_files, oblique_affine):
    paths, data = two_channel_files
    shifted = oblique_affine.copy()
    shifted[0, 3] += 0.5
    moved = tmp_path / "moved_T1w.nii.gz"
    nib.save(nib.Nifti1Image(data[1], shifted), moved)
    with pytest.raises(ImageError, match=r"moved_T1w\.nii\.gz: affine differs .* by up to 0\.5"):
        read_subject([paths[0], moved])


def test_nan_names_the_file(tmp_path, two_channel_files, oblique_affine):
    paths, data = two_channel_files
    broken = data[1].copy()
    broken[1, 2, 3] = np.nan
    bad = tmp_path / "nan_T1w.nii.gz"
    nib.save(nib.Nifti1Image(broken, oblique_affine), bad)
    with pytest.raises(ImageError, match=r"nan_T1w\.nii\.gz: contains 1 NaN/Inf voxels"):
        read_subject([paths[0], bad])


def test_constant_image_names_the_file(tmp_path, two_channel_files, oblique_affine):
    paths, _ = two_channel_files
    flat = tmp_path / "flat_T1w.nii.gz"
    nib.save(nib.Nifti1Image(np.full((12, 10, 8), 7.0, np.float32), oblique_affine), flat)
    with pytest.raises(
        ImageError, match=r"flat_T1w\.nii\.gz: image is constant \(every voxel is 7\)"
    ):
        read_subject([paths[0], flat])


def test_mask_on_another_grid_is_refused(tmp_path, two_channel_files):
    paths, _ = two_channel_files
    subject = read_subject(paths)
    mask_path = tmp_path / "mask.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((12, 10, 8), np.uint8), np.eye(4)), mask_path)
    with pytest.raises(ImageError, match=r"mask\.nii\.gz: affine differs"):
        load_mask(mask_path, subject)


def test_zscore_nonzero_is_per_channel_and_keeps_zeros(rng):
    data = np.zeros((2, 6, 6, 6), np.float32)
    data[0, 1:5, 1:5, 1:5] = rng.normal(50, 10, size=(4, 4, 4))
    data[1, 2:4, 2:4, 2:4] = rng.normal(-3, 2, size=(2, 2, 2))
    out = zscore_nonzero(data)
    for k in range(2):
        inside = data[k] != 0
        assert out[k][inside].mean() == pytest.approx(0.0, abs=1e-5)
        assert out[k][inside].std() == pytest.approx(1.0, abs=1e-5)
        assert (out[k][~inside] == 0).all()


def test_write_nifti_round_trip_through_nibabel_and_simpleitk(tmp_path, two_channel_files):
    paths, data = two_channel_files
    subject = read_subject(paths)
    target = tmp_path / "out" / "map.nii.gz"
    write_nifti(subject.data[0], subject.affine, target, header=subject.header)
    back = load_nifti(target)
    np.testing.assert_array_equal(np.asanyarray(back.dataobj), data[0])
    np.testing.assert_allclose(back.affine, subject.affine, atol=1e-5)
    # SimpleITK reads (k, j, i) arrays in LPS; a voxel's physical point must be the RAS point
    # of the same voxel with x and y negated.
    image = sitk.ReadImage(str(target))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), data[0].transpose(2, 1, 0))
    for voxel in [(0, 0, 0), (11, 9, 7), (3, 5, 2)]:
        lps = np.array(image.TransformIndexToPhysicalPoint(voxel))
        ras = nib.affines.apply_affine(subject.affine, voxel)
        np.testing.assert_allclose(lps * [-1, -1, 1], ras, atol=1e-4)


def test_a_grid_image_saves_its_siblings_with_the_subject_geometry(
    tmp_path: Path, two_channel_files: tuple[list[Path], np.ndarray]
) -> None:
    paths, data = two_channel_files
    source = load_nifti(paths[0])
    source.set_qform(source.affine, code=2)  # codes and units a copy must keep
    source.set_sform(source.affine, code=4)
    nib.save(source, paths[0])
    subject = read_subject(paths)
    labels = (data[0] > 100).astype(np.int16)
    first = subject.on_grid(labels)
    second = first.sibling(data[1][..., None])  # extra axes after the grid are allowed
    assert second.affine is subject.affine and second.header is subject.header
    for image, expected in ((first, labels), (second, data[1][..., None])):
        back = load_nifti(image.save(tmp_path / f"{expected.ndim}d.nii.gz"))
        np.testing.assert_array_equal(np.asanyarray(back.dataobj), expected)
        assert back.get_data_dtype() == expected.dtype
        np.testing.assert_allclose(back.affine, source.affine, atol=1e-6)
        assert (int(back.header["qform_code"]), int(back.header["sform_code"])) == (2, 4)
    with pytest.raises(OutputExistsError, match=r"3d\.nii\.gz: exists already"):
        first.save(tmp_path / "3d.nii.gz")
    with pytest.raises(ImageError, match=r"shape \(12, 10\) is not on the grid \(12, 10, 8\)"):
        subject.on_grid(labels[:, :, 0])
    with pytest.raises(ImageError, match=r"shape \(10, 12, 8\) is not on the grid"):
        first.sibling(labels.transpose(1, 0, 2))


def test_write_nifti_refuses_to_overwrite_and_leaves_no_temporary(tmp_path, oblique_affine):
    target = tmp_path / "mask.nii.gz"
    write_nifti(np.ones((3, 3, 3), bool), oblique_affine, target)
    with pytest.raises(OutputExistsError, match=r"mask\.nii\.gz: exists already"):
        write_nifti(np.zeros((3, 3, 3), bool), oblique_affine, target)
    write_nifti(np.zeros((3, 3, 3), bool), oblique_affine, target, overwrite=True)
    assert np.asanyarray(load_nifti(target).dataobj).sum() == 0
    assert [p.name for p in tmp_path.iterdir()] == ["mask.nii.gz"]


def test_interrupted_write_keeps_the_previous_file(tmp_path, oblique_affine, monkeypatch):
    target = tmp_path / "map.nii.gz"
    write_nifti(np.ones((3, 3, 3), np.float32), oblique_affine, target)

    def fail(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(nib, "save", fail)
    with pytest.raises(KeyboardInterrupt):
        write_nifti(np.zeros((3, 3, 3), np.float32), oblique_affine, target, overwrite=True)
    assert np.asanyarray(load_nifti(target).dataobj).sum() == 27
    assert sorted(p.name for p in tmp_path.iterdir()) == ["map.nii.gz"]


def test_gzip_payload_is_valid(tmp_path, oblique_affine):
    target = tmp_path / "m.nii.gz"
    write_nifti(np.arange(27, dtype=np.int16).reshape(3, 3, 3), oblique_affine, target)
    with gzip.open(target) as stream:
        assert len(stream.read()) > 348
    assert Path(target).stat().st_size > 0


def test_outputs_get_ordinary_permissions(tmp_path, oblique_affine):
    import os

    mask = os.umask(0o022)
    try:
        target = write_nifti(np.ones((3, 3, 3), bool), oblique_affine, tmp_path / "m.nii.gz")
    finally:
        os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o644


def _header_only_file(path: Path, shape: tuple[int, ...], gz: bool = False) -> Path:
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.uint8)
    header["vox_offset"] = 352
    payload = header.binaryblock + b"\0" * 4
    if gz:
        payload = gzip.compress(payload)
    path.write_bytes(payload)
    return path


@pytest.mark.parametrize("gz", [False, True])
def test_header_claiming_a_huge_grid_is_refused_before_reading(tmp_path: Path, gz: bool) -> None:
    name = "huge.nii.gz" if gz else "huge.nii"
    path = _header_only_file(tmp_path / name, (10000, 10000, 10000), gz)
    with pytest.raises(ImageError, match=r"huge\.nii.*declares 10000×10000×10000 uint8"):
        load_image(path)


def test_header_larger_than_the_memory_budget_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "big.nii"
    nib.save(nib.Nifti1Image(np.ones((20, 20, 20), np.float32), np.eye(4)), str(path))
    monkeypatch.setattr("instasal.io._memory_budget_bytes", lambda: 10_000)
    with pytest.raises(ImageError, match=r"big\.nii.*32000 bytes.*memory budget of 10000 bytes"):
        load_image(path)
    monkeypatch.setattr("instasal.io._memory_budget_bytes", lambda: 32_000)
    assert load_image(path).shape == (20, 20, 20)


@pytest.mark.parametrize(
    ("values", "seen"),
    [
        (np.arange(6, dtype=np.uint8), "values 0, 1, 2, 3, 4, 5"),
        (np.array([0, -1, 2], dtype=np.int16), "values -1, 0, 2"),
        (np.linspace(0, 0.9, 10, dtype=np.float32), "10 distinct values from 0 to 0.9"),
        (np.array([0, 255], dtype=np.uint8), "values 0, 255"),
    ],
)
def test_a_non_binary_mask_is_read_as_non_zero_with_a_note(
    two_channel_files, oblique_affine, values, seen
):
    paths, _ = two_channel_files
    subject = read_subject(paths)
    labels = np.resize(values, subject.shape)
    mask_path = paths[0].parent / "labels.nii.gz"
    nib.save(nib.Nifti1Image(labels, oblique_affine), mask_path)
    with pytest.warns(InstasalWarning) as notes:
        mask = load_mask(mask_path, subject, role="reference lesion mask")
    np.testing.assert_array_equal(mask, labels != 0)
    (note,) = notes
    assert str(note.message) == (
        f"{mask_path}: reference lesion mask is not binary ({seen}); "
        "every non-zero voxel is taken as inside it"
    )


@pytest.mark.parametrize("dtype", [np.uint8, np.float32, np.int16])
def test_a_binary_mask_is_read_without_a_note(two_channel_files, oblique_affine, dtype):
    paths, _ = two_channel_files
    subject = read_subject(paths)
    binary = (np.arange(np.prod(subject.shape)).reshape(subject.shape) % 3 == 0).astype(dtype)
    mask_path = paths[0].parent / "mask.nii.gz"
    nib.save(nib.Nifti1Image(binary, oblique_affine), mask_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mask = load_mask(mask_path, subject)
    np.testing.assert_array_equal(mask, binary == 1)


def test_explain_notes_a_non_binary_reference_in_one_line(tmp_path, rng, linear_model_path, capsys):
    from conftest import write_linear_subject
    from instasal.cli import run_app

    write_linear_subject(tmp_path, "sub-01", rng)
    anat = tmp_path / "sub-01" / "anat"
    reference = tmp_path / "derivatives" / "manual" / "sub-01" / "anat"
    binary = load_nifti(reference / "sub-01_desc-lesion_mask.nii.gz")
    labels = np.asarray(binary.dataobj).astype(np.uint8) * 3
    labelled = reference / "labels.nii.gz"
    nib.save(nib.Nifti1Image(labels, binary.affine), labelled)
    status = run_app(
        [
            "explain",
            str(anat / "sub-01_FLAIR.nii.gz"),
            str(anat / "sub-01_T1w.nii.gz"),
            "--model",
            str(linear_model_path),
            "--out",
            str(tmp_path / "out"),
            "--reference",
            str(labelled),
            "--n-samples",
            "1",
            "--n-true-negatives",
            "0",
            "--no-gradcam",
            "--context",
            "full",
        ]
    )
    assert status == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if "is not binary" in line]
    assert notes == [
        f"note: {labelled}: reference lesion mask is not binary (values 0, 3); "
        "every non-zero voxel is taken as inside it"
    ]


# ---------------------------------------------------------------- odd voxel types and geometry


def _rgb(dtype_fields: str, shape: tuple[int, ...]) -> np.ndarray:
    colours = np.zeros(shape, dtype=[(name, np.uint8) for name in dtype_fields])
    colours[dtype_fields[0]] = np.arange(np.prod(shape)).reshape(shape) % 200
    return colours


def _mask_on(subject_affine: np.ndarray, shape: tuple[int, ...]) -> nib.Nifti1Image:
    return nib.Nifti1Image(
        (np.arange(np.prod(shape)).reshape(shape) % 2).astype(np.uint8), subject_affine
    )


def _read_as(reader: str, path: Path, paths: list[Path]) -> object:
    """Read ``path`` as the ``reader`` role would: a channel, or a mask on the subject's grid."""
    if reader == "image":
        return read_subject([path, paths[1]])
    return load_mask(path, read_subject(paths))


@pytest.mark.parametrize("reader", ["image", "mask"])
@pytest.mark.parametrize(
    ("voxels", "said"),
    [
        (lambda shape: _rgb("RGB", shape), r"colour voxels \(NIfTI datatype RGB"),
        (lambda shape: _rgb("RGBA", shape), r"colour voxels \(NIfTI datatype RGBA"),
        (lambda shape: np.full(shape, 1 + 2j, np.complex64), r"complex voxels \(complex64\)"),
        (lambda shape: np.full(shape, 1 + 2j, np.complex128), r"complex voxels \(complex128\)"),
    ],
    ids=["RGB24", "RGBA32", "complex64", "complex128"],
)
def test_colour_and_complex_voxels_are_refused_naming_the_file(
    two_channel_files, oblique_affine, reader, voxels, said
):
    paths, data = two_channel_files
    odd = paths[0].parent / "odd.nii.gz"
    nib.save(nib.Nifti1Image(voxels(data.shape[1:]), oblique_affine), odd)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no raw numpy warning on the way
        with pytest.raises(ImageError, match=rf"^{odd}: holds {said}"):
            _read_as(reader, odd, paths)


def _with_header_fields(path: Path, image: nib.Nifti1Image, **fields: object) -> Path:
    """``image`` written to ``path`` (uncompressed), then header ``fields`` overwritten as they
    are, without nibabel checking them (as a broken converter would write them)."""
    raw = bytearray(image.to_bytes())
    header = nib.Nifti1Header.from_fileobj(io.BytesIO(bytes(raw[:348])))
    for name, value in fields.items():
        header[name] = value
    raw[:348] = header.binaryblock
    path.write_bytes(bytes(raw))
    return path


def _broken(affine: np.ndarray, how: str) -> np.ndarray:
    broken = affine.copy()
    if how == "NaN":
        broken[0, 0] = np.nan
    else:  # singular: the third voxel axis along the second
        broken[:3, 2] = broken[:3, 1]
    return broken


@pytest.mark.parametrize("reader", ["image", "mask"])
@pytest.mark.parametrize("how", ["NaN", "singular"])
def test_an_unusable_sform_falls_back_to_the_qform_with_a_note(
    two_channel_files, oblique_affine, reader, how
):
    paths, data = two_channel_files
    source = nib.load(paths[0]) if reader == "image" else _mask_on(oblique_affine, data.shape[1:])
    assert isinstance(source, nib.Nifti1Image)
    image = nib.Nifti1Image(np.asarray(source.dataobj), oblique_affine)
    broken = _broken(oblique_affine, how)
    odd = _with_header_fields(
        paths[0].parent / "odd.nii",
        image,
        srow_x=broken[0],
        srow_y=broken[1],
        srow_z=broken[2],
        qform_code=1,
    )
    with pytest.warns(InstasalWarning) as notes:
        read = _read_as(reader, odd, paths)
    (note,) = notes
    reason = "is not finite (holds NaN or Inf)" if how == "NaN" else "is singular"
    assert str(note.message).startswith(f"{odd}: the sform {reason}")
    assert str(note.message).endswith("; the qform is used instead")
    if reader == "image":
        assert isinstance(read, Subject)
        np.testing.assert_allclose(read.affine, oblique_affine, atol=1e-5)
        np.testing.assert_array_equal(read.data[0], data[0])


@pytest.mark.parametrize("reader", ["image", "mask"])
@pytest.mark.parametrize("how", ["NaN", "singular"])
def test_no_usable_affine_is_refused_in_one_line(two_channel_files, oblique_affine, reader, how):
    paths, data = two_channel_files
    image = nib.Nifti1Image(data[0], oblique_affine)
    broken = _broken(oblique_affine, how)
    reason = (
        r"is not finite \(holds NaN or Inf\)"
        if how == "NaN"
        else r"is singular \(its voxel axes do not span 3D\)"
    )
    cases: dict[str, dict[str, float]] = {
        "no qform": {"qform_code": 0},
        "bad qform": {"qform_code": 1, "quatern_b": np.nan},
    }
    for name, qform in cases.items():
        odd = _with_header_fields(
            paths[0].parent / f"{name}.nii",
            image,
            srow_x=broken[0],
            srow_y=broken[1],
            srow_z=broken[2],
            **qform,
        )
        with pytest.raises(ImageError, match=rf"^{odd}: the sform {reason}") as refused:
            _read_as(reader, odd, paths)
        assert "\n" not in str(refused.value)
        assert "no usable voxel-to-world affine" in str(refused.value)


def test_non_finite_voxel_sizes_without_sform_or_qform_are_refused(
    two_channel_files, oblique_affine
):
    paths, data = two_channel_files
    odd = _with_header_fields(
        paths[0].parent / "flat.nii",
        nib.Nifti1Image(data[0], oblique_affine),
        sform_code=0,
        qform_code=0,
        pixdim=[1.0, 0.9, 1.1, np.nan, 1, 1, 1, 1],
    )
    with pytest.raises(
        ImageError, match=rf"^{odd}: neither sform nor qform .* 0\.9, 1\.1, nan \(pixdim"
    ):
        read_subject([odd, odd])


def test_values_beyond_float32_are_refused(two_channel_files, oblique_affine):
    paths, data = two_channel_files
    huge = data[1].astype(np.float64)
    huge[1, 2, 3] = 1e300
    odd = paths[0].parent / "huge_T1w.nii.gz"
    nib.save(nib.Nifti1Image(huge, oblique_affine), odd)
    with pytest.raises(ImageError, match=rf"^{odd}: holds values up to 1e\+300, beyond float32"):
        read_subject([paths[0], odd])


# ---------------------------------------------------------------- label images (--regions)


@pytest.mark.parametrize(
    ("labels", "seen"),
    [
        (np.array([0, 1, 1.5, 2], np.float32), "values 1.5"),
        (np.array([0, 2, -2.7], np.float32), "values -2.7"),
        (np.array([0, 3, -1], np.int16), "values -1"),
        (np.array([0, 4, 40000], np.uint16), "values 40000"),  # would wrap to -25536 as int16
    ],
    ids=["fraction", "negative fraction", "negative", "beyond int16"],
)
def test_a_region_map_holding_non_labels_is_refused_naming_the_file(
    two_channel_files, oblique_affine, labels, seen
):
    from instasal.pipeline.explain import read_inputs

    paths, data = two_channel_files
    regions = paths[0].parent / "regions_dseg.nii.gz"
    nib.save(nib.Nifti1Image(np.resize(labels, data.shape[1:]), oblique_affine), regions)
    with pytest.raises(ImageError) as refused:
        read_inputs(paths, None, None, None, regions)
    assert str(refused.value) == (
        f"{regions}: region map holds {seen} that are not labels; "
        "expected whole numbers from 0 to 32767"
    )


def test_a_region_map_is_read_as_its_labels_on_the_subject_grid(two_channel_files, oblique_affine):
    from instasal.pipeline.explain import read_inputs

    paths, data = two_channel_files
    labels = np.resize(np.array([0, 1, 4, 32767], np.float64), data.shape[1:])
    regions = paths[0].parent / "regions_dseg.nii.gz"
    nib.save(nib.Nifti1Image(labels, oblique_affine), regions)
    read = read_inputs(paths, None, None, None, regions).regions
    assert read is not None
    np.testing.assert_array_equal(read, labels)
    moved = oblique_affine.copy()
    moved[:3, 3] += 4.0
    nib.save(nib.Nifti1Image(labels, moved), regions)
    with pytest.raises(ImageError, match=rf"^{regions}: affine differs from sub-01_FLAIR\.nii\.gz"):
        read_inputs(paths, None, None, None, regions)
