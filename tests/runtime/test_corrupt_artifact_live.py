"""A damaged artifact cannot take down a training job: `runtime.prefetching` runs on the fallback.

    python -m pytest tests/runtime/test_corrupt_artifact_live.py -q

The job's own process loads the artifact (its tensor table) and so does the daemon it
starts; before the model file was checked, a garbled model.txt whose checksum was updated
to match aborted both (SIGABRT inside LightGBM). The job runs in a child process here, so
an abort would show as a signal rather than end the test run.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

JOB = textwrap.dedent("""
    import json, sys, torch, runtime
    from predictor.train import TrainConfig, train
    from runtime.link import LinkModel

    def job(seed):
        torch.manual_seed(seed)
        model = torch.nn.Sequential(torch.nn.Linear(128, 512), torch.nn.GELU(), torch.nn.Linear(512, 128))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        g = torch.Generator().manual_seed(seed)
        def step():
            opt.zero_grad()
            loss = model(torch.randn(32, 128, generator=g)).pow(2).mean()
            loss.backward()
            opt.step()
            return loss.item()
        return model, opt, step

    torch.set_num_threads(1)
    root, phase = sys.argv[1], sys.argv[2]
    if phase == "train":
        model, opt, step = job(0)
        with runtime.record(model, opt, out=root + "/traces"):
            for _ in range(4):
                step()
        train([root + "/traces"], root + "/models", TrainConfig(num_threads=1), progress=False, log=lambda *a: None)
    else:
        _, _, plain = job(1)
        baseline = [plain() for _ in range(4)]
        model, opt, step = job(1)
        with runtime.prefetching(model, opt, policy="learned:" + root + "/models", budget=0.5, device="simulated",
                                 link=LinkModel(bandwidth_bytes_per_s=5e9)) as pf:
            losses = [step() for _ in range(4)]
        print(json.dumps({"served_by": pf.report()["policy_served_by"], "same": losses == baseline}))
""")


def _python(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", JOB, *args], cwd=ROOT, capture_output=True, text=True, timeout=240)


@pytest.mark.slow  # ~40 s on a busy 2-core box: record, train, a job with its own daemon
def test_garbled_model_file_means_fallback_not_a_dead_job(tmp_path):
    """A garbled model.txt (checksum updated): the job finishes, bit-identical, served by the fallback."""
    out = _python(str(tmp_path), "train")
    assert out.returncode == 0, out.stderr[-1500:]
    folder = next((tmp_path / "models").iterdir())
    data = (folder / "model.txt").read_bytes()
    data = data.replace(b"leaf_value=", b"leaf_value=1 2 3 4 5 6 7 8 9 ", 1)  # LightGBM: SIGABRT on this
    (folder / "model.txt").write_bytes(data)
    meta = json.loads((folder / "meta.json").read_text())
    meta["files"]["model.txt"]["sha256"] = hashlib.sha256(data).hexdigest()
    (folder / "meta.json").write_text(json.dumps(meta))
    run = _python(str(tmp_path), "run")
    assert run.returncode == 0, f"job died (code {run.returncode}): {run.stderr[-1500:]}"
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["same"] and result["served_by"].startswith("replay")
    assert "model.txt" in run.stderr  # the fallback reason, named, on the job's stderr
