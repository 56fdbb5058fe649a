"""`jaxface data`: dataset summary (sizes per split, per-attribute positive rates) and preview grids."""
from __future__ import annotations


import numpy as np

from jaxface import files
from jaxface.data import pipeline
from jaxface import plots


def _unreadable(source, split: str) -> tuple[int, list[str]]:
    """How many of a file-backed source's images do not decode, and the first few reasons.

    Every file is decoded (the only reliable test: a truncated JPEG opens but fails to load); rendered
    sources have nothing to check."""
    from jaxface.data import imageio

    n = len(source)
    if n == 0 or "path" not in source[0]:
        return 0, []
    bad, reasons = 0, []
    indices = range(n)
    if n >= 2000:
        from tqdm import tqdm

        indices = tqdm(indices, desc=f"checking {split} images", unit="image", leave=False)
    for i in indices:
        try:
            imageio.decode_image(source[i]["path"])
        except imageio.ImageDecodeError as err:
            bad += 1
            if len(reasons) < 3:
                reasons.append(str(err))
    return bad, reasons


def _split_sizes(data_cfg) -> tuple[dict, dict, list[str]]:
    """Readable images per split, unreadable files per split, the first few reasons."""
    sizes, unreadable, reasons = {}, {}, []
    for split in pipeline.SPLITS:
        source = pipeline.build_source(data_cfg, split)
        bad, why = _unreadable(source, split)
        sizes[split], unreadable[split] = len(source) - bad, bad
        reasons += why[: 3 - len(reasons)]
    if sum(sizes.values()) == 0:
        if sum(unreadable.values()):
            raise pipeline.UnreadableDataError(
                f"none of the dataset's {sum(unreadable.values())} files could be read; first reasons: "
                + "; ".join(reasons))
        raise pipeline.DataConfigError("the dataset is empty: no split has any image")
    return sizes, unreadable, reasons


def _size_line(source_name, sizes, unreadable) -> str:
    line = ", ".join(f"{k} {v}" for k, v in sizes.items())
    if sum(unreadable.values()):
        line += " (unreadable, skipped: " + ", ".join(f"{k} {v}" for k, v in unreadable.items()) + ")"
    return f"{source_name}: {line}"


def _preview_records(config, source, n: int, augment=None):
    """The first n records of the train split, decoded and resized as the trainer sees them."""
    spec = pipeline.loader_spec_from_config(config, "train")
    decode = pipeline.DecodeAndResize(spec.image_size, strict=spec.strict)
    records, i = [], 0
    rng = np.random.default_rng(int(config.seed))
    while len(records) < n and i < len(source):
        rec = decode.map(dict(source[i]))
        i += 1
        if rec.get("_bad"):
            continue
        if augment is not None:
            rec["image"] = augment(rec["image"], rng, rec.get("landmarks"))
        records.append(rec)
    return records, decode.num_bad


def attribute_report(config, workdir, num_preview: int = 16) -> dict:
    data_cfg = config.data
    schema = pipeline.schema_for(data_cfg)
    sizes, unreadable, reasons = _split_sizes(data_cfg)
    train = pipeline.build_source(data_cfg, "train")
    attrs, mask = pipeline.attribute_table(train)
    rates, labelled = pipeline.positive_rates(attrs, mask)
    out_dir = files.as_path(workdir) / "data"
    records, bad = _preview_records(config, train, num_preview)
    captions = []
    for r in records:
        present = [schema.attribute_names[k] for k in np.flatnonzero((r["attributes"] > 0.5) & r["attribute_mask"])]
        captions.append("\n".join(present) if present else "(none)")
    preview = plots.labelled_grid(
        out_dir / "preview.png", [r["image"] for r in records], captions,
        title=f"{data_cfg.source}: train samples as the model sees them ({config.data.image_size} px)",
    )
    chart = plots.bar_chart(
        out_dir / "attribute_rates.png", list(schema.attribute_names), rates,
        title=f"Positive rate per attribute ({data_cfg.source}, train, n={len(train)})",
        xlabel="fraction of labelled images with the attribute",
    )
    summary = {
        "source": data_cfg.source,
        "schema": schema.name,
        "num_images": sizes,
        "num_unreadable": unreadable,
        "unreadable_reasons": reasons,
        "attributes": {
            name: {"positive_rate": float(rates[k]), "labelled_fraction": float(labelled[k])}
            for k, name in enumerate(schema.attribute_names)
        },
        "preview_unreadable": bad,
    }
    files.write_json(out_dir / "summary.json", summary)
    lines = [_size_line(f"{data_cfg.source} ({schema})", sizes, unreadable)]
    lines.append(f"{'attribute':32s} {'positive':>9s} {'labelled':>9s}")
    for k, name in enumerate(schema.attribute_names):
        lines.append(f"{name:32s} {rates[k]:9.3f} {labelled[k]:9.3f}")
    return {"summary": summary, "text": "\n".join(lines),
            "outputs": [preview, chart, out_dir / "summary.json"]}


def detection_report(config, workdir, num_preview: int = 16, augment=None) -> dict:
    data_cfg = config.data
    sizes, unreadable, reasons = _split_sizes(data_cfg)
    train = pipeline.build_source(data_cfg, "train")
    names = list(train.generator_names)
    gen_ids = np.array([int(train[i]["generator_id"]) for i in range(len(train))])
    counts = {names[g]: int((gen_ids == g).sum()) for g in range(len(names))}
    out_dir = files.as_path(workdir) / "data"
    # Interleave classes so the preview shows both real and fake faces.
    order = np.concatenate([np.flatnonzero(gen_ids == g)[: max(1, num_preview // len(names))]
                            for g in range(len(names))])

    class _Subset:
        def __len__(self):
            return len(order)

        def __getitem__(self, i):
            return train[int(order[i])]

    outputs = []
    for tag, aug in (("preview", None),) + ((("augmented", augment),) if augment is not None else ()):
        records, _ = _preview_records(config, _Subset(), num_preview, augment=aug)
        captions = [names[int(r["generator_id"])] for r in records]
        outputs.append(plots.labelled_grid(
            out_dir / f"{tag}.png", [r["image"] for r in records], captions,
            title=f"{data_cfg.source}: {tag} train samples ({config.data.image_size} px)"))
    summary = {"source": data_cfg.source, "num_images": sizes, "num_unreadable": unreadable,
               "unreadable_reasons": reasons, "train_per_generator": counts}
    files.write_json(out_dir / "summary.json", summary)
    lines = [_size_line(data_cfg.source, sizes, unreadable)]
    lines += [f"  train {name:16s} {c}" for name, c in counts.items()]
    return {"summary": summary, "text": "\n".join(lines), "outputs": outputs + [out_dir / "summary.json"]}


def real_faces_with(data_cfg, attribute_indices, num: int, split: str = "test", max_scan: int = 20000):
    """Up to `num` images of a split that carry every attribute in `attribute_indices` (labelled and
    positive), in split order: what real faces with a requested attribute set look like, to show beside
    generated ones. -> (uint8 images (n, S, S, 3), their indices). Rendered sources are filtered on their
    labels before any image is rendered; a file source reads records until it has enough."""
    source = pipeline.build_source(data_cfg, split)
    wanted = np.asarray(list(attribute_indices), np.int64)
    size = int(data_cfg.image_size)
    decode = pipeline.DecodeAndResize(size)
    n_scan = min(len(source), int(max_scan))
    chosen: list[int] = []
    rendered = hasattr(source, "sample_attributes")
    if rendered:
        for start in range(0, n_scan, 1024):
            labels = source.sample_attributes(np.arange(start, min(start + 1024, n_scan)))
            hits = np.flatnonzero((labels[:, wanted] > 0.5).all(axis=1)) + start
            chosen += [int(i) for i in hits[: num - len(chosen)]]
            if len(chosen) >= num:
                break
    images, indices = [], []
    for i in chosen if rendered else range(n_scan):
        if len(images) >= num:
            break
        rec = source[int(i)]
        if not rendered:  # a file source: its labels come with the record
            mask = np.asarray(rec.get("attribute_mask", np.ones_like(rec["attributes"])), bool)
            if not ((np.asarray(rec["attributes"])[wanted] > 0.5) & mask[wanted]).all():
                continue
        rec = decode.map(dict(rec))
        if rec.get("_bad"):
            continue
        images.append(np.asarray(rec["image"], np.uint8))
        indices.append(int(i))
    if not images:
        return np.zeros((0, size, size, 3), np.uint8), []
    return np.stack(images), indices
