"""`make demo`: the main jobs on the embedded synthetic faces, end to end, with the paths printed.

1. data preview; 2. attribute classifier (train + evaluate); 3. cGMM fit and face generation;
4. deepfake detector on synthfaces vs the synthetic generators (train + evaluate).
"""
from __future__ import annotations

import pathlib
import time

from jaxface import config as config_lib
from jaxface import files


def _banner(text: str) -> None:
    print(f"\n=== {text} ===", flush=True)


QUICK_ATTRIBUTES = {"num_train_steps": 30, "eval_every_steps": 0, "checkpoint_every_steps": 30,
                    "data.num_train": 512, "data.num_test": 256, "data.num_val": 128}
QUICK_DETECT = {"num_train_steps": 30, "eval_every_steps": 0, "checkpoint_every_steps": 30,
                "data.num_train": 512, "data.num_test": 256, "data.num_val": 128}
DEMO_SETS = ("Male,Black Hair,Smiling", "Blond Hair", "Eyeglasses")


def run(workdir: pathlib.Path, quick: bool = False) -> dict:
    from jaxface.cgmm import fit
    from jaxface.data import report
    from jaxface.evaluate import evaluators
    from jaxface.generate import command as generate
    from jaxface.train import trainer

    workdir = files.as_path(workdir)
    t0 = time.perf_counter()
    outputs: list = []

    cfg = config_lib.load_config("configs/attributes/synthfaces_tiny.py", QUICK_ATTRIBUTES if quick else None)
    attr_dir = workdir / "attributes"
    _banner("1/4 data: synthetic faces (jaxface data)")
    data = report.attribute_report(cfg, attr_dir)
    print(data["text"])
    outputs += data["outputs"]

    _banner(f"2/4 attributes: VGG-Face width {cfg.model.width} at {cfg.model.input_size} px, "
            f"{cfg.num_train_steps} steps (jaxface train, jaxface evaluate)")
    files.write_text(attr_dir / "config.json", cfg.to_json_best_effort(indent=2))
    trainer.train(cfg, attr_dir)
    ev = evaluators.evaluate_split(trainer.load_for_inference(attr_dir, cfg), "test")
    print(ev["text"])
    outputs += ev["outputs"]

    _banner("3/4 generation: cGMM fit and feature inversion (jaxface fit-cgmm, jaxface generate)")
    gen_overrides = {"invert.steps": 20} if quick else None
    gen_cfg = config_lib.load_config("configs/generate/synthfaces_tiny.py", gen_overrides)
    fitted = fit.fit_cgmm_command(gen_cfg, attr_dir)
    print(fitted["text"])
    outputs += fitted["outputs"]
    for attributes in DEMO_SETS:
        result = generate.generate_command(attr_dir, attributes=attributes, num=4 if quick else 8,
                                           model="joint", verbose=False)
        print(result["text"])
        outputs += [p for p in result["outputs"] if str(p).endswith(("grid.png", "results.json"))]

    _banner("4/4 deepfake detection: MobileNetV3 on synthfaces vs synthetic generators")
    det_cfg = config_lib.load_config("configs/detect/synthfakes_mobilenet.py", QUICK_DETECT if quick else None)
    det_dir = workdir / "detect"
    files.write_text(det_dir / "config.json", det_cfg.to_json_best_effort(indent=2))
    trainer.train(det_cfg, det_dir)
    det = evaluators.evaluate_split(trainer.load_for_inference(det_dir, det_cfg), "test")
    print(det["text"])
    outputs += det["outputs"]

    _banner(f"done in {time.perf_counter() - t0:.0f} s; results")
    for p in outputs + [attr_dir / "checkpoints", det_dir / "checkpoints"]:
        print(f"  {p}")
    print(f"\nserve the detector and the generator: jaxface serve --workdir={det_dir} --generator_workdir={attr_dir}")
    return {"outputs": outputs, "attributes": ev["metrics"], "detection": det["metrics"]}
