"""What the server runs: the trained detector and the face generator, loaded once and compiled for the
request shapes the server will see, and the upload decoder.

This is the only module of jaxface.serve that imports the rest of the library (training, evaluation,
generation, image decoding): the HTTP layer talks to `Detector`, `Generator` and `prepare_upload`
alone, so a move or rename in the library is fixed here, in one place.

Detection reuses `jaxface predict`'s path exactly: the latest checkpoint without the trainer loop
(`trainer.load_for_inference`), the task's jitted predict step, `predict.classify`'s padded batches,
the pipeline's centre-crop and resize, and the threshold calibrated by `jaxface evaluate`.
"""
from __future__ import annotations

import dataclasses
import io
import json
import pathlib
import time
import warnings
from typing import Any, Sequence

import numpy as np

from jaxface.cgmm import fit as fit_lib
from jaxface.data import imageio, pipeline
from jaxface.evaluate import detection
from jaxface.evaluate import predict as predict_lib
from jaxface.generate import rendering as rendering_lib
from jaxface.generate import settings as settings_lib
from jaxface.generate import targets as targets_lib
from jaxface.train import checkpoint as checkpoint_lib
from jaxface.train import trainer

MAX_SEED = settings_lib.MAX_SEED
GENERATE_MODES = ("mean", "sample")
GENERATE_MODELS = ("cgmm", "joint")
# Pillow format name -> what the API calls it. Other formats Pillow can read (GIF, TIFF, ...) are refused.
ACCEPTED_FORMATS = {"JPEG": "JPEG", "PNG": "PNG", "WEBP": "WebP", "BMP": "BMP"}
ACCEPTED_TEXT = "JPEG, PNG, WebP or BMP"


class EngineLoadError(ValueError):
    """A workdir that cannot be served (no detector, wrong task, damaged generator)."""


class RequestRejected(ValueError):
    """A request the engine refuses: HTTP status, a short machine code, and the message for the user."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = int(status), code, message


# ------------------------------------------------------------------------------------------ workdirs
def has_generator(workdir) -> bool:
    """Does WORKDIR hold a fitted cGMM (written by `jaxface fit-cgmm`)?"""
    return (pathlib.Path(workdir) / fit_lib.CGMM_DIR / fit_lib.CONFIG_FILE).is_file()


def check_detector_workdir(workdir) -> None:
    """Cheap checks before anything loads, so a wrong --workdir is one clear error at once."""
    workdir = pathlib.Path(workdir)
    if not workdir.is_dir():
        raise EngineLoadError(f"--workdir={workdir} is not a directory")
    config_path = workdir / "config.json"
    if not config_path.is_file():
        raise EngineLoadError(f"{workdir} has no config.json: pass the workdir of a trained detector "
                              "(`jaxface train --config=configs/detect/synthfakes_mobilenet.py --workdir=W`)")
    try:
        task = json.loads(config_path.read_text()).get("task")
    except (OSError, ValueError) as err:
        raise EngineLoadError(f"cannot read {config_path}: {err}") from None
    if task != "deepfake":
        hint = (" (it holds a fitted cGMM: pass it as --generator_workdir and a detector as --workdir)"
                if has_generator(workdir) else "")
        raise EngineLoadError(f"{workdir} holds a {task!r} model, not a deepfake detector{hint}")
    if fit_lib.checkpoint_step(workdir) is None and not (workdir / trainer.EXPORTED_WEIGHTS).is_file():
        raise EngineLoadError(f"no checkpoint in {workdir / checkpoint_lib.CHECKPOINT_DIR} (and no exported "
                              f"{trainer.EXPORTED_WEIGHTS}); run `jaxface train` first")


def describe_training_data(config) -> str:
    """One sentence for the page: what the detector saw in training."""
    data = config.data
    size = int(data.image_size)
    source = str(data.get("source", ""))
    folders = list(data.get("fake_folders") or {})
    more = f" and image folders named {', '.join(folders)}" if folders else ""
    if source == "synthfakes":
        generators = ", ".join(data.get("generators", ()) or ())
        return (f"the embedded synthetic faces (real) against faces altered by the synthetic generators "
                f"{generators}{more} (fake), at {size}x{size} pixels")
    if source == "realfake":
        root = pathlib.Path(str(data.get("root") or "")).name or "a real/fake folder"
        return f"the real/fake face folder {root!r} (real photographs against generated faces), at {size}x{size} pixels"
    return f"the {source!r} data source, at {size}x{size} pixels"


# ------------------------------------------------------------------------------------------ uploads
def prepare_upload(data: bytes, preparer, *, max_pixels: int, min_side: int) -> np.ndarray:
    """Uploaded bytes -> the uint8 image the detector sees ((S, S, 3), or (P, S, S, 3) patches), decoded
    in memory only; `preparer` is the detector's `pipeline.image_preparer`.

    The header is read first (format and dimensions, no pixels), so a decompression bomb or a tiny
    image is refused before any pixel is decoded; then `imageio.decode_image` and the pipeline's
    centre-crop + resize, exactly as in training. Raises RequestRejected.
    """
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise RequestRejected(400, "empty_file", "the uploaded file is empty")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            header = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as err:
            raise RequestRejected(400, "too_many_pixels", f"refused as a possible decompression bomb: {err}") from None
        except UnidentifiedImageError:
            raise RequestRejected(415, "not_an_image",
                                  f"the file is not a recognised image; send a {ACCEPTED_TEXT} file") from None
        except (OSError, SyntaxError, ValueError, EOFError) as err:
            raise RequestRejected(400, "corrupt_image", f"corrupt image header ({err})") from None
    kind = ACCEPTED_FORMATS.get(header.format or "")
    if kind is None:
        raise RequestRejected(415, "unsupported_format",
                              f"{header.format or 'this'} images are not accepted; send a {ACCEPTED_TEXT} file")
    width, height = header.size
    if width * height > max_pixels:
        raise RequestRejected(400, "too_many_pixels",
                              f"the image is {width}x{height} = {width * height} pixels, above the limit of "
                              f"{max_pixels} (refused before decoding as a possible decompression bomb)")
    if min(width, height) < min_side:
        raise RequestRejected(400, "image_too_small",
                              f"the image is {width}x{height}; its smaller side must be at least {min_side} pixels")
    try:
        image = imageio.decode_image(data, max_pixels=max_pixels)
    except imageio.ImageDecodeError as err:
        raise RequestRejected(400, "corrupt_image", f"cannot decode the {kind} image: {err.reason}") from None
    return preparer.map({"image": image})["image"]


# ------------------------------------------------------------------------------------------ detector
class Detector:
    """The latest checkpoint of a deepfake workdir, compiled for each batch-size bucket."""

    def __init__(self, workdir, buckets_for):
        """buckets_for(shards) -> the batch sizes to compile (see ServeOptions.buckets)."""
        workdir = pathlib.Path(workdir)
        check_detector_workdir(workdir)
        self.setup = trainer.load_for_inference(workdir)
        if self.setup.task.name != "deepfake":
            raise EngineLoadError(f"{workdir} holds a {self.setup.task.name!r} model, not a deepfake detector")
        self.workdir = workdir
        self.config = self.setup.config
        self.name = str(self.config.model.name)
        self.input_size = int(self.config.data.image_size)
        self.preparer = pipeline.image_preparer(self.config.data)
        self.checkpoint_step = self.setup.step
        self.shards = int(self.setup.mesh.shape["data"])
        self.buckets = tuple(buckets_for(self.shards))
        calibration = detection.read_calibration(workdir, self.setup.step)
        if calibration is None:
            self.threshold_logit, self.threshold, self.temperature, self.calibrated_band = 0.0, 0.5, 1.0, None
            self.threshold_source = ("default p_fake >= 0.5: no calibration.json for the latest checkpoint "
                                     "(run `jaxface evaluate` on the workdir to calibrate)")
        else:
            self.threshold_logit = float(calibration["threshold_logit"])
            self.temperature = detection.temperature_of(calibration)
            self.threshold = float(detection.sigmoid(self.threshold_logit / self.temperature))
            self.calibrated_band = calibration.get("uncertain_band")
            self.threshold_source = (f"calibrated on the {calibration.get('split', 'val')} split "
                                     f"({calibration.get('method', 'unknown method')})")
        self.trained_on = describe_training_data(self.config)
        self.compile_seconds = 0.0

    @property
    def max_batch(self) -> int:
        return self.buckets[-1]

    def warm_up(self) -> None:
        """Compiles the predict step for every bucket, so no request waits for a compile."""
        start = time.perf_counter()
        for bucket in self.buckets:
            blank = np.zeros((self.input_size, self.input_size, 3), np.uint8)
            self._logits(np.zeros((bucket,) + self.preparer.map({"image": blank})["image"].shape, np.uint8))
        self.compile_seconds = time.perf_counter() - start

    def bucket_for(self, n: int) -> int:
        for bucket in self.buckets:
            if n <= bucket:
                return bucket
        raise ValueError(f"{n} images exceed the largest compiled batch ({self.buckets[-1]})")

    def _logits(self, images: np.ndarray) -> np.ndarray:
        return predict_lib.classify(self.setup, images, self.bucket_for(len(images)))

    def p_fake(self, images: Sequence[np.ndarray]) -> list[tuple[float, float]]:
        """[(p_fake, logit)] of uint8 (S, S, 3) images, in one call padded to the next bucket."""
        logits = self._logits(np.stack(images))
        return [(float(detection.sigmoid(z / self.temperature)), float(z)) for z in logits]

    def is_fake(self, logit: float) -> bool:
        return logit >= self.threshold_logit  # the same rule as `jaxface predict`


# ----------------------------------------------------------------------------------------- generator
@dataclasses.dataclass
class GeneratedFace:
    png: bytes
    attributes: list[str]
    attribute_probs: dict[str, float]
    detected: dict[str, bool]
    hit_rate: float
    seed: int
    steps: int
    mode: str
    model: str
    strength: float


class Generator:
    """A fitted cGMM (W/cgmm/) with its classifier: attribute sets -> faces by feature inversion."""

    def __init__(self, workdir):
        workdir = pathlib.Path(workdir)
        if not has_generator(workdir):
            raise EngineLoadError(f"{workdir} holds no fitted cGMM ({workdir / fit_lib.CGMM_DIR / fit_lib.CONFIG_FILE} "
                                  "is missing); run `jaxface fit-cgmm --config=configs/generate/synthfaces_tiny.py "
                                  f"--workdir={workdir}` first")
        try:
            self.ctx = targets_lib.load_context(workdir)
            self.settings = settings_lib.settings_from_config(self.ctx.config, "invert")
        except settings_lib.GenerateError as err:
            raise EngineLoadError(str(err)) from None
        self.workdir = workdir
        store = self.ctx.store
        self.name = f"{self.ctx.clf.setup.config.model.name} cGMM on {store.layer}"
        self.input_size = int(self.ctx.clf.input_size)
        self.checkpoint_step = fit_lib.checkpoint_step(fit_lib.classifier_workdir(self.ctx.config, workdir))
        self.models = ("cgmm",) + (("joint",) if store.joint is not None else ())
        strength = self.ctx.config.get("targets", {}).get("strength", 1.0)
        self.default_strength = float(strength)
        self.configured_steps = int(self.settings.steps)

    def schema(self) -> dict:
        """Attribute groups as the classifier's schema has them; excluded attributes left out."""
        store = self.ctx.store
        valid = set(store.valid_attribute_names)
        groups = []
        for group in store.schema.groups:
            names = [a for a in group.attributes if a in valid]
            if names:
                groups.append({"name": group.name, "attributes": names,
                               "kind": "binary" if group.is_binary else "softmax"})
        return {"name": store.schema.name, "groups": groups, "excluded": list(store.excluded_names)}

    def resolve(self, attributes: Sequence[str]) -> tuple[list[str], list[int]]:
        try:
            return targets_lib.resolve_set(self.ctx.store, list(attributes))
        except settings_lib.GenerateError as err:
            raise RequestRejected(422, "bad_attributes", str(err)) from None

    def generate(self, attributes: Sequence[str], *, seed: int, steps: int, mode: str, model: str,
                 strength: float | None) -> GeneratedFace:
        import jax

        names, indices = self.resolve(attributes)
        if model not in self.models:
            raise RequestRejected(422, "bad_model", f"model {model!r} is not available here; valid: "
                                  f"{', '.join(self.models)} (rerun fit-cgmm for the joint model)")
        if mode not in GENERATE_MODES:
            raise RequestRejected(422, "bad_mode", f"mode {mode!r}; valid: {', '.join(GENERATE_MODES)}")
        strength = self.default_strength if strength is None else float(strength)
        try:
            settings = self.settings.replace({"steps": int(steps)}, "steps")
            item = targets_lib.Item(0, names, indices, int(seed), mode, model, "invert", settings, strength)
            with jax.set_mesh(self.ctx.clf.setup.mesh):
                rendered = rendering_lib.render_items(self.ctx, [item], verbose=False)
                record = rendering_lib.evaluate_items(self.ctx, [item], rendered)[0]
        except settings_lib.GenerateError as err:
            raise RequestRejected(422, "cannot_generate", str(err)) from None
        buffer = io.BytesIO()
        from PIL import Image

        Image.fromarray(imageio.to_uint8(rendered["images"][0])).save(buffer, format="PNG")
        return GeneratedFace(png=buffer.getvalue(), attributes=names, attribute_probs=record["attribute_probs"],
                             detected=record["detected"], hit_rate=float(record["hit_rate"]), seed=int(seed),
                             steps=int(steps), mode=mode, model=model, strength=strength)

    def warm_up(self, steps: int) -> None:
        """Compiles what a request with `steps` steps runs (the step count fixes the programs' shapes),
        and the target programs of every model and mode."""
        first = self.ctx.store.valid_attribute_names[0]
        self.generate([first], seed=0, steps=steps, mode="mean", model="cgmm", strength=None)
        names, indices = self.resolve([first])
        for model in self.models:
            for mode in GENERATE_MODES:
                item = targets_lib.Item(0, names, indices, 0, mode, model, "invert", self.settings, 1.0)
                targets_lib.item_targets(self.ctx, [item])


# ------------------------------------------------------------------------------------------- runtime
def runtime() -> dict:
    """JAX backend and devices, for GET /v1/model."""
    import jax

    return {"jax_version": jax.__version__, "backend": jax.default_backend(),
            "devices": [str(d) for d in jax.devices()]}


@dataclasses.dataclass
class Engine:
    detector: Detector
    generator: Generator | None
    generate_steps: int  # default steps of a generate request
    runtime: dict[str, Any]


def load_engine(workdir, generator_workdir, options) -> Engine:
    """Loads and compiles everything the server needs (seconds to minutes); -> Engine."""
    detector = Detector(workdir, options.buckets)
    detector.warm_up()
    generator = None
    steps = 0
    gen_dir = generator_workdir if generator_workdir is not None else (workdir if has_generator(workdir) else None)
    if gen_dir is not None:
        generator = Generator(gen_dir)
        steps = options.generate_steps or min(generator.configured_steps, options.max_generate_steps)
        generator.warm_up(steps)
    return Engine(detector, generator, steps, runtime())
