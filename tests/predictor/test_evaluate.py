"""Offline metrics: top-1, top-k and recall@D on a hand-made prediction."""

from __future__ import annotations

import numpy as np

from predictor.evaluate import PolicyRun, per_read_scores


def test_scores_of_a_known_prediction():
    """recall@D counts distinct tensors among the next D reads; top-k looks at the first k predicted."""
    reads = np.array([5, 6, 5, 7])
    pred = np.array([[5, 6, -1], [7, 6, 5], [5, 9, 9], [-1, -1, -1]])
    run = PolicyRun(reads=reads, phase=np.zeros(4, int), kind=np.zeros(4, int), step=np.zeros(4, int), pred=pred,
                    covered=np.ones(4, bool), observe_ns=0, events=4, requests=0)  # fmt: skip
    s = per_read_scores(run, topk=2)
    assert s["top1"].tolist() == [True, False, True, False]
    assert s["topk"].tolist() == [True, True, True, False]
    # read 0: next 3 = {5, 6} (5 twice), both predicted -> 1.0; read 1: {6, 5, 7} all predicted -> 1.0
    # read 2: {5, 7}, only 5 -> 0.5; read 3: {7}, none -> 0.0
    assert s["recall"].tolist() == [1.0, 1.0, 0.5, 0.0]
