"""The demo (`python -m deepstack_hf.testing_utils.demo`, run by `make demo`) end to end: build, convert + verify,
pipeline."""

import subprocess
import sys
from pathlib import Path

import pytest

from deepstack_hf.testing_utils.demo import main, prepare_work_dir, run_demo


def test_demo_runs_end_to_end(tmp_path, capsys):
    answer = run_demo(tmp_path / "demo", max_new_tokens=5)
    assert isinstance(answer, str)
    printed = capsys.readouterr().out
    for step in ("[1]", "[2]", "[3]", "[4]", "Answer:", "greedy tokens match"):
        assert step in printed
    converted = tmp_path / "demo" / "converted"
    assert (converted / "config.json").is_file() and (converted / "README.md").is_file()
    assert (tmp_path / "demo" / "demo_image.png").is_file()


def test_demo_cli_refuses_a_folder_it_did_not_create(tmp_path, capsys):
    work = tmp_path / "w"
    work.mkdir()
    (work / "notes.txt").write_text("precious")
    assert main(["--work-dir", str(work), "--max-new-tokens", "2", "--no-verify"]) == 1
    assert "was not created by the demo" in capsys.readouterr().err
    assert [p.name for p in work.iterdir()] == ["notes.txt"] and (work / "notes.txt").read_text() == "precious"


def test_demo_cli_reuses_its_own_work_dir_cleaning_only_its_outputs(tmp_path):
    work = tmp_path / "w"
    assert main(["--work-dir", str(work), "--max-new-tokens", "2", "--no-verify", "--hd"]) == 0
    (work / "notes.txt").write_text("mine")
    (work / "converted" / "stale.txt").write_text("old output")
    prepare_work_dir(work)
    assert sorted(p.name for p in work.iterdir()) == [".deepstack-demo", "notes.txt"]


@pytest.mark.parametrize("module", ["deepstack_hf.testing_utils.demo", "deepstack_hf.demo"])  # new and old path
def test_module_entry_point_help(module):
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "-m", module, "--help"], capture_output=True, text=True,
        env={"PYTHONPATH": str(root / "src"), "PATH": ""}, cwd=root,
    )
    assert result.returncode == 0 and "--source" in result.stdout
    runner = subprocess.run(
        [sys.executable, str(root / "conversion" / "convert_deepstack_to_hf.py"), "--help"],
        capture_output=True, text=True, cwd=root,
    )
    assert runner.returncode == 0 and "--vision-weights" in runner.stdout and "--push-to-hub" in runner.stdout
