"""Reading and writing PyTorch state dicts: ``.pth``/``.pt`` (torch) and ``.safetensors``.

Values come back as numpy arrays (bfloat16 through ``ml_dtypes``). ``.pth`` files are loaded with
``torch.load(weights_only=True)``: no pickled code runs.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import tempfile
import warnings
from typing import Any, Mapping

import numpy as np

#: Containers that training scripts wrap a state dict in, tried in this order.
CONTAINER_KEYS = ("state_dict", "model", "teacher", "module", "student")
_TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")


class UnreadableFileError(ValueError):
    """A checkpoint file that exists but cannot be read (a directory, empty, truncated, not in its
    suffix's format); the message starts with the path."""


def to_numpy(value: Any) -> np.ndarray:
    """A torch tensor, jax array or array-like → numpy array (bfloat16 kept as ml_dtypes)."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # torch.Tensor, without importing torch
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":
            import ml_dtypes
            import torch
            return value.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        return value.numpy()
    return np.asarray(value)


def _is_array(value: Any) -> bool:
    return isinstance(value, np.ndarray) or (hasattr(value, "shape") and hasattr(value, "dtype"))


def _unwrap(obj: Any, key: str | None, path: str) -> Mapping[str, Any]:
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: expected a state dict (a mapping of names to tensors), "
                         f"found {type(obj).__name__}")
    if key is not None:
        if key not in obj:
            raise KeyError(f"{path}: no entry {key!r}; top-level keys are {sorted(map(str, obj))[:20]}")
        return _unwrap(obj[key], None, f"{path}[{key!r}]")
    if obj and all(_is_array(v) for v in obj.values()):
        return obj
    for name in CONTAINER_KEYS:
        if isinstance(obj.get(name), Mapping):
            logging.info("%s: using the state dict stored under %r", path, name)
            return _unwrap(obj[name], None, f"{path}[{name!r}]")
    kinds = {str(k): type(v).__name__ for k, v in list(obj.items())[:20]}
    raise ValueError(f"{path}: not a state dict and no known container ({', '.join(CONTAINER_KEYS)}) "
                     f"inside; top-level entries: {kinds}. Pass key=... to pick one.")


def load_state_dict(path: str, *, key: str | None = None,
                    strip_prefixes: tuple[str, ...] = ("module.", "backbone.")) -> dict[str, np.ndarray]:
    """``{torch key: numpy array}`` from a ``.pth``/``.pt`` or ``.safetensors`` file.

    Checkpoints wrapping the weights (``{"state_dict": ...}``, ``{"model": ...}``,
    ``{"teacher": ...}``, ...) are unwrapped, or ``key`` names the entry. Each key loses the
    first of ``strip_prefixes`` it starts with (DDP's ``module.``, DINO's ``backbone.``);
    pass ``()`` to keep keys as stored. Non-tensor entries of the state dict are skipped.
    """
    _check_readable(path)
    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file
        if key is not None:
            raise ValueError(f"{path}: key={key!r} given, but a .safetensors file is a flat state dict")
        sd: Mapping[str, Any] = _read_safetensors(load_file, path)
    elif path.endswith(_TORCH_SUFFIXES):
        try:
            import torch
        except ImportError as e:
            raise ImportError(f"{path}: reading a PyTorch checkpoint needs torch; "
                              "install it or convert the file to .safetensors") from e
        sd = _unwrap(_torch_load(torch, path), key, path)
    else:
        raise ValueError(f"{path}: expected a .safetensors or {'/'.join(_TORCH_SUFFIXES)} file")
    out = {}
    for name, value in sd.items():
        if not _is_array(value):
            logging.info("%s: skipping non-tensor entry %r (%s)", path, name, type(value).__name__)
            continue
        for prefix in strip_prefixes:
            if name.startswith(prefix):
                name = name[len(prefix):]
                break
        if name in out:
            raise ValueError(f"{path}: two entries map to {name!r} after stripping {strip_prefixes}")
        out[name] = to_numpy(value)
    return out


def _check_readable(path: str) -> None:
    """Raises for a path that is missing, a directory or an empty file, naming it."""
    if os.path.isdir(path):
        raise UnreadableFileError(f"{path}: a directory, expected a .safetensors or "
                                  f"{'/'.join(_TORCH_SUFFIXES)} file")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file")
    if os.path.getsize(path) == 0:
        raise UnreadableFileError(f"{path}: an empty file (0 bytes)")


def _read_safetensors(read, path: str):
    """``read(path)`` (safetensors' ``load_file`` or ``safe_open``), its errors naming the file."""
    from safetensors import SafetensorError
    try:
        return read(path)
    except SafetensorError as e:
        raise UnreadableFileError(f"{path}: not a readable .safetensors file (truncated, or another "
                                  f"format?): {e}") from e


def _torch_load(torch, path: str):
    """``torch.load(path, weights_only=True)``, its errors naming the file in one line."""
    try:
        with warnings.catch_warnings():  # a non-torch pickle also warns of its protocol
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except PermissionError:
        raise
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as e:  # OSError: a short zip
        raise UnreadableFileError(f"{path}: {_torch_load_failure(e)}") from e


def _torch_load_failure(error: Exception) -> str:
    """What ``torch.load`` found wrong, in one line (its messages run over many)."""
    lines = str(error).splitlines()
    unpickler = [line.split("WeightsUnpickler error:", 1)[1].strip() for line in lines
                 if "WeightsUnpickler error:" in line]
    if unpickler and unpickler[0].startswith("Unsupported global"):
        return ("holds pickled objects other than tensors, which torch.load(weights_only=True) "
                f"refuses: {unpickler[0].split('. ')[0]}")
    if isinstance(error, EOFError):
        reason = "unexpected end of file"
    elif unpickler:
        reason = unpickler[0] or "not a pickle of tensors"
    else:
        reason = lines[0].split(". ")[0] if lines else type(error).__name__
    return f"not a readable PyTorch checkpoint (truncated, or not written by torch.save?): {reason}"


def save_state_dict(state_dict: Mapping[str, Any], path: str,
                    metadata: Mapping[str, str] | None = None) -> None:
    """Writes ``{key: array}`` atomically (temp file + ``os.replace``) as ``.safetensors`` or, when
    torch is installed, ``.pth``/``.pt`` (a plain dict of tensors, loadable with weights_only).
    ``metadata`` (str → str) goes into the safetensors header; .pth files have no place for it."""
    arrays = {k: np.require(to_numpy(v), requirements="C") for k, v in state_dict.items()}  # keeps 0-d
    if path.endswith(".safetensors"):
        from safetensors.numpy import save_file

        def write(tmp):
            save_file(arrays, tmp, metadata=dict(metadata) if metadata else None)
    elif path.endswith(_TORCH_SUFFIXES):
        try:
            import torch
        except ImportError as e:
            raise ImportError(f"{path}: writing a .pth file needs torch, which is not installed; "
                              "write .safetensors instead") from e

        def write(tmp):
            torch.save({k: _to_tensor(torch, v) for k, v in arrays.items()}, tmp)
    else:
        raise ValueError(f"{path}: expected a .safetensors or {'/'.join(_TORCH_SUFFIXES)} file")
    if os.path.isdir(path):
        raise ValueError(f"{path}: an existing directory, expected the path of a file to write")
    directory = os.path.dirname(os.path.abspath(path))
    created = _missing_directories(directory)
    os.makedirs(directory, exist_ok=True)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
        os.close(fd)
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())   # 0600 (mkstemp, safetensors) → what open() makes
        os.replace(tmp, path)
    except BaseException:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)
        for made in created:               # deepest first: a failed write leaves no new folder
            try:
                os.rmdir(made)
            except OSError:
                break
        raise


def _missing_directories(directory: str) -> list[str]:
    """The folders of ``directory``'s path that do not exist yet, deepest first."""
    missing = []
    while directory and not os.path.exists(directory):
        missing.append(directory)
        parent = os.path.dirname(directory)
        if parent == directory:
            break
        directory = parent
    return missing


def _umask() -> int:
    """This process's umask (read by setting it and back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _to_tensor(torch, array: np.ndarray):
    if array.dtype.name == "bfloat16":
        return torch.from_numpy(array.view(np.int16).copy()).view(torch.bfloat16)
    return torch.from_numpy(array.copy())


def read_metadata(path: str) -> dict[str, str]:
    """The str → str metadata of a ``.safetensors`` header ({} when there is none)."""
    from safetensors import safe_open
    _check_readable(path)
    with _read_safetensors(lambda p: safe_open(p, framework="numpy"), path) as f:
        return dict(f.metadata() or {})


def export_metadata(arch: str, model_kwargs: Mapping[str, Any], config,
                    timm: tuple[str, Mapping[str, Any]] | None = None) -> dict[str, str]:
    """What a geossl export records beside the weights: the architecture and its arguments (to
    rebuild the model in geossl without guessing: ``geossl.arch``, ``geossl.model_kwargs``), the
    timm model that loads it strictly (``timm_model``, ``timm_kwargs``: ``timm.create_model(
    meta["timm_model"], **json.loads(meta["timm_kwargs"]))``) and, when ``config.data`` has them,
    the input bands and normalisation."""
    meta = {"format": "geossl", "geossl.arch": arch,
            "geossl.model_kwargs": json.dumps(dict(model_kwargs), sort_keys=True)}
    if timm is not None:
        meta["timm_model"] = timm[0]
        meta["timm_kwargs"] = json.dumps(dict(timm[1]), sort_keys=True)
    data = config.get("data") or {}
    if data.get("bands"):
        meta["geossl.bands"] = json.dumps([str(b) for b in data["bands"]])
    if data.get("norm"):
        meta["geossl.norm"] = str(data["norm"])
    return meta


def geossl_model(metadata: Mapping[str, str], path: str = "") -> tuple[str, dict] | None:
    """``(arch, model_kwargs)`` recorded by :func:`export_metadata`; None for a file that is not a
    geossl export (no ``format: geossl``)."""
    if metadata.get("format") != "geossl":
        return None
    for key in ("geossl.arch", "geossl.model_kwargs"):
        if key not in metadata:
            raise ValueError(f"{path}: geossl export metadata without {key!r}; found "
                             f"{sorted(metadata)}")
    try:
        kwargs = json.loads(metadata["geossl.model_kwargs"])
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: geossl.model_kwargs is not JSON ({e}): "
                         f"{metadata['geossl.model_kwargs'][:200]!r}") from e
    if not isinstance(kwargs, dict):
        raise ValueError(f"{path}: geossl.model_kwargs: expected a JSON object, found "
                         f"{type(kwargs).__name__}")
    return metadata["geossl.arch"], kwargs


def geossl_data(metadata: Mapping[str, str], path: str = "") -> dict:
    """``{"bands": [...], "norm": ...}`` recorded by :func:`export_metadata` (the keys it has)."""
    data = {}
    if "geossl.bands" in metadata:
        try:
            bands = json.loads(metadata["geossl.bands"])
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: geossl.bands is not JSON ({e}): "
                             f"{metadata['geossl.bands'][:200]!r}") from e
        if not isinstance(bands, list) or not all(isinstance(b, str) for b in bands):
            raise ValueError(f"{path}: geossl.bands: expected a JSON list of band names, found "
                             f"{metadata['geossl.bands'][:200]!r}")
        data["bands"] = bands
    if metadata.get("geossl.norm"):
        data["norm"] = metadata["geossl.norm"]
    return data
