"""The time-left estimate against hand computations."""

import pytest

from megatron_evomoe.progress import ProgressClock, format_duration, progress_text, remaining_seconds


def test_remaining_time_from_the_rate_so_far():
    # 250 of 1000 iterations in 1000 s: 4 s each, 750 left -> 3000 s.
    assert remaining_seconds(250, 1000, 1000.0) == pytest.approx(3000.0)
    # Preprocessing by bytes: 3 MB of 12 MB read in 90 s -> 9 MB at 30 s/MB = 270 s.
    assert remaining_seconds(3_000_000, 12_000_000, 90.0) == pytest.approx(270.0)


def test_a_resumed_run_uses_this_process_rate_not_the_iterations_before_it():
    # Resumed at 9000 of 10000; 100 iterations in 600 s here: 6 s each, 900 left -> 5400 s.
    assert remaining_seconds(9100, 10000, 600.0, done_at_start=9000) == pytest.approx(5400.0)
    # Counting from 0 would say 900 x (600 / 9100) = 59 s: the bug this guards against.
    assert remaining_seconds(9100, 10000, 600.0) == pytest.approx(900 * 600 / 9100)


def test_no_estimate_before_progress_and_none_after_the_end():
    assert remaining_seconds(9000, 10000, 5.0, done_at_start=9000) is None
    assert remaining_seconds(0, 10, 0.0) is None
    assert remaining_seconds(10, 10, 50.0) == 0.0
    assert remaining_seconds(12, 10, 50.0) == 0.0


def test_durations_print_as_hours_minutes_seconds():
    assert format_duration(0) == "0:00:00"
    assert format_duration(723) == "0:12:03"  # 12 x 60 + 3
    assert format_duration(3731.4) == "1:02:11"  # 3600 + 2 x 60 + 11, rounded
    assert format_duration(27 * 3600 + 3 * 60 + 4) == "27:03:04"  # past a day the hours keep counting
    assert format_duration(None) == "?"
    assert format_duration(float("inf")) == "?"


def test_log_text():
    # 100 of 600 iterations in 723 s: 7.23 s each, 500 left -> 3615 s = 1:00:15.
    assert progress_text(100, 600, 723.0) == "elapsed 0:12:03 | ETA 1:00:15"
    assert progress_text(5, 10, 1.0, done_at_start=5) == "elapsed 0:00:01 | ETA ?"


def test_clock_counts_from_where_this_process_started(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr("megatron_evomoe.progress.time.monotonic", lambda: now[0])
    clock = ProgressClock(total=200, done_at_start=50)
    now[0] += 30.0  # 10 iterations in 30 s: 3 s each; 140 left -> 420 s
    assert clock.text(60) == "elapsed 0:00:30 | ETA 0:07:00"
