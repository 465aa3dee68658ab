"""The learner's trained parameters as publishing and export read them (whole under ZeRO-3 while read), and
their exponential moving average (EMA)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import torch
from torch import Tensor


class TrainedWeights:
    def __init__(self, params: dict[str, Tensor], *, zero3: bool, ema_decay: float, keeps_ema: bool) -> None:
        """params: the trained parameters by name (ZeRO-3 partitions them when zero3). keeps_ema: this rank holds
        an EMA (decay `ema_decay`): where export reads it, every ZeRO-3 rank or rank 0."""
        self.params, self.zero3, self.ema_decay = params, zero3, ema_decay
        self.ema = [s.detach().float().clone() for s in self._ema_sources()] if keeps_ema else []

    def meta(self) -> dict[str, Tensor]:
        """The trained parameters as meta tensors of their whole shape and dtype (ZeRO-3 partitions them)."""
        return {
            n: torch.empty(p.ds_shape if self.zero3 else p.shape, dtype=p.dtype, device="meta")
            for n, p in self.params.items()
        }

    @contextmanager
    def whole(self, names: list[str]) -> Iterator[dict[str, Tensor]]:
        """The trained parameters, with `names` whole while inside (a `BucketSource`)."""
        with self.gathered(names):
            yield self.params

    def gathered(self, names: list[str] | None = None):
        """Under ZeRO-3, the whole `names` parameters (all trained ones by default) while inside; else nothing."""
        if not self.zero3:
            return nullcontext()
        import deepspeed

        return deepspeed.zero.GatheredParameters([self.params[n] for n in names or self.params])

    def cpu_copy(self) -> dict[str, Tensor]:
        """A CPU copy of the trained parameters, gathered whole under ZeRO-3."""
        with self.gathered():
            return {n: p.detach().cpu().clone() for n, p in self.params.items()}

    def _ema_sources(self) -> list[Tensor]:
        """What the EMA tracks: this rank's ZeRO-3 partition of each trained tensor, or the whole tensors."""
        return [p.ds_tensor if self.zero3 else p.data for p in self.params.values()]

    @torch.no_grad()
    def update_ema(self) -> None:
        """ema <- decay * ema + (1 - decay) * weights, once per learner step (fp32)."""
        if self.ema:
            torch._foreach_lerp_(self.ema, [s.float() for s in self._ema_sources()], 1 - self.ema_decay)

    @contextmanager
    def ema_swapped(self) -> Iterator[None]:
        """The EMA in place of the trained weights while inside (nothing without an EMA on this rank)."""
        if not self.ema:
            yield
            return
        sources = self._ema_sources()
        saved = [s.detach().clone() for s in sources]
        with torch.no_grad():
            for s, e in zip(sources, self.ema, strict=True):
                s.copy_(e)
        try:
            yield
        finally:
            with torch.no_grad():
                for s, b in zip(sources, saved, strict=True):
                    s.copy_(b)
