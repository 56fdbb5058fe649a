"""`jaxface data`: dataset summary (sizes per split, per-attribute positive rates) and preview grids."""
from __future__ import annotations


import numpy as np

from jaxface import files
from jaxface.data import pipeline
from jaxface import plots


def _split_sizes(data_cfg) -> dict:
    sizes = {}
    for split in pipeline.SPLITS:
        sizes[split] = len(pipeline.build_source(data_cfg, split))
    if sum(sizes.values()) == 0:
        raise pipeline.DataConfigError("the dataset is empty: no split has any image")
    return sizes


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
    sizes = _split_sizes(data_cfg)
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
        "attributes": {
            name: {"positive_rate": float(rates[k]), "labelled_fraction": float(labelled[k])}
            for k, name in enumerate(schema.attribute_names)
        },
        "preview_unreadable": bad,
    }
    files.write_json(out_dir / "summary.json", summary)
    lines = [f"{data_cfg.source} ({schema}): " + ", ".join(f"{k} {v}" for k, v in sizes.items())]
    lines.append(f"{'attribute':32s} {'positive':>9s} {'labelled':>9s}")
    for k, name in enumerate(schema.attribute_names):
        lines.append(f"{name:32s} {rates[k]:9.3f} {labelled[k]:9.3f}")
    return {"summary": summary, "text": "\n".join(lines),
            "outputs": [preview, chart, out_dir / "summary.json"]}


def detection_report(config, workdir, num_preview: int = 16, augment=None) -> dict:
    data_cfg = config.data
    sizes = _split_sizes(data_cfg)
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
    summary = {"source": data_cfg.source, "num_images": sizes, "train_per_generator": counts}
    files.write_json(out_dir / "summary.json", summary)
    lines = [f"{data_cfg.source}: " + ", ".join(f"{k} {v}" for k, v in sizes.items())]
    lines += [f"  train {name:16s} {c}" for name, c in counts.items()]
    return {"summary": summary, "text": "\n".join(lines), "outputs": outputs + [out_dir / "summary.json"]}
