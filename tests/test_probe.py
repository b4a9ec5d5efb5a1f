"""The benchmark probe's figures: the median's interval, the verdict against a target, CPU per request."""

import random
import statistics
import subprocess
import sys

import pytest

from loadtests.probe import cpu_seconds, median_interval, per_request_ms, verdict


def test_interval_ranks_for_300_pairs():
    # (300 - 1.96 * sqrt(300)) / 2 = 133.0 and 1 + (300 + 33.9) / 2 = 168.0: ranks 133 and 168
    assert median_interval([float(v) for v in range(1, 301)]) == (133.0, 168.0)


def test_interval_is_order_free_and_holds_the_sample_median():
    rng = random.Random(7)
    values = [rng.lognormvariate(0, 1) for _ in range(201)]
    low, high = median_interval(values)
    assert median_interval(sorted(values, reverse=True)) == (low, high)
    assert low < statistics.median(values) < high


def test_interval_covers_the_true_median_about_95_percent_of_the_time():
    rng = random.Random(11)
    trials = 2000
    # exponential with rate 1: a long tail like vLLM's latency; its true median is ln 2
    covered = sum(
        low <= 0.6931 <= high
        for low, high in (median_interval([rng.expovariate(1) for _ in range(300)]) for _ in range(trials))
    )
    assert 0.93 * trials <= covered <= 0.975 * trials


def test_interval_of_tiny_samples_is_the_whole_range():
    assert median_interval([3.0]) == (3.0, 3.0)
    assert median_interval([5.0, 1.0, 3.0]) == (1.0, 5.0)


@pytest.mark.parametrize(
    ("low", "high", "word"),
    [(0.5, 1.9, "met"), (2.0, 3.0, "missed"), (1.5, 2.5, "not resolved"), (1.9, 2.0, "not resolved")],
)
def test_verdict(low, high, word):
    assert verdict(low, high, 2.0).startswith(word)


BURN = """
import sys, time
for line in sys.stdin:  # each line: burn that many ms of CPU, then say so
    start = time.process_time()
    while time.process_time() - start < float(line) / 1000:
        pass
    print("done", flush=True)
"""


def test_cpu_per_request_is_exact_under_the_proc_tick():
    # /proc counts CPU in 10 ms ticks: a 3 ms burn there reads 0 or 10 ms. The process's CPU clock does not.
    child = subprocess.Popen(
        [sys.executable, "-c", BURN], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert child.stdin and child.stdout
    try:
        child.stdin.write("1\n")  # past the interpreter's start
        child.stdin.flush()
        child.stdout.readline()
        for _ in range(3):
            before = cpu_seconds(child.pid)
            child.stdin.write("3\n")
            child.stdin.flush()
            assert child.stdout.readline() == "done\n"
            user, system = per_request_ms(child.pid, before, 1)
            assert 3.0 <= user + system < 8.0
            assert user >= 0 and system >= 0
    finally:
        child.kill()
        child.wait()
