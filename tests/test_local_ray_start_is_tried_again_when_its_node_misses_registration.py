"""Ray gives a new local node 30 s to register (fixed in Ray); on a loaded machine `flexgrpo train` missed it and
died at start-up (seen in a CI rehearsal). `start_local_node` tries again, after killing the processes the failed
start left running. The fault is injected: a start that leaves a process behind and raises Ray's error."""

import subprocess

import pytest

from cluster.ray_cluster import start_local_node

RAY_TIMEOUT = (
    "The current node timed out during startup. This could happen because some of the raylet failed to startup "
    "or the GCS has become overloaded."
)


def test_a_start_that_timed_out_is_cleaned_up_and_tried_again():
    left_behind: list[subprocess.Popen] = []

    def start():
        left_behind.append(subprocess.Popen(["sleep", "60"]))  # stands in for the failed start's GCS and raylet
        if len(left_behind) < 3:
            raise Exception(RAY_TIMEOUT)

    start_local_node(start)
    assert len(left_behind) == 3
    assert [p.poll() is not None for p in left_behind] == [True, True, False]  # the failed starts' processes killed
    left_behind[-1].kill()


def test_other_errors_and_the_last_try_are_raised():
    calls = []

    def broken():
        calls.append(1)
        raise ValueError("num_gpus must be >= 0")

    with pytest.raises(ValueError, match="num_gpus"):
        start_local_node(broken)
    assert len(calls) == 1

    def always_late():
        calls.append(1)
        raise Exception(RAY_TIMEOUT)

    with pytest.raises(Exception, match="timed out during startup"):
        start_local_node(always_late, tries=2)
    assert len(calls) == 3
