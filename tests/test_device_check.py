"""``benchmarks/device_check.sh --quick`` runs end to end on CPU and prints every section.

Slow tier: it compiles every benchmark model twice plus the epochs (about a minute of CPU).
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_device_check_quick_prints_every_section():
    env = {**os.environ, "PYTHON": sys.executable, "JAX_PLATFORMS": "cpu"}
    run = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "device_check.sh"), "--quick"],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    out = run.stdout
    sections = ("== benchmark table", "== CNN epoch", "== the checker", "== data-parallel step")
    for section in (*sections, "== device_check done, 0 part(s) failed"):
        assert section in out, out[-3000:]
    assert "check_layer(Scale, (8, 16)) |" in out and "| pass |" in out
    assert "| model | vg manual ms |" in out and "scan / loop =" in out and "device(s)" in out
    assert "| CNN train step (SGD momentum) |" in out or "No PyTorch peer" in out
