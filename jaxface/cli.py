"""The `jaxface` command: `jaxface <command> --config=configs/....py --workdir=DIR [--config.key=value]`.

One small function per command; each resolves its config, writes it to WORKDIR/config.json, writes its
outputs under WORKDIR and prints their paths. User mistakes end in one `error: ...` line (exit 2).
"""
from __future__ import annotations

import errno
import os
import pathlib
import sys
from typing import Callable

from absl import app, flags, logging

FLAGS = flags.FLAGS


class UsageError(ValueError):
    """A command line that cannot run."""


# ------------------------------------------------------------------------------------------- flags
def _define_common(config_required: bool, workdir_required: bool = True):
    from ml_collections import config_flags

    config_flags.DEFINE_config_file(
        "config", None, "Config file (a Python file with get_config()); override with --config.key=value."
        + ("" if config_required else " Defaults to WORKDIR/config.json's source config."),
        lock_config=True,
    )
    flags.DEFINE_string("workdir", None, "Directory for everything the command writes.",
                        required=workdir_required)


def _config(required: bool = True):
    """The resolved config: --config, else the config a previous command saved in the workdir."""
    cfg = FLAGS.config
    if cfg is None and FLAGS.workdir and (_workdir() / "config.json").exists():
        import json

        import ml_collections

        with (_workdir() / "config.json").open() as f:
            cfg = ml_collections.ConfigDict(json.load(f))
    if cfg is None and required:
        raise UsageError(
            "--config is required (for example --config=configs/attributes/synthfaces_tiny.py), "
            "or a --workdir that holds a config.json from an earlier command"
        )
    return cfg


def _save_config(config, workdir) -> pathlib.Path:
    from jaxface import files

    return files.write_text(files.as_path(workdir) / "config.json", config.to_json_best_effort(indent=2))


def _print_outputs(paths):
    from jaxface import parallel

    if not parallel.is_main_process():  # only process 0 writes files
        return
    for p in paths:
        print(f"wrote {p}")


def _workdir():
    """--workdir as an epath path (a local folder or a gs:// URL)."""
    from jaxface import files  # imported here: `jaxface --help` stays free of the jax import

    return files.as_path(FLAGS.workdir)


# ---------------------------------------------------------------------------------------- commands
def cmd_data(argv):
    """Summarise a dataset (sizes, attribute rates) and write preview grids."""
    from jaxface.data import pipeline, report

    config = _config()
    workdir = _workdir()
    cfg_path = _save_config(config, workdir)
    if config.data.source in pipeline.DETECTION_SOURCES:
        augment = None
        if FLAGS.augment:
            from jaxface.data import augment as augment_lib

            augment = augment_lib.Augmenter(config.data.get("augment") or augment_lib.default_augment_config())
        result = report.detection_report(config, workdir, augment=augment)
    else:
        result = report.attribute_report(config, workdir)
    print(result["text"])
    _print_outputs([cfg_path] + list(result["outputs"]))


def cmd_train(argv):
    """Train the model of a config (attributes or deepfake task); resumes from WORKDIR's checkpoints."""
    from jaxface.train import trainer

    config = _config()
    workdir = _workdir()
    saved = []  # config.json is written only once the run has been validated (trainer.train on_start)
    result = trainer.train(config, workdir, on_start=lambda: saved.append(_save_config(config, workdir)))
    _print_outputs(saved + result["outputs"])
    if result["interrupted"] == "SIGINT":
        sys.exit(130)


def cmd_evaluate(argv):
    """Evaluate the latest checkpoint in WORKDIR on the test split (or another folder); writes WORKDIR/eval/."""
    from jaxface import files
    from jaxface.evaluate import detection, evaluators, predict
    from jaxface.evaluate import faces as faces_lib
    from jaxface.train import trainer

    config = _config()
    workdir = _workdir()
    if FLAGS.faces and not FLAGS.data_root:
        raise UsageError("--faces applies to --data_root folders (the test split is scored as it was trained)")
    if FLAGS.output_dir:
        out_dir = files.as_path(FLAGS.output_dir)
    elif FLAGS.data_root:
        out_dir = workdir / "eval" / ("cross_" + pathlib.Path(FLAGS.data_root).resolve().name)
    else:
        out_dir = workdir / "eval"
    files.check_writable(out_dir)  # a read-only workdir fails before the evaluation, not after it
    if FLAGS.data_root:
        setup = trainer.load_for_inference(workdir)
        if (FLAGS.faces or faces_lib.default_mode(setup.config)) == "align":
            result = predict.evaluate_folder_with_faces(setup, FLAGS.data_root, out_dir)
        else:
            result = detection.evaluate_on_folder(setup, FLAGS.data_root, out_dir)
    else:
        result = evaluators.evaluate_split(trainer.load_for_inference(workdir, config), FLAGS.split, out_dir)
    print(result["text"])
    _print_outputs(result["outputs"])


def cmd_convert_weights(argv):
    """Convert published weights (VGG-Face .mat/.pth, torchvision/timm) into a jaxface weight directory."""
    if len(argv) != 3:
        raise UsageError("usage: jaxface convert-weights --format=FMT SRC DST")
    src, dst = argv[1], argv[2]
    fmt = FLAGS.format
    if fmt in ("vggface-mat", "vggface-pth", "vggface"):
        from jaxface.models import convert_vggface

        summary = convert_vggface.convert_weights_command(
            {"vggface-mat": "mat", "vggface-pth": "pth", "vggface": "auto"}[fmt], src, dst,
            overwrite=FLAGS.overwrite)
    elif fmt in ("torchvision", "timm"):
        from jaxface.models import convert_torch

        if not FLAGS.arch:
            raise UsageError("--format=torchvision/timm needs --arch (e.g. mobilenetv3_large)")
        summary = convert_torch.convert_and_save(src, dst, FLAGS.arch, layout=fmt, overwrite=FLAGS.overwrite)
    else:
        raise UsageError(
            f"unknown --format={fmt!r}; valid: vggface-mat, vggface-pth, vggface (auto), torchvision, timm"
        )
    for k, v in summary.items():
        print(f"{k}: {v}")
    print(f"wrote {dst}")


def cmd_fit_cgmm(argv):
    """Fit the cGMM and joint target models on a trained classifier's activations; writes WORKDIR/cgmm/."""
    from jaxface.cgmm import fit

    # WORKDIR/config.json stays the classifier's; the generation config goes to WORKDIR/cgmm/config.json.
    config = FLAGS.config
    if config is None:
        raise UsageError("--config is required, e.g. --config=configs/generate/synthfaces_tiny.py")
    workdir = _workdir()
    try:
        result = fit.fit_cgmm_command(config, workdir)
    except KeyboardInterrupt as interrupt:
        from jaxface import files

        state = ("the new fitted model was completely written first" if isinstance(interrupt, files.DeferredInterrupt)
                 else "nothing was written; a fitted model already there is unchanged")
        print(f"error: interrupted; {workdir / fit.CGMM_DIR}: {state}", file=sys.stderr)
        sys.exit(130)
    print(result["text"])
    _print_outputs(result["outputs"])


def cmd_generate(argv):
    """Generate faces for an attribute set (or --reconstruct an image, or run a --sweep) from WORKDIR."""
    from jaxface.generate import command as generate
    from jaxface.generate.sweep import SweepInterrupted

    try:
        result = generate.generate_command(
            _workdir(), attributes=FLAGS.attributes, num=FLAGS.num, mode=FLAGS.mode,
            model=FLAGS.model, method=FLAGS.method, steps=FLAGS.steps, seed=FLAGS.seed,
            reconstruct=FLAGS.reconstruct, sweep=FLAGS.sweep, compare=FLAGS.compare, name=FLAGS.name,
            strength=FLAGS.strength, layers=FLAGS.layers, judge_workdir=FLAGS.judge_workdir,
            detector_workdir=FLAGS.detector_workdir)
    except SweepInterrupted as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(130)
    print(result["text"])
    _print_outputs(result["outputs"])


def cmd_bench(argv):
    """Benchmark suites (train, inversion, cgmm, data, predict, serve, startup, scaling, all): prints a table, writes JSON records."""
    from jaxface import files
    from jaxface.bench import suites

    records = suites.run(FLAGS.suite, quick=FLAGS.quick, torch_python=FLAGS.torch_python, size=FLAGS.size)
    out = FLAGS.out or "bench.json"
    files.write_json(out, records)
    print(f"wrote {out} ({len(records)} records)")


# `jaxface predict` exits with this when some input was missing or unreadable (its record says why).
PREDICT_INCOMPLETE = 3


def cmd_predict(argv):
    """Detect deepfakes in image files or folders with the detector trained in WORKDIR (JSON lines)."""
    import json

    from jaxface import parallel
    from jaxface.evaluate import predict
    from jaxface.train import trainer

    paths = argv[1:]
    if not paths:
        raise UsageError("usage: jaxface predict --workdir=W PATH [PATH ...] [--output=FILE.csv]")
    if FLAGS.output and os.path.exists(FLAGS.output) and not FLAGS.overwrite:
        raise UsageError(f"--output={FLAGS.output} exists; pass --overwrite to replace it")
    if FLAGS.workdir is None:
        workdir = predict.shipped_detector()
        print(f"no --workdir: using the detector shipped with jaxface, {workdir.name} "
              f"(model card: {workdir / 'MODEL_CARD.md'})", file=sys.stderr)
    else:
        workdir = _workdir()
    setup = trainer.load_for_inference(workdir)
    result = predict.predict_command(setup, paths, output_csv=FLAGS.output, batch_size=FLAGS.batch_size,
                                     faces=FLAGS.faces)
    main = parallel.is_main_process()  # every process holds every record; process 0 reports them
    for record in result["records"]:
        print(json.dumps(record))
    for p in result["outputs"] if main else ():
        print(f"wrote {p}", file=sys.stderr)
    failed = sum(r["error"] is not None for r in result["records"])
    if failed:
        if main:
            print(f"{failed} of {len(result['records'])} inputs could not be classified (exit status "
                  f"{PREDICT_INCOMPLETE})", file=sys.stderr)
        sys.exit(PREDICT_INCOMPLETE)


def cmd_export_model(argv):
    """Write the latest checkpoint's model (no optimiser state) to a small folder that predict, evaluate and serve load like a workdir."""
    from jaxface.train import trainer

    if len(argv) > 1:
        raise UsageError(f"jaxface export-model takes no positional arguments, got {' '.join(argv[1:])!r}")
    out = pathlib.Path(FLAGS.out)
    if out.exists() and any(out.iterdir()) and not FLAGS.overwrite:
        raise UsageError(f"--out={out} exists and is not empty; pass --overwrite to replace its files")
    for path in trainer.export_model(_workdir(), out):
        print(f"wrote {path}")


def _flags_export_model():
    flags.DEFINE_string("workdir", None, "Workdir of a trained model.", required=True)
    flags.DEFINE_string("out", None, "Folder to write config.json, model.safetensors, calibration.json, "
                        "exported.json into.", required=True)
    flags.DEFINE_boolean("overwrite", False, "Replace the files of a non-empty --out folder.")


def cmd_demo(argv):
    """Everything on the embedded synthetic faces (train, generate, detect), ending in WORKDIR/report.html."""
    from jaxface import demo

    size = "quick" if FLAGS.quick and FLAGS.size == "full" else FLAGS.size
    if size not in demo.SIZES:
        raise UsageError(f"--size must be one of {', '.join(demo.SIZES)}, got {FLAGS.size!r}")
    demo.run(_workdir(), size=size)


def cmd_serve(argv):
    """Serve the detector (and a fitted generator) over HTTP: a web page, a JSON API and metrics."""
    from jaxface.serve import options as options_lib
    from jaxface.serve import server

    if len(argv) > 1:
        raise UsageError(f"jaxface serve takes no positional arguments, got {' '.join(argv[1:])!r}")
    if not FLAGS.max_upload_mb > 0:
        raise UsageError(f"--max_upload_mb must be > 0, got {FLAGS.max_upload_mb}")
    options = options_lib.ServeOptions(
        max_batch=FLAGS.max_batch, batch_wait_ms=FLAGS.batch_wait_ms, max_queue=FLAGS.max_queue,
        max_upload_bytes=int(FLAGS.max_upload_mb * 1024 * 1024), max_pixels=FLAGS.max_pixels,
        min_side=FLAGS.min_side, uncertain_band=FLAGS.uncertain_band,
        max_generate_steps=FLAGS.max_generate_steps, generate_steps=FLAGS.generate_steps)
    server.serve_command(FLAGS.workdir, host=FLAGS.host, port=FLAGS.port,
                         generator_workdir=FLAGS.generator_workdir, options=options, access_log=FLAGS.access_log)


def _flags_data():
    _define_common(config_required=True)
    flags.DEFINE_boolean("augment", False, "Also write a grid of augmented samples (detection data).")


def _flags_train():
    _define_common(config_required=True)


def _flags_evaluate():
    _define_common(config_required=False)
    flags.DEFINE_enum("split", "test", ["train", "val", "test"], "Split to evaluate.")
    flags.DEFINE_enum("faces", None, ["align", "off"], "With --data_root: align finds and scores every face "
                      "(an image's score: its most fake face); off: whole images (default: as trained).")
    flags.DEFINE_string("data_root", None, "Evaluate a trained detector on another real/fake folder "
                        "(ROOT/real/**, ROOT/fake/**): cross-dataset evaluation.")
    flags.DEFINE_string("output_dir", None, "Where the report goes (default WORKDIR/eval, or "
                        "WORKDIR/eval/cross_NAME with --data_root): e.g. for a workdir you may only read.")


def _flags_fit_cgmm():
    _define_common(config_required=True)


def _flags_generate():
    flags.DEFINE_string("workdir", None, "Workdir holding the classifier and cgmm/ (jaxface fit-cgmm).",
                        required=True)
    flags.DEFINE_string("attributes", None, 'Comma-separated attribute names, e.g. "Male,Black Hair,Smiling".')
    flags.DEFINE_integer("num", None, "Images to generate (default 8).")
    flags.DEFINE_enum("mode", "mean", ["mean", "sample", "edit"],
                      "Target: the model's mean (report), a sample, or edit (a real held-out face with the "
                      "attributes, moved along their direction).")
    flags.DEFINE_enum("model", "cgmm", ["cgmm", "joint"], "Target model: the report's cGMM or the joint model.")
    flags.DEFINE_enum("method", "invert", ["invert", "classvis"], "Feature inversion or class visualisation.")
    flags.DEFINE_integer("steps", None, "Optimisation steps (default from the generate config).")
    flags.DEFINE_integer("seed", 0, "Random seed (noise, jitter, samples).")
    flags.DEFINE_string("reconstruct", None, "Invert the true activations of this image instead.")
    flags.DEFINE_string("layers", None, "With --reconstruct: comma-separated layers to invert together "
                        "(default: the fitted cGMM layer), e.g. conv2_2,conv5_3.")
    flags.DEFINE_string("sweep", None, "JSON file: a list of {attributes, seeds|num, settings}.")
    flags.DEFINE_string("compare", None, "JSON file: {sets, seeds, methods, references}: methods side by side "
                        "with reference rows, one table and one labelled grid per set.")
    flags.DEFINE_string("name", None, "Output folder name under WORKDIR/generate/.")
    flags.DEFINE_float("strength", None, "Scale the target's departure from the mean activation "
                       "(1 = the model's own target; default from the config's targets.strength).")
    flags.DEFINE_string("judge_workdir", None, "A second attribute classifier (configs/attributes/"
                        "synthfaces_judge.py) that scores the set: judge hit rate, KID, diversity.")
    flags.DEFINE_string("detector_workdir", None, "With --compare: a deepfake detector (e.g. configs/detect/"
                        "synthfakes_mobilenet.py) whose catch rate on each row's images is reported.")


def _flags_bench():
    flags.DEFINE_string("suite", "all", "train | inversion | cgmm | data | predict | serve | startup | scaling | all")
    flags.DEFINE_string("out", None, "JSON file for the records (default bench.json).")
    flags.DEFINE_boolean("quick", False, "Smaller cases (the same as --size=quick).")
    flags.DEFINE_enum("size", None, ["full", "quick", "smoke"], "Case sizes: full (default), quick, or smoke "
                      "(the smallest cases, seconds each: checks that every suite runs, not its speed).")
    flags.DEFINE_string("torch_python", None, "A Python interpreter with torch (and numpy, Pillow): the "
                        "train, inversion and predict suites then also time the PyTorch eager reference of the "
                        "same work in the same run (speedup_vs_torch).")


def _flags_predict():
    flags.DEFINE_string("workdir", None, "Workdir (or exported model folder) of a trained detector; default: "
                        "the detector shipped inside jaxface (faces_wild).")
    flags.DEFINE_string("output", None, "Also write a CSV table (path,label,p_fake,error).")
    flags.DEFINE_boolean("overwrite", False, "Replace an existing --output file.")
    flags.DEFINE_integer("batch_size", 64, "Images per jitted inference call.")
    flags.DEFINE_enum("faces", None, ["align", "off"], "align: find every face (MTCNN), score each, p_fake of "
                      "the image = the largest; off: score the whole image (default: as the detector was trained).")


def _flags_convert():
    flags.DEFINE_string("format", None, "vggface-mat | vggface-pth | vggface | torchvision | timm",
                        required=True)
    flags.DEFINE_string("arch", None, "Backbone name for torchvision/timm weights.")
    flags.DEFINE_boolean("overwrite", False, "Replace DST if it exists.")


def _flags_serve():
    from jaxface.serve.options import ServeOptions

    d = ServeOptions()
    flags.DEFINE_string("workdir", None, "Workdir of a trained detector (latest checkpoint, calibration.json).")
    flags.DEFINE_string("generator_workdir", None, "Workdir with a fitted cGMM (jaxface fit-cgmm); default: "
                        "--workdir when it holds one.")
    flags.DEFINE_string("host", "127.0.0.1", "Address to listen on (loopback unless told otherwise).")
    flags.DEFINE_integer("port", 8000, "Port (0: any free port, printed at start).")
    flags.DEFINE_integer("max_batch", d.max_batch, "Images per batched detector call (1: no micro-batching).")
    flags.DEFINE_float("batch_wait_ms", d.batch_wait_ms, "How long an image waits for others to share its batch.")
    flags.DEFINE_integer("max_queue", d.max_queue, "Images waiting for the detector before 503 (Retry-After).")
    flags.DEFINE_float("max_upload_mb", d.max_upload_bytes / 2**20, "Largest accepted upload per file (MB).")
    flags.DEFINE_integer("max_pixels", d.max_pixels, "Largest accepted width x height (checked before decoding).")
    flags.DEFINE_integer("min_side", d.min_side, "Smallest accepted image side in pixels.")
    flags.DEFINE_float("uncertain_band", d.uncertain_band, "Label 'uncertain' when |p_fake - threshold| is "
                       "below this (0: off; default: the band `jaxface evaluate` calibrated, off without one).")
    flags.DEFINE_integer("max_generate_steps", d.max_generate_steps, "Cap on a generate request's steps.")
    flags.DEFINE_integer("generate_steps", d.generate_steps, "Default steps of a generate request "
                         "(0: the fitted config's, capped); compiled at start-up.")
    flags.DEFINE_boolean("access_log", False, "Log one line per request (method, path, status; never image content).")


def _flags_demo():
    flags.DEFINE_string("workdir", "runs/demo", "Directory for the demo outputs.")
    flags.DEFINE_string("size", "full", "full: the README's figures (within 12 minutes on 2 cores); quick: a short "
                        "run; smoke: tiny models, what the tests run.")
    flags.DEFINE_boolean("quick", False, "Same as --size=quick.")


COMMANDS: dict[str, tuple[str, Callable, Callable]] = {
    "data": (cmd_data.__doc__, _flags_data, cmd_data),
    "train": (cmd_train.__doc__, _flags_train, cmd_train),
    "evaluate": (cmd_evaluate.__doc__, _flags_evaluate, cmd_evaluate),
    "fit-cgmm": (cmd_fit_cgmm.__doc__, _flags_fit_cgmm, cmd_fit_cgmm),
    "generate": (cmd_generate.__doc__, _flags_generate, cmd_generate),
    "predict": (cmd_predict.__doc__, _flags_predict, cmd_predict),
    "export-model": (cmd_export_model.__doc__, _flags_export_model, cmd_export_model),
    "convert-weights": (cmd_convert_weights.__doc__, _flags_convert, cmd_convert_weights),
    "bench": (cmd_bench.__doc__, _flags_bench, cmd_bench),
    "demo": (cmd_demo.__doc__, _flags_demo, cmd_demo),
    "serve": (cmd_serve.__doc__, _flags_serve, cmd_serve),
}


def _version_text() -> str:
    """`jaxface --version`: versions, and what a run on this machine will use (devices, convolution,
    compilation cache) and why."""
    from importlib import metadata

    import jax
    import jaxlib

    from jaxface import parallel
    from jaxface.kernels import onednn

    try:
        version = metadata.version("jaxface")
    except metadata.PackageNotFoundError:
        version = "(not installed: run from a source tree)"
    cache = parallel.compilation_cache_dir()
    devices = jax.devices()
    return "\n".join([
        f"jaxface {version} (python {sys.version.split()[0]}, jax {jax.__version__}, jaxlib {jaxlib.__version__})",
        f"devices: {len(devices)} x {devices[0].platform} ({jax.process_count()} process(es))",
        f"convolution on CPU: {onednn.describe()}",
        f"compilation cache: {cache or 'off'} ({parallel.COMPILATION_CACHE_ENV}=DIR moves it, =off turns it off)",
    ])


def _usage() -> str:
    lines = ["usage: jaxface <command> [--config=FILE] [--workdir=DIR] [--config.key=value ...]", "",
             "commands:"]
    lines += [f"  {name:16s} {doc.splitlines()[0]}" for name, (doc, _, _) in COMMANDS.items()]
    lines += ["", "`jaxface <command> --helpfull` lists every flag of a command."]
    return "\n".join(lines)


def _resolve_config_path(args: list[str]) -> list[str]:
    """Lets `--config=configs/...` work from any directory: the repository's or the installed package's."""
    from jaxface import config as config_lib

    out = []
    for a in args:
        if a.startswith("--config=") and not a.startswith("--config."):
            path = a.split("=", 1)[1]
            base, sep, arg = path.partition(":")
            if base and not os.path.exists(base):
                try:
                    a = "--config=" + str(config_lib.config_path(base)) + sep + arg
                except FileNotFoundError as err:
                    raise UsageError(str(err)) from None
        out.append(a)
    return out


# File-system failures that are the environment's, not a bug: one line and exit 1, never a traceback.
_ENVIRONMENT_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO)


def _environment_error_text(err: BaseException) -> str | None:
    if not isinstance(err, OSError) or err.errno not in _ENVIRONMENT_ERRNOS:
        return None
    if err.strerror is None:  # a message of ours (checkpoint.CheckpointWriteError) says it all
        return str(err)
    where = f"cannot write {err.filename}" if err.filename else "a file operation failed"
    return (f"{where}: {err.strerror} (check the folder's permissions and free space, or choose another "
            "folder: --workdir, or --output_dir where the command has one)")


def _is_user_error(err: BaseException) -> bool:
    if isinstance(err, (UsageError, FileNotFoundError, FileExistsError)):
        return True
    return isinstance(err, (ValueError, KeyError, TypeError)) and type(err).__module__.startswith("jaxface")


# Models whose CPU training measured faster without XLA:CPU's YNNPACK fusions (parallel.VGG_CPU_XLA_FLAGS).
_NO_YNN_MODELS = ("vggface", "mobilenetv3_small", "mobilenetv3_large")


def _faster_without_ynn(name: str) -> bool:
    """Does this command spend its time in convolutions that run faster with parallel.VGG_CPU_XLA_FLAGS?"""
    if name in ("fit-cgmm", "generate", "bench", "demo"):
        return True
    if name == "serve":  # the detector's own config, saved in its workdir
        import json

        try:
            saved = json.loads((pathlib.Path(FLAGS.workdir) / "config.json").read_text()) if FLAGS.workdir else {}
        except (OSError, ValueError):
            return False  # the command itself reports a missing or unreadable workdir
        return saved.get("model", {}).get("name") in _NO_YNN_MODELS
    if name in ("train", "evaluate"):
        try:
            config = _config(required=False)
        except (OSError, ValueError):
            return False  # the command itself reports an unreadable config
        model = getattr(config, "model", None) if config is not None else None
        return getattr(model, "name", None) in _NO_YNN_MODELS
    return False


def _command_help(name: str, doc: str) -> str:
    """`jaxface NAME --help`: the command's purpose and its own flags (absl's --helpfull adds its own)."""
    own = FLAGS.get_flags_for_module(sys.modules[__name__])
    lines = [f"usage: jaxface {name} [flags]", "", doc.strip(), "", "flags:"]
    for flag in sorted(own, key=lambda f: f.name):
        default = "" if flag.default is None else f" (default: {flag.default_as_str})"
        lines.append(f"  --{flag.name}: {(flag.help or '').splitlines()[0]}{default}")
    return "\n".join(lines)


def _flag_error(err: BaseException) -> str:
    """One line for a command line that does not parse (a misspelt --config.key included)."""
    text = str(err)
    if isinstance(err, AttributeError) or "Did you mean" in text:
        text = text.strip("'\"").replace("\\n", " ").replace("\n", " ").replace("\\'", "'")
        return f"unknown config key: {text}"
    return text.splitlines()[0] if text else type(err).__name__


def _parse_flags(argv: list[str]) -> list[str]:
    try:
        return FLAGS(argv)
    except (flags.Error, AttributeError, KeyError, ValueError, TypeError) as err:
        cause = err.__cause__ or err.__context__
        chosen = cause if isinstance(cause, AttributeError) else err
        print(f"error: {_flag_error(chosen)}", file=sys.stderr)
        sys.exit(2)


def run(argv: list[str] | None = None):
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2:
        print(_usage(), file=sys.stderr)
        return 2
    if argv[1] in ("-h", "--help", "help", "--helpfull"):
        print(_usage())
        return 0
    if argv[1] in ("--version", "version"):
        print(_version_text())
        return 0
    name = argv[1]
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}; valid commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    doc, define_flags, fn = COMMANDS[name]
    define_flags()
    if any(a in ("-h", "--help") for a in argv[2:]):
        print(_command_help(name, doc))
        return 0
    try:
        args = _resolve_config_path(argv[2:])
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    def main(rest):
        logging.set_verbosity(logging.WARNING)
        try:
            from jaxface import parallel

            if _faster_without_ynn(name):
                parallel.apply_vgg_cpu_xla_flags()
            from jaxface.kernels import onednn

            onednn.mode(), onednn.winograd_mode()  # a bad JAXFACE_CONV/_WINOGRAD: one error, before any work
            # Later commands of the same model skip its compiles. A benchmark measures compile times, so it
            # uses the cache only when JAXFACE_COMPILATION_CACHE names one.
            if name != "bench" or os.environ.get(parallel.COMPILATION_CACHE_ENV, "").strip():
                parallel.enable_compilation_cache()

            # Before anything touches a device: a multi-process launch must initialise first.
            parallel.maybe_initialize_distributed(FLAGS["config"].value if "config" in FLAGS else None)
            if parallel.distributed_started() and not parallel.is_main_process():
                # Process 0 reports for the run; errors still reach stderr.
                sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the rest of the process
            fn(rest)
        except KeyboardInterrupt as interrupt:  # a command without its own Ctrl-C handling
            from jaxface import files, parallel

            done = ("after finishing the files it was writing" if isinstance(interrupt, files.DeferredInterrupt)
                    else "before it finished; every file it writes is written whole, so none is half-written")
            print(f"error: interrupted (Ctrl-C); jaxface {name} stopped {done}", file=sys.stderr)
            parallel.exit_failed(130, "was interrupted (Ctrl-C)")
        except Exception as err:  # noqa: BLE001 - user mistakes become one line; bugs keep their trace
            from jaxface import parallel

            # The other processes of a multi-process run stop too, naming this failure (parallel.PeerWatch).
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
            lost = parallel.lost_peer(err)
            if lost is not None:  # another process failed first: name it, not this one's broken collective
                import jax

                print(f"error: {lost}; stopping process {jax.process_index()} of {jax.process_count()} too",
                      file=sys.stderr)
                parallel.exit_failed(1, f"stopped after {lost}")
            if _is_user_error(err):
                print(f"error: {err}", file=sys.stderr)
                parallel.exit_failed(2, reason)
            environment = _environment_error_text(err)
            if environment is not None:
                print(f"error: {environment}", file=sys.stderr)
                parallel.exit_failed(1, environment[:300])
            if parallel.distributed_started():  # a bug: its trace, then the same exit as above
                import traceback

                traceback.print_exc()
                parallel.exit_failed(1, f"{type(err).__name__}: {reason}")
            raise

    app.run(main, argv=[f"jaxface {name}"] + args, flags_parser=_parse_flags)
    return 0


if __name__ == "__main__":
    sys.exit(run())
