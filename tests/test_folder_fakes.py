"""data.fake_folders: image files from a folder as a named generator of a detection source."""
import numpy as np
import pytest
from PIL import Image

from jaxface import config as config_lib
from jaxface.data import folder_fakes, pipeline


def _folder(root, n=40, size=24):
    rng = np.random.default_rng(0)
    for i in range(n):
        sub = root / f"set{i % 3}" / "images"
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(sub / f"{i:03d}.png")
    return root


def _config(folder, **extra):
    return config_lib.load_config("configs/detect/synthfakes_mobilenet.py", {
        "data.image_size": 32, "model.input_size": 32, "data.num_train": 64, "data.num_val": 16, "data.num_test": 16,
        "data.fake_folders": {"made_here": str(folder)}, **extra})


def test_the_files_split_without_overlap_and_join_as_one_more_generator(tmp_path):
    folder = _folder(tmp_path / "made")
    per_split = {s: folder_fakes.folder_paths(folder, s) for s in ("train", "val", "test")}
    every = folder_fakes.folder_paths(folder, "all")
    assert len(every) == 40 and sorted(sum(per_split.values(), [])) == every
    assert len(per_split["train"]) > len(per_split["test"]) > 0
    cfg = _config(folder)
    for split in ("train", "test"):
        source = pipeline.build_source(cfg.data, split)
        assert source.generator_names == ("real", "upsample", "faceswap", "made_here")
        n_base = cfg.data[f"num_{split}"]
        assert len(source) == n_base + len(per_split[split])
        tail = [source[i] for i in range(n_base, len(source))]
        assert [r["path"] for r in tail] == per_split[split]
        assert all(int(r["label"]) == 1 and int(r["generator_id"]) == 3 for r in tail)
        assert (source.labels[n_base:] == 1).all() and (source.generator_ids[n_base:] == 3).all()
        # The batched reader (the render cache's) gives the same records as one at a time.
        batched = source._getitems([0, n_base, len(source) - 1])
        assert batched[1]["path"] == tail[0]["path"] and int(batched[0]["index"]) == 0


def test_a_training_batch_decodes_the_files_beside_the_rendered_faces(tmp_path):
    cfg = _config(_folder(tmp_path / "made"), **{"batch_size": 16, "eval_batch_size": 16, "data.augment.enabled": False})
    from jaxface.train import trainer

    setup = trainer.build(cfg)
    import jax

    with jax.set_mesh(setup.mesh):
        batch = next(iter(pipeline.batches(cfg, "test", setup.mesh, training=False)))
    ids = np.asarray(batch["generator_id"])[np.asarray(batch["valid"], bool)]
    assert np.asarray(batch["image"]).shape[1:] == (32, 32, 3)
    assert set(ids.tolist()) <= {0, 1, 2, 3}


@pytest.mark.parametrize("folders, message", [
    ({"made_here": "/no/such/folder"}, "is not a folder"),
    ({"upsample": "."}, "which the data already uses"),
    ({"real": "."}, "which the data already uses"),
])
def test_bad_fake_folders_are_one_clear_error(folders, message):
    cfg = _config(".")
    cfg.data.fake_folders = folders
    with pytest.raises(pipeline.DataConfigError, match=message):
        pipeline.build_source(cfg.data, "train")


def test_an_empty_folder_and_a_non_detection_source_are_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(pipeline.DataConfigError, match="holds no image files"):
        pipeline.build_source(_config(tmp_path / "empty").data, "train")
    cfg = config_lib.load_config("configs/attributes/synthfaces_tiny.py", {"data.fake_folders": {"x": str(tmp_path)}})
    with pytest.raises(pipeline.DataConfigError, match="adds fakes to a detection source"):
        pipeline.build_source(cfg.data, "train")
