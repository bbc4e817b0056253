"""`prefetch train` and `prefetch eval` end to end on synthetic traces."""

from __future__ import annotations

import json

from predictor.policies import POLICIES
from prefetch.cli import main


def test_train_then_eval_writes_artifacts_and_json(traces, tmp_path, capsys):
    """train writes one artifact per architecture; eval prints a table and writes JSON for both scopes."""
    models = tmp_path / "models"
    assert main(["train", str(traces / "moe-train"), "--out", str(models), "--no-progress", "--threads", "1"]) == 0
    assert len(list(models.glob("*/meta.json"))) == 1
    out = tmp_path / "eval.json"
    rc = main(["eval", "--model", str(models), str(traces / "moe-train"), str(traces / "moe-run"),
               "--json", str(out), "--lookahead", "8", "--no-progress"])  # fmt: skip
    assert rc == 0
    text = capsys.readouterr().out
    assert "recall@8" in text and "learned" in text and "held-out run" in text
    report = json.loads(out.read_text())
    assert {r["scope"] for r in report["traces"]} == {"held-out steps", "held-out run"}
    for r in report["traces"]:
        assert set(r["policies"]) == set(POLICIES)  # every registered policy is evaluated
        for m in r["policies"].values():
            assert {"top1", "topk", "recall", "coverage", "by_phase", "by_kind"} <= set(m)


def test_eval_of_an_untrained_architecture_is_one_line_error(traces, tmp_path, capsys):
    """Evaluating a trace whose architecture has no artifact fails with exit code 2 and one message."""
    models = tmp_path / "models"
    main(["train", str(traces / "static-train"), "--out", str(models), "--no-progress"])
    assert main(["eval", "--model", str(models), str(traces / "moe-run"), "--no-progress"]) == 2
    assert "no predictor for architecture" in capsys.readouterr().err
