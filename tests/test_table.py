"""tools/table.py: last/best maths over seeds, paper column, data mean, outputs, bad run names."""
import importlib.util
import json

import pandas as pd
import pytest
import yaml

from conftest import ROOT, SHIPPED


@pytest.fixture(scope="module")
def table():
    spec = importlib.util.spec_from_file_location("table", ROOT / "tools" / "table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_run(root, name, seed, scores, **cfg):
    run = root / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"dataset_id": None, "dataset_path": None,
                                                     "seed": seed, **cfg}))
    (run / "metrics.jsonl").write_text("".join(
        json.dumps({"step": 1000 * (i + 1), "normalized_score": s}) + "\n" for i, s in enumerate(scores)))
    return run


def test_last_best_mean_std_and_paper_column(table, tmp_path):
    d4rl = {"dataset_path": "/nowhere/hopper-medium-v2.hdf5"}
    fake_run(tmp_path / "runs", "td3_bc-a-seed0", 0, [10.0, 50.0, 30.0], **d4rl)
    fake_run(tmp_path / "runs", "td3_bc-a-seed1", 1, [20.0, 40.0, 70.0], **d4rl)
    fake_run(tmp_path / "runs", "iql-b-seed0", 0, [5.0, 6.0], dataset_id="mujoco/hopper/medium-v0")
    table.main([str(tmp_path / "runs"), "--out", str(tmp_path / "out" / "t")])

    csv = pd.read_csv(tmp_path / "out" / "t.csv")
    td3 = csv[csv.algorithm == "td3_bc"].iloc[0]
    assert td3.dataset == "hopper-medium-v2" and td3.seeds == 2 and td3.updates == 3000
    assert td3.last_mean == pytest.approx(50.0) and td3.last_std == pytest.approx(20.0)  # 30, 70
    assert td3.best_mean == pytest.approx(60.0) and td3.best_std == pytest.approx(10.0)  # 50, 70
    assert td3.paper == "60.4 (CORL last)"
    iql = csv[csv.algorithm == "iql"].iloc[0]
    assert iql.last_mean == pytest.approx(6.0) and pd.isna(iql.paper)  # not a D4RL -v2 dataset
    md = (tmp_path / "out" / "t.md").read_text()
    header, rule = md.splitlines()[4:6]
    assert header.count("|") == rule.count("|") == 9
    assert "| hopper-medium-v2 | td3_bc | 2 | 3,000 | 50.0 ± 20.0 | 60.0 ± 10.0 | – | 60.4 (CORL last) |" in md
    spot = fake_run(tmp_path / "more", "spot-m-seed0", 0, [1.0], dataset_path="/nowhere/hopper-medium-v2.hdf5")
    both = table.summarise([table.load_run(spot)]).iloc[0]
    assert both.paper == "86.0 (SPOT Table 2)"
    assert (tmp_path / "out" / "t.png").stat().st_size > 0


def test_data_mean_of_shipped_dataset(table, tmp_path):
    fake_run(tmp_path, "awac-x", 0, [1.0], dataset_path=str(SHIPPED / "medium-v0"))
    row = table.summarise([table.load_run(tmp_path / "awac-x")]).iloc[0]
    assert row.dataset == "local/hopper/medium-v0"
    summary = json.loads((SHIPPED / "policies" / "summary.json").read_text())  # the maker's own count
    assert row.data_mean == pytest.approx(summary["levels"]["medium"]["mean_normalized_return"], abs=1e-3)


def test_run_not_named_after_an_algorithm_is_refused(table, tmp_path):
    fake_run(tmp_path / "runs", "myrun", 0, [1.0], dataset_id="x")
    with pytest.raises(SystemExit, match="not named <algorithm>"):
        table.main([str(tmp_path / "runs"), "--out", str(tmp_path / "t")])


def test_antmaze_runs_show_every_papers_column_and_fine_tuning_start_to_end(table, tmp_path):
    d4rl = {"dataset_path": "/nowhere/antmaze-umaze-v2.hdf5"}
    offline = fake_run(tmp_path, "iql-a-seed0", 0, [50.0, 80.0], max_timesteps=2000, online_steps=0, **d4rl)
    online = fake_run(tmp_path, "iql-b-seed0", 0, [50.0, 80.0, 90.0, 95.0], max_timesteps=2000, online_steps=2000,
                      **d4rl)
    rows = table.summarise([table.load_run(offline), table.load_run(online)])
    off, on = rows[rows.online_steps == 0].iloc[0], rows[rows.online_steps == 2000].iloc[0]
    assert off.paper == "89.6 (SPOT Table 3); 87.5 (POR table); 77.0 (CORL last)"
    assert on.paper == "85.4 → 96.2 (SPOT Table 4); 77.0 → 96.5 (CORL offline-to-online)"
    assert on.offline_end_mean == 80.0 and on.last_mean == 95.0 and pd.isna(off.offline_end_mean)
    md = table.markdown(rows, "t", "cmd")
    assert "| antmaze-umaze-v2 | iql | 2,000 | 1 | 4,000 | 80.0 | 95.0 | 95.0 | – | 85.4 → 96.2 (SPOT Table 4)" in md


def test_maze_data_mean_is_the_behaviour_success_rate_and_provenance_is_listed(table, tmp_path):
    from conftest import DATASETS
    run = fake_run(tmp_path, "td3_bc-p-seed0", 0, [40.0], dataset_path=str(DATASETS / "pointmaze" / "umaze-v0"))
    (run / "run_info.json").write_text(json.dumps({"git_commit": "0123456789abcdef", "git_dirty": True,
                                                   "versions": {"torch": "2.13.0"}, "device": "cpu (1 threads)",
                                                   "dataset_sha256": {"a/main_data.hdf5": "f" * 64}}))
    summary = json.loads((DATASETS / "pointmaze" / "umaze-v0" / "summary.json").read_text())
    row = table.summarise([table.load_run(run)]).iloc[0]
    assert row.data_mean == pytest.approx(100 * summary["behaviour_success_rate"])
    text = table.provenance([table.load_run(run)])
    assert ("| td3_bc-p-seed0 | 0123456789 (local changes) | torch 2.13.0 | cpu (1 threads) | "
            "main_data.hdf5 ffffffffffff |") in text
