"""benchmarks/throughput.py runs an algorithm's real step and reports it in consistent units."""
import json
import subprocess
import sys

from conftest import ROOT


def test_throughput_reports_speed_hours_and_a_matmul_ceiling_above_it(tmp_path):
    out = tmp_path / "tp"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "throughput.py"), "--algos", "td3_bc", "--threads", "1",
           "--devices", "cpu", "--transitions", "2000", "--warmup", "2", "--steps", "20", "--reps", "2",
           "--eval-episodes", "0", "--profile", "--modes", "eager", "compile", "--out", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    report = json.loads(out.with_suffix(".json").read_text())
    rows = report["rows"]
    assert [r["mode"] for r in rows] == ["eager", "compile"]
    gemm = report["meta"]["gemm_gflops"]["1"]
    table = out.with_suffix(".md").read_text().splitlines()
    assert f"1 thread: torch {gemm['torch']:.0f}, numpy (OpenBLAS) {gemm['numpy']:.0f}" in "\n".join(table)
    header = next(line for line in table if line.startswith("| algorithm"))
    for row, line in zip(rows, table[-2:]):
        assert row["min"] <= row["median"] <= row["max"]
        assert 0 < row["matmul_share"] < 1  # matrix multiplies are part of the step, not all of it
        assert 0 < row["matmul_gflops"] < 2 * max(gemm.values())  # no faster than a bare GEMM, give or take noise
        cells = dict(zip((c.strip() for c in header.split("|")), (c.strip() for c in line.split("|"))))
        assert cells["step"] == row["mode"]
        assert float(cells["hours per 1M updates"]) == round(1e6 / row["median"] / 3600, 1)
        assert cells["matmul share"] == f"{row['matmul_share']:.0%}"
        assert cells["matmul GFLOP/s"] == f"{row['matmul_gflops']:.0f}"
        assert int(cells["ceiling updates/s"]) == round(row["median"] / row["matmul_share"])
