"""Publishing the learner's weights to the rollout workers: rank 0 is rank 0 of the weight-sync group and sends
from a snapshot while training goes on; under ZeRO-3 every rank takes part in the gathers that fill it."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import replace

import torch

from flexgrpo.records import WeightUpdate
from flexgrpo.weight_transport import Publisher, WeightSyncGroup, describe, fill_buckets
from learner.trained_weights import TrainedWeights


class WeightPublishing:
    def __init__(
        self, weights: TrainedWeights, *, rank: int, device: torch.device, bucket_mb: float, snapshot: str
    ) -> None:
        """bucket_mb: the size of a broadcast bucket; snapshot: `learner.sync_snapshot` (device, cpu or none)."""
        self.weights, self.rank, self.device = weights, rank, device
        self.bucket_mb, self.snapshot = bucket_mb, snapshot
        self._publisher: Publisher | None = None  # rank 0, once it joined the weight-sync group

    def join(self, host: str, port: int, world_size: int, timeout_s: float) -> None:
        """Rank 0: (re)build the weight-sync group as its rank 0, after the broadcasts in flight finish or fail."""
        if self._publisher is not None:
            self._publisher.close(timeout_s)
        group = WeightSyncGroup(host, port, 0, world_size, self.device, timeout_s=timeout_s)
        snapshot_device = torch.device("cpu") if self.snapshot == "cpu" else self.device
        self._publisher = Publisher(group, snapshot_device, slots=2 if self.snapshot == "none" else None)

    def header(self, version: int, ema: bool) -> WeightUpdate:
        """The header of the next publish of `version` (ema: of its EMA); rank 0 raises if the previous
        broadcast failed."""
        if self.rank == 0:
            assert self._publisher is not None, "join_weight_sync first"
            self._raise_if_broken(self._publisher.error, version)
        if ema and not self.weights.ema_decay:
            raise ValueError("publish_weights(ema=True) needs an EMA: set learner.ema_decay > 0")
        return replace(describe(self.weights.meta(), version, self.bucket_mb), ema=ema)

    def publish(self, header: WeightUpdate, version: int) -> WeightUpdate | None:
        """Every rank: snapshot the weights (the EMA when `header.ema`) into `header`'s buckets while rank 0's
        sender thread broadcasts the filled ones. -> rank 0: the header once the snapshot is whole; others None"""
        if header.version != version:
            raise ValueError(f"a header of v{header.version} cannot publish the weights of v{version}")
        publisher = self._publisher
        assert self.rank != 0 or publisher is not None, "join_weight_sync first"
        failed = publisher.error if publisher is not None else None
        source = self.weights.whole
        with self.weights.ema_swapped() if header.ema else nullcontext():
            if publisher is None or failed is not None:  # still takes part in the ZeRO-3 gathers
                fill_buckets(header, source, None)
            else:
                publisher.publish(header, lambda out, ready: fill_buckets(header, source, out, ready))
        if self.rank != 0:
            return None
        self._raise_if_broken(failed, version)
        return header

    @staticmethod
    def _raise_if_broken(failed: Exception | None, version: int) -> None:
        if failed is not None:
            raise RuntimeError(
                f"the weight broadcast before v{version} failed ({failed!r}); "
                "call join_weight_sync to rebuild the group"
            )
