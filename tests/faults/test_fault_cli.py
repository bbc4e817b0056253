"""Bad flags on every verb: exit 2 and one stderr line `prefetch VERB: error: ...` naming the flag."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest

from prefetch.cli import main as cli_main
from runtime import launch

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = str(ROOT / "datasets" / "samples" / "gpt2" / "train")


def run_cli(argv: list[str]) -> tuple[int, str]:
    """(exit code, stderr) of `prefetch ARGV`, in process; argparse's SystemExit included."""
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        try:
            rc = cli_main(argv)
        except SystemExit as exc:
            rc = exc.code
    return rc, err.getvalue()


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["record", "--out", "x"], "prefetch record: error: give either --workload"),
        (["record", "--out", "", "--workload", "gpt2"], "prefetch record: error: argument --out: must name a folder"),
        (["record", "--out", "o", "--workload", "gpt2", "--threads", "0"], "prefetch record: error: argument --threads"),
        (["record", "--out", "o", "--workload", "gpt2", "--steps", "abc"], "prefetch record: error: argument --steps"),
        (["record", "--out", ".", "--", "ruby", "x.rb"], "prefetch record: error: can only record Python scripts"),
        (["record", "--out", ".", "--", "python", "/nonexistent.py"], "prefetch record: error: script /nonexistent.py"),
        (["trace", "info", "/nonexistent"], "prefetch trace: error: /nonexistent: no such trace"),
        (["train", SAMPLE, "--out", ""], "prefetch train: error: argument --out"),
        (["train", SAMPLE, "--out", "m", "--trees", "0"], "prefetch train: error: argument --trees: must be >= 1"),
        (["train", SAMPLE, "--out", "m", "--threads", "0"], "prefetch train: error: argument --threads"),
        (["train", SAMPLE, "--out", "m", "--holdout", "nan"], "prefetch train: error: argument --holdout"),
        (["train", SAMPLE, "--out", "m", "--lookahead", "-1"], "prefetch train: error: argument --lookahead"),
        (["eval", "--model", "m", SAMPLE, "--topk", "0"], "prefetch eval: error: --lookahead and --topk"),
        (["simulate", SAMPLE, "--policy", "replay", "--latency-us", "-5"], "prefetch simulate: error: argument --latency-us"),
        (["simulate", SAMPLE, "--policy", "replay", "--bandwidth", "0"], "prefetch simulate: error: argument --bandwidth"),
        (["simulate", SAMPLE, "--policy", "replay", "--link-ratio", "nan"], "prefetch simulate: error: argument --link-ratio"),
        (["simulate", SAMPLE, "--policy", "replay", "--warmup", "-1"], "prefetch simulate: error: argument --warmup"),
        (["simulate", SAMPLE, "--policy", "replay", "--lookahead", "0"], "prefetch simulate: error: argument --lookahead"),
        (["simulate", SAMPLE, "--policy", "bogus"], "prefetch simulate: error: unknown policy 'bogus'"),
        (["report", "/nonexistent.json", "--out", "r"], "prefetch report: error: /nonexistent.json"),
        (["bogus-verb"], "prefetch: error: argument COMMAND: invalid choice"),
    ],
)
def test_bad_flag_is_one_line_naming_verb_and_flag(tmp_path, monkeypatch, argv, expected):
    """Exit code 2, exactly one stderr line, prefixed with the verb (not the argument list)."""
    monkeypatch.chdir(tmp_path)
    rc, err = run_cli(argv)
    assert rc == 2, err
    assert err.count("\n") == 1 and err.startswith(expected), err
    assert not list(tmp_path.iterdir()), "a refused command wrote files"


def test_launcher_refuses_an_empty_out(tmp_path, monkeypatch):
    """`python -m runtime.launch --out ''` (what `prefetch record -- ...` runs) refuses before running anything."""
    monkeypatch.chdir(tmp_path)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = launch.main(["--out", "", "--", "script.py"])
    assert rc == 2 and err.getvalue() == "prefetch record: error: --out must name a folder, got an empty string\n"
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("verb", [["trace", "info"], ["train", "--out", "m"], ["simulate", "--policy", "replay"]])
def test_a_list_manifest_is_one_line_in_every_reader(tmp_path, monkeypatch, verb):
    """A manifest.json holding a JSON list: one line naming it in trace info, train and simulate."""
    import shutil

    for f in Path(SAMPLE).iterdir():
        shutil.copy(f, tmp_path / f.name)
    (manifest,) = tmp_path.glob("*.manifest.json")
    manifest.write_text("[1, 2, 3]")
    monkeypatch.chdir(tmp_path)
    rc, err = run_cli([*verb[:1], *verb[1:2], str(tmp_path), *verb[2:]] if verb[0] == "trace" else [verb[0], str(tmp_path), *verb[1:]])
    assert rc == 2 and err.count("\n") == 1, err
    assert f"{manifest}: expected a JSON object, got a JSON array" in err
