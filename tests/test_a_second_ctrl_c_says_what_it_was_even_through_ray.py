"""A second Ctrl-C stops the job at once with `KeyboardInterrupt("Ctrl-C twice: ...")`, which the final status and
the log carry. When the signal lands inside one of Ray's own waits, Ray raises a bare KeyboardInterrupt of its
own instead (seen in a CI rehearsal: status `stop_reason` "Ctrl-C", the log without the reason); the job's
signal handling still ends with the reason."""

from __future__ import annotations

import os
import signal
import sys
import time
from types import SimpleNamespace

import pytest

from orchestration.driver import StopSignals


@pytest.fixture(autouse=True)
def _a_terminal():
    """The handlers a job started from a terminal finds, whatever this test process inherited (one started in
    the background by a shell, `cmd &`, inherits SIGINT ignored)."""
    terminal = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}
    before = {signum: signal.signal(signum, handler) for signum, handler in terminal.items()}
    yield
    for signum, handler in before.items():
        signal.signal(signum, handler)


def _trainer() -> SimpleNamespace:
    return SimpleNamespace(operator=SimpleNamespace(stop_requested=False))


def _signals(trainer: SimpleNamespace | None) -> StopSignals:
    """The job's signal handling with its loop running (a trainer), or still starting (None)."""
    signals = StopSignals()
    signals.trainer = trainer
    return signals


def _wait_for_the_handler() -> None:
    time.sleep(1)  # the handler runs between bytecodes of this thread, within this sleep


def test_a_second_ctrl_c_turned_bare_by_ray_still_names_itself():
    trainer = _trainer()
    with pytest.raises(KeyboardInterrupt, match="^Ctrl-C twice: stopped at once") as raised:
        with _signals(trainer) as signals:
            os.kill(os.getpid(), signal.SIGINT)
            _wait_for_the_handler()
            assert trainer.operator.stop_requested and signals.reason == "Ctrl-C"
            try:
                os.kill(os.getpid(), signal.SIGINT)
                _wait_for_the_handler()
            except KeyboardInterrupt:
                raise KeyboardInterrupt() from None  # what Ray's wait raises in its place
    assert isinstance(raised.value.__cause__, KeyboardInterrupt)  # the traceback of where it landed is kept
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_first_ctrl_c_only_asks_for_a_stop_at_the_step_boundary():
    trainer = _trainer()
    with _signals(trainer) as signals:
        os.kill(os.getpid(), signal.SIGINT)
        _wait_for_the_handler()
    assert trainer.operator.stop_requested and signals.reason == "Ctrl-C" and signals.interrupted is None


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("phase", ["starting", "shutting down"])
def test_a_signal_outside_the_loop_stops_at_once_and_says_when_it_came(signum, phase):
    """No step boundary to wait for: while the job starts, or once its loop returned (its last checkpoint
    written) and it shuts down, the first Ctrl-C or SIGTERM stops it at once. In a CI rehearsal a second Ctrl-C
    that came during the shutdown left a bare KeyboardInterrupt, and the terminal said "stopped without a final
    checkpoint" of a job that had written it."""
    trainer = _trainer()
    signals = _signals(None if phase == "starting" else trainer)
    signals.loop_over = phase == "shutting down"
    name = StopSignals.NAMES[signum]
    when = "started" if phase == "starting" else "shut down, its loop over"
    with pytest.raises(KeyboardInterrupt, match=f"^{name} while the job {when}: stopped at once$"):
        with signals:
            try:
                os.kill(os.getpid(), signum)
                _wait_for_the_handler()
            except KeyboardInterrupt:
                raise KeyboardInterrupt() from None  # bare, as out of Ray's wait: named on the way out
    assert not trainer.operator.stop_requested and signals.reason is None
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_sigterm_still_stops_at_the_step_boundary_after_ray_put_in_its_own_handler():
    """`ray.init` installs a SIGTERM handler of its own (`sys.exit(15)`: no checkpoint, exit code 15; the driver's
    SIGTERM test failed so once the job's signal handling began before Ray started); `take_back` makes it ours."""
    trainer, before = _trainer(), signal.getsignal(signal.SIGTERM)  # (Ray's own, where this process started Ray)
    with _signals(trainer) as signals:
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(signum))  # what ray.init does
        signals.take_back()
        os.kill(os.getpid(), signal.SIGTERM)
        _wait_for_the_handler()
    assert trainer.operator.stop_requested and signals.reason == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_sigterm_while_ray_starts_meets_rays_handler_and_is_named():
    """Before `take_back` (while ray.init runs) Ray's handler exits with the signal's number: the job still stops
    at once saying when the SIGTERM came, as the CLI prints it, instead of a silent exit 15."""
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt, match="^SIGTERM while the job started: stopped at once$") as raised:
        with _signals(None):
            signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(signum))  # what ray.init does
            os.kill(os.getpid(), signal.SIGTERM)
            _wait_for_the_handler()
    assert isinstance(raised.value.__cause__, SystemExit)
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_job_started_with_sigint_ignored_leaves_it_ignored():
    """`nohup flexgrpo train ... &`: a Ctrl-C meant for the shell's foreground job does not reach this one."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    trainer = _trainer()
    with _signals(trainer) as signals:
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        os.kill(os.getpid(), signal.SIGINT)
        _wait_for_the_handler()
    assert not trainer.operator.stop_requested and signals.reason is None
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
