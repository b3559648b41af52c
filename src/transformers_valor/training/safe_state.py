"""Training state in files that cannot execute code: plain data as JSON, tensors and arrays in safetensors.

Checkpoints hold nested state (an optimizer's `state_dict()`, an LR scheduler's, the RNG states of Python, NumPy
and torch). Pickle (`torch.save`) would store them in one call, but loading a pickle runs whatever the file says;
[`save_state_tree`] writes `<name>.json` (the structure and every scalar) and, when the tree holds tensors or
NumPy arrays, `<name>.safetensors`; [`load_state_tree`] reads them back exactly (tuples, non-string dict keys,
NaN/inf floats, tensor dtypes and shapes, NumPy dtypes included). Anything else in a tree is refused at save time.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

# Tags of the JSON objects that stand for what JSON has no type for.
_TENSOR, _ARRAY, _TUPLE, _DICT = "__tensor__", "__ndarray__", "__tuple__", "__dict__"
_TAGS = (_TENSOR, _ARRAY, _TUPLE, _DICT)


class StateFileError(ValueError):
    """A state file is missing, unreadable or does not hold what it should; the message names the file."""


def state_files(path: str | os.PathLike) -> tuple[Path, Path]:
    """The two files of the state tree `path` (`<path>.json`, `<path>.safetensors`)."""
    path = Path(path)
    return path.with_name(path.name + ".json"), path.with_name(path.name + ".safetensors")


def _encode(value: Any, where: str, tensors: dict[str, torch.Tensor]) -> Any:
    """`value` as JSON-ready data; tensors and arrays go to `tensors` under their path in the tree."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (torch.Tensor, np.ndarray)) and where in tensors:
        raise TypeError(f"Two tensors of a training state would both be stored as `{where}`.")
    if isinstance(value, torch.Tensor):
        tensors[where] = value.detach().to("cpu", copy=True).contiguous()
        return {_TENSOR: where}
    if isinstance(value, np.ndarray):
        data = np.ascontiguousarray(value)
        tensors[where] = torch.frombuffer(bytearray(data.tobytes()), dtype=torch.uint8)
        return {_ARRAY: where, "dtype": data.dtype.str, "shape": list(data.shape)}
    if isinstance(value, tuple):
        return {_TUPLE: [_encode(v, f"{where}.{i}", tensors) for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, f"{where}.{i}", tensors) for i, v in enumerate(value)]
    if isinstance(value, dict):
        if all(isinstance(k, str) and k not in _TAGS for k in value):
            return {k: _encode(v, f"{where}.{k}", tensors) for k, v in value.items()}
        pairs = [
            [_encode(k, f"{where}.key{i}", tensors), _encode(v, f"{where}.{k}", tensors)]
            for i, (k, v) in enumerate(value.items())
        ]
        return {_DICT: pairs}
    raise TypeError(f"Cannot store a {type(value).__name__} at `{where}` of a training state file.")


def save_state_tree(tree: Any, path: str | os.PathLike) -> list[Path]:
    """
    Write `tree` (nested dicts, lists, tuples, scalars, tensors, NumPy arrays) as `<path>.json` and, when it holds
    tensors or arrays, `<path>.safetensors`.

    Returns:
        The files written.

    Raises:
        TypeError: the tree holds something else (the message gives its place in the tree).
    """
    json_file, tensor_file = state_files(path)
    tensors: dict[str, torch.Tensor] = {}
    encoded = _encode(tree, "state", tensors)
    written = [json_file]
    if tensors:
        save_file(tensors, str(tensor_file))
        written.append(tensor_file)
    json_file.write_text(json.dumps({"state": encoded, "tensors": bool(tensors)}), encoding="utf-8")
    return written


def _decode(value: Any, tensors: dict[str, torch.Tensor], where: Path) -> Any:
    if isinstance(value, list):
        return [_decode(v, tensors, where) for v in value]
    if not isinstance(value, dict):
        return value
    tag = next((t for t in _TAGS if t in value), None)
    if tag is None:
        return {k: _decode(v, tensors, where) for k, v in value.items()}
    try:
        if tag == _TUPLE:
            return tuple(_decode(v, tensors, where) for v in value[_TUPLE])
        if tag == _DICT:
            return {_decode(k, tensors, where): _decode(v, tensors, where) for k, v in value[_DICT]}
        stored = tensors[value[tag]]
        if tag == _TENSOR:
            return stored
        dtype = np.dtype(value["dtype"])
        if dtype.hasobject:
            raise ValueError("object arrays are not state")
        return np.frombuffer(stored.numpy().tobytes(), dtype=dtype).reshape(value["shape"]).copy()
    except (KeyError, TypeError, ValueError) as err:
        raise StateFileError(f"{where} is damaged: bad {tag} entry {value!r} ({err}).") from err


def load_state_tree(path: str | os.PathLike) -> Any:
    """
    Read a tree written by [`save_state_tree`]: JSON and safetensors only, nothing is unpickled.

    Raises:
        StateFileError: a file is missing, is not valid JSON / safetensors, or its entries do not match.
    """
    json_file, tensor_file = state_files(path)
    try:
        document = json.loads(json_file.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise StateFileError(f"Missing state file {json_file}.") from err
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise StateFileError(f"{json_file} is not a valid state file (not JSON: {err}).") from err
    if not isinstance(document, dict) or set(document) != {"state", "tensors"}:
        raise StateFileError(f"{json_file} is not a valid state file (expected keys 'state' and 'tensors').")
    tensors: dict[str, torch.Tensor] = {}
    if document["tensors"]:
        try:
            tensors = load_file(str(tensor_file))
        except (FileNotFoundError, SafetensorError, OSError) as err:
            raise StateFileError(f"{tensor_file} cannot be read as safetensors: {err}") from err
    return _decode(document["state"], tensors, json_file)


def check_like(loaded: Any, reference: Any, where: str) -> None:
    """
    Raise a `StateFileError` unless `loaded` has the structure of `reference`: the same dict keys, list and tuple
    lengths and scalar types (an int may stand for a float), and tensors of the same dtype and shape.
    """
    if isinstance(reference, dict):
        if not isinstance(loaded, dict) or set(loaded) != set(reference):
            got = sorted(map(str, loaded)) if isinstance(loaded, dict) else type(loaded).__name__
            raise StateFileError(f"{where}: expected keys {sorted(map(str, reference))}, got {got}.")
        for key, value in reference.items():
            check_like(loaded[key], value, f"{where}.{key}")
        return
    if isinstance(reference, (list, tuple)):
        if type(loaded) is not type(reference) or len(loaded) != len(reference):
            raise StateFileError(
                f"{where}: expected a {type(reference).__name__} of {len(reference)} entries."
            )
        for i, (a, b) in enumerate(zip(loaded, reference)):
            check_like(a, b, f"{where}.{i}")
        return
    if isinstance(reference, torch.Tensor):
        if not isinstance(loaded, torch.Tensor) or (loaded.dtype, loaded.shape) != (
            reference.dtype,
            reference.shape,
        ):
            raise StateFileError(
                f"{where}: expected a {reference.dtype} tensor of shape {tuple(reference.shape)}."
            )
        return
    allowed = (int, float) if type(reference) is float else (type(reference),)
    if type(loaded) not in allowed:
        raise StateFileError(f"{where}: expected a {type(reference).__name__}, got {loaded!r}.")
