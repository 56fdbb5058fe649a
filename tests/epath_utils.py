"""A gs:// bucket served from a local folder through etils.epath's own test mocks (no network)."""
import os

from etils.epath import testing as epath_testing


def bucket_on_disk(root):
    """epath mocks that serve gs://NAME/... from ROOT/NAME/... (no network): the same calls a real
    bucket gets, with the scheme kept all the way down to the backend."""
    def local(path):
        text = os.fspath(path)
        assert text.startswith("gs://"), text  # a collapsed "gs:/..." would be a local path: the bug
        return text.replace("gs://", f"{root}/", 1)

    def one(fn, path, *args, **kwargs):
        return fn(local(path), *args, **kwargs)

    def two(fn, path, dst, *args, **kwargs):
        return fn(local(path), local(dst), *args, **kwargs)

    ops = ("open", "exists", "isdir", "listdir", "makedirs", "mkdir", "remove", "rmtree", "stat", "walk")
    return epath_testing.mock_epath(**{op: one for op in ops}, rename=two, replace=two, copy=two)
