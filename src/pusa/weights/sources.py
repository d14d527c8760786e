"""Where a loaded DiT's weights came from, so they can be read again instead of kept twice in host RAM.

`load_transformer` records a `FileWeights` on every DiT it loads from safetensors files (both layouts,
sharded or not): for each state name, the file and the key in the file (after Wan-original -> diffusers
renames), plus the dtype rule the loader applied (`loader_cast`, defined here so that the
loader and the re-reader share it without importing each other). Re-reading a tensor through it
(`read`) runs the same memory-mapped read (`safe_open`) and the same cast, so it gives bit for bit the
value a fresh load gives. The LoRA fusers (`weights.stack.StackFuser`, `weights.lora.LoraFuser`) use it as
their pristine source instead of a copy in RAM; `runtime.expert_stream` uses it to load an expert at the
boundary. Components built in memory (the tiny-random built-in models) carry none and keep RAM copies.

Reading a file again is only right while it is the file the model was loaded from: a download or sync
tool that writes a new version beside it and renames it over the old one would otherwise give a model
made of both. So `FileWeights` keeps each file's `FileIdentity` (size, mtime, inode, device: one `stat`,
taken before the loader read it) and every re-read compares it; a file changed, replaced or deleted since
raises `FileChangedError` naming it, never a mix. (An open memory map keeps the old inode, so a file
replaced after it was opened cannot mix either.) `CheckpointError` lives here, the lowest layer of
`pusa.weights`, so that `FileChangedError` can be one; `weights.checkpoints` exports it as before.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

__all__ = [
    "CheckpointError",
    "FileChangedError",
    "FileIdentity",
    "FileWeights",
    "check_files",
    "file_weights",
    "is_placeholder",
    "loader_cast",
    "placeholder",
    "pristine_source",
    "read_pristine",
    "record_file_weights",
]

_ATTRIBUTE = "_pusa_file_weights"


class CheckpointError(ValueError):
    """A checkpoint file or folder is missing, malformed, or does not fit the model it is loaded into."""


class FileChangedError(CheckpointError):
    """A weight file of a loaded model was changed, replaced or deleted since the model was loaded: its
    weights can no longer be read again without mixing two versions. `path`: the file."""

    def __init__(self, path: Path, what: str) -> None:
        self.path, self.what = path, what
        super().__init__(f"{path} {what} since the model was loaded; reload the model")

    def __reduce__(self) -> tuple[type, tuple[Path, str]]:  # rebuilt from its fields (a Ray worker's error)
        return type(self), (self.path, self.what)


@dataclass(frozen=True)
class FileIdentity:
    """What tells one version of a file from another without reading it: a rewrite changes the size or the
    mtime, a file renamed over it (how download and sync tools replace one) has another inode."""

    size: int
    mtime_ns: int
    inode: int
    device: int

    @classmethod
    def of(cls, path: str | Path) -> FileIdentity:
        stat = os.stat(path)
        return cls(stat.st_size, stat.st_mtime_ns, stat.st_ino, stat.st_dev)

    def differences(self, other: FileIdentity) -> list[str]:
        """The names of the fields that differ (for the error message)."""
        names = {"size": "size", "mtime_ns": "mtime", "inode": "inode", "device": "device"}
        return [label for key, label in names.items() if getattr(self, key) != getattr(other, key)]


def loader_cast(name: str, tensor: torch.Tensor, dtype: torch.dtype, keep_in_fp32: list[str]) -> torch.Tensor:
    """The loader's dtype rule for state `name`: floating tensors to `dtype`, except those of the modules
    `keep_in_fp32` names, which stay float32; other tensors as they are."""
    # The same rule as diffusers' from_pretrained, so both layouts give bit-identical models.
    if not torch.is_floating_point(tensor):
        return tensor
    if any(module in name.split(".") for module in keep_in_fp32):
        return tensor.to(torch.float32)
    return tensor.to(dtype)


@dataclass
class FileWeights:
    """state name -> (file, key in the file), the loader's cast (`dtype`, `keep_in_fp32`), and each file's
    identity when the loader read it (`identities`; a file not given is looked at now)."""

    entries: dict[str, tuple[Path, str]]
    dtype: torch.dtype
    keep_in_fp32: tuple[str, ...] = ()
    identities: dict[Path, FileIdentity] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for file, _ in self.entries.values():
            if file not in self.identities:
                self.identities[file] = FileIdentity.of(file)

    def check(self, files: Iterable[Path] | None = None) -> None:
        """A `FileChangedError` naming the first of `files` (default: every file) that is not the version
        the model was loaded from: another size, mtime or inode, or gone."""
        for file in self.identities if files is None else files:
            try:
                now = FileIdentity.of(file)
            except FileNotFoundError:
                raise FileChangedError(file, "no longer exists (deleted or moved)") from None
            differ = self.identities[file].differences(now)
            if differ:
                which = (
                    f"its {differ[0]} differs"
                    if len(differ) == 1
                    else f"{', '.join(differ[:-1])} and {differ[-1]} differ"
                )
                raise FileChangedError(file, f"changed on disk ({which})")

    @contextmanager
    def _open(self, file: Path) -> Iterator[Any]:
        """`safe_open(file)`, checked to be the loaded version once open: the open mapping holds that
        inode from then on, whatever happens to the path."""
        try:
            handle_manager = safe_open(str(file), framework="pt")
        except (OSError, SafetensorError):
            self.check([file])  # gone or replaced by something unreadable: say so by name
            raise
        with handle_manager as handle:
            self.check([file])
            yield handle

    def dtype_of(self, name: str) -> torch.dtype:
        """The dtype the loader gives `name` (a floating tensor: every DiT parameter is one)."""
        return torch.float32 if any(m in name.split(".") for m in self.keep_in_fp32) else self.dtype

    def reproduces(self, name: str, tensor: torch.Tensor) -> bool:
        """Whether reading `name` again gives a tensor of `tensor`'s shape and dtype. False (keep a RAM
        copy) for a name the files lack, or a model cast or converted (fp8) since it was loaded: then the
        file's value is no longer what the weight was made from."""
        return (
            name in self.entries and torch.is_floating_point(tensor) and tensor.dtype == self.dtype_of(name)
        )

    def read(self, name: str, device: str | torch.device = "cpu") -> torch.Tensor:
        """`name` as the loader made it: the memory-mapped tensor, cast by the loader's own rule."""
        file, key = self.entries[name]
        with self._open(file) as handle:
            tensor = handle.get_tensor(key)
        return loader_cast(name, tensor, self.dtype, list(self.keep_in_fp32)).to(device)

    def read_many(self, names: list[str], device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
        """`read` for each of `names`, each file opened once."""
        by_file: dict[Path, list[str]] = {}
        for name in names:
            by_file.setdefault(self.entries[name][0], []).append(name)
        out = {}
        self.check(by_file)  # every file before any is read: a refusal leaves nothing half done
        for file, group in by_file.items():
            with self._open(file) as handle:
                for name in group:
                    tensor = handle.get_tensor(self.entries[name][1])
                    out[name] = loader_cast(name, tensor, self.dtype, list(self.keep_in_fp32)).to(device)
                    del tensor
        return out


def file_weights(model: nn.Module) -> FileWeights | None:
    """The `FileWeights` `load_transformer` recorded on `model`, or None (built in memory)."""
    return getattr(model, _ATTRIBUTE, None)


def check_files(model: nn.Module) -> None:
    """A `FileChangedError` if a file `model` was loaded from changed since (nothing for one built in
    memory): what a caller about to re-read many of its weights checks first, so that it changes nothing."""
    weights = file_weights(model)
    if weights is not None:
        weights.check()


def record_file_weights(model: nn.Module, weights: FileWeights) -> None:
    object.__setattr__(model, _ATTRIBUTE, weights)  # a plain attribute: not a module, buffer or config


def pristine_source(
    model: nn.Module, name: str, param: torch.Tensor, device: torch.device
) -> torch.Tensor | str:
    """What a fuser keeps as the pristine `name` (a state name of `model`): the state name itself when the
    files reproduce it (read with `read_pristine`, no RAM held), else a copy on `device` (page-locked when
    it is a CPU copy of a CUDA weight, so that a re-fuse reads it back at bus speed)."""
    weights = file_weights(model)
    if weights is not None and weights.reproduces(name, param):
        return name
    copy = param.detach().to(device, copy=True)
    if device.type == "cpu" and param.device.type == "cuda":
        copy = copy.pin_memory()
    return copy


def read_pristine(model: nn.Module, source: torch.Tensor | str, device: torch.device) -> torch.Tensor:
    """A `pristine_source` entry's tensor on `device` (a `FileChangedError` if its file changed)."""
    if isinstance(source, str):
        return file_weights(model).read(source, device)
    return source.to(device, non_blocking=True)


def placeholder(shape: torch.Size | tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A stand-in of that shape and dtype holding one element (zero strides) on the CPU: what a
    weight points at while its expert is not loaded (`runtime.expert_stream`). Shapes stay checkable; a
    write into it fails."""
    return torch.zeros(1, dtype=dtype).expand(shape)


def is_placeholder(tensor: torch.Tensor) -> bool:
    return tensor.numel() > 1 and all(s == 0 for s in tensor.stride())
