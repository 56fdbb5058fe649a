r"""Retrains the detector shipped inside the package from its config and seed, and checks the result.

    make reproduce-detector            # or:
    python -m jaxface.experiments.reproduce --data_root=../shared/data/realfake --workdir=runs/reproduce

The shipped folder (jaxface/assets/detectors/faces_wild) holds the config it was trained with
(config.json), the weights (model.safetensors) and their SHA-256 (exported.json). This trains that
config on DATA_ROOT into WORKDIR (resuming a run that was stopped), exports it, and compares: the
weights' SHA-256 and the logits on a few images (the bundled test portrait and the first real and fake
photos of DATA_ROOT). Exit status 0 when the weights are identical, 1 otherwise (the logits are printed
either way: a different CPU, XLA version or thread count can change the last bits of a float sum).
About 10 minutes on 2 CPU cores.
"""
from __future__ import annotations

import hashlib
import json
import pathlib
import sys

import ml_collections

from jaxface import files
from jaxface.evaluate import predict
from jaxface.train import trainer

PORTRAIT = pathlib.Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "mtcnn" / "astronaut.jpg"


def reproduce(data_root, workdir) -> dict:
    shipped = predict.shipped_detector()
    config = ml_collections.ConfigDict(json.loads((shipped / "config.json").read_text()))
    config.data.root = str(data_root)
    workdir = pathlib.Path(workdir)
    trainer.train(config, workdir, on_start=lambda: files.write_text(workdir / "config.json",
                                                                     config.to_json(indent=2)))
    exported = workdir / "exported"
    trainer.export_model(workdir, exported)
    sha = hashlib.sha256((exported / trainer.EXPORTED_WEIGHTS).read_bytes()).hexdigest()
    expected = json.loads((shipped / trainer.EXPORTED_META).read_text())["sha256"]
    images = [str(p) for p in (PORTRAIT,) if p.exists()]
    for sub in ("real", "fake"):
        found = sorted((pathlib.Path(data_root) / sub).glob("*"))[:2]
        images += [str(p) for p in found]
    logits = {}
    for name, folder in (("shipped", shipped), ("retrained", exported)):
        records = predict.predict_command(trainer.load_for_inference(folder), images)["records"]
        logits[name] = [r.get("logit") for r in records]
    return {"identical_weights": sha == expected, "sha256": sha, "expected_sha256": expected,
            "images": images, "logits": logits}


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_root", default="../shared/data/realfake")
    parser.add_argument("--workdir", default="runs/reproduce_faces_wild")
    args = parser.parse_args(argv)
    if not (pathlib.Path(args.data_root) / "real").is_dir():
        print(f"error: --data_root={args.data_root} has no real/ folder (the shipped detector was trained on "
              "../shared/data/realfake)", file=sys.stderr)
        return 2
    result = reproduce(args.data_root, args.workdir)
    for i, image in enumerate(result["images"]):
        print(f"{image}: shipped {result['logits']['shipped'][i]!r} retrained {result['logits']['retrained'][i]!r}")
    print("weights identical to the shipped ones" if result["identical_weights"] else
          f"weights differ: sha256 {result['sha256']} != shipped {result['expected_sha256']}")
    return 0 if result["identical_weights"] else 1


if __name__ == "__main__":
    sys.exit(main())
