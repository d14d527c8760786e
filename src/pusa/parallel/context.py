"""Context parallel (Ulysses sequence parallelism) for `PusaTransformer3DModel`, on any torch.distributed
backend (gloo on CPUs, nccl on GPUs).

Each of N ranks keeps a contiguous slice of the `L = F_lat * h * w` tokens through every block. Only
self-attention needs the whole sequence: its q, k, v go through one all-to-all (tokens split -> heads
split), every rank attends over all L tokens for H/N heads, and a second all-to-all brings the outputs
back to the token split. When N does not divide the heads, ring attention: the ranks pass their key and
value slices around a ring (N-1 point-to-point exchanges, each overlapped with the attention of the slice
in hand), every rank attends its queries to one slice at a time and merges the partial outputs by their
log-sum-exp (the online softmax), so no rank holds more than two slices. An "allgather" strategy instead
gathers every rank's keys and values at once (the same bytes, one collective, N slices in memory).

Why not diffusers' ring attention (`ContextParallelConfig(ring_degree=N)`): its ring needs an attention
kernel that returns the log-sum-exp, and none of its backends gives one on a CPU: "native" (SDPA) refuses
`return_lse`, "_native_flash" calls `aten::_scaled_dot_product_flash_attention`, which has no CPU kernel
(and the backend takes bf16/fp16 only), the rest are CUDA kernels. Its only `rotate_method` is
"allgather" (every slice gathered at once, as our "allgather" strategy), its all-gather needs equal slices
(`ring_anything` for others), and its Wan plan splits a `[B, L]` timestep, not Pusa's `[B, F]`. Our ring
gets the log-sum-exp from torch's CPU flash kernel (`_scaled_dot_product_flash_attention_for_cpu`) or,
on CUDA, the memory-efficient kernel. Cross-attention,
the feed-forward and the norms are per token and run on the local slice unchanged. The output head
runs after one all-gather of the final hidden states, so every rank returns the full output.

The per-frame modulation (`[B, F_lat, 6, D]`, one row per latent frame) is expanded to the rows the
local slice needs: a slice that starts or ends inside a latent frame is cut into runs of
`g = gcd(h*w, start, length)` tokens (every frame boundary inside the slice falls on such a run's edge),
and each run gets its frame's row, so the block's per-group view `[B, G, L_local/G, D]` is exact.

Installed with forward pre-hooks on the model's own modules (no copy of its forward): the model's hook
records the token split of this call, each block's hook cuts the hidden states (block 0), the rotary
tables and the modulation to the local slice, and the output norm's hook gathers the slices again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

STRATEGIES = ("auto", "ulysses", "ring", "allgather")


@dataclass(frozen=True)
class TokenSplit:
    """Rank `rank`'s slice of a `seq_len`-token sequence of `tokens_per_frame` tokens per latent frame."""

    seq_len: int
    tokens_per_frame: int
    world_size: int
    rank: int

    @property
    def sizes(self) -> tuple[int, ...]:
        """Tokens on each rank: as even as possible, the first `seq_len % N` ranks one more."""
        base, extra = divmod(self.seq_len, self.world_size)
        return tuple(base + (r < extra) for r in range(self.world_size))

    @property
    def start(self) -> int:
        return sum(self.sizes[: self.rank])

    @property
    def length(self) -> int:
        return self.sizes[self.rank]

    @property
    def run_length(self) -> int:
        """Tokens per modulation run: every frame boundary inside the slice is a multiple of it away from
        the slice's start, so each run lies in one latent frame."""
        return math.gcd(self.tokens_per_frame, self.start, self.length)

    def run_frames(self) -> torch.Tensor:
        """The latent frame of each run of the local slice, `[length / run_length]` (int64)."""
        runs = torch.arange(self.start, self.start + self.length, self.run_length)
        return runs // self.tokens_per_frame


def local_modulation(modulation: torch.Tensor, split: TokenSplit, num_frames: int) -> torch.Tensor:
    """Per-frame rows `[B, G, ...]` (G = F_lat, or 1 for one row per clip) -> the rows of the local slice's
    runs `[B, length / run_length, ...]`; a single row stays as it is (it covers any slice)."""
    if modulation.shape[1] == 1:
        return modulation
    if modulation.shape[1] != num_frames:
        raise ValueError(f"modulation has {modulation.shape[1]} rows; expected 1 or {num_frames}")
    return modulation.index_select(1, split.run_frames().to(modulation.device))


# ------------------------------------------------------------------------------------------- collectives
def _all_gather_tokens(x: torch.Tensor, split: TokenSplit, group: Any, dim: int = 1) -> torch.Tensor:
    """Every rank's slice of `x` along `dim` -> the whole sequence (slices padded to equal size on the wire)."""
    longest = max(split.sizes)
    pad = longest - x.shape[dim]
    if pad:
        shape = list(x.shape)
        shape[dim] = pad
        x = torch.cat([x, x.new_zeros(shape)], dim=dim)
    parts = [torch.empty_like(x) for _ in range(split.world_size)]
    dist.all_gather(parts, x.contiguous(), group=group)
    return torch.cat([p.narrow(dim, 0, n) for p, n in zip(parts, split.sizes, strict=True)], dim=dim)


def _tokens_to_heads(qkv: torch.Tensor, split: TokenSplit, group: Any) -> torch.Tensor:
    """`[3, B, L_local, H, d]` -> `[3, B, L, H/N, d]`: one all-to-all (rank j receives head chunk j)."""
    three, batch, local, heads, dim = qkv.shape
    n = split.world_size
    send = qkv.reshape(three, batch, local, n, heads // n, dim).permute(3, 2, 0, 1, 4, 5).contiguous()
    send = send.reshape(n * local, three, batch, heads // n, dim)
    receive = send.new_empty((split.seq_len, three, batch, heads // n, dim))
    dist.all_to_all_single(
        receive, send, output_split_sizes=list(split.sizes), input_split_sizes=[local] * n, group=group
    )
    return receive.permute(1, 2, 0, 3, 4)  # [3, B, L, H/N, d]


def _heads_to_tokens(out: torch.Tensor, split: TokenSplit, group: Any) -> torch.Tensor:
    """`[B, L, H/N, d]` -> `[B, L_local, H, d]`: the inverse all-to-all."""
    batch, _, head_chunk, dim = out.shape
    n, local = split.world_size, split.length
    send = out.permute(1, 0, 2, 3).contiguous()  # [L, B, H/N, d], rank j's tokens contiguous
    receive = send.new_empty((n * local, batch, head_chunk, dim))
    dist.all_to_all_single(
        receive, send, output_split_sizes=[local] * n, input_split_sizes=list(split.sizes), group=group
    )
    receive = receive.view(n, local, batch, head_chunk, dim).permute(2, 1, 0, 3, 4)  # [B, Ll, N, H/N, d]
    return receive.reshape(batch, local, n * head_chunk, dim)


# ------------------------------------------------------------------------------------------- attention
def _attend_with_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention `[B, Lq, H, d]` of `q` over `k`, `v` `[B, Lk, H, d]`, and its log-sum-exp `[B, Lq, H]`
    (float32), from torch's fused kernels that return it (SDPA's public call does not): the CPU flash
    kernel, or the memory-efficient kernel on CUDA."""
    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, L, d]
    if q.device.type == "cpu":
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(qt, kt, vt)[:2]
    else:
        out, lse = torch.ops.aten._scaled_dot_product_efficient_attention(qt, kt, vt, None, True)[:2]
    return out.transpose(1, 2), lse[..., : q.shape[1]].transpose(1, 2).float()


def _ring_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, split: TokenSplit, group: Any
) -> torch.Tensor:
    """Ring attention: the local queries `[B, L_local, H, d]` against every rank's keys and values, one
    rank's slice at a time. At step s a rank holds the slice of rank `(r - s) % N`, sends it to the next
    rank and receives the previous rank's while it attends; the partial outputs merge by log-sum-exp."""
    n, rank = split.world_size, split.rank

    def peer(r: int) -> int:  # a rank of `group` as the global rank point-to-point calls take
        return r if group is None else dist.get_global_rank(group, r)

    send_to, receive_from = peer((rank + 1) % n), peer((rank - 1) % n)
    kv = torch.stack([key, value]).contiguous()  # [2, B, L_local, H, d]
    out = lse = None
    for step in range(n):
        requests = []
        if step < n - 1:  # the next slice travels while this one is attended
            arriving = kv.new_empty((2, kv.shape[1], split.sizes[(rank - step - 1) % n], *kv.shape[3:]))
            requests = dist.batch_isend_irecv(
                [
                    dist.P2POp(dist.isend, kv, send_to, group),
                    dist.P2POp(dist.irecv, arriving, receive_from, group),
                ]
            )
        part, part_lse = _attend_with_lse(query, kv[0], kv[1])
        if out is None or lse is None:  # the first slice (both are set together)
            out, lse = part.float(), part_lse
        else:
            merged = torch.logaddexp(lse, part_lse)
            out = out * torch.exp(lse - merged).unsqueeze(-1) + part.float() * torch.exp(
                part_lse - merged
            ).unsqueeze(-1)
            lse = merged
        for request in requests:
            request.wait()
        if step < n - 1:
            kv = arriving
    assert out is not None  # n >= 1 slices were attended
    return out.to(query.dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Wan's rotary embedding on interleaved pairs of `x` `[B, L, H, d]` (tables `[1, L, 1, d]`)."""
    pairs = x.unflatten(-1, (-1, 2))
    real, imag = pairs[..., 0], pairs[..., 1]
    c, s = cos[..., 0::2], sin[..., 1::2]
    return torch.stack([real * c - imag * s, real * s + imag * c], dim=-1).flatten(-2).type_as(x)


class ContextParallelSelfAttention:
    """Attention processor for a Wan self-attention (`attn1`) whose input is the local token slice."""

    def __init__(self, state: ContextParallelState, backend: Any = None) -> None:
        self.state = state
        self._attention_backend = backend

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        from diffusers.models.attention_dispatch import dispatch_attention_fn

        if encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError("the context parallel processor is for Wan's unmasked self-attention only")
        split, group = self.state.current_split(), self.state.group
        if attn.fused_projections:
            query, key, value = attn.to_qkv(hidden_states).chunk(3, dim=-1)
        else:
            query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        query, key = attn.norm_q(query), attn.norm_k(key)
        query, key, value = (t.unflatten(2, (attn.heads, -1)) for t in (query, key, value))
        if rotary_emb is not None:
            query, key = _rotate(query, *rotary_emb), _rotate(key, *rotary_emb)

        def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            return dispatch_attention_fn(
                q, k, v, dropout_p=0.0, is_causal=False, backend=self._attention_backend
            )

        strategy = self.state.strategy_for(attn.heads)
        if strategy == "ulysses":
            q, k, v = _tokens_to_heads(torch.stack([query, key, value]), split, group).unbind(0)
            out = _heads_to_tokens(attend(q, k, v), split, group)
        elif strategy == "ring":
            out = _ring_attention(query, key, value, split, group)
        else:  # all-gather: local queries against every rank's keys and values
            kv = _all_gather_tokens(torch.stack([key, value], dim=0), split, group, dim=2)
            out = attend(query, kv[0], kv[1])
        out = out.flatten(2, 3).type_as(query)
        return attn.to_out[1](attn.to_out[0](out))


# ------------------------------------------------------------------------------------------- the hooks
def attention_strategy(strategy: str, heads: int, ranks: int) -> str:
    """What a self-attention of `heads` heads split over `ranks` runs for `strategy`: "auto" is Ulysses
    when the ranks divide the heads, ring attention when they do not."""
    if strategy in ("ring", "allgather"):
        return strategy
    if heads % ranks:
        if strategy == "ulysses":
            raise ValueError(f"Ulysses needs the {heads} heads to divide by {ranks} ranks")
        return "ring"
    return "ulysses"


class ContextParallelState:
    """What one forward pass's hooks share: the group, the strategy and this call's token split."""

    def __init__(self, group: Any = None, strategy: str = "auto") -> None:
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy={strategy!r}; choose from {', '.join(STRATEGIES)}")
        self.group = group
        self.strategy = strategy
        self.world_size = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        self.split: TokenSplit | None = None
        self.num_frames = 0

    def strategy_for(self, heads: int) -> str:
        return attention_strategy(self.strategy, heads, self.world_size)

    def current_split(self) -> TokenSplit:
        """This call's token split; the model's forward pre-hook sets it before any block runs."""
        assert self.split is not None, "the context parallel model hook has not run"
        return self.split


class ContextParallel:
    """Context parallel on a `PusaTransformer3DModel` until `remove()`: every rank of `group` calls the model
    with the same inputs and gets the same full output, each computing its token slice."""

    def __init__(self, model: torch.nn.Module, group: Any = None, strategy: str = "auto") -> None:
        self.model = model
        self.state = ContextParallelState(group, strategy)
        dit: Any = model  # a PusaTransformer3DModel (nn.Module types its submodules Tensor | Module)
        self._handles = [
            model.register_forward_pre_hook(self._on_model, with_kwargs=True),
            dit.norm_out.register_forward_pre_hook(self._on_norm_out),
        ]
        self._processors = []
        for block in dit.blocks:
            self._handles.append(block.register_forward_pre_hook(self._on_block, with_kwargs=True))
            processor = block.attn1.processor
            self._processors.append((block.attn1, processor))
            block.attn1.set_processor(
                ContextParallelSelfAttention(self.state, getattr(processor, "_attention_backend", None))
            )

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        for attn, processor in self._processors:
            attn.set_processor(processor)
        self._handles, self._processors = [], []

    def _on_model(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        hidden = args[0] if args else kwargs["hidden_states"]
        config: Any = module.config  # the DiT's FrozenDict
        p_t, p_h, p_w = config.patch_size
        frames, height, width = hidden.shape[2] // p_t, hidden.shape[3] // p_h, hidden.shape[4] // p_w
        seq_len = frames * height * width
        if seq_len < self.state.world_size:
            raise ValueError(f"{seq_len} tokens cannot be split over {self.state.world_size} ranks")
        self.state.split = TokenSplit(seq_len, height * width, self.state.world_size, self.state.rank)
        self.state.num_frames = frames

    def _on_block(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        hidden, text, temb, rotary = args
        split = self.state.current_split()
        if hidden.shape[1] == split.seq_len:  # the first block: cut the sequence to this rank's slice
            hidden = hidden.narrow(1, split.start, split.length)
        if rotary is not None and rotary[0].shape[1] == split.seq_len:
            rotary = tuple(r.narrow(1, split.start, split.length) for r in rotary)
        temb = local_modulation(temb, split, self.state.num_frames)
        return (hidden, text, temb, rotary), kwargs

    def _on_norm_out(self, module: torch.nn.Module, args: tuple) -> tuple:
        """Gathers the slices; the head then runs on all tokens (its modulation rows are per frame again)."""
        (hidden,) = args
        split = self.state.current_split()
        if hidden.shape[1] == split.length and split.length != split.seq_len:
            hidden = _all_gather_tokens(hidden, split, self.state.group)
        return (hidden,)


def enable_context_parallel(
    model: torch.nn.Module, group: Any = None, strategy: str = "auto"
) -> ContextParallel:
    """Context parallel over `group` (default: the whole world); `.remove()` undoes it."""
    return ContextParallel(model, group, strategy)


def communicated_bytes(
    seq_len: int,
    dim: int,
    layers: int,
    world_size: int,
    bytes_per_element: int = 2,
    strategy: str = "ulysses",
) -> dict[str, float]:
    """Bytes one rank sends in one DiT forward pass under context parallel (computed from shapes).

    Ulysses, per layer: the q, k, v all-to-all sends `3 s D (N-1)/N` elements and the output's all-to-all
    `s D (N-1)/N`, s = L/N the local tokens: `4 s D (N-1)/N`. All-gather fallback, per layer: the local
    k, v to every other rank, `2 s D (N-1)`; ring attention the same (its N-1 exchanges of the local k, v).
    Once per pass: the final hidden states' all-gather, `s D (N-1)`.
    """
    n = world_size
    local = seq_len / n
    if strategy == "ulysses":
        per_layer = 4 * local * dim * (n - 1) / n
    else:
        per_layer = 2 * local * dim * (n - 1)
    gather = local * dim * (n - 1)
    per_rank = (layers * per_layer + gather) * bytes_per_element
    return {"per_rank": per_rank, "all_ranks": per_rank * n}


__all__ = [
    "STRATEGIES",
    "ContextParallel",
    "TokenSplit",
    "attention_strategy",
    "communicated_bytes",
    "enable_context_parallel",
    "local_modulation",
]
