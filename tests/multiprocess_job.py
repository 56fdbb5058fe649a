"""One run of the multi-process equivalence check of tests/test_multiprocess.py, in whatever topology it
is launched in: 1 process x 8 devices (`python tests/multiprocess_job.py OUT PHASE`) or 2 processes x 4
devices (`launch/local/run.sh 2 -- python tests/multiprocess_job.py OUT PHASE`). The same library calls
as the commands `train`, `fit-cgmm`, `generate --sweep`, `evaluate` and `predict` make, in one process
start per run so that the check fits in the test suite's time.

Arguments: OUT NAME:PHASE [NAME:PHASE ...]. PHASE "all" writes OUT/<name>/{attributes,detector}: trains both tiny models (checkpoints half-way),
fits the cGMM, runs a sweep, evaluates the classifier on its test split and predicts a folder of images
with the detector.
PHASE "resume" continues OUT/<name>/{attributes,detector}, copies of another topology's runs cut back to
their half-way checkpoint, to the end.

A process other than 0 records every file it opens for writing, renames or removes under OUT (Python's
audit hook) in OUT/writes_<process>.json, written outside the workdirs.
"""
import json
import os
import pathlib
import sys
import time

OUT = pathlib.Path(sys.argv[1]).absolute()
RUNS = [arg.split(":") for arg in sys.argv[2:]]  # NAME:PHASE, in order
WRITE_EVENTS = ("os.rename", "os.replace", "os.remove", "os.unlink", "os.rmdir", "os.mkdir", "shutil.rmtree",
                "shutil.move", "os.truncate")
writes: list = []


def _audit(event, args):
    if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
        mode, flags = (args[1] or "r"), (args[2] or 0)
        writing = any(c in str(mode) for c in "wax+") or flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
        if writing and str(os.fsdecode(args[0])).startswith(str(OUT)):
            writes.append(["open", os.fsdecode(args[0])])
    elif event in WRITE_EVENTS and args and isinstance(args[0], (str, bytes, os.PathLike)):
        if str(os.fsdecode(args[0])).startswith(str(OUT)):
            writes.append([event, os.fsdecode(args[0])])


_LAST = [time.monotonic()]


def _lap(what: str) -> None:  # stage times on stdout (the test prints them with -s)
    now = time.monotonic()
    print(f"{what}: {now - _LAST[0]:.1f} s", flush=True)
    _LAST[0] = now


def run(name, phase):
    from cgmm_test_utils import GEN_OVERRIDES
    from jaxface import config as config_lib, files
    from jaxface.train import trainer
    from trainer_utils import tiny_config

    root = OUT / name
    attributes, detector = root / "attributes", root / "detector"
    attr_cfg = tiny_config(**{"num_train_steps": 8, "checkpoint_every_steps": 4, "log_every_steps": 1,
                              "keep_checkpoints": 4, "data.num_train": 96, "data.num_test": 40,
                              "model.norm": "batch"})  # batch statistics over the global batch
    det_cfg = config_lib.load_config("configs/detect/synthfakes_mobilenet.py", {
        "model.width": 0.25, "model.depth": 0.01, "model.input_size": 32, "model.dropout": 0.0,  # 5 blocks
        "data.image_size": 32, "data.num_train": 64, "data.num_val": 24, "data.num_test": 40,
        "batch_size": 16, "eval_batch_size": 16, "num_train_steps": 4, "eval_every_steps": 0,
        "checkpoint_every_steps": 2, "log_every_steps": 1, "keep_checkpoints": 4,
        "optimizer.warmup_steps": 0,
        # Adam turns a gradient at rounding level into a full step of either sign, so its parameters would
        # differ between any two reduction orders by up to lr per step; SGD's differ as their gradients do.
        "optimizer.name": "sgd", "optimizer.learning_rate": 0.05})
    for cfg, workdir in ((attr_cfg, attributes), (det_cfg, detector)):
        trainer.train(cfg, workdir, on_start=lambda cfg=cfg, w=workdir: files.write_text(
            w / "config.json", cfg.to_json_best_effort(indent=2)))
        _lap(f"{name}: trained {workdir.name}")
    if phase == "all":
        from jaxface.cgmm import fit
        from jaxface.evaluate import evaluators, predict
        from jaxface.generate import command as generate

        fit.fit_cgmm_command(config_lib.load_config("configs/generate/synthfaces_tiny.py", dict(GEN_OVERRIDES)),
                             attributes)
        _lap(f"{name}: fit-cgmm")
        sweep = OUT / "sweep.json"
        generate.generate_command(attributes, sweep=str(sweep), verbose=False)
        _lap(f"{name}: sweep")
        evaluators.evaluate_split(trainer.load_for_inference(attributes), "test", attributes / "eval")
        _lap(f"{name}: evaluate")
        predict.predict_command(trainer.load_for_inference(detector), [str(OUT / "images")],
                                output_csv=detector / "predictions.csv", batch_size=4)
        _lap(f"{name}: predict")


def main():
    from jaxface import parallel

    parallel.enable_compilation_cache()
    parallel.maybe_initialize_distributed()
    import jax

    me = jax.process_index()
    if me != 0:
        sys.addaudithook(_audit)
    sys.path.insert(0, str(pathlib.Path(__file__).parent))
    for name, phase in RUNS:
        run(name, phase)
    if me != 0:
        (OUT / f"writes_{me}.json").write_text(json.dumps(writes))


if __name__ == "__main__":
    main()
