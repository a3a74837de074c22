"""benchmarks/gpu_check.py (``make gpu-check``): without a GPU it runs tiny sizes on the CPU and reports every part."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from maskpolicy.policies import available

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"


@pytest.mark.slow
def test_without_a_gpu_the_check_runs_tiny_on_the_cpu_and_reports_every_measurement(tmp_path):
    out = tmp_path / "nested" / "gpu_check.json"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(SCRIPT), "--json", str(out)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "no GPU found: running the tiny sizes on the CPU" in done.stderr
    results = json.loads(out.read_text())
    assert results["tiny"] is True and results["machine"]["torch"]
    masking = results["masking"]
    for name in available():  # every registered policy has a row: a throughput, or the reason it could not run
        rows = [entry for label, entry in masking.items() if label.split(" ")[0] == name]
        assert rows and all(entry.get("tokens_per_s", 0) > 0 or entry.get("error") for entry in rows), name
    assert masking["random (exact count)"]["tokens_per_s"] > 0
    assert masking["HF DataCollatorForLanguageModeling (tensor path, cpu)"]["tokens_per_s"] > 0
    for precision in ("fp32", "bf16"):
        step = results["pretraining"][precision]
        assert step["tokens_per_s"] > 0 and step["peak_gib"] is None  # peak GPU memory: none on a CPU
        sizes = results["sizes"]
        assert results["scoring"][precision]["masked_rows"] == sizes["score_rows"] * sizes["passes"]
    assert set(results["meta_step"]) == {"plain_ms", "higher_k1_vs_plain", "torch_func_k1_vs_plain"}
    assert all(value > 0 for value in results["meta_step"].values())
    assert "meta-step K=1" in done.stdout and "masked rows/s" in done.stdout
