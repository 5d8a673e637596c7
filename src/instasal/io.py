"""Reading, validating, normalising and atomically writing NIfTI images.

A :class:`Subject` is one subject's channels stacked on one voxel grid with its affine; whatever
reads a NIfTI here keeps the affine and checks that grids agree, and whatever writes one writes the
source geometry back, atomically (a temporary file in the target folder, then a rename).
Temporaries name their host and process, so that those a killed run left behind are recognised and
removed by the next run (:func:`instasal.folders.remove_orphaned_temporaries`).
"""

from __future__ import annotations

import gzip
import json
import os
import tempfile
import warnings
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from instasal.channels import subject_name
from instasal.errors import ImageError, InstasalWarning, OutputExistsError, one_line
from instasal.folders import temporary_prefix
from instasal.typing import FloatArray, PathLike

__all__ = [
    "DEFAULT_CHANNELS",
    "LABEL_MAX",
    "GridImage",
    "Subject",
    "atomic_save",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "load_image",
    "load_labels",
    "load_mask",
    "read_subject",
    "voxel_to_world",
    "voxel_volume_mm3",
    "write_nifti",
    "zscore_nonzero",
]

DEFAULT_CHANNELS: tuple[str, ...] = ("FLAIR", "T1w")
AFFINE_TOLERANCE_MM = 1e-3


def voxel_volume_mm3(affine: np.ndarray) -> float:
    """The volume of one voxel of a grid, |det| of the affine's 3×3 part, to 12 significant digits
    (the determinant of ``diag(2, 2, 2)`` computes as 7.999999999999998; lesion volumes are counts
    times this, so they print as the whole numbers they are).

    >>> voxel_volume_mm3(np.diag([2.0, 2.0, 2.0, 1.0]))
    8.0
    """
    volume = float(abs(np.linalg.det(np.asarray(affine, dtype=np.float64)[:3, :3])))
    return float(f"{volume:.12g}")


def voxel_to_world(affine: np.ndarray, voxels: np.ndarray) -> np.ndarray:
    """Map voxel coordinates ``[..., 3]`` to world (RAS mm) coordinates through ``affine``."""
    voxels = np.asarray(voxels, dtype=np.float64)
    return voxels @ affine[:3, :3].T + affine[:3, 3]


@dataclass(frozen=True, eq=False)
class Subject:
    """One subject: ``data`` is float32 ``[C, X, Y, Z]`` on the grid described by ``affine``.

    Parameters
    ----------
    data
        Channels stacked in model order (FLAIR first by default).
    affine
        Voxel-to-world (RAS mm) matrix shared by every channel.
    channel_names
        One name per channel.
    paths
        The files the channels were read from (empty for in-memory subjects).
    header
        The first channel's NIfTI header, written back with outputs so that their geometry
        (qform/sform codes, units) matches the input.
    """

    data: FloatArray
    affine: np.ndarray
    channel_names: tuple[str, ...] = DEFAULT_CHANNELS
    paths: tuple[Path, ...] = ()
    header: nib.Nifti1Header | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.data.ndim != 4:
            raise ImageError(f"subject data must be [C, X, Y, Z], got shape {self.data.shape}")
        if len(self.channel_names) != self.data.shape[0]:
            raise ImageError(
                f"subject has {self.data.shape[0]} channels but {len(self.channel_names)} "
                f"channel names {self.channel_names}"
            )
        if self.affine.shape != (4, 4):
            raise ImageError(f"affine must be 4x4, got shape {self.affine.shape}")

    @property
    def shape(self) -> tuple[int, int, int]:
        """The spatial grid shape ``(X, Y, Z)``."""
        x, y, z = self.data.shape[1:]
        return (int(x), int(y), int(z))

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along each array axis (column norms of the affine)."""
        sx, sy, sz = np.linalg.norm(self.affine[:3, :3], axis=0)
        return (float(sx), float(sy), float(sz))

    @property
    def voxel_volume_mm3(self) -> float:
        """Volume of one voxel in mm³."""
        return voxel_volume_mm3(self.affine)

    @property
    def name(self) -> str:
        """The subject's name in output files (:func:`instasal.channels.subject_name` of the
        first file: no extension, no channel suffix or nnU-Net channel number)."""
        return subject_name(self.paths[0] if self.paths else None)

    def on_grid(self, data: np.ndarray) -> GridImage:
        """``data`` (``[X, Y, Z]``, or with more axes after them) on this subject's grid, to save
        with the subject's affine and header.

        Raises
        ------
        ImageError
            When ``data``'s first three axes are not the subject's grid.
        """
        _check_on_grid(data, self.shape)
        return GridImage(data, self.affine, self.header)


def load_image(path: PathLike) -> nib.Nifti1Image:
    """Load a NIfTI file, turning every way it can fail into an :class:`ImageError` naming it.

    The voxel data are read (and so checked) here, not lazily later. Colour (RGB24, RGBA32) and
    complex voxels are refused, and so is a file whose sform and qform both hold NaN/Inf or are
    singular; an unusable sform beside a usable qform gives way to the qform, with a note.
    """
    path = Path(path)
    if not path.exists():
        raise ImageError(f"{path}: file not found")
    if path.is_dir():
        raise ImageError(f"{path}: is a folder, expected a NIfTI file (.nii or .nii.gz)")
    try:
        image = nib.load(str(path))
    except (nib.filebasedimages.ImageFileError, OSError, EOFError, ValueError) as error:
        raise ImageError(f"{path}: not a readable NIfTI image ({one_line(error)})") from error
    if not isinstance(image, nib.Nifti1Image | nib.Nifti2Image):
        raise ImageError(f"{path}: not a NIfTI image (read as {type(image).__name__})")
    _check_declared_size(image, path)
    _check_voxel_type(image.header, path)
    header = image.header.copy()
    affine = _usable_affine(header, path)
    try:
        data = np.asanyarray(image.dataobj)
    except (OSError, EOFError, ValueError, zlib.error, gzip.BadGzipFile) as error:
        raise ImageError(f"{path}: truncated or corrupt image data ({one_line(error)})") from error
    return nib.Nifti1Image(data, affine, header=header)


def _check_voxel_type(header: nib.Nifti1Header, path: Path) -> None:
    """Refuse colour and complex voxels: every reader expects one real value per voxel.

    Refused rather than converted: which grey value a colour or a complex number stands for
    (a channel, a luminance, the magnitude, the real part) is the user's choice to make.
    """
    dtype = header.get_data_dtype()
    if dtype.fields is not None:
        raise ImageError(
            f"{path}: holds colour voxels (NIfTI datatype {header.get_value_label('datatype')}, "
            f"{'/'.join(dtype.names or ())} per voxel); expected one grey value per voxel"
        )
    if dtype.kind == "c":
        raise ImageError(
            f"{path}: holds complex voxels ({dtype.name}); expected real values "
            "(save the magnitude, or the part you mean, as a real image)"
        )


def _affine_problem(affine: np.ndarray) -> str | None:
    """Why ``affine`` cannot map voxels to the world, or ``None`` when it can."""
    if not np.isfinite(affine).all():
        return "is not finite (holds NaN or Inf)"
    singular_values = np.linalg.svd(affine[:3, :3], compute_uv=False)
    if singular_values[-1] <= 1e-6 * singular_values[0]:
        return "is singular (its voxel axes do not span 3D)"
    return None


def _usable_affine(header: nib.Nifti1Header, path: Path) -> np.ndarray:
    """The voxel-to-world affine as nibabel chooses it (the sform, else the qform, else the voxel
    sizes), passing over a form that is set but not finite or singular.

    When the sform is unusable and the qform usable, the qform is taken with a one-line note and
    the header's sform is replaced by it (outputs carry the geometry used); when no form is
    usable the image is refused, since no voxel of it has a place in the world.
    """
    problems: list[str] = []
    unset: list[str] = []
    for name in ("sform", "qform"):
        try:
            affine, code = (
                header.get_sform(coded=True) if name == "sform" else header.get_qform(coded=True)
            )
        except ValueError as error:  # quaternions that describe no rotation
            problems.append(f"the {name} is invalid ({one_line(error)})")
            continue
        if affine is None:
            unset.append(f"no {name} is set")
            continue
        problem = _affine_problem(affine)
        if problem is None:
            if problems:
                warnings.warn(
                    f"{path}: {problems[0]}; the {name} is used instead",
                    InstasalWarning,
                    stacklevel=3,
                )
                header.set_sform(affine, code=int(code))
            return affine
        problems.append(f"the {name} {problem}")
    if problems:
        reasons = " and ".join([*problems, *unset])
        raise ImageError(f"{path}: {reasons}; no usable voxel-to-world affine")
    zooms = header.get_zooms()[:3]
    if not all(np.isfinite(zoom) and zoom > 0 for zoom in zooms):
        raise ImageError(
            f"{path}: neither sform nor qform is set and the voxel sizes "
            f"{', '.join(f'{zoom:g}' for zoom in zooms)} (pixdim) are not all finite and positive; "
            "no usable voxel-to-world affine"
        )
    return header.get_base_affine()


# deflate cannot shrink data by more than about 1032:1, so a larger ratio is a lying header
_DEFLATE_MAX_RATIO = 1032


def _memory_budget_bytes() -> int:
    """Half of the physical memory: the most voxel data one image may declare."""
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2


def _check_declared_size(image: nib.Nifti1Image, path: Path) -> None:
    """Refuse a header whose declared grid the file cannot hold or memory cannot take.

    Checked before the voxel data are read, so a 100-byte file claiming 10000³ voxels is refused
    in one line instead of exhausting the memory inside nibabel.
    """
    header = image.header
    shape = tuple(int(n) for n in header.get_data_shape())
    dtype = header.get_data_dtype()
    declared = int(np.prod(shape, dtype=object)) * dtype.itemsize
    stored = path.stat().st_size
    grid = "×".join(map(str, shape))
    described = f"declares {grid} {dtype.name} = {declared} bytes of voxel data"
    if path.suffix == ".gz":
        if declared > _DEFLATE_MAX_RATIO * stored:
            raise ImageError(
                f"{path}: header {described}, more than a {stored}-byte gzip file can hold"
            )
    elif declared > stored - int(header["vox_offset"]):
        raise ImageError(f"{path}: header {described}, but the file holds only {stored} bytes")
    budget = _memory_budget_bytes()
    if declared > budget:
        raise ImageError(
            f"{path}: header {described}, over the memory budget of {budget} bytes"
            " (half of this machine's memory)"
        )


def _as_3d(image: nib.Nifti1Image, path: Path) -> np.ndarray:
    data = np.asanyarray(image.dataobj)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ImageError(f"{path}: expected a 3D image, got shape {data.shape}")
    return data


def _check_finite(data: np.ndarray, path: Path) -> None:
    if np.issubdtype(data.dtype, np.floating):
        bad = ~np.isfinite(data)
        if bad.any():
            raise ImageError(f"{path}: contains {int(bad.sum())} NaN/Inf voxels")


def _check_fits_float32(data: np.ndarray, path: Path) -> None:
    """Refuse values that the float32 channels would turn into Inf."""
    largest = float(np.abs(data).max()) if data.size else 0.0
    if largest > float(np.finfo(np.float32).max):
        raise ImageError(
            f"{path}: holds values up to {largest:g}, beyond float32's range "
            f"(±{np.finfo(np.float32).max:.3g}); rescale the image"
        )


def _check_not_constant(data: np.ndarray, path: Path) -> None:
    if data.size == 0 or float(data.min()) == float(data.max()):
        value = float(data.flat[0]) if data.size else float("nan")
        raise ImageError(f"{path}: image is constant (every voxel is {value:g})")


def _check_same_grid(
    shape: tuple[int, ...],
    affine: np.ndarray,
    ref_shape: tuple[int, ...],
    ref_affine: np.ndarray,
    path: Path,
    ref_path: Path,
    tolerance: float,
) -> None:
    if tuple(shape) != tuple(ref_shape):
        raise ImageError(
            f"{path}: shape {tuple(shape)} differs from {ref_path.name} {tuple(ref_shape)}; "
            "channels must share one voxel grid"
        )
    difference = float(np.max(np.abs(affine - ref_affine)))
    if difference > tolerance:
        raise ImageError(
            f"{path}: affine differs from {ref_path.name} by up to {difference:.4g} "
            f"(tolerance {tolerance:g}); channels must be co-registered on one grid"
        )


def read_subject(
    paths: Sequence[PathLike] | PathLike,
    channel_names: Sequence[str] | None = None,
    *,
    tolerance: float = AFFINE_TOLERANCE_MM,
) -> Subject:
    """Read one subject from one 3D NIfTI per channel, or from one 4D NIfTI.

    Parameters
    ----------
    paths
        Channel files in model order (FLAIR first, then T1w), or a single 4D file whose last axis
        holds the channels.
    channel_names
        Names of the channels; default ``ch0, ch1, …``: unnamed, they take the names of the model
        they are given to (:func:`instasal.models.with_model_channels`), never a fixed list's.
    tolerance
        Largest allowed absolute difference between channel affines.

    Raises
    ------
    ImageError
        On a missing or unreadable file (:func:`load_image`), a non-3D channel, mismatched
        shapes or affines, NaN/Inf voxels, values beyond float32's range or a constant channel;
        the message names the file.

    Examples
    --------
    >>> subject = read_subject(["sub-001_FLAIR.nii.gz", "sub-001_T1w.nii.gz"])  # doctest: +SKIP
    >>> subject.data.shape  # doctest: +SKIP
    (2, 99, 117, 95)
    """
    if isinstance(paths, str | os.PathLike):
        paths = [paths]
    file_paths = [Path(p) for p in paths]
    if not file_paths:
        raise ImageError("no image given: pass one 3D NIfTI per channel or one 4D NIfTI")
    channels: list[np.ndarray] = []
    channel_paths: list[Path] = []
    first = load_image(file_paths[0])
    header = first.header
    ref_affine = first.affine
    if len(file_paths) == 1 and np.asanyarray(first.dataobj).ndim == 4:
        volume = np.asanyarray(first.dataobj)
        channels = [volume[..., k] for k in range(volume.shape[3])]
        channel_paths = [file_paths[0]] * len(channels)
    else:
        ref_shape = _as_3d(first, file_paths[0]).shape
        for path in file_paths:
            image = first if path == file_paths[0] else load_image(path)
            data = _as_3d(image, path)
            _check_same_grid(
                data.shape, image.affine, ref_shape, ref_affine, path, file_paths[0], tolerance
            )
            channels.append(data)
            channel_paths.append(path)
    for data, path in zip(channels, channel_paths, strict=True):
        _check_finite(data, path)
        _check_fits_float32(data, path)
        _check_not_constant(data, path)
    names = _channel_names(channel_names, len(channels), file_paths[0])
    stacked = np.stack([np.asarray(c, dtype=np.float32) for c in channels])
    header = header.copy()
    header.set_data_dtype(np.float32)
    return Subject(
        data=stacked,
        affine=np.asarray(ref_affine, dtype=np.float64),
        channel_names=names,
        paths=tuple(dict.fromkeys(file_paths)),
        header=header,
    )


def _channel_names(names: Sequence[str] | None, count: int, path: Path) -> tuple[str, ...]:
    if names is None:
        return tuple(f"ch{k}" for k in range(count))
    if len(names) != count:
        raise ImageError(
            f"{path}: {count} channel(s) read but {len(names)} channel names given {tuple(names)}"
        )
    return tuple(names)


def load_mask(
    path: PathLike,
    like: Subject,
    *,
    tolerance: float = AFFINE_TOLERANCE_MM,
    role: str = "mask",
) -> np.ndarray:
    """Read a mask on ``like``'s grid as a boolean array (non-zero voxels are ``True``).

    A mask holding values other than 0 and 1 (a label map, probabilities, negative values) is
    still read as "non-zero is inside", with a one-line :class:`~instasal.errors.InstasalWarning`
    naming the file, its ``role`` (``"reference lesion mask"``, …) and the values seen.

    Raises
    ------
    ImageError
        When the file is unreadable, not 3D, holds NaN/Inf, or lies on another grid.
    """
    path = Path(path)
    data = _read_on_grid(path, like, tolerance)
    if not ((data == 0) | (data == 1)).all():
        warnings.warn(
            f"{path}: {role} is not binary ({_values_seen(data)}); "
            "every non-zero voxel is taken as inside it",
            InstasalWarning,
            stacklevel=2,
        )
    return data != 0


LABEL_MAX = int(np.iinfo(np.int16).max)
"""The largest label a label image may hold (labels are kept as int16)."""


def load_labels(
    path: PathLike,
    like: Subject | PathLike | None = None,
    *,
    tolerance: float = AFFINE_TOLERANCE_MM,
    role: str = "region map",
) -> np.ndarray:
    """Read a label image (a region map or atlas) as int16 labels, on ``like``'s grid when given.

    ``like`` is a subject, or an image file whose grid (shape and affine) the labels must share: a
    label image stored in another orientation or voxel size would put each label on other voxels.

    Labels are whole numbers from 0 (no label) to :data:`LABEL_MAX`; any other value would be cut
    to a label that is not in the file (1.5 to 1, -2.7 to -2, 40000 wraps), so it is refused.

    Raises
    ------
    ImageError
        When the file is unreadable, not 3D, holds NaN/Inf or a value that is not a label
        (fractional, negative, above :data:`LABEL_MAX`), or lies on another grid than ``like``;
        the message names the file, its ``role`` and the values seen.
    """
    path = Path(path)
    data = _read_on_grid(path, like, tolerance)
    not_labels = (data < 0) | (data > LABEL_MAX) | (data != np.round(data))
    if not_labels.any():
        raise ImageError(
            f"{path}: {role} holds {_values_seen(data[not_labels])} that are not labels; "
            f"expected whole numbers from 0 to {LABEL_MAX}"
        )
    return data.astype(np.int16)


def _read_on_grid(path: Path, like: Subject | PathLike | None, tolerance: float) -> np.ndarray:
    """A 3D image's finite voxels, checked to lie on ``like``'s grid (a subject's, or an image
    file's) when it is given."""
    image = load_image(path)
    data = np.asarray(_as_3d(image, path))
    _check_finite(data, path)
    if isinstance(like, Subject):
        ref_path = like.paths[0] if like.paths else Path("the subject")
        _check_same_grid(
            data.shape, image.affine, like.shape, like.affine, path, ref_path, tolerance
        )
    elif like is not None:
        ref = load_image(like)
        _check_same_grid(
            data.shape, image.affine, ref.shape[:3], ref.affine, path, Path(like), tolerance
        )
    return data


def _values_seen(data: np.ndarray, listed: int = 8) -> str:
    """The distinct values of ``data`` (or their count and range when there are many)."""
    values = np.unique(data)
    if values.size <= listed:
        return "values " + ", ".join(f"{v:g}" for v in values.tolist())
    return f"{values.size} distinct values from {values[0]:g} to {values[-1]:g}"


def zscore_nonzero(data: FloatArray) -> FloatArray:
    """Z-score each channel of ``[C, ...]`` over its non-zero voxels; zero voxels stay zero.

    This is the normalisation the paper's models were trained with (SPEC, Notation).
    """
    out = np.zeros_like(data, dtype=np.float32)
    for k in range(data.shape[0]):
        channel = data[k]
        inside = channel != 0
        if not inside.any():
            continue
        values = channel[inside].astype(np.float64)
        std = values.std()
        out[k][inside] = ((values - values.mean()) / (std if std > 0 else 1.0)).astype(np.float32)
    return out


def _refuse_existing(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path}: exists already (pass overwrite=True / --overwrite)")


def _umask_permissions() -> int:
    """The mode a plain ``open()`` would give a new file (0o666 less the process umask)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _temporary_beside(path: Path, suffix: str) -> Path:
    """A new empty temporary file in ``path``'s folder, with ordinary file permissions.

    Its name is ``.<name>.<host>-<pid>.<random>.tmp<suffix>``
    (:func:`~instasal.folders.temporary_prefix`). ``mkstemp`` creates files readable by their owner
    only; outputs must be readable like any file the user writes (shared servers, viewers run by
    other users).
    """
    handle, temporary = tempfile.mkstemp(
        prefix=temporary_prefix(path), suffix=f".tmp{suffix}", dir=path.parent
    )
    os.close(handle)
    os.chmod(temporary, _umask_permissions())
    return Path(temporary)


def atomic_save(path: PathLike, save: Callable[[Path], object], *, overwrite: bool = False) -> Path:
    """Write ``path`` atomically: ``save(temporary)`` in the same folder, then a rename.

    The temporary keeps ``path``'s suffixes (savers such as nibabel choose the format by them) and
    is removed if ``save`` fails or is interrupted, so ``path`` is either the old file or the new.
    An operating-system error (a full disk, a read-only folder) is raised naming ``path``.

    Raises
    ------
    OutputExistsError
        When ``path`` exists and ``overwrite`` is false.
    """
    path = Path(path)
    _refuse_existing(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary: Path | None = None
    try:
        temporary = _temporary_beside(path, "".join(path.suffixes[-2:]))
        save(temporary)
        with open(temporary, "rb") as written:
            os.fsync(written.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        if temporary is not None:
            temporary.unlink(missing_ok=True)
        if isinstance(error, OSError) and error.errno is not None:
            # a full disk or a read-only folder: name the output, not its hidden temporary
            raise OSError(error.errno, error.strerror, os.fspath(path)) from error
        raise
    return path


def atomic_write_bytes(path: PathLike, payload: bytes, *, overwrite: bool = False) -> Path:
    """Write ``payload`` to ``path`` through a temporary file in the same folder and a rename."""
    return atomic_save(path, lambda temporary: temporary.write_bytes(payload), overwrite=overwrite)


def atomic_write_text(path: PathLike, text: str, *, overwrite: bool = False) -> Path:
    """Write UTF-8 ``text`` atomically (see :func:`atomic_write_bytes`)."""
    return atomic_write_bytes(path, text.encode("utf-8"), overwrite=overwrite)


def atomic_write_json(path: PathLike, payload: object, *, overwrite: bool = False) -> Path:
    """Write ``payload`` as indented JSON atomically."""
    text = json.dumps(payload, indent=2, sort_keys=False, default=_json_default) + "\n"
    return atomic_write_text(path, text, overwrite=overwrite)


def _json_default(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def write_nifti(
    data: np.ndarray,
    affine: np.ndarray,
    path: PathLike,
    *,
    header: nib.Nifti1Header | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a 3D (or 4D) array as NIfTI with ``affine`` (and ``header``'s geometry), atomically.

    The array's dtype is kept (bool is stored as uint8). Both qform and sform carry ``affine`` so
    that every viewer (FSLeyes, ITK-SNAP, Slicer) places the image where the input was.

    Raises
    ------
    OutputExistsError
        When ``path`` exists and ``overwrite`` is false.
    """
    path = Path(path)
    _refuse_existing(path, overwrite)
    array = np.asarray(data)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    new_header = header.copy() if header is not None else nib.Nifti1Header()
    image = nib.Nifti1Image(array, affine, header=new_header)
    image.set_data_dtype(array.dtype)
    qcode = int(new_header["qform_code"]) if header is not None else 0
    scode = int(new_header["sform_code"]) if header is not None else 0
    image.set_qform(affine, code=qcode or 1)
    image.set_sform(affine, code=scode or 1)
    image.header.set_xyzt_units("mm", "sec")
    image.header["scl_slope"] = np.nan
    image.header["scl_inter"] = np.nan
    return atomic_save(path, lambda temporary: nib.save(image, temporary), overwrite=True)


def _check_on_grid(data: np.ndarray, shape: tuple[int, int, int]) -> None:
    if tuple(np.shape(data)[:3]) != shape:
        raise ImageError(f"image data of shape {np.shape(data)} is not on the grid {shape}")


@dataclass(frozen=True, eq=False)
class GridImage:
    """A volume that knows its grid: voxel data, the voxel-to-world affine and the NIfTI header
    whose geometry (qform/sform codes, units) a saved copy carries.

    Parameters
    ----------
    data
        The voxels, spatial axes first (``[X, Y, Z]`` or ``[X, Y, Z, ...]``).
    affine
        Voxel-to-world (RAS mm) matrix.
    header
        The header of the image the grid came from (``None``: a fresh one).

    Raises
    ------
    ImageError
        When ``data`` has fewer than 3 axes or ``affine`` is not 4×4.
    """

    data: np.ndarray
    affine: np.ndarray
    header: nib.Nifti1Header | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if np.ndim(self.data) < 3:
            raise ImageError(f"image data must be [X, Y, Z, ...], got shape {np.shape(self.data)}")
        if np.shape(self.affine) != (4, 4):
            raise ImageError(f"affine must be 4x4, got shape {np.shape(self.affine)}")

    @property
    def shape(self) -> tuple[int, int, int]:
        """The spatial grid shape ``(X, Y, Z)``."""
        x, y, z = np.shape(self.data)[:3]
        return (int(x), int(y), int(z))

    def sibling(self, data: np.ndarray) -> GridImage:
        """Other voxel data on the same grid (same affine and header).

        Raises
        ------
        ImageError
            When ``data``'s first three axes are not this grid.
        """
        _check_on_grid(data, self.shape)
        return GridImage(data, self.affine, self.header)

    def save(self, path: PathLike, *, overwrite: bool = False) -> Path:
        """Write the image atomically as NIfTI (:func:`write_nifti`); return ``path``.

        Raises
        ------
        OutputExistsError
            When ``path`` exists and ``overwrite`` is false.
        """
        return write_nifti(self.data, self.affine, path, header=self.header, overwrite=overwrite)
