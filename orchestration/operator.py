"""Operator commands: carried out in order, each acknowledged in Redis with its outcome (done, rejected, failed).

pause holds the job at a step boundary; the commands sent while paused are still carried out in order
(a checkpoint is written, a reward swap starts), until resume or stop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import ray

from flexgrpo.config import Config, ConfigError, RewardSpec, with_rewards
from flexgrpo.control_plane import Command, ControlPlane

log = logging.getLogger("flexgrpo")
PAUSE_POLL_S = 0.5


@dataclass
class RewardSpecs:
    """Every reward spec of the run by version (a scored group names the version that scored it)."""

    versions: dict[int, list[RewardSpec]]

    @property
    def latest(self) -> int:
        return max(self.versions)

    @property
    def training(self) -> list[str]:
        """The names of the rewards the run trains on now (the latest spec's)."""
        return [spec.name for spec in self.versions[self.latest]]

    def as_json(self) -> dict[str, list[dict]]:
        return {str(v): [asdict(r) for r in rs] for v, rs in self.versions.items()}

    @classmethod
    def from_json(cls, cfg: Config, data: dict[str, list[dict]]) -> RewardSpecs:
        return cls({int(v): with_rewards(cfg, specs) for v, specs in data.items()})


@dataclass
class _Swap:
    command_id: str
    refs: list  # one ObjectRef per reward worker


@dataclass
class Operator:
    cfg: Config
    control: ControlPlane
    reward_workers: Callable[[], list]  # the reward actors now (they are replaced after a restart)
    checkpoint: Callable[[], object]  # writes a checkpoint at the current step boundary
    specs: RewardSpecs
    scale: Callable[[str, object], str]  # (pool, workers) -> outcome in words; raises ValueError to refuse
    stop_requested: bool = False  # set by stop and SIGTERM: checkpoint, then end with status "stopped"
    checkpoint_requested: bool = False  # set by the checkpoint command; carried out at the next step boundary
    swaps: list[_Swap] = field(default_factory=list)  # reward swaps still loading
    pending_checkpoint_ids: list[str] = field(default_factory=list)  # checkpoint commands not yet carried out

    def poll(self) -> None:
        """Carry out pending commands; while paused, keep doing so until resume or stop."""
        self._check_swaps()
        paused = False
        while True:
            for command in self.control.take_commands():
                paused = self._handle(command, paused)
            if self.checkpoint_requested and paused:
                self.checkpoint()
            if not paused or self.stop_requested:
                break
            time.sleep(PAUSE_POLL_S)
            self._check_swaps()
        if paused:
            self.control.update_run(status="running")

    def _handle(self, command: Command, paused: bool) -> bool:
        """One command; returns whether the job is paused after it."""
        log.info("operator command %s: %s %s", command.id, command.op, command.args)
        if command.op == "pause":
            self.control.update_run(status="paused")
            self.control.record_outcome(command.id, "done")
            return True
        if command.op == "resume":
            self.control.record_outcome(command.id, "done" if paused else "rejected", "" if paused else "not paused")
            return False
        if command.op == "stop":
            self.stop_requested = True
            self.control.record_outcome(command.id, "done")
            return False
        if command.op == "checkpoint":
            self.checkpoint_requested = True  # written at this step boundary (or now, while paused)
            self.pending_checkpoint_ids.append(command.id)
            return paused
        if command.op == "swap_reward":
            self._swap_reward(command)
            return paused
        if command.op == "scale":
            try:
                outcome = self.scale(command.args.get("pool"), command.args.get("workers"))
            except ValueError as err:
                self.control.record_outcome(command.id, "rejected", str(err))
            else:
                self.control.record_outcome(command.id, "done", outcome)
            return paused
        self.control.record_outcome(command.id, "rejected", f"unknown op {command.op!r}")
        return paused

    def checkpoint_written(self, folder: str) -> None:
        """Acknowledge the checkpoint commands that this checkpoint carried out."""
        for command_id in self.pending_checkpoint_ids:
            self.control.record_outcome(command_id, "done", f"checkpoint {folder}")
        self.pending_checkpoint_ids, self.checkpoint_requested = [], False

    def _swap_reward(self, command: Command) -> None:
        """Start loading a new reward spec into every reward worker, without waiting: workers keep scoring with
        the old spec until the new one is built, and each scored group carries the version that scored it."""
        from reward_workers.registry import check_reward_specs

        try:
            rewards = with_rewards(self.cfg, command.args.get("rewards", []))
            check_reward_specs(rewards)
        except (ConfigError, ValueError) as err:
            log.error("swap_reward rejected: %s", err)
            self.control.record_outcome(command.id, "rejected", str(err))
            return
        version = self.specs.latest + 1
        self.specs.versions[version] = list(rewards)
        refs = [a.swap.remote(rewards, version) for a in self.reward_workers()]
        self.swaps.append(_Swap(command.id, refs))
        self.control.update_run(reward_version_requested=version, rewards=[asdict(s) for s in rewards])

    def _check_swaps(self) -> None:
        """Acknowledge reward swaps whose workers all finished (a failed one leaves the previous spec in place)."""
        for swap in list(self.swaps):
            if ray.wait(swap.refs, num_returns=len(swap.refs), timeout=0)[1]:
                continue
            self.swaps.remove(swap)
            try:
                ray.get(swap.refs)
                self.control.record_outcome(swap.command_id, "done")
            except Exception as err:  # noqa: BLE001  (any failure inside a worker)
                log.error("swap_reward failed in a reward worker: %s", err)
                self.control.record_outcome(swap.command_id, "failed", str(err).splitlines()[0])

    def restore(self, specs: dict[str, list[dict]]) -> None:
        """The reward specs of a checkpoint (its run state's JSON); the reward workers get the latest one when
        it is not the run's first."""
        self.specs = RewardSpecs.from_json(self.cfg, specs)
        if self.specs.latest:
            self.restore_workers(self.reward_workers())

    def restore_workers(self, actors: list) -> None:
        """After a reward worker restarted: load the latest spec into every worker."""
        latest = self.specs.latest
        ray.get([a.swap.remote(self.specs.versions[latest], latest) for a in actors])
