"""`trl-extras`: every shipped config trains, accelerate multi-process, wandb offline, QLoRA, clear config errors."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from trl_extras import cli
from trl_extras.rewards import RewardFunctionError, resolve_reward_func
from trl_extras.tasks import sentiment

REPO = Path(__file__).resolve().parent.parent
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
ACCELERATE_CONFIGS = sorted((REPO / "configs" / "accelerate").glob("*.yaml"))
FAST = ["--max_steps", "2", "--logging_steps", "1", "--eval_samples", "4", "--disable_tqdm", "true"]


def subcommand_of(config: Path) -> str:
    return config.stem.replace("_", "-")


def run_cli(argv, capsys):
    status = cli.main([str(arg) for arg in argv])
    out, err = capsys.readouterr()
    return status, out, err


# ---------------------------------------------------------------------------------------------------------------------
# every shipped config


def test_there_is_a_config_per_subcommand():
    assert {subcommand_of(config) for config in CONFIGS} == set(cli.SUBCOMMANDS)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda path: path.stem)
def test_config_header_has_the_launch_command_and_the_two_lines_to_change(config):
    lines = config.read_text().splitlines()
    assert lines[0] == f"# trl-extras {subcommand_of(config)} --config configs/{config.name}"
    header = "\n".join(line for line in lines if line.startswith("#"))
    assert "change these two lines" in header
    assert "#   model_name_or_path:" in header and "#   dataset_name:" in header
    values = yaml.safe_load(config.read_text())
    assert values["model_name_or_path"].startswith("builtin:") and values["dataset_name"].startswith("builtin:")


@pytest.mark.parametrize("config", CONFIGS, ids=lambda path: path.stem)
def test_config_trains_two_steps_offline(config, builtin_cache, tmp_path, capsys):
    command = cli.SUBCOMMANDS[subcommand_of(config)]
    status, out, err = run_cli([command.name, "--config", config, "--output_dir", tmp_path, *FAST], capsys)
    assert status == 0, err[-3000:]
    assert "before training:" in out and "-> after" in out  # the before/after report on the built-in task
    assert f"Model saved to {tmp_path}" in out
    assert any(tmp_path.iterdir())


@pytest.mark.slow
def test_main_job_raises_the_ground_truth_reward(builtin_cache, tmp_path, capsys):
    """The README's main job, as shipped: ReMax makes the tiny policy's sampled reviews more positive."""
    argv = ["remax", "--config", REPO / "configs/remax.yaml", "--output_dir", tmp_path, "--disable_tqdm", "true"]
    status, out, err = run_cli(argv, capsys)
    assert status == 0, err[-3000:]
    (line,) = [line for line in out.splitlines() if "-> after" in line]
    words = line.split()  # "before -0.0239 -> after +0.1559 (+0.1797, better)"
    before, after = float(words[1]), float(words[4])
    assert after > before + 0.1, line


def test_command_line_overrides_the_yaml():
    from trl_extras.scripts import dpo

    parser = dpo.make_parser()
    script_args, training_args, model_args, _ = parser.parse_args_and_config(
        ["--config", str(REPO / "configs" / "dpo.yaml"), "--learning_rate", "1e-5", "--beta", "0.3"]
    )
    assert training_args.learning_rate == 1e-5 and training_args.beta == 0.3
    assert (
        training_args.per_device_train_batch_size
        == yaml.safe_load((REPO / "configs" / "dpo.yaml").read_text())["per_device_train_batch_size"]
    )
    assert script_args.dataset_name == "builtin:sentiment" and model_args.model_name_or_path == "builtin:sentiment-sft"
    assert training_args.bf16 is False  # no CUDA here: bf16 defaults to off instead of TRL's True
    # negative numbers are values, not options; accelerate options are set apart for a relaunch
    argv = ["--max_grad_norm", "-1", "--num_processes", "2", "--learning_rate=1e-5"]
    assert cli._check_args("dpo", parser, argv) == ["--num_processes", "2"]


# ---------------------------------------------------------------------------------------------------------------------
# shared switches: local files, QLoRA, wandb


def test_local_jsonl_dataset(builtin_cache, tmp_path, capsys):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in sentiment.build_preference_dataset(32).to_list()))
    argv = ["dpo", "--config", REPO / "configs/dpo.yaml", "--dataset_name", data, "--output_dir", tmp_path / "out"]
    status, out, err = run_cli([*argv, *FAST], capsys)
    assert status == 0, err[-3000:]
    assert "before training" not in out  # a user's own data has no ground truth to report


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_local_files_load_as_the_train_split(tmp_path, suffix):
    from trl_extras.scripts._common import load_datasets
    from trl_extras.scripts.sft import make_parser

    rows = sentiment.build_sft_dataset(10)
    path = tmp_path / f"data.{suffix}"
    getattr(rows, f"to_{suffix}")(str(path))
    script_args, training_args, _, dataset_args = make_parser().parse_args_and_config(
        ["--dataset_name", str(path), "--output_dir", str(tmp_path)]
    )
    train, evaluation = load_datasets(script_args, dataset_args, training_args, default_subset="sft")
    assert train.to_list() == rows.to_list() and evaluation is None


def test_qlora_switch_goes_through_load_qlora_model(builtin_cache, tmp_path, capsys, monkeypatch):
    import trl_extras.quantization as quantization

    loaded = []
    original = quantization.load_qlora_model

    def spy(*args, **kwargs):
        model = original(*args, **kwargs)
        loaded.append((args, kwargs, model))
        return model

    monkeypatch.setattr(quantization, "load_qlora_model", spy)
    argv = ["dpo", "--config", REPO / "configs/dpo.yaml", "--output_dir", tmp_path, *FAST]
    qlora = ["--use_peft", "true", "--load_in_4bit", "true", "--dtype", "float32", "--lora_r", "4"]
    status, out, err = run_cli([*argv, *qlora], capsys)
    assert status == 0, err[-3000:]
    ((args, kwargs, model),) = loaded
    assert args[1].load_in_4bit and args[1].lora_r == 4 and args[1].bnb_4bit_compute_dtype == "float32"
    assert quantization.is_4bit_model(model)
    assert (tmp_path / "adapter_config.json").exists()  # only the adapter is saved


def test_qlora_without_peft_is_a_config_error(builtin_cache, tmp_path, capsys):
    argv = ["sft", "--config", REPO / "configs/sft.yaml", "--output_dir", tmp_path, "--load_in_4bit", "true"]
    status, _, err = run_cli(argv, capsys)
    assert status == cli.EXIT_CONFIG
    assert "load_in_4bit:" in err and "use_peft: true" in err


def test_wandb_offline_writes_a_run_directory(builtin_cache, tmp_path, capsys, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    argv = ["sft", "--config", REPO / "configs/sft.yaml", "--output_dir", tmp_path / "out", "--report_to", "wandb"]
    status, _, err = run_cli([*argv, *FAST], capsys)
    assert status == 0, err[-3000:]
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))


# ---------------------------------------------------------------------------------------------------------------------
# accelerate


@pytest.mark.parametrize("config", ACCELERATE_CONFIGS, ids=lambda path: path.stem)
def test_accelerate_configs_load(config):
    from accelerate.commands.config.config_args import load_config_from_file

    assert config.read_text().startswith(f"# accelerate launch --config_file configs/accelerate/{config.name} ")
    loaded = load_config_from_file(str(config))
    assert loaded.num_processes >= 1


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_accelerate_launch_two_cpu_processes(builtin_cache, tmp_path):
    """`accelerate launch` with configs/accelerate/cpu_multiprocess.yaml really runs two gloo processes."""
    command = [
        str(Path(sys.executable).parent / "accelerate"),
        "launch",
        "--config_file",
        str(REPO / "configs/accelerate/cpu_multiprocess.yaml"),
        "--main_process_port",
        str(_free_port()),
        "-m",
        "trl_extras.cli",
        "dpo",
        "--config",
        str(REPO / "configs/dpo.yaml"),
        "--output_dir",
        str(tmp_path),
        *FAST,
    ]
    env = {**os.environ, "TRL_EXTRAS_CACHE": str(builtin_cache), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Running on 2 process(es), MULTI_CPU" in result.stdout
    assert result.stdout.count("Running on") == 1  # printed by the main process only
    assert (tmp_path / "model.safetensors").exists()


def test_accelerate_options_relaunch_through_accelerate(monkeypatch):
    import accelerate.commands.launch as launch

    captured = []
    monkeypatch.setattr(launch, "launch_command", captured.append)
    accelerate_config = str(REPO / "configs/accelerate/cpu_multiprocess.yaml")
    training = ["--config", str(REPO / "configs/dpo.yaml"), "--max_steps", "2"]
    status = cli.main(["dpo", *training, "--num_processes", "2", "--accelerate_config", accelerate_config])
    assert status == 0
    (args,) = captured
    assert args.config_file == accelerate_config and args.num_processes == 2
    assert args.module and args.training_script == "trl_extras.cli"
    assert args.training_script_args == ["dpo", *training]


# ---------------------------------------------------------------------------------------------------------------------
# clear errors for a wrong config


@pytest.fixture
def write_config(tmp_path):
    def write(**values):
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(values))
        return path

    return write


def assert_one_clear_error(status, err, *fragments):
    assert status != 0
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, err


def test_unknown_yaml_key_suggests_the_right_one(write_config, capsys):
    config = write_config(model_name_or_path="builtin:sentiment-sft", lerning_rate=1e-5)
    status, _, err = run_cli(["dpo", "--config", config], capsys)
    assert_one_clear_error(status, err, f"{config}: unknown key 'lerning_rate'", "Did you mean 'learning_rate'")
    assert status == cli.EXIT_CONFIG


def test_unknown_command_line_option_suggests_the_right_one(capsys):
    status, _, err = run_cli(["grpo", "--num_generation", "4"], capsys)
    assert_one_clear_error(status, err, "command line: unknown key 'num_generation'", "'num_generations'")


def test_key_of_another_trainer_names_that_trainer(write_config, capsys):
    status, _, err = run_cli(["sft", "--config", write_config(beta=0.1)], capsys)
    assert_one_clear_error(status, err, "'beta' is not an option of `trl-extras sft`", "`trl-extras dpo`")
    status, _, err = run_cli(["dpo", "--config", write_config(num_generations=4)], capsys)
    assert_one_clear_error(status, err, "'num_generations' is not an option of `trl-extras dpo`", "`trl-extras grpo`")
    status, _, err = run_cli(["dpo", "--reward_funcs", "accuracy_reward"], capsys)
    assert_one_clear_error(status, err, "'reward_funcs' is not an option of `trl-extras dpo`", "`trl-extras rloo`")


def test_missing_files(write_config, tmp_path, capsys):
    status, _, err = run_cli(["dpo", "--config", tmp_path / "nope.yaml"], capsys)
    assert_one_clear_error(status, err, "--config: file not found")

    config = write_config(model_name_or_path="builtin:sentiment-sft", dataset_name=str(tmp_path / "train.jsonl"))
    status, _, err = run_cli(["dpo", "--config", config, "--output_dir", tmp_path], capsys)
    assert_one_clear_error(status, err, "dataset_name: data file not found", "train.jsonl")

    config = write_config(model_name_or_path=str(tmp_path / "my-model"), dataset_name="builtin:sentiment")
    status, _, err = run_cli(["dpo", "--config", config, "--output_dir", tmp_path], capsys)
    assert_one_clear_error(status, err, "model_name_or_path: model directory not found")


def test_reward_function_that_cannot_be_imported(builtin_cache, tmp_path, capsys):
    argv = ["grpo", "--config", REPO / "configs/grpo.yaml", "--output_dir", tmp_path]
    status, _, err = run_cli([*argv, "--reward_funcs", "builtin:sentiment", "no_such_module:score"], capsys)
    assert_one_clear_error(status, err, "reward_funcs[1]: cannot import 'no_such_module:score'", "no_such_module")
    status, _, err = run_cli([*argv, "--reward_funcs", "accuracy_rewrd"], capsys)
    assert_one_clear_error(status, err, "reward_funcs[0]: unknown reward function", "Did you mean 'accuracy_reward'")


def test_bad_values_and_unknown_names(write_config, capsys):
    status, _, err = run_cli(["dpo", "--max_steps", "many"], capsys)
    assert_one_clear_error(status, err, "--max_steps", "invalid int value: 'many'")
    status, _, err = run_cli(["dpo", "--config", write_config(dataset_name="builtin:imdb")], capsys)
    # parsed fine; the unknown built-in name is reported when the data is loaded
    assert_one_clear_error(status, err, "unknown built-in", "builtin:sentiment")
    status, _, err = run_cli(["dpos"], capsys)
    assert_one_clear_error(status, err, "unknown subcommand 'dpos'", "Did you mean 'dpo'")


def test_help(capsys):
    status, out, _ = run_cli(["--help"], capsys)
    assert status == 0 and all(name in out for name in cli.SUBCOMMANDS)
    status, out, _ = run_cli(["dpo", "--help"], capsys)
    assert status == 0 and "--beta" in out and "--load_in_4bit" in out and "--eval_samples" in out


def test_module_entry_point_runs():
    result = subprocess.run(
        [sys.executable, "-m", "trl_extras.cli", "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and "trl-extras <subcommand>" in result.stdout


# ---------------------------------------------------------------------------------------------------------------------
# reward resolution and the main job's console


def test_reward_resolution(tmp_path, monkeypatch):
    from trl.rewards import accuracy_reward, think_format_reward

    monkeypatch.chdir(tmp_path)
    (tmp_path / "my_rewards.py").write_text(
        "def length(completions, **kwargs):\n    return [len(c) for c in completions]\n"
    )
    (tmp_path / "rm").mkdir()
    assert resolve_reward_func("accuracy_reward") is accuracy_reward
    assert resolve_reward_func("think_format_reward") is think_format_reward
    assert resolve_reward_func("builtin:sentiment") is sentiment.ground_truth_reward
    assert resolve_reward_func("my_rewards:length")(["ab", "c"]) == [2, 1]
    assert resolve_reward_func("my_rewards.length")(["ab"]) == [2]  # TRL's dotted form
    assert resolve_reward_func(str(tmp_path / "rm")) == str(tmp_path / "rm")  # a reward model directory
    assert resolve_reward_func("OpenAssistant/reward-model-deberta-v3-large-v2").startswith("OpenAssistant/")
    with pytest.raises(RewardFunctionError, match="module 'my_rewards' has no attribute 'size'"):
        resolve_reward_func("my_rewards:size")
    with pytest.raises(RewardFunctionError, match="directory './missing-rm' does not exist"):
        resolve_reward_func("./missing-rm")


def test_main_job_console_has_no_future_warning(builtin_cache, tmp_path):
    """The README's main job (ReMax on the built-in task) in a fresh interpreter that shows every warning once: no
    FutureWarning (transformers 5's checkpointing renames, triggered by TRL's own defaults), bitsandbytes' kernels
    notice nor DeepSpeed's accelerator-detection warning (DeepSpeed is imported by accelerate) reaches the console."""
    command = [sys.executable, "-W", "default", "-m", "trl_extras.cli", "remax", "--config", "configs/remax.yaml"]
    command += ["--output_dir", str(tmp_path), *FAST]
    env = {**os.environ, "TRL_EXTRAS_CACHE": str(builtin_cache), "OMP_NUM_THREADS": "1"}
    env.pop("DS_ACCELERATOR", None)
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ground-truth reward" in result.stdout
    assert "FutureWarning" not in result.stderr, result.stderr[-3000:]
    assert "kernels-community" not in result.stdout + result.stderr
    assert "Setting accelerator to CPU" not in result.stdout + result.stderr
