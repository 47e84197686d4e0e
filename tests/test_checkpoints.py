"""Crash safety and strict resume (``trl_extras.checkpointing``): completion markers, rotation, key checks, MDPO's
resume, and runs killed with SIGKILL at exact moments of checkpoint writing that then resume to the uninterrupted
result."""

from __future__ import annotations

import json
import os
import shutil
import signal
import traceback
import warnings

import pytest
import torch
from datasets import Dataset
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

import trl_extras.checkpointing as checkpointing
from trl_extras.checkpointing import (
    CHECKPOINT_COMPLETE_NAME,
    CheckpointError,
    is_complete_checkpoint,
    latest_complete_checkpoint,
    resolve_resume_from_checkpoint,
    rotate_checkpoints,
)
from trl_extras.trainer.unlikelihood_config import UnlikelihoodConfig
from trl_extras.trainer.unlikelihood_trainer import UnlikelihoodTrainer

PAIRS = [
    {"prompt": "The movie was", "chosen": " great", "rejected": " bad"},
    {"prompt": "I thought the film was", "chosen": " wonderful", "rejected": " terrible"},
    {"prompt": "The acting was", "chosen": " superb", "rejected": " awful"},
    {"prompt": "Overall the story was", "chosen": " lovely", "rejected": " boring"},
]


# ---------------------------------------------------------------------------------------------------------------------
# the transformers hooks CheckpointSafetyMixin wraps or relies on


def test_signatures_of_the_trainer_hooks_we_wrap():
    import inspect

    from transformers import Trainer

    def names(method):
        return list(inspect.signature(method).parameters)

    assert names(Trainer.train)[:4] == ["self", "resume_from_checkpoint", "trial", "ignore_keys_for_eval"]
    assert names(Trainer._save_checkpoint) == ["self", "model", "trial"]
    assert names(Trainer._load_from_checkpoint) == ["self", "resume_from_checkpoint", "model"]
    assert names(Trainer._load_best_model) == ["self"]
    assert names(Trainer._issue_warnings_after_load) == ["self", "load_result"]
    assert names(Trainer._get_output_dir) == ["self", "trial"]
    # rotation reads args.save_total_limit inside _save_checkpoint, which is what _rotation_deferred holds back
    assert "save_total_limit=self.args.save_total_limit" in inspect.getsource(Trainer._save_checkpoint)
    # on_save follows _save_checkpoint: where the marker is written
    assert "self._save_checkpoint(model, trial)\n            self.control = self.callback_handler.on_save(" in (
        inspect.getsource(Trainer._maybe_log_save_evaluate)
    )


# ---------------------------------------------------------------------------------------------------------------------
# markers, resolution and rotation on hand-made folders


def fake_checkpoint(run_dir, step, complete=True):
    path = run_dir / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(b"x" * step)
    if complete:
        checkpointing.mark_complete(str(path), step)
    return str(path)


def test_marker_lists_the_files_and_is_written_atomically(tmp_path):
    path = fake_checkpoint(tmp_path, 3)
    marker = json.loads((tmp_path / "checkpoint-3" / CHECKPOINT_COMPLETE_NAME).read_text())
    assert marker == {"global_step": 3, "files": {"model.safetensors": 3}}
    assert (
        is_complete_checkpoint(path) and not (tmp_path / "checkpoint-3" / f"{CHECKPOINT_COMPLETE_NAME}.tmp").exists()
    )


def test_latest_complete_checkpoint_skips_incomplete_ones_and_names_them(tmp_path):
    for step in (1, 2, 10):
        fake_checkpoint(tmp_path, step)
    fake_checkpoint(tmp_path, 11, complete=False)
    fake_checkpoint(tmp_path, 12, complete=False)
    (tmp_path / "checkpoint-13").write_text("a file, not a checkpoint")
    (tmp_path / "checkpoint-x").mkdir()
    with pytest.warns(UserWarning, match=r"checkpoint-11, .*checkpoint-12 \(no checkpoint_complete.json"):
        assert latest_complete_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-10")  # by number, not name
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing skipped, nothing said
        assert latest_complete_checkpoint(str(tmp_path / "checkpoint-1")) is None


def test_resume_true_resolves_to_the_latest_complete_checkpoint(tmp_path):
    assert resolve_resume_from_checkpoint(None, str(tmp_path)) is None
    assert resolve_resume_from_checkpoint("false", str(tmp_path)) is None
    with pytest.raises(CheckpointError, match=r"no complete checkpoint in .*\. Start without"):
        resolve_resume_from_checkpoint(True, str(tmp_path))
    fake_checkpoint(tmp_path, 1, complete=False)
    with pytest.raises(CheckpointError, match=r"incomplete, without checkpoint_complete.json: .*checkpoint-1\)"):
        resolve_resume_from_checkpoint("True", str(tmp_path))  # a config file's string form
    fake_checkpoint(tmp_path, 2)
    fake_checkpoint(tmp_path, 3, complete=False)
    with pytest.warns(UserWarning, match="checkpoint-3"):
        assert resolve_resume_from_checkpoint(True, str(tmp_path)) == str(tmp_path / "checkpoint-2")
    with pytest.raises(
        CheckpointError, match=r"checkpoint-3 is not a complete checkpoint.*latest complete one is .*-2"
    ):
        resolve_resume_from_checkpoint(str(tmp_path / "checkpoint-3"), str(tmp_path))
    with pytest.raises(CheckpointError, match="is not a directory"):
        resolve_resume_from_checkpoint(str(tmp_path / "checkpoint-9"), str(tmp_path))


def test_rotation_keeps_the_new_the_best_and_the_latest_complete(tmp_path):
    paths = {step: fake_checkpoint(tmp_path, step, complete=step != 4) for step in range(1, 7)}
    (tmp_path / ".trash-checkpoint-0").mkdir()  # a deletion a crash interrupted
    deleted = rotate_checkpoints(str(tmp_path), 3, [paths[6], paths[2]])
    assert sorted(deleted) == sorted([paths[1], paths[3], paths[4]])  # incomplete 4 goes, 5 is the newest other
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-2", "checkpoint-5", "checkpoint-6"]
    assert rotate_checkpoints(str(tmp_path), None, [paths[6]]) == []


# ---------------------------------------------------------------------------------------------------------------------
# one tiny trainer, saving every step


def unlikelihood_args(output_dir, **kwargs):
    defaults = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=2,
        max_steps=4,
        learning_rate=1e-2,
        report_to="none",
        bf16=False,
        save_strategy="steps",
        save_steps=1,
        save_total_limit=2,
        disable_tqdm=True,
        logging_steps=1,
        seed=0,
    )
    return UnlikelihoodConfig(**{**defaults, **kwargs})


def unlikelihood_trainer(path, output_dir, peft_config=None, **kwargs):
    return UnlikelihoodTrainer(
        model=AutoModelForCausalLM.from_pretrained(path),
        args=unlikelihood_args(output_dir, **kwargs),
        train_dataset=Dataset.from_list(PAIRS),
        processing_class=AutoTokenizer.from_pretrained(path),
        peft_config=peft_config,
    )


def trained(trainer):
    return {name: p.detach().clone() for name, p in trainer.model.named_parameters() if p.requires_grad}


def max_diff(a, b):
    assert a.keys() == b.keys()
    return max((a[name] - b[name]).abs().max().item() for name in a)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_lm_path):
    """The uninterrupted run: its checkpoints and final parameters."""
    output_dir = tmp_path_factory.mktemp("reference")
    trainer = unlikelihood_trainer(tiny_lm_path, output_dir)
    trainer.add_callback(_RecordOnSave())
    trainer.train()
    return output_dir, trained(trainer)


class _RecordOnSave(TrainerCallback):
    """A user's ``on_save`` callback (one that uploads the checkpoint, say): it must see a finished checkpoint."""

    seen: list[tuple[int, bool]] = []

    def on_save(self, args, state, control, **kwargs):
        path = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        self.seen.append((state.global_step, is_complete_checkpoint(path)))


def test_every_checkpoint_is_marked_and_rotation_keeps_the_limit(reference):
    output_dir, _ = reference
    assert _RecordOnSave.seen == [(1, True), (2, True), (3, True), (4, True)]
    assert sorted(name for name in os.listdir(output_dir) if name.startswith("checkpoint")) == [
        "checkpoint-3",
        "checkpoint-4",
    ]
    for step in (3, 4):
        marker = json.loads((output_dir / f"checkpoint-{step}" / CHECKPOINT_COMPLETE_NAME).read_text())
        assert marker["global_step"] == step
        assert {"model.safetensors", "optimizer.pt", "trainer_state.json", "rng_state.pth"} <= set(marker["files"])
    saved_args = torch.load(output_dir / "checkpoint-4" / "training_args.bin", weights_only=False)
    assert saved_args.save_total_limit == 2  # not the None rotation was held back with


def corrupted_copy(reference, tmp_path, edit):
    output_dir, _ = reference
    checkpoint = tmp_path / "checkpoint-3"
    shutil.copytree(output_dir / "checkpoint-3", checkpoint)
    weights = load_file(checkpoint / "model.safetensors")
    save_file(edit(weights), checkpoint / "model.safetensors", metadata={"format": "pt"})
    return checkpoint


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda w: {k: v for k, v in w.items() if k != "model.norm.weight"},
            r"missing from the checkpoint: model.norm",
        ),
        (
            lambda w: {**w, "model.extra.weight": torch.zeros(2)},
            r"unexpected \(not in the model\): model.extra.weight",
        ),
        (lambda w: {k.replace("model.", "backbone."): v for k, v in w.items()}, r"\(\d+ in all\)"),
    ],
    ids=["missing", "unexpected", "renamed"],
)
def test_checkpoint_with_missing_or_unexpected_keys_is_an_error(reference, tmp_path, tiny_lm_path, edit, message):
    checkpoint = corrupted_copy(reference, tmp_path, edit)
    trainer = unlikelihood_trainer(tiny_lm_path, tmp_path / "resumed")
    with pytest.raises(CheckpointError, match=rf"Checkpoint {checkpoint} does not match the model .*{message}"):
        trainer.train(resume_from_checkpoint=str(checkpoint))


def test_best_model_loads_exactly_and_strictly(reference, tmp_path, tiny_lm_path):
    output_dir, _ = reference
    trainer = unlikelihood_trainer(tiny_lm_path, tmp_path / "best")
    trainer.state.best_model_checkpoint = str(output_dir / "checkpoint-3")
    trainer._load_best_model()
    saved = load_file(output_dir / "checkpoint-3" / "model.safetensors")
    assert all(torch.equal(saved[name], p) for name, p in trainer.model.state_dict().items() if name in saved)
    corrupted = corrupted_copy(reference, tmp_path, lambda w: {k: v for k, v in w.items() if "layers.0" not in k})
    trainer.state.best_model_checkpoint = str(corrupted)
    with pytest.raises(CheckpointError, match=rf"Checkpoint {corrupted} does not match .*model.layers.0"):
        trainer._load_best_model()


def test_lora_adapter_with_a_missing_key_is_an_error(tmp_path, tiny_lm_path):
    from peft import LoraConfig

    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    trainer = unlikelihood_trainer(tiny_lm_path, tmp_path / "lora", peft_config=lora, max_steps=1)
    trainer.train()
    adapter = tmp_path / "lora" / "checkpoint-1" / "adapter_model.safetensors"
    weights = load_file(adapter)
    dropped = sorted(weights)[0]
    save_file({k: v for k, v in weights.items() if k != dropped}, adapter)
    resumed = unlikelihood_trainer(tiny_lm_path, tmp_path / "resumed", peft_config=lora, max_steps=2)
    with pytest.raises(
        CheckpointError, match=rf"checkpoint-1 does not match .*missing from the checkpoint: {dropped}"
    ):
        resumed.train(resume_from_checkpoint=str(adapter.parent))


# ---------------------------------------------------------------------------------------------------------------------
# kill -9 at exact moments, then resume_from_checkpoint=True

KILL_STEP = 3  # the checkpoint being written when the process dies


def _kill():
    os.kill(os.getpid(), signal.SIGKILL)


class _KillAtStepBegin(TrainerCallback):
    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == KILL_STEP:
            _kill()


def _truncate(path):
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size // 2)  # a torn write


def _arm(trainer, moment, monkeypatch):
    """Make ``trainer`` kill its own process with SIGKILL at ``moment`` of writing checkpoint-3."""
    if moment == "between_checkpoints":  # checkpoint-3 complete, step 4 not done
        trainer.add_callback(_KillAtStepBegin())
    elif moment == "model_write":  # weights torn, nothing after them
        save = trainer._save

        def _save(output_dir=None, state_dict=None):
            save(output_dir, state_dict)
            if trainer.state.global_step == KILL_STEP and "checkpoint-" in str(output_dir):
                _truncate(os.path.join(output_dir, "model.safetensors"))
                _kill()

        trainer._save = _save
    elif moment == "optimizer_write":  # weights written, optimizer torn, no scheduler/RNG/trainer state
        save_optimizer = trainer._save_optimizer_and_scheduler

        def _save_optimizer_and_scheduler(output_dir):
            save_optimizer(output_dir)
            if trainer.state.global_step == KILL_STEP:
                _truncate(os.path.join(output_dir, "optimizer.pt"))
                _kill()

        trainer._save_optimizer_and_scheduler = _save_optimizer_and_scheduler
    elif moment == "before_marker":  # every file written, trainer_state.json included, not yet marked
        mark_complete = checkpointing.mark_complete

        def _mark_complete(folder, step):
            if step == KILL_STEP:
                _kill()
            mark_complete(folder, step)

        monkeypatch.setattr(checkpointing, "mark_complete", _mark_complete)
    elif moment == "rotation":  # checkpoint-3 marked, checkpoint-1 renamed to the trash, not yet deleted
        discard = checkpointing._discard

        def _discard(path):
            if trainer.state.global_step == KILL_STEP:
                trash = os.path.join(os.path.dirname(path), ".trash-" + os.path.basename(path))
                os.replace(path, trash)
                _kill()
            discard(path)

        monkeypatch.setattr(checkpointing, "_discard", _discard)
    else:
        raise ValueError(moment)


def _run_and_get_killed(tiny_lm_path, output_dir, moment):
    """Train in a forked child process that SIGKILLs itself at ``moment``; returns its wait status."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            with pytest.MonkeyPatch.context() as monkeypatch:
                trainer = unlikelihood_trainer(tiny_lm_path, output_dir)
                _arm(trainer, moment, monkeypatch)
                trainer.train()
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    return status


@pytest.mark.parametrize(
    "moment, resumed_from",
    [
        ("between_checkpoints", 3),
        ("model_write", 2),
        ("optimizer_write", 2),
        ("before_marker", 2),
        ("rotation", 3),
    ],
)
def test_killed_run_resumes_from_the_latest_complete_checkpoint_to_the_same_end(
    reference, tmp_path, tiny_lm_path, moment, resumed_from
):
    output_dir = tmp_path / "run"
    status = _run_and_get_killed(tiny_lm_path, output_dir, moment)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, f"child did not die by SIGKILL: {status}"
    assert latest_complete_checkpoint(str(output_dir)) == str(output_dir / f"checkpoint-{resumed_from}")

    resumed = unlikelihood_trainer(tiny_lm_path, output_dir)
    loaded = []
    load = resumed._load_from_checkpoint
    resumed._load_from_checkpoint = lambda path, model=None: (loaded.append(path), load(path, model))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed.train(resume_from_checkpoint=True)
    assert loaded == [str(output_dir / f"checkpoint-{resumed_from}")]
    skipped = [str(w.message) for w in caught if "Skipping incomplete checkpoint" in str(w.message)]
    assert bool(skipped) == (resumed_from == 2)  # the torn checkpoint-3 is named when skipped
    assert all("checkpoint-3" in message for message in skipped)

    assert max_diff(trained(resumed), reference[1]) == 0.0  # exactly the uninterrupted run
    names = sorted(os.listdir(output_dir))
    assert [name for name in names if name.startswith("checkpoint")] == ["checkpoint-3", "checkpoint-4"]
    assert not [name for name in names if name.startswith(".trash")]
    assert all(is_complete_checkpoint(str(output_dir / name)) for name in ("checkpoint-3", "checkpoint-4"))


# ---------------------------------------------------------------------------------------------------------------------
# MDPOTrainer: the resume that loaded no weights


def test_mdpo_resume_equals_the_uninterrupted_run(tmp_path):
    """Before the fix the checkpoint's ``language_model.*`` keys (save_pretrained's original layout) did not match the
    model's ``model.language_model.*``; transformers warned and trained on from the initial weights."""
    import test_mdpo

    from trl_extras.testing import build_tiny_vlm

    path = build_tiny_vlm(tmp_path / "llava", family="llava")

    def run(name, resume=None):
        trainer = test_mdpo.make_trainer(path, tmp_path / name, max_steps=4, save_strategy="steps", save_steps=2)
        trainer.train(resume_from_checkpoint=resume)
        return trainer

    straight = run("straight")
    keys = load_file(tmp_path / "straight" / "out" / "checkpoint-2" / "model.safetensors")
    assert any(key.startswith("language_model.") for key in keys)  # the layout that used to be dropped
    resumed = run("resumed", resume=str(tmp_path / "straight" / "out" / "checkpoint-2"))
    assert resumed.data_collator.rows == 8  # 4 steps x 2 rows: the corruption stream continued, not restarted
    assert max_diff(trained(resumed), trained(straight)) == 0.0


def test_mdpo_corruptions_do_not_depend_on_dataloader_workers_and_resume_exactly(tmp_path):
    """Two epochs with 2 DataLoader workers train exactly what no workers train, resuming mid-epoch 2 with workers
    equals both, and evaluation (its own batch size) corrupts as without workers. Before the fix each worker drew its
    own corruption stream, restarted at every epoch."""
    import test_mdpo

    from trl_extras.testing import build_tiny_vlm

    path = build_tiny_vlm(tmp_path / "llava", family="llava")

    def run(name, workers, resume=None):
        trainer = test_mdpo.make_trainer(
            path,
            tmp_path / name,
            max_steps=4,
            save_strategy="steps",
            save_steps=3,
            dataloader_num_workers=workers,
            per_device_eval_batch_size=1,
        )
        trainer.train(resume_from_checkpoint=resume)
        assert trainer.state.epoch == 2.0  # 4 rows, batch 2: the second epoch re-forks the workers
        return trainer

    without_trainer, workers_trainer = run("without", 0), run("workers", 2)
    without = trained(without_trainer)
    assert max_diff(trained(workers_trainer), without) == 0.0
    evaluations = [t.evaluate(test_mdpo.vision_dataset()) for t in (without_trainer, workers_trainer)]
    assert evaluations[0]["eval_mdpo/conditional_loss"] == evaluations[1]["eval_mdpo/conditional_loss"]
    resumed = run("resumed", 2, resume=str(tmp_path / "workers" / "out" / "checkpoint-3"))
    assert max_diff(trained(resumed), without) == 0.0


# ---------------------------------------------------------------------------------------------------------------------
# the CLI: TRL's stock trainers get the same guarantees


@pytest.mark.parametrize("command", ["dpo"])  # the wiring is one line shared by every subcommand
def test_cli_resume_true_skips_a_torn_checkpoint_of_a_stock_trainer(command, builtin_cache, tmp_path, monkeypatch):
    from pathlib import Path

    from trl_extras import cli
    from trl_extras.checkpointing import CheckpointSafetyMixin

    config = Path(__file__).resolve().parent.parent / "configs" / f"{command}.yaml"
    argv = [command, "--config", str(config), "--output_dir", str(tmp_path), "--logging_steps", "1"]
    argv += ["--eval_samples", "0", "--disable_tqdm", "true", "--save_strategy", "steps", "--save_steps", "1"]
    assert cli.main([*argv, "--max_steps", "2"]) == 0
    assert is_complete_checkpoint(str(tmp_path / "checkpoint-2"))
    (tmp_path / "checkpoint-2" / CHECKPOINT_COMPLETE_NAME).unlink()  # as if killed while writing it
    _truncate(tmp_path / "checkpoint-2" / "model.safetensors")

    loaded = []
    load = CheckpointSafetyMixin._load_from_checkpoint
    monkeypatch.setattr(
        CheckpointSafetyMixin,
        "_load_from_checkpoint",
        lambda self, path, model=None: (loaded.append(path), load(self, path, model)),
    )
    with pytest.warns(UserWarning, match=r"Skipping incomplete checkpoint\(s\) .*checkpoint-2 "):
        assert cli.main([*argv, "--max_steps", "3", "--resume_from_checkpoint", "true"]) == 0
    assert loaded == [str(tmp_path / "checkpoint-1")]
    assert all(is_complete_checkpoint(str(tmp_path / f"checkpoint-{step}")) for step in (1, 2, 3))
