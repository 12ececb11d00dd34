"""Where a run's time goes: the machine's CPU readings behind the run summary's busy share."""

import time

import pytest

from segmodel.pipeline.clock import busy_share, machine_cpu


def test_busy_share_is_the_busy_part_of_the_cores_time_between_two_readings():
    assert busy_share((10.0, 100.0), (15.0, 110.0)) == 0.5
    assert busy_share((10.0, 100.0), (10.0, 100.0)) is None  # no time passed
    assert busy_share(None, (15.0, 110.0)) is None


@pytest.mark.skipif(machine_cpu() is None, reason="no /proc/stat here (Linux only)")
def test_a_busy_loop_shows_in_the_machine_reading():
    before = machine_cpu()
    end = time.process_time() + 0.3
    while time.process_time() < end:  # one core busy for 0.3 s of CPU
        pass
    after = machine_cpu()
    assert after[0] - before[0] >= 0.25  # busy seconds (the clock ticks at 1/100 s)
    assert 0 < busy_share(before, after) <= 1
