"""benchmarks/gpu_check.py: the CPU dry run goes through every stage, and what it records can be trusted."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import gpu_check  # noqa: E402
import speed  # noqa: E402


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """One dry run of every stage (1 step per trainer), shared by the tests below."""
    from trl_extras.cli import SUBCOMMANDS

    cache = tmp_path_factory.getbasetemp() / "trl_extras_cache"  # the built-in task's models, shared with other tests
    out = tmp_path_factory.mktemp("gpu-check")
    docs = out / "benchmarks.md"
    docs.write_text("# Benchmarks\n\n<!-- gpu-check:begin -->\nold\n<!-- gpu-check:end -->\n\ntail\n")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TRL_EXTRAS_CACHE", str(cache))
        results = gpu_check.main(["--dry-run", "--steps", "1", "--out", str(out / "run"), "--docs", str(docs)])
    return results, out, docs, list(SUBCOMMANDS)


def test_dry_run_trains_every_trainer_and_records_finite_losses(dry_run):
    results, _, _, subcommands = dry_run
    assert list(results["stages"]) == list(gpu_check.STAGES)
    trainers = results["stages"]["trainers"]
    assert list(trainers["runs"]) == subcommands  # all ten, in the CLI's order
    for name, run in trainers["runs"].items():
        assert run["status"] == "ok", (name, run.get("error"), run.get("traceback"))
        assert run["steps"] == 1 and run["exit_status"] == 0, name
        assert run["losses"] and all(math.isfinite(v) for v in run["losses"]), name
        assert 0 < run["trainable_params"] < run["params"], name  # adapters train, the base is frozen
        assert run["peak_mem_mb"] is None  # a CPU has no allocator peak worth reporting
    lora_only = {name for name, run in trainers["runs"].items() if not run["qlora"]}
    assert lora_only == set(gpu_check.CPU_LORA_ONLY)  # QLoRA everywhere else, even on the CPU
    assert len(trainers["notes"]) == len(lora_only)


def test_dry_run_full_fine_tune_and_skipped_stages_say_why(dry_run):
    stages = dry_run[0]["stages"]
    full = stages["full_ft"]
    assert full["status"] == "ok" and full["steps"] == 1
    assert full["trainable_params"] == full["params"]  # every weight trains
    for stage in ("zero3", "fsdp2"):
        assert stages[stage]["status"] == "skipped"
        assert "CUDA" in stages[stage]["reason"] or "deepspeed" in stages[stage]["reason"], stage
    assert stages["vllm"]["status"] == "skipped" and "vllm" in stages["vllm"]["reason"].lower()
    assert stages["speed"]["status"] == "ok" and all(g.startswith("Online RL") for g in stages["speed"]["groups"])


def test_dry_run_writes_json_markdown_and_only_its_docs_section(dry_run):
    results, out, docs, subcommands = dry_run
    saved = json.loads((out / "run" / "gpu_check.json").read_text())
    assert saved["stages"].keys() == results["stages"].keys() and saved["dry_run"] is True
    table = (out / "run" / "gpu_check.md").read_text()
    for name in subcommands:
        assert f"| trainers | {name} | ok | 1 |" in table
    text = docs.read_text()
    assert text.startswith(
        "# Benchmarks\n\n<!-- gpu-check:begin -->\nReproduce: `bash benchmarks/gpu_check.sh --dry-run`"
    )
    assert text.endswith("<!-- gpu-check:end -->\n\ntail\n") and "old" not in text


def test_check_run_flags_failures_by_name():
    ok = gpu_check.check_run("x", {"exit_status": 0, "steps": 2, "losses": [1.0, 0.5]}, 2)
    assert ok["status"] == "ok" and "error" not in ok
    bad = gpu_check.check_run("dpo", {"exit_status": 1, "steps": 1, "losses": [1.0, float("nan")]}, 2)
    assert bad["status"] == "failed"
    assert bad["error"].startswith("dpo: exit status 1; trained 1 steps, expected 2; non-finite loss")
    assert gpu_check.check_run("sft", {"exit_status": 0, "steps": 2}, 2)["error"] == "sft: no loss was logged"


def test_without_cuda_the_full_check_refuses_and_points_to_dry_run(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(SystemExit):
        gpu_check.main([])
    assert "--dry-run" in capsys.readouterr().err


def test_wrapper_script_parses():
    subprocess.run(["bash", "-n", str(BENCHMARKS / "gpu_check.sh")], check=True)


def test_speed_subset_replaces_only_its_tables():
    section = (
        "Reproduce: `all`\n\n#### A\n\nold a\n\n#### B\n\nold b\n\nPPO vs the last TRL with PPOTrainer: not run (x)."
    )
    merged = speed.merge_group_blocks(section, {"B": "#### B\n\nnew b", "C": "#### C\n\nnew c"})
    assert merged == (
        "Reproduce: `all`\n\n#### A\n\nold a\n\n#### B\n\nnew b\n\n#### C\n\nnew c\n\n"
        "PPO vs the last TRL with PPOTrainer: not run (x).\n"
    )
    assert speed.merge_group_blocks(section, {}).strip() == section
