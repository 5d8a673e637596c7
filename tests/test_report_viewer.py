"""The report's interactive viewer: cropped volumes keep their world positions and values, and the
page works in a real browser (headless Chromium, skipped with its reason when none is installed).

Browser oracle: a script appended to a copy of the report records console errors, reads the
viewer's WebGL pixels, moves the crosshair and writes what it saw into the DOM, which
``chromium --dump-dom`` prints.
"""

from __future__ import annotations

import base64
import gzip
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from conftest import LINEAR_SHAPE, PointwiseLinear, load_nifti, set_card, write_linear_subject
from instasal.instances import Instance
from instasal.pipeline import ExplainSettings, explain_subject
from instasal.pipeline.outputs import instances_lookup
from instasal.report.viewer import crop_box, domain_outline, lesion_volumes, niivue_script
from instasal.saliency import SmoothGradConfig


def _decode(volume_base64: str) -> nib.Nifti1Image:
    return nib.Nifti1Image.from_bytes(gzip.decompress(base64.b64decode(volume_base64)))


def test_crop_box_is_the_window_around_the_domain_centre_clipped_to_the_image():
    domain = np.zeros((40, 30, 20), bool)
    domain[10:13, 2:5, 8:11] = True  # centre voxel (11, 3, 9)
    affine = np.diag([2.0, 1.0, 4.0, 1.0])
    box = crop_box(domain, affine, half_window_mm=8.0, margin_mm=0.0)
    # half widths 4, 8 and 2 voxels; the y box starts at 0 (clipped), x and z are not clipped
    assert box == (slice(7, 16), slice(0, 12), slice(7, 12))
    long = np.zeros((40, 30, 20), bool)
    long[10:13, 10:13, 2:18] = True  # z: centre 9.5, half extent 7.5 voxels of 4 mm
    # z half width: 7.5 + 8 mm / 4 mm = 9.5 -> 10 voxels, clipped to [0, 20)
    assert crop_box(long, affine, half_window_mm=8.0, margin_mm=8.0)[2] == slice(0, 20)


def test_outline_of_a_cube_is_the_layer_on_its_faces_outside_it():
    domain = np.zeros((7, 7, 7), bool)
    domain[1:6, 1:6, 1:6] = True
    outline = domain_outline(domain)
    assert outline.sum() == 6 * 5**2  # one 5 x 5 layer per face; edges and corners are not face
    assert not (outline & domain).any()  # never over one of the domain's own voxels
    assert outline[0, 3, 3] and outline[6, 1, 5] and not outline[0, 0, 3]


def test_outline_of_a_one_voxel_domain_leaves_the_voxel_visible():
    domain = np.zeros((3, 3, 3), bool)
    domain[1, 1, 1] = True
    outline = domain_outline(domain)
    assert not outline[1, 1, 1] and outline.sum() == 6


def test_cropped_volumes_keep_world_positions_and_values(rng):
    shape = (30, 24, 20)
    affine = np.array([[0, -2.0, 0, 50], [1.5, 0, 0, -20], [0, 0, 3.0, 7], [0, 0, 0, 1]])
    flair, t1w = (rng.normal(10, 2, shape).astype(np.float32) for _ in range(2))
    saliency = rng.normal(0, 1, (2, *shape)).astype(np.float32)
    cam = rng.uniform(0, 1, shape).astype(np.float32)
    domain = np.zeros(shape, bool)
    domain[14:17, 10:13, 9:11] = True
    volumes = lesion_volumes(
        [flair, t1w],
        ["FLAIR", "T1w"],
        saliency,
        domain,
        affine,
        scales={"FLAIR": 2.0, "T1w": 0.5},
        gradcam=cam,
        half_window_mm=6.0,
    )
    keys = [v.key for v in volumes]
    assert keys == [
        "image-FLAIR",
        "image-T1w",
        "smoothgrad-FLAIR",
        "smoothgrad-T1w",
        "gradcam",
        "outline",
    ]
    originals = [flair, t1w, saliency[0], saliency[1], cam, domain_outline(domain)]
    for volume, original in zip(volumes, originals, strict=True):
        image = _decode(volume.nifti_base64)
        data = np.asarray(image.dataobj)
        # every cropped voxel maps (through the crop's affine) to the same world point, and so
        # to the same voxel of the full image, holding the same float32 value
        ijk = np.argwhere(np.ones(data.shape, bool))
        world = nib.affines.apply_affine(image.affine, ijk)
        back = np.rint(nib.affines.apply_affine(np.linalg.inv(affine), world)).astype(int)
        np.testing.assert_array_equal(data[tuple(ijk.T)], original[tuple(back.T)])
        assert image.header.get_xyzt_units()[0] == "mm"
    assert volumes[2].cal_max == 2.0 and volumes[2].colormap_negative == "winter"
    assert volumes[3].cal_max == 0.5 and volumes[3].cal_min == pytest.approx(0.01)


def test_bundled_niivue_script_is_inlinable_and_licensed():
    script = niivue_script()
    assert len(script) > 1_000_000 and "</script" not in script
    assert "niivue" in script[:600]
    licence = (
        Path(__file__).parents[1] / "src" / "instasal" / "report" / "vendor" / "NIIVUE_LICENSE.txt"
    )
    assert "BSD 2-Clause License" in licence.read_text()


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


CATCH_ERRORS = """
<script>
window.probeErrors = [];
(function () {
  const original = console.error;
  console.error = function () {
    window.probeErrors.push(Array.from(arguments).join(" "));
    original.apply(console, arguments);
  };
  window.addEventListener("error", function (event) {
    window.probeErrors.push(String(event.message));
  });
  window.addEventListener("unhandledrejection", function (event) {
    window.probeErrors.push(String(event.reason));
  });
})();
</script>
"""

PROBE = """
<script>
(function () {
  const errors = window.probeErrors;
  async function probe() {
    const viewer = window.instasalViewer;
    await viewer.ready;
    const nv = viewer.nv;
    const overlay = document.querySelector(
      'input[name="viewer-overlay"][value="smoothgrad-FLAIR"]');
    overlay.checked = true;
    overlay.dispatchEvent(new Event("change"));
    nv.drawScene();
    const gl = nv.gl;
    const pixels = new Uint8Array(gl.drawingBufferWidth * gl.drawingBufferHeight * 4);
    const width = gl.drawingBufferWidth, height = gl.drawingBufferHeight;
    gl.readPixels(0, 0, width, height, gl.RGBA, gl.UNSIGNED_BYTE, pixels);
    let lit = 0;
    for (let i = 0; i < pixels.length; i += 4) {
      if (pixels[i] + pixels[i + 1] + pixels[i + 2] > 30) lit++;
    }
    const readout = document.getElementById("viewer-readout");
    const before = readout.textContent;
    const dims = nv.volumes[0].dims;
    nv.moveCrosshairInVox(Math.round(dims[1] / 4), 0, 0);
    const after = readout.textContent;
    const table = document.querySelector(".tablewrap");
    return { lit: lit, total: pixels.length / 4, before: before, after: after,
             volumes: nv.volumes.length,
             tableOverflow: table.scrollWidth - table.clientWidth,
             pageOverflow: document.documentElement.scrollWidth - window.innerWidth };
  }
  window.addEventListener("load", function () {
    probe().then(function (found) { found.errors = errors; return found; },
                 function (error) { return { errors: errors.concat([String(error)]) }; })
      .then(function (found) {
        const out = document.createElement("pre");
        out.id = "probe-result";
        out.textContent = JSON.stringify(found);
        document.body.appendChild(out);
      });
  });
})();
</script>
"""


def _inject(html: str) -> str:
    """The report with the error catcher first in <head> and the probe last in <body> (the
    bundled script holds the strings "<head>" and "</body>" itself)."""
    head = html.index("<head>") + len("<head>")
    body = html.rindex("</body>")
    return html[:head] + CATCH_ERRORS + html[head:body] + PROBE + html[body:]


def _pointwise_with_card() -> PointwiseLinear:
    model = PointwiseLinear()
    set_card(
        model,
        {
            "name": "pointwise-test",
            "architecture": "1x1x1 convolution",
            "channel_names": ["FLAIR", "T1w"],
            "patch_size": list(LINEAR_SHAPE),
            "threshold": 0.5,
            "gradcam_layer": "conv",
            "target_class": 1,
        },
    )
    return model


@pytest.fixture(scope="module")
def explained_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("viewer")
    write_linear_subject(root / "data", "sub-01", np.random.default_rng(3))
    anat = root / "data" / "sub-01" / "anat"
    model = _pointwise_with_card()
    result = explain_subject(
        [anat / "sub-01_FLAIR.nii.gz", anat / "sub-01_T1w.nii.gz"],
        model,
        root / "out",
        settings=ExplainSettings(
            smoothgrad=SmoothGradConfig(n_samples=2, seed=1), n_true_negatives=1, context="full"
        ),
    )
    return result.report


def test_report_embeds_the_viewer_and_one_volume_set_per_domain(explained_report):
    html = explained_report.read_text()
    data = json.loads(
        re.search(
            r'<script type="application/json" id="viewer-data">(.*?)</script>', html, re.S
        ).group(1)  # type: ignore[union-attr]
    )
    domains = re.findall(r'<div class="lesion-section" id="lesion-(\d+)">', html)
    assert sorted(data) == sorted(domains) and domains
    assert not re.search(r'<(script|link|img)[^>]+(src|href)="(?!data:)', html)  # nothing fetched


@pytest.mark.parametrize("width", [1000, 1600])
def test_viewer_draws_and_reports_the_value_under_the_crosshair_in_chromium(
    explained_report, tmp_path, width
):
    """…and at 1000 and 1600 px neither the lesion table nor the page scrolls sideways."""
    chromium = _chromium()
    if chromium is None:
        pytest.skip("no chromium binary on PATH (apt-get install chromium) for the browser test")
    page = tmp_path / "probe.html"
    html = explained_report.read_text()
    page.write_text(_inject(html))
    done = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu-sandbox",
            "--use-angle=swiftshader",
            "--enable-unsafe-swiftshader",
            f"--window-size={width},1200",
            "--virtual-time-budget=20000",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    found = re.search(r'<pre id="probe-result">(.*?)</pre>', done.stdout, re.S)
    assert found, f"the probe wrote no result; chromium said: {done.stderr[-2000:]}"
    result = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert result["errors"] == []
    assert result["volumes"] >= 5
    assert result["lit"] > 0.05 * result["total"]
    assert (
        "SmoothGrad FLAIR" in result["before"]
        and "logit per normalised intensity" in (result["before"])
    )
    assert result["after"] != result["before"]
    assert result["tableOverflow"] <= 0 and result["pageOverflow"] <= 0


def test_lesion_table_heads_wrap_and_name_their_tsv_column_on_hover(explained_report):
    html = explained_report.read_text()
    heads = dict(re.findall(r'<th title="([a-zA-Z0-9_+]+): [^"]*"[^>]*>([^<]*)</th>', html))
    assert heads["volume_mm3"] == "volume (mm³)"
    assert heads["peak_FLAIR"] == "peak FLAIR"
    assert heads["reliance_T1w"] == "reliance T1w"
    assert all("_" not in head for head in heads.values())


def test_instances_lookup_lists_every_id_with_the_reason_it_was_left_out():
    records = [
        Instance(1, 16.0, 2, (0, 0, 0), (0, 0, 0), ((0, 1), (0, 1), (0, 2)), "FP"),
        Instance(2, 8.0, 1, (5, 5, 5), (5, 5, 5), ((5, 6), (5, 6), (5, 6)), "FP"),
        Instance(3, 24.0, 3, (9, 9, 9), (9, 9, 9), ((9, 10), (9, 10), (9, 12)), "TP"),
    ]
    lookup = instances_lookup(records, {1, 3}, max_lesions=1)
    assert lookup["index"].tolist() == [1, 2, 3]
    assert lookup["name"].tolist() == ["FP-1", "FP-2", "TP-3"]
    assert lookup["explained"].tolist() == ["yes", "no", "yes"]
    assert lookup.loc[1, "reason"] == (
        "not among the 1 FP domains drawn with the run's seed (max_lesions)"
    )
    assert lookup["volume_mm3"].tolist() == [16.0, 8.0, 24.0]


def test_run_writes_a_lookup_row_for_every_id_of_the_instance_map(explained_report):
    root = explained_report.parent
    (labels,) = root.glob("*_desc-instances_dseg.nii.gz")
    (table,) = root.glob("*_desc-instances_dseg.tsv")
    ids = sorted(int(i) for i in np.unique(np.asarray(load_nifti(labels).dataobj)) if i)
    lookup = pd.read_csv(table, sep="\t")
    assert lookup["index"].tolist() == ids
    explained = pd.read_csv(next(root.glob("*_lesions.tsv")), sep="\t")["id"].tolist()
    assert lookup.loc[lookup["explained"] == "yes", "index"].tolist() == explained
    html = explained_report.read_text()
    assert f"{len(explained)} of the {len(ids)} domains in the instance map are explained" in html


def test_cli_refuses_a_missing_input_before_importing_torch(tmp_path):
    """The refusal comes from option and file checks alone: torch is never imported."""
    probe = (
        "import sys\n"
        "from instasal.cli import main\n"
        "sys.argv = ['instasal', 'explain', sys.argv[1], '--out', sys.argv[2]]\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as stop:\n"
        "    print('exit', stop.code, 'torch' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, str(tmp_path / "missing_FLAIR.nii.gz"), str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.stdout.strip() == "exit 2 False"
    assert "missing_FLAIR.nii.gz: file not found" in done.stderr


@pytest.mark.parametrize("terminal", [True, False])
def test_explain_subject_shows_progress_by_default_only_in_a_terminal(
    tmp_path, capfd, monkeypatch, terminal
):
    write_linear_subject(tmp_path / "data", "sub-01", np.random.default_rng(4))
    anat = tmp_path / "data" / "sub-01" / "anat"
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    if terminal:
        monkeypatch.setenv("FORCE_COLOR", "1")  # rich then treats standard error as a terminal
    explain_subject(
        [anat / "sub-01_FLAIR.nii.gz", anat / "sub-01_T1w.nii.gz"],
        _pointwise_with_card(),
        tmp_path / "out",
        settings=ExplainSettings(
            smoothgrad=SmoothGradConfig(n_samples=2, seed=1), n_true_negatives=0, context="full"
        ),
        report=False,
    )
    shown = capfd.readouterr().err
    assert ("saliency of lesion" in shown) is terminal
    assert ("segmenting" in shown) is terminal
