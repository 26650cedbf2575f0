#!/usr/bin/env python3
"""Converts an old (pre-zip, "legacy") torch state-dict pickle into safetensors, with the Python
standard library only: no torch, no numpy.

The legacy format is five things one after another: a magic-number pickle, a protocol-version
pickle, a system-info pickle, the state dict's pickle (tensors in it refer to storages by key
through persistent ids), a pickle of the storage keys in file order, then for each storage its
element count (int64, little-endian) and its raw little-endian elements.

The unpickler is restricted: it builds only an OrderedDict and tensor stand-ins, and refuses
every other global (a pickle can name any callable; this one never calls any). Tensors must be
float32 (any strides: they are gathered into row-major order); int64 BatchNorm counters (num_batches_tracked), if present, are dropped.
The output is deterministic (names sorted, no metadata), so fetch-assets.sh pins its sha256.

usage: torch_to_safetensors.py INPUT.pth OUTPUT.safetensors [--expect-entries N] [--expect-tensors N]
"""

import argparse
import array
import collections
import itertools
import json
import os
import pickle
import struct
import sys

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

# Storage class name -> (safetensors dtype, bytes per element).
STORAGES = {
    "FloatStorage": ("F32", 4),
    "LongStorage": ("I64", 8),
}


class Storage:
    def __init__(self, kind, key, size):
        self.kind, self.key, self.size = kind, key, size
        self.data = None


class StorageType:
    def __init__(self, name):
        self.name = name


class Tensor:
    def __init__(self, storage, offset, shape, stride):
        self.storage, self.offset, self.shape, self.stride = storage, offset, tuple(shape), tuple(stride)


def rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, *rest):
    return Tensor(storage, storage_offset, size, stride)


class RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file):
        super().__init__(file)
        self.storages = {}

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return rebuild_tensor_v2
        if module == "torch" and name in STORAGES:
            return StorageType(name)
        raise pickle.UnpicklingError(f"refusing global {module}.{name}")

    def persistent_load(self, pid):
        kind, storage_type, key, _location, size, view_metadata = pid
        if kind != "storage" or not isinstance(storage_type, StorageType) or view_metadata is not None:
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        storage = self.storages.setdefault(key, Storage(storage_type.name, key, size))
        return storage


def load_legacy(path):
    if sys.byteorder != "little":
        raise ValueError("this converter copies little-endian elements as they are: run it on a little-endian machine")
    with open(path, "rb") as file:
        if pickle.load(file) != LEGACY_MAGIC:
            raise ValueError(f"{path}: not a legacy torch file (bad magic number)")
        if pickle.load(file) != LEGACY_PROTOCOL:
            raise ValueError(f"{path}: unsupported legacy protocol version")
        sys_info = pickle.load(file)
        if not sys_info.get("little_endian"):
            raise ValueError(f"{path}: big-endian storages are not supported")
        unpickler = RestrictedUnpickler(file)
        state = unpickler.load()
        keys = pickle.load(file)  # plain strings; the default unpickler builds nothing else here
        if not all(isinstance(key, str) for key in keys) or set(keys) != set(unpickler.storages):
            raise ValueError(f"{path}: storage keys do not match the state dict")
        for key in keys:
            storage = unpickler.storages[key]
            _, item = STORAGES[storage.kind]
            (count,) = struct.unpack("<q", file.read(8))
            if count != storage.size:
                raise ValueError(f"{path}: storage {key} has {count} elements, expected {storage.size}")
            storage.data = file.read(count * item)
            if len(storage.data) != count * item:
                raise ValueError(f"{path}: truncated in storage {key}")
        if file.read(1):
            raise ValueError(f"{path}: trailing bytes after the last storage")
    if not isinstance(state, collections.OrderedDict):
        raise ValueError(f"{path}: expected a state dict, got {type(state).__name__}")
    return state


def contiguous_strides(shape):
    strides, step = [], 1
    for dim in reversed(shape):
        strides.append(step)
        step *= dim
    return tuple(reversed(strides))


def tensor_bytes(name, tensor):
    """The tensor's elements in row-major order (the layout safetensors means), whatever its
    strides: some of these weights were saved with permuted (channels-last) strides."""
    dtype, item = STORAGES[tensor.storage.kind]
    shape, stride = tensor.shape, tensor.stride
    count = 1
    for dim in shape:
        count *= dim
    if count == 0:
        return dtype, b""
    last = tensor.offset + sum((dim - 1) * step for dim, step in zip(shape, stride))
    if tensor.offset < 0 or min(stride, default=1) < 0 or (last + 1) * item > len(tensor.storage.data):
        raise ValueError(f"{name}: shape {shape} with stride {stride} runs past its storage")
    if not shape or stride == contiguous_strides(shape):
        start = tensor.offset * item
        return dtype, tensor.storage.data[start:start + count * item]
    elements = array.array({4: "f", 8: "q"}[item])
    elements.frombytes(tensor.storage.data)
    gathered = array.array(elements.typecode)
    inner, inner_step = shape[-1], stride[-1]
    for outer in itertools.product(*(range(dim) for dim in shape[:-1])):
        base = tensor.offset + sum(index * step for index, step in zip(outer, stride))
        gathered.extend(elements[base:base + (inner - 1) * inner_step + 1:inner_step] if inner_step
                        else [elements[base]] * inner)
    return dtype, gathered.tobytes()


def write_safetensors(path, tensors):
    header, blobs, offset = {}, [], 0
    for name in sorted(tensors):
        dtype, shape, data = tensors[name]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    encoded = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
    encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned
    temporary = f"{path}.part"
    with open(temporary, "wb") as file:
        file.write(struct.pack("<Q", len(encoded)))
        file.write(encoded)
        for blob in blobs:
            file.write(blob)
    os.replace(temporary, path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input")
    parser.add_argument("output")
    parser.add_argument("--expect-entries", type=int, help="fail unless the state dict has exactly this many entries")
    parser.add_argument("--expect-tensors", type=int, help="fail unless exactly this many tensors are written")
    args = parser.parse_args()

    state = load_legacy(args.input)
    tensors, dropped, parameters = {}, [], 0
    for name, tensor in state.items():
        if not isinstance(name, str) or not isinstance(tensor, Tensor):
            raise ValueError(f"{args.input}: entry {name!r} is not a tensor")
        dtype, data = tensor_bytes(name, tensor)
        if dtype != "F32":
            if name.endswith("num_batches_tracked"):
                dropped.append(name)
                continue
            raise ValueError(f"{name}: {dtype} where float32 was expected")
        tensors[name] = (dtype, tensor.shape, data)
        parameters += len(data) // 4
    if args.expect_entries is not None and len(state) != args.expect_entries:
        raise ValueError(f"{args.input}: {len(state)} state-dict entries, expected {args.expect_entries}")
    if args.expect_tensors is not None and len(tensors) != args.expect_tensors:
        raise ValueError(f"{args.input}: {len(tensors)} tensors, expected {args.expect_tensors}")
    write_safetensors(args.output, tensors)
    print(f"{args.output}: {len(state)} entries, {len(tensors)} float32 tensors, {parameters} parameters"
          + (f" ({len(dropped)} num_batches_tracked dropped)" if dropped else ""), file=sys.stderr)


if __name__ == "__main__":
    main()
