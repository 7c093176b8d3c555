"""The README's main job (scripts/demo.py) runs end to end (here on the tiny checkpoint, few synthetic stars)."""

import json
import subprocess
import sys

from conftest import REPO, TINY


def test_demo_writes_its_table_and_figures(tmp_path):
    res = subprocess.run([sys.executable, str(REPO / "scripts" / "demo.py"), "--model", str(TINY),
                          "--n-synthetic", "20", "--out", str(tmp_path)], capture_output=True, text=True,
                         timeout=900, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "2"})
    assert res.returncode == 0, res.stderr[-3000:]
    for name in ("labels_apogee_fixtures.csv", "predicted_vs_true.png", "calibration.png", "kiel.png",
                 "attention_FE_H.png"):
        assert (tmp_path / name).stat().st_size > 1000, name
    metrics = json.loads((tmp_path / "metrics_observed_synthetic.json").read_text())
    assert set(metrics) == {"TEFF", "LOGG", "O_FE", "MG_FE", "FE_H"} and metrics["FE_H"]["n"] == 20
    assert "apStar-dr17-2M19485057+5005279.fits" in (tmp_path / "labels_apogee_fixtures.csv").read_text()
