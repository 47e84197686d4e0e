import sys

import pytest
import torch

from trl_extras.quantization import QLoRAConfig, is_4bit_model, load_qlora_model, require_bitsandbytes

CPU_QLORA = QLoRAConfig(bnb_4bit_compute_dtype="float32", lora_r=4, lora_alpha=8, lora_dropout=0.0)


def test_loads_4bit_nf4_with_lora_adapters(tiny_lm_path):
    import bitsandbytes as bnb

    model = load_qlora_model(tiny_lm_path, CPU_QLORA)
    assert is_4bit_model(model)
    four_bit = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    # every attention and MLP projection of both layers is 4-bit (7 per layer); the lm_head is kept in full precision
    assert len(four_bit) == 14
    weight = four_bit[0].weight
    assert weight.dtype == torch.float32 or weight.dtype == torch.uint8  # packed storage
    assert weight.quant_state.quant_type == "nf4"
    assert weight.quant_state.state2 is not None  # double quantisation
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)


def test_disabled_adapter_is_the_base_model(tiny_lm_path):
    model = load_qlora_model(tiny_lm_path, CPU_QLORA)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        base = model(input_ids=ids).logits
        for name, p in model.named_parameters():  # push the adapters away from their identity initialisation
            if "lora_B" in name:
                p.fill_(0.1)
        adapted = model(input_ids=ids).logits
        with model.disable_adapter():
            reference = model(input_ids=ids).logits
    assert not torch.allclose(adapted, base)
    torch.testing.assert_close(reference, base)


def test_gradient_step_changes_only_lora_weights(tiny_lm_path):
    model = load_qlora_model(tiny_lm_path, CPU_QLORA)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    for _ in range(2):  # lora_B starts at zero, so lora_A only moves from the second step on
        loss = model(input_ids=ids, labels=ids).loss
        assert torch.isfinite(loss)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    changed = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert set(changed) == set(before)


def test_plain_lora_when_4bit_is_off(tiny_lm_path):
    model = load_qlora_model(tiny_lm_path, QLoRAConfig(load_in_4bit=False, bnb_4bit_compute_dtype="float32"))
    assert not is_4bit_model(model)
    assert any("lora_A" in n for n, _ in model.named_parameters())


def test_stock_dpo_trainer_uses_the_disabled_adapter_as_reference(tiny_lm_path):
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    model = load_qlora_model(tiny_lm_path, CPU_QLORA)
    dataset = Dataset.from_list([{"prompt": "The movie was", "chosen": " great.", "rejected": " bad."}] * 4)
    args = DPOConfig(
        output_dir="/tmp/unused",
        max_steps=2,
        per_device_train_batch_size=2,
        bf16=False,
        report_to="none",
        save_strategy="no",
        learning_rate=1e-2,
    )
    trainer = DPOTrainer(
        model=model, args=args, train_dataset=dataset, processing_class=AutoTokenizer.from_pretrained(tiny_lm_path)
    )
    assert trainer.ref_model is None
    trainer.train()
    assert torch.isfinite(torch.tensor(trainer.state.log_history[-1]["train_loss"]))


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("bnb_4bit_quant_type", "int4", "'nf4' or 'fp4'"),
        ("bnb_4bit_compute_dtype", "fp8", "compute_dtype"),
        ("lora_r", 0, "lora_r"),
    ],
)
def test_config_errors_name_the_field(field, value, message):
    with pytest.raises(ValueError, match=message):
        QLoRAConfig(**{field: value})


def test_missing_bitsandbytes_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else object())
    with pytest.raises(ImportError, match=r"trl-extras\[quantization\]"):
        require_bitsandbytes()


def test_generate_then_train_on_4bit_cpu(tiny_lm_path):
    """RL trainers alternate no-grad generation (bitsandbytes repacks CPU weights then) and training steps."""
    model = load_qlora_model(tiny_lm_path, CPU_QLORA)
    ids = torch.tensor([[5, 6, 7, 8]])
    model.eval()
    with torch.no_grad():
        first = model.generate(input_ids=ids, max_new_tokens=3, do_sample=False)
    model.train()
    loss = model(input_ids=first, labels=first).loss
    loss.backward()
    assert torch.isfinite(loss)
    model.eval()
    with torch.no_grad():
        again = model.generate(input_ids=ids, max_new_tokens=3, do_sample=False)
    torch.testing.assert_close(first, again)  # no optimizer step in between: same greedy output


@pytest.mark.parametrize("trainer_name", ["unlikelihood", "stock-dpo-via-cli"])
def test_a_trained_float32_adapter_reloads_exactly(tiny_lm_path, tmp_path, trainer_name):
    """TRL casts a 4-bit model's adapter to bf16 (which reloaded 2e-3 off in logits); with float32 compute it stays
    float32, and ``load_qlora_model(adapter_name_or_path=...)`` gives the trained model's logits back exactly."""
    from types import SimpleNamespace

    import safetensors.torch
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from trl_extras import UnlikelihoodConfig, UnlikelihoodTrainer
    from trl_extras.scripts._common import train_and_save

    dataset = Dataset.from_list([{"prompt": "The movie was", "chosen": " great.", "rejected": " bad."}] * 4)
    config_class, trainer_class = {
        "unlikelihood": (UnlikelihoodConfig, UnlikelihoodTrainer),
        "stock-dpo-via-cli": (DPOConfig, DPOTrainer),
    }[trainer_name]
    args = config_class(
        output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=2, learning_rate=1e-2, bf16=False,
        report_to="none", save_strategy="no", disable_tqdm=True,
    )  # fmt: skip
    trainer = trainer_class(
        model=load_qlora_model(tiny_lm_path, CPU_QLORA),
        args=args,
        train_dataset=dataset,
        processing_class=AutoTokenizer.from_pretrained(tiny_lm_path),
    )
    if trainer_name == "unlikelihood":
        trainer.train()
        trainer.save_model(str(tmp_path))
    else:  # the CLI's train, then save
        train_and_save(trainer, SimpleNamespace(dataset_name="pairs.jsonl", eval_samples=0), args, role="policy")
    saved = safetensors.torch.load_file(str(tmp_path / "adapter_model.safetensors"))
    assert {tensor.dtype for tensor in saved.values()} == {torch.float32}
    ids = torch.tensor([[5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 15, 16]])
    trained = trainer.model.eval()
    reloaded = load_qlora_model(tiny_lm_path, CPU_QLORA, adapter_name_or_path=str(tmp_path)).eval()
    with torch.no_grad():
        expected, actual = trained(input_ids=ids).logits, reloaded(input_ids=ids).logits
        with trained.disable_adapter():
            base = trained(input_ids=ids).logits
    assert (expected - base).abs().max() > 1e-3  # training moved the adapter: the comparison below is not vacuous
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-6)
    assert [n for n, p in reloaded.named_parameters() if p.requires_grad] == [
        n for n, p in trained.named_parameters() if p.requires_grad
    ]


_NOTICE = "gemm_4bit_forward from kernels-community"

_NON_4BIT_RUN = """
import sys
import trl_extras
from trl_extras.quantization import QLoRAConfig, is_4bit_model
assert "bitsandbytes" not in sys.modules, "trl_extras imported bitsandbytes"
from datasets import Dataset
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1])
assert not is_4bit_model(model) and "bitsandbytes" not in sys.modules, "is_4bit_model imported bitsandbytes"
from trl_extras import UnlikelihoodConfig, UnlikelihoodTrainer  # imports trl, peft and so bitsandbytes
assert "bitsandbytes" in sys.modules
args = UnlikelihoodConfig(output_dir=sys.argv[2], bf16=False, report_to="none", max_steps=1)
pairs = Dataset.from_list([{"prompt": "The movie was", "chosen": " great.", "rejected": " bad."}] * 2)
UnlikelihoodTrainer(model=model, args=args, train_dataset=pairs)
print("built")
"""


def test_a_run_without_4bit_prints_no_bitsandbytes_kernels_notice(tiny_lm_path, tmp_path):
    """peft imports bitsandbytes on every run (trl-extras itself never does unless asked for 4 bit); trl-extras
    drops the notice bitsandbytes logs on import (its kernel only serves the CPU repack our switch turns off)."""
    import subprocess

    control = subprocess.run([sys.executable, "-c", "import peft"], capture_output=True, text=True, check=True)
    if _NOTICE not in control.stderr:
        pytest.skip("this machine's bitsandbytes logs no kernels notice on import (no AVX512-BF16, or `kernels`)")
    run = subprocess.run(
        [sys.executable, "-c", _NON_4BIT_RUN, tiny_lm_path, str(tmp_path)], capture_output=True, text=True
    )
    assert run.returncode == 0 and "built" in run.stdout, run.stderr[-3000:]
    assert _NOTICE not in run.stderr
