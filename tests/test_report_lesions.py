"""The report shows each lesion: its own colour range (the shared one a click away), definitions
that follow the run, a lesion table that is not a scrolling box, and a viewer outline that leaves
the domain's voxels visible; checked in headless Chromium at 1000 and 1600 px where one is
installed (skipped with the reason otherwise)."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
from typing import Any

import numpy as np
import pytest

from conftest import load_nifti, write_linear_subject
from instasal.io import read_subject
from instasal.pipeline import ExplainResult, ExplainSettings, explain_subject
from instasal.report.html import build_subject_report
from instasal.report.lesion_panels import lesion_scales, shared_scale
from instasal.report.viewer import crop_box
from instasal.saliency import SmoothGradConfig
from test_report_viewer import CATCH_ERRORS, _chromium, _pointwise_with_card

CHANNELS = ("FLAIR", "T1w")


@pytest.fixture(scope="module")
def explained(tmp_path_factory: pytest.TempPathFactory) -> tuple[ExplainResult, dict[str, Any]]:
    """A run with a reference: a TP and TN domains."""
    root = tmp_path_factory.mktemp("lesions")
    write_linear_subject(root / "data", "sub-01", np.random.default_rng(5))
    anat = root / "data" / "sub-01" / "anat"
    reference = root / "data" / "derivatives" / "manual" / "sub-01" / "anat"
    result = explain_subject(
        [anat / "sub-01_FLAIR.nii.gz", anat / "sub-01_T1w.nii.gz"],
        _pointwise_with_card(),
        root / "out",
        reference=reference / "sub-01_desc-lesion_mask.nii.gz",
        settings=ExplainSettings(
            smoothgrad=SmoothGradConfig(n_samples=2, seed=1),
            n_true_negatives=2,
            context="full",
        ),
    )
    return result, json.loads(result.layout.provenance.read_text())


def _rebuilt(
    explained: tuple[ExplainResult, dict[str, Any]], **changes: Any
) -> tuple[str, ExplainResult]:
    """The run's report built again with ``table`` or ``settings`` entries replaced."""
    result, provenance = explained
    settings = provenance["settings"] | changes.pop("settings", {})
    result = dataclasses.replace(result, **changes)
    subject = read_subject(
        [p["path"] for p in provenance["inputs"][: len(CHANNELS)]], channel_names=CHANNELS
    )
    report = build_subject_report(result, subject, provenance | {"settings": settings})
    return report.html, result


def _definitions(html: str) -> str:
    return html.split('<h2 id="legend">Definitions</h2>')[1].split("<h2")[0]


def test_definitions_spell_out_the_types_and_follow_the_aggregation(explained):
    html = explained[0].report.read_text()
    for short, long in (("TP", "true positive"), ("FN", "false negative"), ("TN", "true negative")):
        assert re.search(rf">{short}</span></td><td><b>{long}</b>", _definitions(html))
    assert "max aggregation, as this run computed it" in _definitions(html)
    mean_html, _ = _rebuilt(explained, settings={"aggregation": "mean"})
    assert "mean aggregation" in _definitions(mean_html)
    assert "max aggregation" not in _definitions(mean_html)
    assert "largest magnitude" not in _definitions(mean_html)


def test_definitions_say_when_the_maps_were_not_checked(explained):
    """(With the checks, Definitions link them: test_pipeline's trust run.)"""
    html = explained[0].report.read_text()
    assert 'id="trust"' not in html and "did not check the maps" in _definitions(html)
    assert "explain <code>--trust</code> adds" in _definitions(html)


def test_tn_peaks_above_tp_peaks_are_explained_only_where_they_are(explained):
    result, _ = explained
    table = result.table
    assert {"TP", "TN"} <= set(table["type"])
    higher = table.assign(peak_FLAIR=np.where(table["type"] == "TN", 9.0, 1.0))
    html, _ = _rebuilt(explained, table=higher)
    assert "TN peaks above TP peaks." in html
    assert "larger median peak FLAIR saliency (9) than the 1 true positives (1)" in html
    lower = table.assign(peak_FLAIR=np.where(table["type"] == "TN", 1.0, 9.0))
    assert "TN peaks above TP peaks." not in _rebuilt(explained, table=lower)[0]


def test_each_panel_prints_its_maps_own_ranges_and_carries_the_shared_one(explained):
    result, _ = explained
    html = result.report.read_text()
    shared = shared_scale(result.table, CHANNELS)
    for row in result.table.to_dict(orient="records"):
        own = lesion_scales(row, CHANNELS, shared)
        section = html.split(f'id="lesion-{row["id"]}"')[1].split('class="lesion-section"')[0]
        assert f"FLAIR ±{own['FLAIR']:.3g}, T1w ±{own['T1w']:.3g}, each map's own" in section
        assert f"±{shared:.3g}, shared by every domain" in section
        assert 'class="own-scale"' in section and 'class="shared-scale"' in section


PROBE = """
<script>
(function () {
  const errors = window.probeErrors;
  const domainVoxel = %(domain)s, outlineVoxel = %(outline)s;
  function visible(selector) {
    return Array.from(document.querySelectorAll(selector)).filter(function (element) {
      return element.getClientRects().length > 0;
    }).length;
  }
  function pixelAt(nv, voxel) {
    // the middle of the voxel's first quarter, off the crosshair through the voxel's centre
    const gl = nv.gl;
    const frac = nv.vox2frac([voxel[0] - 0.25, voxel[1] - 0.25, voxel[2]]);
    const position = nv.frac2canvasPos(frac);
    const pixel = new Uint8Array(4);
    gl.readPixels(Math.round(position[0]), gl.drawingBufferHeight - Math.round(position[1]),
                  1, 1, gl.RGBA, gl.UNSIGNED_BYTE, pixel);
    return Array.from(pixel.slice(0, 3));
  }
  function smoothgradCalMax(nv) {
    const volumes = JSON.parse(document.getElementById("viewer-data").textContent);
    const keys = volumes[document.getElementById("viewer-lesion").value].volumes.map(
      function (volume) { return volume.key; });
    return ["FLAIR", "T1w"].map(function (name) {
      return nv.volumes[keys.indexOf("smoothgrad-" + name)].cal_max;
    });
  }
  async function probe() {
    const viewer = window.instasalViewer;
    await viewer.ready;
    const nv = viewer.nv;
    const wrap = document.querySelector(".tablewrap");
    const rows = wrap.querySelectorAll("tr");
    const last = rows[rows.length - 1].getBoundingClientRect();
    const heads = wrap.querySelectorAll("th");
    const found = {
      rows: rows.length,
      verticalScroll: wrap.scrollHeight - wrap.clientHeight,
      sidewaysScroll: wrap.scrollWidth - wrap.clientWidth,
      pageSideways: document.documentElement.scrollWidth - window.innerWidth,
      lastRowInside: last.bottom <= wrap.getBoundingClientRect().bottom + 0.5,
      lastHeadInside: heads[heads.length - 1].getBoundingClientRect().right
        <= wrap.getBoundingClientRect().right + 0.5,
      ownShown: [visible("img.own-scale"), visible("img.shared-scale")],
      calMaxOwn: smoothgradCalMax(nv),
    };
    document.querySelector('input[name="scale-choice-panels"][value="shared"]').click();
    found.sharedShown = [visible("img.own-scale"), visible("img.shared-scale")];
    found.calMaxShared = smoothgradCalMax(nv);
    found.viewerChoiceSynced = document.querySelector(
      'input[name="scale-choice-viewer"][value="shared"]').checked;
    nv.setCrosshairColor([0, 0, 0, 0]);
    nv.scene.crosshairPos = nv.vox2frac(domainVoxel);
    const outline = document.getElementById("viewer-outline");
    const seen = {};
    for (const shown of [true, false]) {
      outline.checked = shown;
      outline.dispatchEvent(new Event("change"));
      nv.drawScene();
      seen[shown] = { domain: pixelAt(nv, domainVoxel), ring: pixelAt(nv, outlineVoxel) };
    }
    found.outlined = seen[true];
    found.plain = seen[false];
    return found;
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


def _voxels_in_crop(result: ExplainResult, lesion_id: int) -> tuple[list[int], list[int]]:
    """A voxel of the domain whose neighbour towards -x is outside it, and that neighbour (an
    outline voxel), in the viewer's cropped grid."""
    (labels_path,) = result.out.glob("*_desc-instances_dseg.nii.gz")
    labels = load_nifti(labels_path)
    domain = np.asarray(labels.dataobj) == lesion_id
    box = crop_box(domain, labels.affine)
    start = np.array([s.start for s in box])
    for voxel in np.argwhere(domain):
        if voxel[0] > box[0].start and not domain[voxel[0] - 1, voxel[1], voxel[2]]:
            inside = (voxel - start).tolist()
            return inside, [inside[0] - 1, *inside[1:]]
    raise AssertionError("no domain voxel with an outside neighbour in the crop")


def _tall_table(html: str, copies: int) -> str:
    """The report with its lesion table's rows repeated and given wide numbers (a large run)."""
    head, rest = html.split('<div class="tablewrap">', 1)
    table, tail = rest.split("</table></div>", 1)
    opening, header, *rows = table.split("\n")
    wide = [re.sub(r">(-?\d+\.\d+)<", ">-3.123e-05<", row) for row in rows if row.strip()]
    rows_html = "\n".join([opening, header, *wide * copies])
    return head + '<div class="tablewrap">' + rows_html + "</table></div>" + tail


@pytest.mark.parametrize("width", [1000, 1600])
def test_table_panels_and_viewer_outline_in_chromium(explained, tmp_path, width):
    chromium = _chromium()
    if chromium is None:
        pytest.skip("no chromium binary on PATH (apt-get install chromium) for the browser test")
    result, _ = explained
    html = result.report.read_text()
    first = int(re.findall(r'<option value="(\d+)">', html)[0])
    domain_voxel, outline_voxel = _voxels_in_crop(result, first)
    html = _tall_table(html, copies=8)
    n_rows = len(result.table) * 8 + 1
    head = html.index("<head>") + len("<head>")
    body = html.rindex("</body>")
    probe = PROBE % {"domain": domain_voxel, "outline": outline_voxel}
    page = tmp_path / "probe.html"
    page.write_text(html[:head] + CATCH_ERRORS + html[head:body] + probe + html[body:])
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
    seen = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert seen["errors"] == []
    # the table is part of the page: every row and column shown, no scrolling box of its own
    assert seen["rows"] == n_rows
    assert seen["verticalScroll"] <= 0 and seen["sidewaysScroll"] <= 0
    assert seen["pageSideways"] <= 0
    assert seen["lastRowInside"] and seen["lastHeadInside"]
    # each domain at its own range; one click shows the shared range, in the viewer too
    n_panels = html.count('class="lesion-section"')
    assert seen["ownShown"] == [n_panels, 0] and seen["sharedShown"] == [0, n_panels]
    row = result.table.set_index("id").loc[first].to_dict() | {"id": first}
    shared = shared_scale(result.table, CHANNELS)
    own = list(lesion_scales(row, CHANNELS, shared).values())
    assert min(own) < shared  # so that the switch has something to change
    assert seen["calMaxOwn"] == pytest.approx(own, rel=1e-6)
    assert seen["calMaxShared"] == pytest.approx([shared, shared], rel=1e-6)
    assert seen["viewerChoiceSynced"]
    # the outline colours the voxel beside the domain and leaves the domain's own voxel as it was
    assert seen["outlined"]["domain"] == seen["plain"]["domain"]
    assert seen["outlined"]["ring"] != seen["plain"]["ring"]
    red, green, blue = seen["outlined"]["ring"]
    assert green > red + 60 and green > blue + 60
