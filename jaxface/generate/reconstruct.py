"""`jaxface generate --reconstruct=IMAGE`: invert the true activations of a real image at one or several
layers."""
from __future__ import annotations

import dataclasses
import pathlib
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxface import files
from jaxface.cgmm import fit as fit_lib
from jaxface.evaluate import generation as metrics
from jaxface.generate.classifier import classify_images
from jaxface.generate.output import GENERATE_DIR, check_name, slug
from jaxface.generate.rendering import progress_printer, render_kwargs
from jaxface.generate.settings import GenerateError, settings_from_config
from jaxface.generate.targets import Context, seeds_for
from jaxface.invert import objectives as obj_lib
from jaxface.invert import render


@dataclasses.dataclass(frozen=True)
class Pick:
    """outputs[key] (hashable, so objectives built alike share compiled programs)."""

    key: str

    def __call__(self, outputs):
        return outputs[self.key]


def _features_of_layers(layers: tuple[str, ...]):
    def method(model, images):
        out = model.activations(images, layers)
        return {layer: out[layer].reshape(out[layer].shape[0], -1) for layer in layers}

    return method


def resolve_layers(ctx: Context, layers) -> tuple[str, ...]:
    """--layers for a reconstruction: comma-separated taps (default: the fitted layer), validated."""
    if layers is None or (isinstance(layers, str) and not layers.strip()):
        return (ctx.store.layer,)
    names = [n.strip() for n in (layers.split(",") if isinstance(layers, str) else layers)]
    if any(not n for n in names) or len(set(names)) != len(names):
        raise GenerateError(f"--layers={layers!r}: give distinct, comma-separated layer names")
    model = ctx.clf.setup.model
    for n in names:
        try:
            fit_lib.check_layer(model, n)
        except fit_lib.FitConfigError as e:
            raise GenerateError(f"--layers: {e}") from None
    return tuple(names)


def layers_model(ctx: Context, layers: tuple[str, ...]):
    """(apply_fn, state) images -> {layer: (B, D_layer)}, cached so repeated calls reuse compilations."""
    models = ctx.clf.layer_models
    if layers not in models:
        models[layers] = render.nnx_model_fn(ctx.clf.setup.model, _features_of_layers(layers))
    return models[layers]


def layers_objective(layers: Sequence[str]):
    """The mean of the layers' normalised feature errors, one term `feature_<layer>` each, reading
    targets[layer] and layers_model's outputs[layer]."""
    objective = obj_lib.Objective(())
    for layer in layers:
        objective = objective + (1.0 / len(layers)) * obj_lib.feature_match(
            layer, select=Pick(layer), name=f"feature_{layer}")
    return objective


def reconstruct(ctx: Context, image_path, num, steps, seed, name, verbose, layers=None) -> dict:
    """Invert the true activations of a real image at `layers` (default: the fitted layer); with
    several layers the objective is the mean of their normalised feature errors."""
    from jaxface.data import imageio

    layers = resolve_layers(ctx, layers)
    path = pathlib.Path(str(image_path))
    try:
        decoded = imageio.decode_image(str(path))
    except imageio.ImageDecodeError as e:
        raise GenerateError(f"--reconstruct: {e}") from None
    size = ctx.clf.input_size
    image = imageio.center_crop_resize(decoded, size).astype(np.float32) / 255.0
    seeds = seeds_for(None, 1 if num is None else num, seed, "reconstruct")
    settings = settings_from_config(ctx.config, "invert")
    # A reconstruction requests no attributes: it starts from, and is held by, the prior of every face.
    settings = settings.replace({"prior": "global", "init": "noise" if settings.init == "exemplar" else settings.init})
    if steps is not None:
        settings = settings.replace({"steps": steps}, "--steps")
    true_feats, true_probs, true_detected = classify_images(ctx.clf, image[None])
    model = layers_model(ctx, layers)
    true_layers = jax.tree.map(np.asarray, jax.jit(model[0])(model[1], jnp.asarray(image[None])))
    objective = layers_objective(layers) + obj_lib.regularizers(
        settings.tv_weight, settings.l2_weight, settings.range_weight)
    images, objective_values, layer_errors = [], [], []
    for start in range(0, len(seeds), settings.max_batch):
        chunk = seeds[start : start + settings.max_batch]
        kwargs = render_kwargs(ctx, settings, chunk, progress_printer("reconstruct", settings.steps, verbose))
        for k in ("tv_weight", "l2_weight", "range_weight"):
            kwargs.pop(k)
        targets = {layer: jnp.asarray(np.repeat(true_layers[layer], len(chunk), axis=0)) for layer in layers}
        try:
            result = render.optimize(model, objective, targets, **kwargs)
        except (render.RenderError, ValueError) as e:
            raise GenerateError(f"cannot run the reconstruction with these settings: {e}") from None
        images.append(result.images)
        objective_values.append(result.objective)
        layer_errors.append(np.stack([result.terms[f"feature_{layer}"] for layer in layers], axis=1))
    objective, layer_errors = np.concatenate(objective_values), np.concatenate(layer_errors)
    images = np.concatenate(images)
    targets = np.repeat(true_feats, len(seeds), axis=0)
    feats, probs, detected = classify_images(ctx.clf, images)
    errors = metrics.feature_errors(feats, targets)
    schema = ctx.store.schema
    in_input = [i for i in range(schema.num_attributes) if true_detected[0, i]]
    directory = ctx.workdir / GENERATE_DIR / check_name(name or f"reconstruct_{slug(path.stem)}_s{seed}")
    records = []
    for row, s in enumerate(seeds):
        records.append(dict(
            image=f"images/{row:03d}.png", input=str(path), attributes=[schema.attribute_names[i] for i in in_input],
            seed=s, settings=dict(method="reconstruct", layer=ctx.store.layer, layers=list(layers),
                                  **settings.as_dict()),
            objective=float(objective[row]), feature_error=float(errors[row]),
            layer_feature_errors={layer: float(layer_errors[row, j]) for j, layer in enumerate(layers)},
            attribute_probs={schema.attribute_names[i]: float(probs[row, i]) for i in in_input},
            input_attribute_probs={schema.attribute_names[i]: float(true_probs[0, i]) for i in in_input},
            hit_rate=float(np.mean(detected[row, in_input])) if in_input else None,
            head_agreement=float(np.mean([
                np.array_equal(detected[row, list(idx)], true_detected[0, list(idx)])
                for idx in schema.head_attribute_indices])),
        ))
    side = np.concatenate([image[None], images])
    outputs = [files.save_image(directory / "reconstruction.png", files.image_grid(side, cols=len(side)))]
    outputs.append(files.save_image(directory / "input.png", image))
    for row, img in enumerate(images):
        outputs.append(files.save_image(directory / "images" / f"{row:03d}.png", img))
    outputs.append(files.write_json(directory / "results.json", records))
    text = (f"reconstruction of {path} from {', '.join(layers)}: feature error at {ctx.store.layer} "
            + ", ".join(f"{e:.3f}" for e in errors)
            + ("".join(f"; at {layer} " + ", ".join(f"{e:.3f}" for e in layer_errors[:, j])
                       for j, layer in enumerate(layers) if layer != ctx.store.layer))
            + "; classifier heads agreeing with the input: "
            + ", ".join(f"{r['head_agreement']:.2f}" for r in records)
            + f"\n  side by side (input, reconstruction): {directory / 'reconstruction.png'}")
    return dict(text=text, outputs=outputs, records=records, directory=directory)
