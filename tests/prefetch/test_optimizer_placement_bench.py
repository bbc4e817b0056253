"""benchmarks/optimizer_placement.py: its flags and its verdict rules (nothing is run or timed here)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_optimizer_placement", ROOT / "benchmarks/optimizer_placement.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("argv, flag", [
    (["--link-ratios", "0,8"], "--link-ratios"),
    (["--link-ratios", "fast"], "--link-ratios"),
    (["--repeats", "0"], "--repeats"),
    (["--repeats", "2,3"], "--repeats"),
    (["--steps", "1"], "--steps"),
    (["--threads", "x"], "--threads"),
    (["--workloads", "gpt2,nope"], "--workloads"),
    (["--workloads", ","], "--workloads"),
])
def test_bad_flag_is_one_line_naming_it(bench, argv, flag):
    """A bad flag value exits with one line that names the flag, before anything runs."""
    with pytest.raises(SystemExit) as e:
        bench.parse_args(argv)
    msg = str(e.value.code)
    assert flag in msg and "\n" not in msg and msg.startswith("optimizer_placement.py:")


def test_defaults_and_quick(bench):
    """Default: gpt2 and vit at ratios 0.5 and 8, 3 repeats, 5 steps, 1 thread; --quick: gpt2 only, 2 repeats, 6 steps."""
    a = bench.parse_args([])
    assert (a.workloads, a.link_ratios, a.repeats, a.steps, a.threads) == (["gpt2", "vit"], [0.5, 8.0], 3, 5, 1)
    q = bench.parse_args(["--quick"])
    assert (q.workloads, q.repeats, q.steps) == (["gpt2"], 2, 6)


def test_faster_is_a_tie_only_when_each_median_is_in_the_others_range(bench):
    """The lower median wins unless each median lies inside the other's [min-max]."""
    assert bench.faster([1.0, 1.1, 1.2], [2.0, 2.1, 2.2]) == "host"
    assert bench.faster([2.0, 2.1, 2.2], [1.0, 1.1, 1.2]) == "device"
    assert bench.faster([1.0, 1.5, 2.0], [1.2, 1.4, 1.9]) == "tie"
    # host's median lies in device's wide range, but device's does not lie in host's: a claim
    assert bench.faster([1.4, 1.5, 1.6], [1.0, 1.2, 2.0]) == "device"


def test_verdict(bench):
    """ok when auto picked the measured faster one; **miss** otherwise, or when its repeats disagreed; ties claim nothing."""
    assert bench.verdict("host", True, "host") == "ok"
    assert bench.verdict("host", True, "device") == "**miss**"
    assert bench.verdict("host", False, "host").startswith("**miss**")
    assert bench.verdict("device", True, "tie") == "tie (within spread)"
    assert bench.picks(["host", "device", "host"]) == ("host", False)
    assert bench.picks(["device", "device"]) == ("device", True)
