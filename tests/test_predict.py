"""`jaxface predict`: files and folders, corrupt and missing files, CSV output, the pipeline's resize."""
import csv
import json

import numpy as np
import pytest

from jaxface import config as config_lib
from jaxface import files
from jaxface.data import pipeline
from jaxface.data.synthfakes import SynthRealFake
from jaxface.evaluate import detection, metrics, predict
from jaxface.train import spectrum_fit, trainer

pytestmark = pytest.mark.slow  # fits a detector and runs the CLI in a subprocess


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A closed-form spectrum detector (seconds to fit) on 32 px synthetic faces."""
    wd = tmp_path_factory.mktemp("detector")
    cfg = config_lib.load_config("configs/detect/synthfakes_mobilenet.py", {
        "model.name": "spectrum", "model.width": 1.0, "model.depth": 1.0, "model.input_size": 32,
        "model.dropout": 0.0, "data.image_size": 32, "data.num_train": 96, "batch_size": 16,
        "eval_batch_size": 16, "num_train_steps": 1, "data.augment.enabled": False,
    })
    spectrum_fit.fit_spectrum(cfg, wd)
    return wd


@pytest.fixture(scope="module")
def setup(workdir):
    return trainer.load_for_inference(workdir)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    data = SynthRealFake(6, resolution=48, seed=5)
    for i in range(4):
        files.save_image(root / "folder" / ("nested" if i % 2 else "") / f"face{i}.png", data[i]["image"])
    files.save_image(root / "single.png", data[4]["image"])
    (root / "folder" / "notes.txt").write_text("not an image, and not an image extension: skipped")
    (root / "folder" / ".hidden.png").write_bytes(b"hidden files are skipped")
    (root / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (root / "empty").mkdir()
    return root


def test_predict_files_folders_and_unreadable_inputs(setup, images, tmp_path):
    paths = [images / "single.png", images / "corrupt.jpg", images / "folder", images / "missing.png",
             images / "empty"]
    out_csv = tmp_path / "out" / "predictions.csv"
    result = predict.predict_command(setup, [str(p) for p in paths], output_csv=out_csv, batch_size=3)
    records = result["records"]
    assert [r["path"] for r in records] == [
        str(images / "single.png"), str(images / "corrupt.jpg"),
        str(images / "folder" / "face0.png"), str(images / "folder" / "face2.png"),
        str(images / "folder" / "nested" / "face1.png"), str(images / "folder" / "nested" / "face3.png"),
        str(images / "missing.png"), str(images / "empty"),
    ]
    good = [r for r in records if r["error"] is None]
    bad = [r for r in records if r["error"] is not None]
    assert len(good) == 5 and len(bad) == 3
    for r in good:
        assert r["label"] in ("real", "fake") and 0.0 <= r["p_fake"] <= 1.0
        assert r["label"] == ("fake" if r["p_fake"] >= result["threshold"] else "real")
    for r in bad:
        assert r["label"] is None and r["p_fake"] is None and r["error"]
    assert "no such file" in bad[1]["error"] and "no image files" in bad[2]["error"]
    json.dumps(records)  # the CLI prints each record as one JSON line

    rows = list(csv.DictReader(open(out_csv)))
    assert list(rows[0]) == ["path", "label", "p_fake", "error"]
    assert len(rows) == len(records)
    assert rows[1]["label"] == "" and rows[1]["p_fake"] == "" and rows[1]["error"]
    assert float(rows[0]["p_fake"]) == pytest.approx(records[0]["p_fake"], abs=1e-6)


def test_predict_matches_the_evaluation_pipeline(setup, images):
    path = images / "single.png"
    record = predict.predict_command(setup, [str(path)])["records"][0]
    image = pipeline.DecodeAndResize(32).map({"path": str(path)})["image"]
    logit = setup.model(image[None].astype(np.float32) / 255.0, train=False)[0, 0]
    assert record["p_fake"] == pytest.approx(float(metrics.sigmoid(float(logit))), abs=1e-5)


def test_predict_uses_the_calibrated_threshold(workdir, setup, images):
    step = setup.step
    files.write_json(workdir / detection.CALIBRATION_FILE,
                     {"threshold_logit": 50.0, "threshold": 1.0, "method": "balanced_accuracy", "step": step})
    try:
        result = predict.predict_command(setup, [str(images / "folder")])
        assert all(r["label"] == "real" for r in result["records"])  # nothing reaches p >= 1 - 2e-22
        assert "calibrated" in result["rule"]
        files.write_json(workdir / detection.CALIBRATION_FILE, {"threshold_logit": 50.0, "step": step + 1})
        assert "0.5" in predict.predict_command(setup, [str(images / "single.png")])["rule"]  # stale
    finally:
        (workdir / detection.CALIBRATION_FILE).unlink()


def test_predict_request_mistakes(setup, tmp_path):
    with pytest.raises(predict.PredictError, match="at least one image"):
        predict.predict_command(setup, [])
    with pytest.raises(ValueError, match="config.json"):
        trainer.load_for_inference(tmp_path)


def test_predict_command_exit_status_and_output_overwrite(workdir, images, tmp_path):
    import pathlib
    import subprocess
    import sys

    repo = pathlib.Path(__file__).resolve().parents[1]

    def run(*args):
        return subprocess.run([sys.executable, "-m", "jaxface", "predict", f"--workdir={workdir}", *args],
                              cwd=repo, capture_output=True, text=True, timeout=300)

    out_csv = tmp_path / "out.csv"
    clean = run(str(images / "single.png"), f"--output={out_csv}")
    assert clean.returncode == 0, clean.stderr
    written = out_csv.read_text()
    refused = run(str(images / "single.png"), f"--output={out_csv}")
    assert refused.returncode == 2 and "pass --overwrite" in refused.stderr
    assert out_csv.read_text() == written
    partial = run(str(images / "single.png"), str(images / "corrupt.jpg"), f"--output={out_csv}", "--overwrite")
    assert partial.returncode == 3, partial.stderr
    assert "1 of 2 inputs could not be classified" in partial.stderr
    assert len([json.loads(line) for line in partial.stdout.splitlines()]) == 2
    assert len(out_csv.read_text().splitlines()) == 3  # records still written


def test_faces_align_scores_each_face_and_says_when_there_is_none(setup, tmp_path):
    from PIL import Image

    astronaut = np.asarray(Image.open("tests/fixtures/mtcnn/astronaut.jpg").convert("RGB"))
    two = np.concatenate([astronaut, astronaut[:, ::-1]], axis=1)
    files.save_image(tmp_path / "two.png", two)
    files.save_image(tmp_path / "blank.png", np.full((120, 160, 3), 128, np.uint8))
    out_csv = tmp_path / "faces.csv"
    result = predict.predict_command(setup, [str(tmp_path / "two.png"), str(tmp_path / "blank.png")],
                                     output_csv=out_csv, faces="align")
    two_faces, blank = result["records"]
    assert len(two_faces["faces"]) == 2
    assert two_faces["p_fake"] == max(f["p_fake"] for f in two_faces["faces"])
    centres = sorted((f["box"][0] + f["box"][2]) / 2 for f in two_faces["faces"])
    assert centres[0] < 300 < centres[1]  # one face in each half
    assert blank["label"] == "no face found" and blank["p_fake"] is None and blank["faces"] == []
    assert blank["error"] is None
    rows = list(csv.reader(open(out_csv)))
    assert rows[0] == list(predict.CSV_FACE_COLUMNS) and [r[1] for r in rows[1:]] == ["", "0", "1", ""]
    whole = predict.predict_command(setup, [str(tmp_path / "two.png")], faces="off")["records"][0]
    assert "faces" not in whole and whole["p_fake"] is not None
    with pytest.raises(ValueError, match="valid: off, align"):
        predict.predict_command(setup, [str(tmp_path / "two.png")], faces="crop")


def test_evaluate_a_folder_with_faces_aligned(setup, tmp_path):
    from PIL import Image

    astronaut = Image.open("tests/fixtures/mtcnn/astronaut.jpg").convert("RGB")
    files.save_image(tmp_path / "data" / "real" / "a.png", np.asarray(astronaut))
    files.save_image(tmp_path / "data" / "real" / "blank.png", np.full((90, 90, 3), 128, np.uint8))
    files.save_image(tmp_path / "data" / "fake" / "b.png", np.asarray(astronaut.resize((240, 240)))[:, ::-1])
    result = predict.evaluate_folder_with_faces(setup, tmp_path / "data", tmp_path / "out")
    m = result["metrics"]
    assert m["num_examples"] == 2 and m["num_no_face"] == 1 and m["faces"] == "align"
    rows = (tmp_path / "out" / "predictions.csv").read_text().splitlines()
    assert len(rows) == 3 and "a.png" in rows[1]


def test_an_exported_model_predicts_like_its_workdir(setup, workdir, images, tmp_path):
    written = trainer.export_model(workdir, tmp_path / "exported")
    assert {p.name for p in written} >= {"config.json", "model.safetensors", "exported.json"}
    exported = trainer.load_for_inference(tmp_path / "exported")
    assert exported.step == setup.step
    paths = [str(images / "single.png"), str(images / "folder")]
    a = predict.predict_command(setup, paths)["records"]
    b = predict.predict_command(exported, paths)["records"]
    assert [r["logit"] for r in a] == [r["logit"] for r in b]
    (tmp_path / "exported" / "model.safetensors").write_bytes(b"truncated")
    with pytest.raises(Exception, match="cannot read the exported model"):
        trainer.load_for_inference(tmp_path / "exported")


def test_predict_without_a_workdir_uses_the_shipped_detector(tmp_path):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "jaxface", "predict", "tests/fixtures/mtcnn/astronaut.jpg"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "using the detector shipped with jaxface, faces_wild" in done.stderr
    record = json.loads(done.stdout.splitlines()[0])
    assert record["label"] in ("real", "fake") and 0 <= record["p_fake"] <= 1
