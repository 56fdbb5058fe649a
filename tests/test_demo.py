"""`jaxface demo` at its smoke size, end to end, and its report.html checked in headless Chromium: the page
loads nothing from anywhere (every image a data: URI), every image decodes, and a screenshot is saved."""
import json
import re
import shutil

import numpy as np

import pytest

from jaxface import demo
from jaxface.report import html as report_html


@pytest.fixture(scope="module")
def demo_workdir(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("demo")
    result = demo.run(workdir, size="smoke")
    return workdir, result


@pytest.mark.slow
def test_the_smoke_demo_runs_every_stage_and_writes_one_self_contained_report(demo_workdir):
    workdir, result = demo_workdir
    record = json.loads((workdir / demo.DEMO_FILE).read_text())
    assert [s["key"] for s in record["stages"]] == ["data", "attributes", "judge", "cgmm", "generate", "detect",
                                                    "report"]
    assert all(s["seconds"] >= 0 for s in record["stages"])
    sets = {(", ".join(g["attributes"]), g["model"], g["mode"]) for g in record["generated"]}
    assert len(sets) == (len(demo.SINGLE_SETS) + len(demo.TRIPLE_SETS)) * len(demo.TARGETS)
    for g in record["generated"]:
        assert (workdir / g["directory"] / "grid.png").is_file()
        assert (workdir / g["directory"] / "real.png").is_file() == g["real"]
    assert any(g["real"] for g in record["generated"])  # real faces with the set's attributes, shown beside it
    # The judge (a ResNet that no objective used) scored every set; KID where real faces had the attributes.
    assert all(0 <= g["summary"]["judge_hit_rate"] <= 1 for g in record["generated"])
    assert any(g["summary"]["kid"] is not None and np.isfinite(g["summary"]["kid"]) for g in record["generated"])
    # Every generated face became a fake of the detector's data; the held-out ones are its test row.
    fakes = list((workdir / "detect" / demo.GENERATED_FAKES).glob("*.png"))
    assert len(fakes) == len(record["generated"]) * demo.OVERRIDES["smoke"]["num_images"]
    metrics = json.loads((workdir / "detect" / "eval" / "metrics.json").read_text())
    caught = record["generated_caught"]
    assert caught["n"] == metrics["per_generator"][demo.GENERATED_FAKES]["n"] > 0
    assert 0 <= caught["fake"] <= caught["n"]
    page = result["report"].read_text()
    assert result["report"] == workdir / report_html.REPORT_FILE
    # Self-contained: no address outside the page, every image inline.
    assert not re.search(r"""(src|href)=["']?(https?:|//|file:)""", page)
    sources = re.findall(r"""<img[^>]*\ssrc="([^"]*)\"""", page)
    assert len(sources) >= 10 and all(s.startswith("data:image/png;base64,") for s in sources)
    for expected in ("Attribute classifier", "Generated faces", "Deepfake detector", "Robustness",
                     "(its Table 3)", "82.0%", "jaxface serve --workdir=", "Male, Black Hair, Smiling"):
        assert expected in page, expected
    assert "judge hit rate" in page and "no independent judge" not in page


@pytest.mark.slow
def test_the_report_in_headless_chromium(demo_workdir, tmp_path):
    from test_serve_e2e import _chromium

    chromium = _chromium()
    if chromium is None:
        pytest.skip("no chromium on PATH (`make browser` installs Debian's chromium where apt-get can run)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[serve]')")
    report = demo_workdir[0] / report_html.REPORT_FILE
    mailed = tmp_path / "mailed_alone.html"  # the file on its own, away from the workdir it came from
    shutil.copy(report, mailed)
    screenshot = tmp_path / "report.png"
    requests, failed = [], []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("request", lambda r: requests.append(r.url))
            page.on("requestfailed", lambda r: failed.append(r.url))
            page.goto(mailed.as_uri(), wait_until="load")
            images = page.evaluate("Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.alt])")
            assert len(images) >= 10
            assert [alt for complete, width, alt in images if not (complete and width > 0)] == []
            assert page.inner_text("h1") == "jaxface demo report"
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    assert failed == []
    assert [u for u in requests if not u.startswith("data:") and u != mailed.as_uri()] == []
    assert screenshot.stat().st_size > 50_000


@pytest.mark.slow
def test_a_partial_workdir_reports_what_is_there(demo_workdir, tmp_path):
    partial = tmp_path / "partial"
    shutil.copytree(demo_workdir[0] / "attributes", partial / "attributes")
    path = report_html.write_report(partial)
    page = path.read_text()
    assert "Attribute classifier" in page and "Deepfake detector" not in page


def test_an_empty_workdir_is_one_clear_error(tmp_path):
    with pytest.raises(report_html.ReportError, match="nothing to report in .*jaxface demo"):
        report_html.write_report(tmp_path)
    assert not (tmp_path / report_html.REPORT_FILE).exists()


def test_an_unknown_size_names_the_valid_ones(tmp_path):
    with pytest.raises(demo.DemoError, match="valid sizes: full, quick, smoke"):
        demo.run(tmp_path, size="huge")
    assert list(tmp_path.iterdir()) == []
