"""`make demo`: the main jobs on the embedded synthetic faces, end to end, ending in one report.html.

Stages (each prints one line saying what it does, then how long it took; WORKDIR/demo.json keeps them):
1. data preview;
2. the attribute classifier (VGG-Face), trained and evaluated;
3. the judge: a second attribute classifier of another architecture and seed, which only scores
   generated faces (no generation objective uses it);
4. the cGMM and joint model fit;
5. faces generated for single and three-attribute sets, both target modes, the first report's cGMM beside
   the joint model, next to real faces with those attributes (judge hit rate, KID, diversity), plus one
   reconstruction;
6. the deepfake detector trained on synthfaces vs the synthetic generators and the faces stage 5 generated
   (a generator named demo_generated, split by file like the rest), evaluated with the robustness suite:
   its demo_generated row says how often held-out generated faces are caught;
7. WORKDIR/report.html (jaxface.report).

Sizes: "full" (the figures of the README, within 12 minutes on 2 cores), "quick" (a short run),
"smoke" (tiny models, seconds of training: what the tests run).
"""
from __future__ import annotations

import contextlib
import datetime
import pathlib
import platform
import sys
import time

import numpy as np

from jaxface import config as config_lib
from jaxface import files
from jaxface.report.html import duration

SIZES = ("full", "quick", "smoke")
DEMO_FILE = "demo.json"
GENERATED_FAKES = "demo_generated"  # the detector's name for the faces this demo generated
ATTRIBUTES_CONFIG = "configs/attributes/synthfaces_tiny.py"
JUDGE_CONFIG = "configs/attributes/synthfaces_judge.py"
GENERATE_CONFIG = "configs/generate/synthfaces_tiny.py"
DETECT_CONFIG = "configs/detect/synthfakes_mobilenet.py"

SINGLE_SETS = ("Blond Hair", "Eyeglasses")
TRIPLE_SETS = ("Male,Black Hair,Smiling", "Bald,Beard,Sunglasses")
# (target model, mode) per set: the joint model (the best targets measured) and the first report's
# per-attribute cGMM (its eq. 3), as means and samples, and the joint model editing real held-out faces
# (the lowest KID measured; README "Face generation").
TARGETS = (("joint", "mean"), ("joint", "sample"), ("joint", "edit"), ("cgmm", "mean"), ("cgmm", "sample"))

_FEW_STEPS = {"eval_every_steps": 0, "data.num_test": 256, "data.num_val": 128}
OVERRIDES = {
    # Everything within 12 minutes on 2 cores: the attribute config as it is (5 minutes), the judge for 500
    # steps, the detector for 800 of its config's 2,000 steps, and no mid-run validation.
    "full": {"attributes": {"eval_every_steps": 0}, "judge": {"num_train_steps": 500}, "generate": {},
             "detect": {"num_train_steps": 800, "eval_every_steps": 0, "checkpoint_every_steps": 400,
                        "evaluate.robustness_max_examples": 300},
             "num_images": 6},
    "quick": {
        "attributes": {"num_train_steps": 60, "checkpoint_every_steps": 60, "data.num_train": 1024, **_FEW_STEPS},
        "judge": {"num_train_steps": 60, "checkpoint_every_steps": 60, "data.num_train": 1024, **_FEW_STEPS},
        "generate": {"invert.steps": 30, "generate.sgd_steps": 300},
        "detect": {"num_train_steps": 60, "checkpoint_every_steps": 60, "data.num_train": 1024,
                   "evaluate.robustness_max_examples": 128, **_FEW_STEPS},
        "num_images": 4,
    },
    "smoke": {
        "attributes": {"model.width": 0.0625, "model.input_size": 32, "data.image_size": 32, "model.norm": "none",
                       "data.num_train": 256, "data.num_val": 32, "data.num_test": 64, "batch_size": 16,
                       "eval_batch_size": 32, "num_train_steps": 3, "eval_every_steps": 0,
                       "checkpoint_every_steps": 3, "log_every_steps": 3, "optimizer.warmup_steps": 0},
        "judge": {"model.width": 0.125, "model.input_size": 32, "data.image_size": 32, "data.num_train": 256,
                  "data.num_val": 32, "data.num_test": 64, "batch_size": 16, "eval_batch_size": 32,
                  "num_train_steps": 3, "checkpoint_every_steps": 3, "log_every_steps": 3,
                  "optimizer.warmup_steps": 0},
        "generate": {"generate.batch_size": 32, "generate.sgd_steps": 50, "generate.sgd_batch_size": 64,
                     "generate.min_count": 30, "generate.layer": "conv5_3", "invert.steps": 3,
                     "invert.loop": "python", "invert.max_batch": 8, "invert.jitter": 1},
        # The closed-form spectrum detector: the same evaluation and report in seconds instead of minutes.
        "detect": {"model.name": "spectrum", "model.input_size": 32, "data.image_size": 32, "data.num_train": 96,
                   "data.num_val": 32, "data.num_test": 64, "batch_size": 16, "eval_batch_size": 32,
                   "num_train_steps": 1, "data.augment.enabled": False, "evaluate.robustness_max_examples": 24,
                   "evaluate.robustness_suite": {"gaussian_blur": [1.0], "jpeg": [50]}},
        "num_images": 2,
    },
}


class DemoError(ValueError):
    """A demo size that does not exist."""


class _Stages:
    """Prints one line as each stage starts and one as it ends, and keeps WORKDIR/demo.json current, so
    a run stopped half-way still says what it finished."""

    def __init__(self, workdir: pathlib.Path, record: dict, total: int):
        self.workdir, self.record, self.total = workdir, record, total
        self.record.setdefault("stages", [])

    @contextlib.contextmanager
    def stage(self, key: str, title: str, what: str):
        number = len(self.record["stages"]) + 1
        print(f"\n[{number}/{self.total}] {title}: {what}", flush=True)
        start = time.perf_counter()
        entry = {"key": key, "title": title, "what": what}
        yield entry
        entry["seconds"] = round(time.perf_counter() - start, 1)
        self.record["stages"].append(entry)
        self.save()
        print(f"[{number}/{self.total}] {title}: done in {duration(entry['seconds'])}", flush=True)

    def save(self) -> None:
        files.write_json(self.workdir / DEMO_FILE, self.record)


def versions() -> dict:
    """What the run used: Python, the libraries, the devices and the convolution backend."""
    import importlib.metadata as md

    import jax

    from jaxface.bench import common

    out = {"python": platform.python_version(), "platform": platform.platform()}
    for package in ("jaxface", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "grain"):
        try:
            out[package] = md.version(package)
        except md.PackageNotFoundError:
            out[package] = "not installed"
    env = common.environment()
    out.update(cpu=env["cpu_model"], cores=env["cpu_count"], backend=env["backend"], devices=env["devices"],
               convolution=env["convolution_backend"])
    return out


def _generate_sets(ctx, size: str, outputs: list, record: dict, judge=None) -> list[dict]:
    """Every (set, model, mode) in one loaded context, each set beside real faces with its attributes."""
    import jax
    from tqdm import tqdm

    from jaxface.data import report as data_report
    from jaxface.generate import command as generate
    from jaxface.generate.targets import resolve_set

    num = OVERRIDES[size]["num_images"]
    classifier_data = ctx.clf.setup.config.data
    jobs = [(s, m, mode) for s in SINGLE_SETS + TRIPLE_SETS for m, mode in TARGETS]
    results, real_grids = [], {}
    with jax.set_mesh(ctx.clf.setup.mesh):
        # A bar on a terminal; in a log, only the one line per set that tqdm.write prints.
        bar = tqdm(jobs, desc="generate", unit="set", dynamic_ncols=True, disable=not sys.stderr.isatty())
        for attributes, model, mode in bar:
            bar.set_postfix_str(f"{attributes} ({model}, {mode})")
            # Inversion steps come from the fitted config (the size's generate overrides).
            result = generate.generate_set(ctx, attributes, num, mode, model, "invert", None, 0, None, None, False,
                                           judge)
            names, indices = resolve_set(ctx.store, attributes)
            if attributes not in real_grids:  # one set's real faces, beside each of its target models and modes
                real, _ = data_report.real_faces_with(classifier_data, indices, num)
                real_grids[attributes] = files.image_grid(real, cols=min(num, 8)) if len(real) else None
            real = real_grids[attributes]
            if real is not None:
                outputs.append(files.save_image(result["directory"] / "real.png", real))
            outputs += [p for p in result["outputs"] if str(p).endswith(("grid.png", "summary.json"))]
            tqdm.write(result["text"])
            results.append(dict(attributes=names, model=model, mode=mode,
                                directory=str(result["directory"].relative_to(ctx.workdir.parent)),
                                real=real is not None, summary=result["summary"]))
    record["generated"] = results
    return results


def _reconstruct(ctx, outputs: list, record: dict) -> None:
    """A held-out real face (the classifier's test split) inverted from its own activations."""
    import jax

    from jaxface.data import pipeline
    from jaxface.generate import reconstruct as reconstruct_lib

    test = pipeline.build_source(ctx.clf.setup.config.data, "test")
    face = np.asarray(test[0]["image"], np.uint8)
    input_path = files.save_image(ctx.workdir / "reconstruct_input.png", face)
    with jax.set_mesh(ctx.clf.setup.mesh):
        result = reconstruct_lib.reconstruct(ctx, str(input_path), 1, None, 0, "reconstruction", False)
    print(result["text"])
    outputs += [p for p in result["outputs"] if str(p).endswith("reconstruction.png")]
    record["reconstruction"] = dict(
        directory=str(result["directory"].relative_to(ctx.workdir.parent)),
        feature_error=result["records"][0]["feature_error"],
        head_agreement=result["records"][0]["head_agreement"])


def _train_and_evaluate(cfg, directory) -> tuple:
    """`jaxface train` then `jaxface evaluate` on the test split; -> (the loaded model's setup, evaluation)."""
    from jaxface.evaluate import evaluators
    from jaxface.train import trainer

    files.write_text(directory / "config.json", cfg.to_json_best_effort(indent=2))
    if cfg.model.name == "spectrum":  # the closed-form detector baseline (seconds): what the tests run
        from jaxface.train import spectrum_fit

        spectrum_fit.fit_spectrum(cfg, directory)
    else:
        trainer.train(cfg, directory)
    setup = trainer.load_for_inference(directory, cfg)
    return setup, evaluators.evaluate_split(setup, "test")


def run(workdir, size: str = "full") -> dict:
    """The whole demo into WORKDIR; -> dict(outputs, attributes, detection, report)."""
    if size not in SIZES:
        raise DemoError(f"unknown demo size {size!r}; valid sizes: {', '.join(SIZES)}")
    from jaxface.cgmm import fit
    from jaxface.data import report as data_report
    from jaxface.generate import judge as judge_lib
    from jaxface.generate import targets as targets_lib
    from jaxface.report import html as report_html

    workdir = files.as_path(workdir)
    t0 = time.perf_counter()
    outputs: list = []
    sizes = OVERRIDES[size]
    cfg = config_lib.load_config(ATTRIBUTES_CONFIG, sizes["attributes"] or None)
    judge_cfg = config_lib.load_config(JUDGE_CONFIG, sizes["judge"] or None)
    gen_cfg = config_lib.load_config(GENERATE_CONFIG, sizes["generate"] or None)
    det_cfg = config_lib.load_config(DETECT_CONFIG, sizes["detect"] or None)
    attr_dir, judge_dir, det_dir = workdir / "attributes", workdir / "judge", workdir / "detect"
    record = {"size": size, "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
              "versions": versions(),
              "configs": {"attributes": ATTRIBUTES_CONFIG, "judge": JUDGE_CONFIG, "generate": GENERATE_CONFIG,
                          "detect": DETECT_CONFIG},
              "overrides": {k: sizes[k] for k in ("attributes", "judge", "generate", "detect")}}
    stages = _Stages(workdir, record, total=7)

    with stages.stage("data", "data", "render the synthetic faces and preview them (jaxface data)"):
        data = data_report.attribute_report(cfg, attr_dir)
        outputs += data["outputs"]

    with stages.stage("attributes", "attribute classifier",
                      f"train VGG-Face width {cfg.model.width} at {cfg.model.input_size} px for "
                      f"{cfg.num_train_steps} steps, then evaluate it (jaxface train, jaxface evaluate)"):
        _, ev = _train_and_evaluate(cfg, attr_dir)
        print(ev["text"])
        outputs += ev["outputs"]

    with stages.stage("judge", "judge",
                      f"train a second attribute classifier, {judge_cfg.model.name} width {judge_cfg.model.width}, seed "
                      f"{judge_cfg.seed}, for {judge_cfg.num_train_steps} steps: it scores the generated faces and "
                      "no generation objective uses it (jaxface train, jaxface evaluate)"):
        judge_setup, judged = _train_and_evaluate(judge_cfg, judge_dir)
        print(f"judge: mean per-attribute test accuracy {judged['metrics']['mean_accuracy']:.3f}")
        record["judge"] = {"mean_accuracy": judged["metrics"]["mean_accuracy"], "model": judge_cfg.model.name}

    with stages.stage("cgmm", "cGMM and joint model",
                      f"fit per-attribute Gaussians of {gen_cfg.generate.layer} and the joint model (jaxface fit-cgmm)"):
        fitted = fit.fit_cgmm_command(gen_cfg, attr_dir)
        print(fitted["text"])
        outputs += fitted["outputs"]

    with stages.stage("generate", "generation",
                      f"{len(SINGLE_SETS)} single and {len(TRIPLE_SETS)} three-attribute sets x {len(TARGETS)} "
                      f"target models and modes, {sizes['num_images']} faces each, and one reconstruction "
                      "(jaxface generate)"):
        ctx = targets_lib.load_context(attr_dir)
        judge = judge_lib.judge_from_setup(judge_setup, ctx.store.schema)
        generated = _generate_sets(ctx, size, outputs, record, judge)
        _reconstruct(ctx, outputs, record)
        del ctx

    fakes_dir = workdir / "detect" / GENERATED_FAKES
    for g in generated:  # the generated faces, gathered as one folder of fakes (not the grids or real faces)
        for image in sorted((workdir / g["directory"] / "images").glob("*.png")):
            files.write_bytes(fakes_dir / f"{pathlib.PurePath(g['directory']).name}_{image.name}", image.read_bytes())
    det_cfg.data.fake_folders = {GENERATED_FAKES: str(fakes_dir)}
    with stages.stage("detect", "deepfake detector",
                      f"train {det_cfg.model.name} at {det_cfg.model.input_size} px on synthfaces vs "
                      f"{', '.join(det_cfg.data.generators)} and the faces generated above (generator "
                      f"{GENERATED_FAKES})"
                      + (" in closed form" if det_cfg.model.name == "spectrum" else f" for {det_cfg.num_train_steps} steps")
                      + ", then evaluate it with the robustness suite (jaxface train, jaxface evaluate)"):
        _, det = _train_and_evaluate(det_cfg, det_dir)
        print(det["text"])
        outputs += det["outputs"]
        held_out = det["metrics"].get("per_generator", {}).get(GENERATED_FAKES)
        if held_out:
            record["generated_caught"] = dict(n=held_out["n"], rate=held_out["accuracy"],
                                              fake=int(round(held_out["accuracy"] * held_out["n"])),
                                              auc_vs_real=held_out.get("auc_vs_real"))
            print(f"held-out generated faces called fake: {record['generated_caught']['fake']} of {held_out['n']}")

    serve = f"jaxface serve --workdir={det_dir} --generator_workdir={attr_dir}"
    record["serve_command"] = serve
    with stages.stage("report", "report", "write one self-contained report.html"):
        record["total_seconds"] = round(time.perf_counter() - t0, 1)
        stages.save()
        report_path = report_html.write_report(workdir)

    record["total_seconds"] = round(time.perf_counter() - t0, 1)
    stages.save()
    print(f"\n=== done in {duration(record['total_seconds'])} ===")
    print(f"  the report, one file with every figure (open it in a browser): {report_path}")
    for what, path in (("data preview", attr_dir / "data"), ("classifier evaluation", attr_dir / "eval"),
                       ("generated faces", attr_dir / "generate"), ("detector evaluation", det_dir / "eval"),
                       ("checkpoints", f"{attr_dir / 'checkpoints'}, {det_dir / 'checkpoints'}"),
                       ("stage times and versions", workdir / DEMO_FILE)):
        print(f"  {what}: {path}")
    print(f"  serve the detector and the generator: {serve}")
    return {"outputs": outputs, "attributes": ev["metrics"], "detection": det["metrics"], "report": report_path}
