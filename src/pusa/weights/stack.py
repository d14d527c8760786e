"""A stack of LoRAs fused into one DiT, each at its own strength, always from the pristine weights:
`W' = W + s_1 * delta_1 + s_2 * delta_2 + ...` (each delta as its format defines it, `weights.lora`), so
any change of the stack or of one strength gives bit for bit what a fresh load of the same stack gives.

`load_lora_cached` reads each file once per version (path, size, mtime, inode: `sources.FileIdentity`), so
re-applying a stack costs the matrix products only, and a LoRA file replaced on disk is read again: the
next video uses the new file (a LoRA is read whole each time it is loaded, so a new version is simply
the new LoRA, not an error as for the DiT's own files). Its sha256 for the settings record is taken with
the read, so the record names the version that was fused.

`AdapterStack` is the unfused form of the same stack: one PEFT adapter per LoRA through diffusers
(`weights.lora.attach_lora_adapter`, `set_adapters` for the strengths), the DiT's own weights never written;
the pipeline's `lora_mode="adapter"`. Its numbers differ from the fused ones by float rounding only.
"""

from __future__ import annotations

import collections
import hashlib
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from .lora import LoraWeights, check_lora_fits, load_lora, lora_delta
from .sources import (
    CheckpointError,
    FileIdentity,
    check_files,
    is_placeholder,
    pristine_source,
    read_pristine,
)

__all__ = ["AdapterStack", "StackFuser", "check_stack_fits_folder", "file_sha256", "load_lora_cached"]

_Key = tuple[str, FileIdentity]  # (resolved path, the version read)
_CACHE: collections.OrderedDict[_Key, LoraWeights] = collections.OrderedDict()
_CACHE_SIZE = 8
_SHA: dict[_Key, str] = {}
_SERVED: dict[str, str] = {}  # resolved path -> the sha256 of the version `load_lora_cached` gave last
_READS = 3  # a file still changing after this many reads is refused


def _key(path: Path) -> _Key:
    resolved = path.resolve()
    return str(resolved), FileIdentity.of(resolved)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_lora_cached(path: str | Path) -> LoraWeights:
    """`load_lora(path)`, kept for the next request (the last 8 file versions); a file changed since is
    read again."""
    path = Path(path).expanduser()
    if not path.is_file():
        return load_lora(path)  # its error names the file
    key = _key(path)
    if key not in _CACHE:
        for _ in range(_READS):
            # hash and tensors from one version: the same identity before and after both reads
            sha, lora = _sha256(path), load_lora(path)
            key, before = _key(path), key
            if key == before:
                break
        else:
            raise CheckpointError(
                f"LoRA file {path} kept changing while it was read; try again once it is written"
            )
        _CACHE[key], _SHA[key] = lora, sha
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    _CACHE.move_to_end(key)
    if key in _SHA:
        _SERVED[key[0]] = _SHA[key]
    return _CACHE[key]


def file_sha256(path: str | Path) -> str | None:
    """The file's sha256, for the settings record: of the version `load_lora_cached` gave last for this
    path (what was fused, even if the file changed since), else of the file now (remembered per version)."""
    path = Path(path).expanduser()
    if not path.is_file():
        return None
    served = _SERVED.get(str(path.resolve()))
    if served is not None:
        return served
    key = _key(path)
    if key not in _SHA:
        _SHA[key] = _sha256(path)
    return _SHA[key]


class StackFuser:
    """The LoRA stack of one DiT. `fuse([(lora, strength), ...])` recomputes every weight any stack has
    touched from its pristine value: read again from the safetensors file the DiT was loaded from when the
    file reproduces it (`sources.pristine_source`: no copy in host RAM), else a copy kept on
    `pristine_device` (page-locked for a CUDA model): a DiT built in memory, or cast since it was loaded.

    While the DiT's weights are placeholders (an expert `runtime.expert_stream` has not loaded), `fuse`
    checks the stack and remembers it; `reloaded()` fuses it once the weights are back."""

    def __init__(self, model: nn.Module, pristine_device: str | torch.device = "cpu") -> None:
        self.model = model
        self.pristine_device = torch.device(pristine_device)
        self._params: dict[tuple[str, str], torch.Tensor] = {}
        self._pristine: dict[tuple[str, str], torch.Tensor | str] = {}  # a tensor, or a state name to read
        # (source, strength) of what is in the weights now; None while (or after a failure while) writing
        self.fused: tuple[tuple[str, float], ...] | None = ()
        self.stack: list[tuple[LoraWeights, float]] = []  # what was asked for last
        self._fresh = False  # the weights were just loaded: they are their own pristine values

    @torch.no_grad()
    def fuse(self, stack: Sequence[tuple[LoraWeights, float]]) -> bool:
        """Fuse `stack` (in order); returns False when it is what is fused already (nothing done). A DiT file
        changed since the DiT was loaded: a `sources.FileChangedError` naming it, the weights untouched."""
        wanted = tuple((lora.source, float(strength)) for lora, strength in stack)
        if wanted == self.fused and _same_loras(stack, self.stack):  # a LoRA file read again is new
            return False
        targets = [check_lora_fits(self.model, lora) for lora, _ in stack]  # every error before any change
        if not self._fresh:
            check_files(self.model)  # every DiT file before any weight is written: refused, nothing changes
        self.stack = list(stack)
        for found in targets:
            for target, param in found.items():
                self._params.setdefault(target, param)
        if any(is_placeholder(param) for param in self._params.values()):
            self.fused = ()  # nothing is in the weights: fused when they are loaded (`reloaded`)
            return True
        for target, param in self._params.items():
            if target not in self._pristine:
                name = f"{target[0]}.{target[1]}"
                self._pristine[target] = pristine_source(self.model, name, param, self.pristine_device)
        self.fused = None  # until every weight is written: a failure part way leaves no "already fused"
        for (name, kind), param in self._params.items():
            source = self._pristine[(name, kind)]
            pristine = param if self._fresh else read_pristine(self.model, source, param.device)
            fused = None
            for lora, strength in stack:
                delta = lora_delta(lora, name, kind, param.device)
                if delta is not None:
                    fused = (pristine.to(torch.float32) if fused is None else fused) + float(strength) * delta
            param.copy_(pristine if fused is None else fused.to(param.dtype))
        self.fused = wanted
        return True

    def reloaded(self) -> None:
        """The DiT's weights were just loaded again from its files (pristine): fuse the last stack."""
        self._fresh, self.fused = True, ()
        try:
            self.fuse(self.stack)
        finally:
            self._fresh = False


def _same_loras(
    stack: Sequence[tuple[LoraWeights, float]], other: Sequence[tuple[LoraWeights, float]]
) -> bool:
    return len(stack) == len(other) and all(a is b for (a, _), (b, _) in zip(stack, other, strict=True))


class AdapterStack:
    """The LoRA stack of one DiT as unfused PEFT adapters (the same interface as `StackFuser`: `fuse`,
    `reloaded`, `fused`, `stack`). Each LoRA file of the stack is one named adapter, loaded once through
    diffusers (`weights.lora.attach_lora_adapter`: `W x + s * up @ (down @ x)`, each format's own scale
    folded into `up`); the strengths are set together by `set_adapters` (PEFT recomputes each scaling, so
    nothing accumulates: a strength changed back gives bit for bit what it gave before); a LoRA that leaves
    the stack is deleted. A LoRA listed twice is one adapter at the sum of its strengths. The DiT's own
    weights are never written, so an expert read again from its files (`runtime.expert_stream`) needs
    nothing re-applied. Full-tensor `.diff` deltas have no adapter form: a `CheckpointError` names the file."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._adapters: dict[str, tuple[LoraWeights, str]] = {}  # source -> (its weights, adapter name)
        self._made = 0
        self.fused: tuple[tuple[str, float], ...] = ()
        self.stack: list[tuple[LoraWeights, float]] = []

    def fuse(self, stack: Sequence[tuple[LoraWeights, float]]) -> bool:
        """Make `stack` the active adapters at its strengths; False when it is so already."""
        from .lora import attach_lora_adapter

        wanted = tuple((lora.source, float(strength)) for lora, strength in stack)
        if wanted == self.fused and _same_loras(stack, self.stack):  # a LoRA file read again is new
            return False
        for lora, _ in stack:  # every error before any change
            if lora.diffs:
                raise CheckpointError(
                    f"LoRA file {lora.source} has full-tensor .diff deltas, which a PEFT adapter cannot hold; "
                    "use the fused LoRA mode"
                )
            check_lora_fits(self.model, lora)
        strengths: dict[str, float] = {}
        for lora, strength in stack:
            strengths[lora.source] = strengths.get(lora.source, 0.0) + float(strength)
        latest = {lora.source: lora for lora, _ in stack}
        gone = [s for s, (lora, _) in self._adapters.items() if s not in strengths or latest[s] is not lora]
        if gone:
            self.model.delete_adapters([self._adapters.pop(source)[1] for source in gone])
        for source, lora in latest.items():
            if source not in self._adapters:
                name = f"stack{self._made}"
                self._made += 1
                with warnings.catch_warnings():  # PEFT warns of a second adapter: that is what a stack is
                    warnings.filterwarnings("ignore", message="Already found a `peft_config`")
                    attach_lora_adapter(self.model, lora, strengths[source], adapter_name=name)
                self._adapters[source] = (lora, name)
        if self._adapters:
            names = [self._adapters[source][1] for source in strengths]
            self.model.set_adapters(names, weights=[strengths[source] for source in strengths])
        self.stack, self.fused = list(stack), wanted
        return True

    def reloaded(self) -> None:
        """The DiT's own weights were read again from its files: its adapters are untouched, nothing to do."""


def check_stack_fits_folder(stack: Sequence, model_dir: str | Path, param: str = "loras") -> None:
    """Every LoRA of `stack` (`lora_specs.LoraSpec`s) against the DiT(s) of a model folder, from the
    safetensors headers alone (no weight is read): an `InputError` naming `param` and the file when a LoRA
    matches nothing in its expert, or names a module the DiT lacks, or has a delta of the wrong shape."""
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    from ..experts import ALL, HIGH, LOW
    from ..params import InputError
    from .checkpoints import read_headers, safetensors_files
    from .folders import find_layout

    if not stack:
        return
    folder = find_layout(model_dir)
    dits = (
        {HIGH: folder.transformer}
        if folder.transformer_2 is None
        else {HIGH: folder.transformer, LOW: folder.transformer_2}
    )
    shapes: dict[str, dict[str, tuple[int, ...]]] = {}
    for name, path in dits.items():
        headers = read_headers(safetensors_files(path))
        if folder.layout == "wan-original":
            renamed = convert_wan_transformer_to_diffusers({key: key for key in headers})
            shapes[name] = {new: headers[old][0] for new, old in renamed.items()}
        else:
            shapes[name] = {key: shape for key, (shape, _) in headers.items()}
    for spec in stack:
        lora = load_lora_cached(spec.path)
        for name in dits if spec.expert == ALL else [spec.expert]:
            known = shapes[name]
            which = "the model's DiT" if len(dits) == 1 else f"the {name}-noise expert ({dits[name].name}/)"
            wanted = {m: [up.shape[0], down.shape[1]] for m, (down, up) in lora.modules.items()}
            for module, deltas in lora.diffs.items():
                for kind, delta in deltas.items():
                    wanted.setdefault(f"{module}#{kind}", list(delta.shape))

            def key(m: str) -> str:
                module, _, kind = m.partition("#")
                return f"{module}.{kind or 'weight'}"

            matched = [m for m in wanted if key(m) in known]
            if not matched:
                first = ", ".join(lora.file_key(m.partition("#")[0]) for m in list(wanted)[:3])
                raise InputError(param, spec.path, f"a LoRA for {which}: Wan/Pusa keys such as "
                                 "blocks.0.self_attn.q.lora_A.weight",
                                 f"({Path(spec.path).name}) matches nothing in {which} (first keys: {first})")  # fmt: skip
            for m, shape in wanted.items():
                have = known.get(key(m))
                if have is None or list(have) != shape:
                    what = "nothing" if have is None else f"shape {list(have)}"
                    raise InputError(param, spec.path, f"each key must fit {which}",
                                     f"({Path(spec.path).name}) gives {key(m)} a delta of shape {shape}; {which} has {what} there")  # fmt: skip
