"""Read and write PyTorch `torch.save` state dicts as numpy arrays, without importing torch.

Reading supports both layouts `torch.save` has produced:
  * the zip archive (torch >= 1.6): `<name>/data.pkl` holds the pickled object; every tensor refers to
    a storage through a persistent id ('storage', <dtype>Storage, key, location, numel) whose bytes
    are the record `<name>/data/<key>`; `<name>/byteorder` says little/big endian (little if absent).
  * the legacy stream (torch < 1.6, e.g. the 2017 `vgg_face_dag.pth`): pickled magic number, protocol
    version and system info, the pickled object, the pickled list of storage keys, then for each key
    an int64 element count followed by the raw bytes.
Tensors are rebuilt from `torch._utils._rebuild_tensor_v2` / `_rebuild_tensor` / `_rebuild_parameter`
calls (storage, offset, size, stride), honouring strides and offsets into shared storages.

The unpickler is restricted: it resolves only the handful of globals a state dict needs (OrderedDict,
the tensor rebuild functions, storage types and dtypes). Anything else, such as a whole pickled
nn.Module, raises TorchPickleError instead of importing or executing code.

`save_torch_state_dict` writes the zip layout that `torch.load` reads (verified against torch 2.13,
including its default `weights_only=True` loader).
"""
from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile
from typing import Any, Mapping

import ml_dtypes
import numpy as np

__all__ = ["TorchPickleError", "load_torch_state_dict", "load_torch_file", "save_torch_state_dict"]

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL_VERSION = 1001

# storage type name -> numpy dtype (element type of the storage)
_STORAGE_DTYPES = {
    "FloatStorage": np.dtype(np.float32),
    "DoubleStorage": np.dtype(np.float64),
    "HalfStorage": np.dtype(np.float16),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype(np.int64),
    "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8),
    "BoolStorage": np.dtype(np.bool_),
}
_TORCH_DTYPES = {
    "float32": np.dtype(np.float32),
    "float": np.dtype(np.float32),
    "float64": np.dtype(np.float64),
    "double": np.dtype(np.float64),
    "float16": np.dtype(np.float16),
    "half": np.dtype(np.float16),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
    "int64": np.dtype(np.int64),
    "long": np.dtype(np.int64),
    "int32": np.dtype(np.int32),
    "int": np.dtype(np.int32),
    "int16": np.dtype(np.int16),
    "int8": np.dtype(np.int8),
    "uint8": np.dtype(np.uint8),
    "bool": np.dtype(np.bool_),
}
_NUMPY_TO_STORAGE = {dtype: name for name, dtype in _STORAGE_DTYPES.items()}


class TorchPickleError(ValueError):
    """The file is not a torch-saved state dict this reader understands."""


# ----------------------------------------------------------------------------------------------- reading
class _StorageType:
    def __init__(self, name: str):
        self.name = name
        self.dtype = _STORAGE_DTYPES[name]


class _Storage:
    """A storage whose bytes may arrive after unpickling (legacy layout)."""

    def __init__(self, key: str, dtype: np.dtype, numel: int):
        self.key = key
        self.dtype = dtype
        self.numel = numel
        self.data: np.ndarray | None = None  # flat array of `dtype`
        self.view_of: tuple[_Storage, int, int] | None = None  # (root, element offset, size)

    def array(self) -> np.ndarray:
        if self.view_of is not None:
            root, offset, size = self.view_of
            return root.array()[offset : offset + size]
        if self.data is None:
            raise TorchPickleError(f"storage {self.key!r} has no data in the file (truncated file?)")
        return self.data


class _LazyTensor:
    def __init__(self, storage: _Storage, offset: int, size, stride, dtype: np.dtype | None = None):
        self.storage = storage
        self.offset = int(offset)
        self.size = tuple(int(s) for s in size)
        self.stride = tuple(int(s) for s in stride)
        self.dtype = dtype

    def materialize(self) -> np.ndarray:
        flat = self.storage.array()
        if self.dtype is not None and self.dtype != flat.dtype:
            flat = flat.view(self.dtype)
        if not self.size:
            return np.array(flat[self.offset])
        if any(s == 0 for s in self.size):
            return np.zeros(self.size, dtype=flat.dtype)
        last = self.offset + sum((n - 1) * st for n, st in zip(self.size, self.stride))
        if self.offset < 0 or last >= flat.size:
            raise TorchPickleError(
                f"tensor of size {self.size} / stride {self.stride} at offset {self.offset} does not fit "
                f"in its storage of {flat.size} elements (corrupt file?)"
            )
        view = np.lib.stride_tricks.as_strided(
            flat[self.offset :],
            shape=self.size,
            strides=tuple(st * flat.itemsize for st in self.stride),
            writeable=False,
        )
        return np.array(view)  # own, contiguous copy


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
    return _LazyTensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype, *unused):
    return _LazyTensor(storage, storage_offset, size, stride, dtype=dtype)


def _rebuild_parameter(data, *unused):
    return data


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, storage_resolver):
        super().__init__(file, encoding="latin1")
        self._storage_resolver = storage_resolver

    def find_class(self, module: str, name: str):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch._utils":
            if name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
                return _rebuild_tensor
            if name == "_rebuild_tensor_v3":
                return _rebuild_tensor_v3
            if name in ("_rebuild_parameter", "_rebuild_parameter_with_state"):
                return _rebuild_parameter
        if module in ("torch", "torch.cuda") and name in _STORAGE_DTYPES:  # a GPU save is read to CPU
            return _StorageType(name)
        if module == "torch" and name in _TORCH_DTYPES:
            return _TORCH_DTYPES[name]
        raise TorchPickleError(
            f"the file references {module}.{name}, which a plain state dict does not contain; only "
            f"dicts of tensors are read (save `model.state_dict()`, not the model object)"
        )

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise TorchPickleError(f"unsupported persistent id {pid!r} (not a tensor storage)")
        return self._storage_resolver(pid)


def _storage_dtype(storage_type) -> np.dtype:
    if isinstance(storage_type, _StorageType):
        return storage_type.dtype
    if isinstance(storage_type, np.dtype):  # untyped storage with a dtype (newer formats)
        return storage_type
    raise TorchPickleError(f"unsupported storage type {storage_type!r}")


def _materialize(obj: Any) -> Any:
    if isinstance(obj, _LazyTensor):
        return obj.materialize()
    if isinstance(obj, Mapping):
        out = collections.OrderedDict() if isinstance(obj, collections.OrderedDict) else {}
        for k, v in obj.items():
            out[k] = _materialize(v)
        return out
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialize(v) for v in obj)
    return obj


def _load_zip(path: str) -> Any:
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as e:
        raise TorchPickleError(f"{path}: not a readable zip archive ({e})") from None
    with archive:
        names = archive.namelist()
        pkl = [n for n in names if n.endswith("data.pkl") and n.count("/") <= 1]
        if not pkl:
            raise TorchPickleError(f"{path}: zip archive without a data.pkl record; not a torch.save file")
        prefix = pkl[0][: -len("data.pkl")]
        byteorder = "little"
        if prefix + "byteorder" in names:
            byteorder = archive.read(prefix + "byteorder").decode().strip()
        if byteorder not in ("little", "big"):
            raise TorchPickleError(f"{path}: unknown byte order {byteorder!r}")
        storages: dict[str, _Storage] = {}

        def resolve(pid):
            _, storage_type, key, _location, numel = pid[:5]
            key = str(key)
            if key not in storages:
                dtype = _storage_dtype(storage_type)
                record = f"{prefix}data/{key}"
                try:
                    raw = archive.read(record)
                except KeyError:
                    raise TorchPickleError(f"{path}: missing storage record {record!r}") from None
                stored = dtype.newbyteorder("<" if byteorder == "little" else ">")
                if len(raw) % dtype.itemsize:
                    raise TorchPickleError(f"{path}: storage {key} has {len(raw)} bytes, not a multiple "
                                           f"of {dtype.itemsize}")
                data = np.frombuffer(raw, dtype=stored).astype(dtype)
                storage = _Storage(key, dtype, data.size)
                storage.data = data
                storages[key] = storage
            return storages[key]

        try:
            obj = _RestrictedUnpickler(io.BytesIO(archive.read(pkl[0])), resolve).load()
        except TorchPickleError:
            raise
        except Exception as e:  # malformed pickle stream
            raise TorchPickleError(f"{path}: cannot unpickle {pkl[0]} ({type(e).__name__}: {e})") from None
        return _materialize(obj)


def _load_legacy(path: str) -> Any:
    with open(path, "rb") as f:
        try:
            magic = pickle.load(f, encoding="latin1")
            if magic != _LEGACY_MAGIC:
                raise TorchPickleError(f"{path}: not a torch.save file (bad magic number)")
            version = pickle.load(f, encoding="latin1")
            if version != _LEGACY_PROTOCOL_VERSION:
                raise TorchPickleError(f"{path}: unsupported legacy torch protocol version {version!r}")
            sys_info = pickle.load(f, encoding="latin1")
        except TorchPickleError:
            raise
        except Exception as e:
            raise TorchPickleError(f"{path}: not a torch.save file ({type(e).__name__}: {e})") from None
        little = bool(sys_info.get("little_endian", True)) if isinstance(sys_info, dict) else True
        storages: dict[str, _Storage] = {}

        def resolve(pid):
            _, storage_type, root_key, _location, numel = pid[:5]
            view_metadata = pid[5] if len(pid) > 5 else None
            root_key = str(root_key)
            dtype = _storage_dtype(storage_type)
            if root_key not in storages:
                storages[root_key] = _Storage(root_key, dtype, int(numel))
            root = storages[root_key]
            if view_metadata is None:
                return root
            view_key, offset, size = view_metadata
            view = _Storage(str(view_key), dtype, int(size))
            view.view_of = (root, int(offset), int(size))
            storages.setdefault(str(view_key), view)
            return view

        try:
            obj = _RestrictedUnpickler(f, resolve).load()
            keys = pickle.load(f, encoding="latin1")
        except TorchPickleError:
            raise
        except Exception as e:
            raise TorchPickleError(f"{path}: cannot unpickle ({type(e).__name__}: {e})") from None
        for key in keys:
            key = str(key)
            if key not in storages:
                raise TorchPickleError(f"{path}: storage {key!r} listed but never referenced")
            storage = storages[key]
            header = f.read(8)
            if len(header) != 8:
                raise TorchPickleError(f"{path}: truncated before storage {key!r}")
            (count,) = struct.unpack("<q" if little else ">q", header)
            nbytes = count * storage.dtype.itemsize
            raw = f.read(nbytes)
            if len(raw) != nbytes:
                raise TorchPickleError(f"{path}: truncated inside storage {key!r}")
            stored = storage.dtype.newbyteorder("<" if little else ">")
            storage.data = np.frombuffer(raw, dtype=stored).astype(storage.dtype)
        return _materialize(obj)


def load_torch_file(path: str | os.PathLike) -> Any:
    """Unpickle a torch.save file holding dicts/lists of tensors; tensors become numpy arrays."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such torch file: {path}")
    if zipfile.is_zipfile(path):
        return _load_zip(path)
    with open(path, "rb") as f:
        head = f.read(2)
    if head[:1] == b"\x80":
        return _load_legacy(path)
    raise TorchPickleError(
        f"{path}: neither a torch zip archive nor a legacy torch pickle (the tar format of torch < 0.4 "
        f"is not supported; re-save it with a current torch)"
    )


def load_torch_state_dict(path: str | os.PathLike) -> "collections.OrderedDict[str, np.ndarray]":
    """A torch-saved state dict as an ordered {name: numpy array}.

    Accepts `{'state_dict': {...}}` wrappers as written by many training scripts, and drops the
    non-tensor `_metadata` entries torch attaches.
    """
    obj = load_torch_file(path)
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise TorchPickleError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    out = collections.OrderedDict()
    for k, v in obj.items():
        if isinstance(v, np.ndarray):
            out[str(k)] = v
    if not out:
        raise TorchPickleError(f"{path}: the state dict holds no tensors")
    return out


# ----------------------------------------------------------------------------------------------- writing
class _TorchGlobal:
    """Stands for a torch global (function or class) in the pickle stream without importing torch."""

    def __init__(self, module: str, name: str):
        self.module = module
        self.name = name

    def __call__(self, *args):  # pickle requires reduce callables to be callable
        raise TypeError("placeholder for a torch global; only used when writing pickles")


_REBUILD_TENSOR_V2 = _TorchGlobal("torch._utils", "_rebuild_tensor_v2")


class _StorageRef:
    def __init__(self, key: str, storage_type: str, numel: int):
        self.key = key
        self.storage_type = storage_type
        self.numel = numel


class _TensorRef:
    def __init__(self, storage: _StorageRef, shape: tuple[int, ...]):
        self.storage = storage
        self.shape = shape

    def __reduce__(self):
        stride = []
        acc = 1
        for n in reversed(self.shape):
            stride.append(acc)
            acc *= max(n, 1)
        stride = tuple(reversed(stride))
        return (
            _REBUILD_TENSOR_V2,
            (self.storage, 0, tuple(self.shape), stride, False, collections.OrderedDict()),
        )


class _TorchPickler(pickle._Pickler):  # the pure-Python pickler lets us emit foreign globals
    dispatch = dict(pickle._Pickler.dispatch)

    def _save_torch_global(self, obj: _TorchGlobal):
        if id(obj) in self.memo:
            self.write(self.get(self.memo[id(obj)][0]))
            return
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode("ascii"))
        self.memoize(obj)

    dispatch[_TorchGlobal] = _save_torch_global

    def persistent_id(self, obj):
        if isinstance(obj, _StorageRef):
            return ("storage", _storage_global(obj.storage_type), obj.key, "cpu", obj.numel)
        return None


_STORAGE_GLOBALS: dict[str, _TorchGlobal] = {}


def _storage_global(name: str) -> _TorchGlobal:
    return _STORAGE_GLOBALS.setdefault(name, _TorchGlobal("torch", name))


def save_torch_state_dict(path: str | os.PathLike, state_dict: Mapping[str, np.ndarray]) -> None:
    """Write {name: array} in torch's zip format (what `torch.save(state_dict, path)` produces)."""
    path = os.fspath(path)
    archive_name = os.path.splitext(os.path.basename(path))[0] or "archive"
    tensors = collections.OrderedDict()
    records: list[tuple[str, bytes]] = []
    for i, (name, value) in enumerate(state_dict.items()):
        array = np.asarray(value)
        dtype = array.dtype
        if dtype not in _NUMPY_TO_STORAGE:
            raise TorchPickleError(f"{name}: dtype {dtype} has no torch storage type")
        key = str(i)
        storage = _StorageRef(key, _NUMPY_TO_STORAGE[dtype], int(array.size))
        tensors[str(name)] = _TensorRef(storage, tuple(int(n) for n in array.shape))
        records.append((f"data/{key}", np.ascontiguousarray(array).astype(dtype.newbyteorder("<")).tobytes()))
    buffer = io.BytesIO()
    _TorchPickler(buffer, protocol=2).dump(tensors)
    entries = [("data.pkl", buffer.getvalue()), (".format_version", b"1"), (".storage_alignment", b"64"),
               ("byteorder", b"little")] + records + [("version", b"3\n")]
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, data in entries:
            archive.writestr(f"{archive_name}/{name}", data)
