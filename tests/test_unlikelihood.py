"""UnlikelihoodTrainer: the losses against the papers' formulas, learning on a tiny model, no reference model, the
DPO-compatible inputs (formats, PEFT, QLoRA, VLM) and the TRL hooks it relies on."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import DPOConfig, DPOTrainer

from trl_extras.losses.unlikelihood import (
    log1mexp,
    rejected_unlikelihood,
    sequence_unlikelihood_loss,
    token_unlikelihood_loss,
)
from trl_extras.trainer.unlikelihood_config import UnlikelihoodConfig
from trl_extras.trainer.unlikelihood_trainer import UnlikelihoodTrainer

NAN, INF = float("nan"), float("inf")

# ---------------------------------------------------------------------------------------------------------------------
# Losses on hand-made log-prob tensors
# ---------------------------------------------------------------------------------------------------------------------

# 3 pairs x 5 positions. Masked positions hold garbage (0 as the fused LM head writes, -inf, NaN) that must never leak.
CHOSEN_LOGPS = [
    [0.0, -0.5, -1.0, -2.0, NAN],
    [-INF, -0.1, -3.0, 0.0, 0.0],
    [-1.5, 0.0, 0.0, 0.0, 0.0],
]
CHOSEN_MASK = [[0, 1, 1, 1, 0], [0, 1, 1, 0, 0], [1, 0, 0, 0, 0]]
REJECTED_LOGPS = [
    [0.0, -1e-9, -0.7, -4.0, -INF],  # p(token) = 1 - 1e-9: the unlikelihood term must stay finite
    [NAN, -0.69, -0.01, 0.0, 0.0],  # -0.69 and -0.7 sit either side of log1mexp's branch point -log 2
    [-2.0, 0.0, -30.0, NAN, 0.0],  # log p = 0 exactly (p rounded to 1) on a real token: floored, not log(0)
]
REJECTED_MASK = [[0, 1, 1, 1, 0], [0, 1, 1, 0, 0], [1, 1, 1, 0, 0]]


def _tensors(dtype=torch.float32):
    return (
        torch.tensor(CHOSEN_LOGPS, dtype=dtype),
        torch.tensor(CHOSEN_MASK),
        torch.tensor(REJECTED_LOGPS, dtype=dtype),
        torch.tensor(REJECTED_MASK),
    )


def _rows(values, mask):
    return [[v for v, m in zip(row, mrow) if m] for row, mrow in zip(values, mask)]


def direct_token_loss(weight: float, floor: float) -> list[float]:
    """Welleck et al. token-level unlikelihood, written out: mean NLL of y_w + weight * mean -log(1 - p) over y_l,
    with 1 - p floored as in the paper's code (clamp(1 - p, min=floor))."""
    losses = []
    for chosen, rejected in zip(_rows(CHOSEN_LOGPS, CHOSEN_MASK), _rows(REJECTED_LOGPS, REJECTED_MASK)):
        nll = sum(-lp for lp in chosen) / len(chosen)
        unlikely = sum(-math.log(max(1.0 - math.exp(lp), floor)) for lp in rejected) / len(rejected)
        losses.append(nll + weight * unlikely)
    return losses


def direct_sequence_loss(weight: float, length_normalize: bool) -> list[float]:
    """DPO paper's unlikelihood baseline, written out: -log p(y_w|x) + weight * log p(y_l|x)."""
    losses = []
    for chosen, rejected in zip(_rows(CHOSEN_LOGPS, CHOSEN_MASK), _rows(REJECTED_LOGPS, REJECTED_MASK)):
        logp_w, logp_l = sum(chosen), sum(rejected)
        if length_normalize:
            logp_w, logp_l = logp_w / len(chosen), logp_l / len(rejected)
        losses.append(-logp_w + weight * logp_l)
    return losses


@pytest.mark.parametrize("weight, floor", [(1.0, 1e-5), (0.5, 1e-5), (2.0, 1e-12)])
def test_token_loss_matches_direct_formula(weight, floor):
    chosen, chosen_mask, rejected, rejected_mask = _tensors()
    loss, chosen_term, rejected_term = token_unlikelihood_loss(
        chosen, chosen_mask, rejected, rejected_mask, rejected_weight=weight, min_one_minus_prob=floor
    )
    assert loss.shape == (3,)
    torch.testing.assert_close(
        loss.double(), torch.tensor(direct_token_loss(weight, floor), dtype=torch.float64), rtol=1e-5, atol=1e-5
    )
    torch.testing.assert_close(loss, chosen_term + weight * rejected_term)
    # p = 1 - 1e-9 is exact with a tiny floor: -log(1e-9) = 20.72 nats, not inf
    single = rejected_unlikelihood(torch.tensor([[-1e-9]]), torch.ones(1, 1), min_one_minus_prob=1e-12)
    assert single.item() == pytest.approx(-math.log(1e-9), rel=1e-4)


@pytest.mark.parametrize("length_normalize", [False, True])
def test_sequence_loss_matches_direct_formula(length_normalize):
    chosen, chosen_mask, rejected, rejected_mask = _tensors()
    loss, _, _ = sequence_unlikelihood_loss(
        chosen, chosen_mask, rejected, rejected_mask, rejected_weight=0.7, length_normalize=length_normalize
    )
    expected = torch.tensor(direct_sequence_loss(0.7, length_normalize), dtype=torch.float64)
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-6)


def test_log1mexp_is_accurate_where_the_naive_form_fails():
    logp = torch.tensor([-1e-9, -1e-5, -0.69, -0.7, -5.0, -50.0])
    expected = torch.tensor([math.log(-math.expm1(v)) for v in logp.double().tolist()], dtype=torch.float64)
    torch.testing.assert_close(log1mexp(logp).double(), expected, rtol=1e-6, atol=1e-12)
    assert torch.log1p(-torch.exp(torch.tensor(-1e-9))).item() == -INF  # why the stable form is needed


@pytest.mark.parametrize("kind", ["token", "sequence"])
def test_gradients_finite_and_zero_on_masked_positions(kind):
    chosen, chosen_mask, rejected, rejected_mask = _tensors()
    chosen.requires_grad_(True)
    rejected.requires_grad_(True)
    if kind == "token":
        loss, _, _ = token_unlikelihood_loss(chosen, chosen_mask, rejected, rejected_mask)
    else:
        loss, _, _ = sequence_unlikelihood_loss(chosen, chosen_mask, rejected, rejected_mask)
    assert torch.isfinite(loss).all()
    loss.sum().backward()
    for grad, mask in ((chosen.grad, chosen_mask), (rejected.grad, rejected_mask)):
        assert torch.isfinite(grad).all()
        assert (grad[mask == 0] == 0).all()
    # descending the loss raises chosen log-probs and lowers rejected ones (on every unfloored token)
    assert (chosen.grad[chosen_mask == 1] < 0).all()
    real = (rejected_mask == 1) & (rejected.detach() < math.log1p(-1e-5))
    assert (rejected.grad[real] > 0).all()
    if kind == "token":  # d/dlogp [-log(1 - p)] / n = p / (1 - p) / n
        p = math.exp(-0.7)
        assert rejected.grad[0, 2].item() == pytest.approx(p / (1 - p) / 3, rel=1e-5)


def test_token_objective_is_bounded_sequence_objective_is_not():
    """The degeneration the DPO paper reports for the sequence baseline: pushing log p(y_l) down lowers its loss
    without limit, while the token objective is >= 0 and saturates as p(y_l) -> 0."""
    chosen = torch.full((1, 3), -1.0)
    mask = torch.ones(1, 3)
    sequence, token = [], []
    for rejected_logp in (-1.0, -10.0, -1000.0):
        rejected = torch.full((1, 3), rejected_logp)
        sequence.append(sequence_unlikelihood_loss(chosen, mask, rejected, mask)[0].item())
        token.append(token_unlikelihood_loss(chosen, mask, rejected, mask)[0].item())
    assert sequence == pytest.approx([3.0 - 3.0, 3.0 - 30.0, 3.0 - 3000.0])
    assert token[0] > token[1] > token[2] >= 1.0  # the chosen NLL (1.0) is the floor
    assert token[2] == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------------------------------


def _config(tmp_path, **kwargs) -> UnlikelihoodConfig:
    defaults = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        max_steps=2,
        learning_rate=1e-2,
        report_to="none",
        bf16=False,
        save_strategy="no",
        disable_tqdm=True,
        logging_steps=1,
    )
    return UnlikelihoodConfig(**{**defaults, **kwargs})


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"unlikelihood_type": "ngram"}, "unlikelihood_type"),
        ({"rejected_weight": -1.0}, "rejected_weight"),
        ({"rejected_weight": float("nan")}, "rejected_weight"),
        ({"length_normalize": True}, "length_normalize"),
        ({"min_one_minus_prob": 0.0}, "min_one_minus_prob"),
        ({"precompute_ref_log_probs": True}, "precompute_ref_log_probs"),
        ({"sync_ref_model": True}, "sync_ref_model"),
    ],
)
def test_config_rejects_bad_fields(tmp_path, kwargs, field):
    with pytest.raises(ValueError, match=f"UnlikelihoodConfig.{field}"):
        _config(tmp_path, **kwargs)


def test_config_warns_on_dpo_loss_fields(tmp_path):
    with pytest.warns(UserWarning, match=r"UnlikelihoodConfig\.beta=0\.5 has no effect"):
        _config(tmp_path, beta=0.5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        config = _config(tmp_path, unlikelihood_type="sequence", length_normalize=True)
    assert not [w for w in caught if "has no effect" in str(w.message)]  # defaults warn about nothing
    assert isinstance(config, DPOConfig)


# ---------------------------------------------------------------------------------------------------------------------
# Trainer on the tiny model
# ---------------------------------------------------------------------------------------------------------------------

PAIRS = [
    {"prompt": "The movie was", "chosen": " great", "rejected": " bad"},
    {"prompt": "I thought the film was", "chosen": " wonderful", "rejected": " terrible"},
    {"prompt": "The acting was", "chosen": " superb", "rejected": " awful"},
    {"prompt": "Overall the story was", "chosen": " lovely", "rejected": " boring"},
]


@pytest.fixture(scope="module")
def tokenizer(tiny_lm_path):
    return AutoTokenizer.from_pretrained(tiny_lm_path)


@pytest.fixture(scope="module")
def misaligned_lm(tiny_lm_path, tokenizer, tmp_path_factory):
    """The tiny LM after a few steps of likelihood training on the *rejected* completions, so that it prefers them:
    the situation unlikelihood training is for, with a known right answer (chosen up, rejected down)."""
    tmp_path = tmp_path_factory.mktemp("misaligned")
    swapped = Dataset.from_list([{**p, "chosen": p["rejected"], "rejected": p["chosen"]} for p in PAIRS])
    model = AutoModelForCausalLM.from_pretrained(tiny_lm_path)
    trainer = UnlikelihoodTrainer(
        model=model,
        args=_config(tmp_path, max_steps=8, rejected_weight=0.0),
        train_dataset=swapped,
        processing_class=tokenizer,
    )
    trainer.train()
    path = tmp_path / "model"
    trainer.model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.mark.parametrize("unlikelihood_type", ["token", "sequence"])
def test_learns_chosen_up_rejected_down(misaligned_lm, tokenizer, tmp_path, unlikelihood_type):
    dataset = Dataset.from_list(PAIRS)
    model = AutoModelForCausalLM.from_pretrained(misaligned_lm)
    trainer = UnlikelihoodTrainer(
        model=model,
        args=_config(tmp_path, max_steps=8, unlikelihood_type=unlikelihood_type),
        train_dataset=dataset,
        processing_class=tokenizer,
    )
    start = {name: param.detach().clone() for name, param in model.named_parameters() if param.requires_grad}
    before = trainer.evaluate(dataset)
    trainer.train()
    after = trainer.evaluate(dataset)

    assert trainer.ref_model is None
    assert after["eval_logps/chosen"] > before["eval_logps/chosen"] + 1.0
    assert after["eval_logps/rejected"] < before["eval_logps/rejected"] - 1.0
    unchanged = [name for name, param in model.named_parameters() if name in start and torch.equal(param, start[name])]
    assert not unchanged, f"parameters not updated: {unchanged}"
    # the logged terms add up to the logged loss
    for log in (log for log in trainer.state.log_history if "unlikelihood/chosen_nll" in log and "loss" in log):
        total = log["unlikelihood/chosen_nll"] + 1.0 * log["unlikelihood/rejected_loss"]
        assert log["loss"] == pytest.approx(total, abs=1e-3)
        assert 0.0 < log["unlikelihood/rejected_token_prob"] < 1.0


def test_gradient_accumulation_matches_full_batch(tiny_lm_path, tokenizer, tmp_path):
    """Batch 4 in one step and 2 x 2 with gradient accumulation give the same update (per-pair mean convention)."""
    dataset = Dataset.from_list(PAIRS)
    params = []
    for batch_size, accumulation in ((4, 1), (2, 2)):
        model = AutoModelForCausalLM.from_pretrained(tiny_lm_path)
        config = _config(
            tmp_path,
            max_steps=1,
            per_device_train_batch_size=batch_size,
            gradient_accumulation_steps=accumulation,
            optim="sgd",
            lr_scheduler_type="constant",
            max_grad_norm=0.0,
            learning_rate=1.0,
        )
        UnlikelihoodTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer).train()
        params.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    initial = torch.cat([p.flatten() for p in AutoModelForCausalLM.from_pretrained(tiny_lm_path).parameters()])
    assert not torch.allclose(params[0], initial)
    torch.testing.assert_close(params[0], params[1], rtol=1e-4, atol=1e-6)


def _count_constructions(monkeypatch, model_class) -> list[int]:
    calls = [0]
    original = model_class.__init__

    def counting_init(self, *args, **kwargs):
        calls[0] += 1
        original(self, *args, **kwargs)

    monkeypatch.setattr(model_class, "__init__", counting_init)
    return calls


def dpo_script(trainer_class, config_class, model, tokenizer, output_dir, **trainer_kwargs):
    """A stock TRL DPO script: conversational data with an implicit prompt, model given by path."""
    dataset = Dataset.from_list(
        [
            {
                "chosen": [{"role": "user", "content": p["prompt"]}, {"role": "assistant", "content": p["chosen"]}],
                "rejected": [
                    {"role": "user", "content": p["prompt"]},
                    {"role": "assistant", "content": p["rejected"]},
                ],
            }
            for p in PAIRS
        ]
    )
    args = config_class(
        output_dir=output_dir,
        per_device_train_batch_size=2,
        max_steps=2,
        learning_rate=1e-2,
        bf16=False,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
    )
    trainer = trainer_class(
        model=model, args=args, train_dataset=dataset, processing_class=tokenizer, **trainer_kwargs
    )
    trainer.train()
    return trainer


def test_same_script_runs_dpo_and_unlikelihood_no_second_model(tiny_lm_path, tokenizer, tmp_path, monkeypatch):
    from transformers import LlamaForCausalLM

    constructed = _count_constructions(monkeypatch, LlamaForCausalLM)
    results = {}
    for trainer_class, config_class in ((DPOTrainer, DPOConfig), (UnlikelihoodTrainer, UnlikelihoodConfig)):
        constructed[0] = 0
        trainer = dpo_script(
            trainer_class, config_class, tiny_lm_path, tokenizer, str(tmp_path / config_class.__name__)
        )
        results[trainer_class] = (constructed[0], trainer)
    dpo_models, dpo = results[DPOTrainer]
    ul_models, ul = results[UnlikelihoodTrainer]
    assert dpo_models == 2 and dpo.ref_model is not None  # policy + reference: the count is meaningful
    assert ul_models == 1 and ul.ref_model is None
    assert math.isfinite(ul.state.log_history[-1]["train_loss"])
    assert "rewards/accuracies" in dpo.state.log_history[0] and "logps/rejected" in ul.state.log_history[0]


@pytest.mark.parametrize(
    "rows",
    [
        [{"prompt": "The sky is", "chosen": " blue.", "rejected": " green."}],  # standard, explicit prompt
        [{"chosen": "The sky is blue.", "rejected": "The sky is green."}],  # standard, implicit prompt
        [
            {
                "prompt": [{"role": "user", "content": "Colour of the sky?"}],
                "chosen": [{"role": "assistant", "content": "Blue."}],
                "rejected": [{"role": "assistant", "content": "Green."}],
            }
        ],  # conversational, explicit prompt (implicit one: test_same_script_runs_dpo_and_unlikelihood_no_second_model)
    ],
    ids=["standard-explicit", "standard-implicit", "conversational-explicit"],
)
def test_dataset_formats(tiny_lm_path, tokenizer, tmp_path, rows):
    trainer = UnlikelihoodTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_lm_path),
        args=_config(tmp_path, max_steps=1, per_device_train_batch_size=2),
        train_dataset=Dataset.from_list(rows * 2),
        processing_class=tokenizer,
    )
    trainer.train()
    log = trainer.state.log_history[0]
    assert math.isfinite(log["loss"]) and log["logps/chosen"] < 0


def _backbone_forward_counter(model) -> list[int]:
    calls = [0]
    backbone = model.get_base_model().model if hasattr(model, "get_base_model") else model.model

    def hook(module, args, kwargs):
        calls[0] += 1

    backbone.register_forward_pre_hook(hook, with_kwargs=True)
    return calls


def test_peft_runs_no_reference_forward(tiny_lm_path, tokenizer, tmp_path):
    """With PEFT, DPO's reference is the model with the adapter disabled: one extra forward per step. None here."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    dataset = Dataset.from_list(PAIRS)

    # a fresh adapter through `peft_config`
    trainer = UnlikelihoodTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_lm_path),
        args=_config(tmp_path, max_steps=2, per_device_train_batch_size=2),
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=lora,
    )
    forwards = _backbone_forward_counter(trainer.model)
    start = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    assert forwards[0] == 2  # one policy forward per step, no disabled-adapter forward
    assert trainer.ref_model is None
    assert all(not torch.equal(p, start[n]) for n, p in trainer.model.named_parameters() if n in start)

    # a PeftModel carrying an adapter: DPO would keep a frozen "ref" copy of it; we keep none
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_lm_path), lora)
    trainer = UnlikelihoodTrainer(
        model=peft_model, args=_config(tmp_path, max_steps=1), train_dataset=dataset, processing_class=tokenizer
    )
    assert list(trainer.model.peft_config) == ["default"]
    assert not any(".ref." in name for name, _ in trainer.model.named_parameters())
    trainer.train()


def test_qlora_4bit(tiny_lm_path, tokenizer, tmp_path):
    pytest.importorskip("bitsandbytes")
    from trl_extras.quantization import QLoRAConfig, is_4bit_model, load_qlora_model

    model = load_qlora_model(tiny_lm_path, QLoRAConfig(bnb_4bit_compute_dtype="float32", lora_r=4, lora_alpha=8))
    assert is_4bit_model(model)
    trainer = UnlikelihoodTrainer(
        model=model,
        args=_config(tmp_path, max_steps=2, per_device_train_batch_size=2),
        train_dataset=Dataset.from_list(PAIRS),
        processing_class=tokenizer,
    )
    forwards = _backbone_forward_counter(trainer.model)
    lora = {n: p.detach().float().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    assert forwards[0] == 2 and trainer.ref_model is None
    assert lora and all(not torch.equal(p.float(), lora[n]) for n, p in trainer.model.named_parameters() if n in lora)
    assert all(math.isfinite(log.get("loss", 0.0)) for log in trainer.state.log_history)


def test_vision_language_model(tmp_path):
    from PIL import Image
    from transformers import AutoModelForImageTextToText

    from trl_extras.testing import build_tiny_vlm
    from trl_extras.testing._vlm import load_tiny_vlm_processor

    path = build_tiny_vlm(tmp_path / "vlm", family="llava")
    model = AutoModelForImageTextToText.from_pretrained(path)
    images = [Image.new("RGB", (32, 32), colour) for colour in ("red", "blue")]
    dataset = Dataset.from_dict(
        {
            "images": [[image] for image in images],
            "prompt": [[{"role": "user", "content": "What colour is this?"}]] * 2,
            "chosen": [[{"role": "assistant", "content": "Red."}], [{"role": "assistant", "content": "Blue."}]],
            "rejected": [[{"role": "assistant", "content": "A dog."}]] * 2,
        }
    )
    trainer = UnlikelihoodTrainer(
        model=model,
        args=_config(tmp_path, max_steps=2, per_device_train_batch_size=2, max_length=None),
        train_dataset=dataset,
        processing_class=load_tiny_vlm_processor(path),
    )
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer.train()
    assert trainer.ref_model is None
    log = trainer.state.log_history[0]
    assert math.isfinite(log["loss"]) and log["logps/rejected"] < 0
    changed = {n.split(".")[1] for n, p in model.named_parameters() if not torch.equal(p, start[n])}
    assert {"vision_tower", "language_model"} <= changed


def test_bad_data_gives_the_data_layer_error(tiny_lm_path, tokenizer, tmp_path):
    from trl_extras.data import PreferenceDataError

    rows = PAIRS[:2] + [{"prompt": "The plot was", "chosen": " dull", "rejected": " dull"}]
    with pytest.raises(PreferenceDataError) as error:
        UnlikelihoodTrainer(
            model=AutoModelForCausalLM.from_pretrained(tiny_lm_path),
            args=_config(tmp_path),
            train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer,
        )
    assert error.value.row == 2


def test_rejects_reference_model_and_dpo_config(tiny_lm_path, tokenizer, tmp_path):
    dataset = Dataset.from_list(PAIRS)
    with pytest.raises(ValueError, match="uses no reference model"):
        UnlikelihoodTrainer(model=tiny_lm_path, ref_model=tiny_lm_path, args=_config(tmp_path), train_dataset=dataset)
    with pytest.raises(TypeError, match="UnlikelihoodConfig"):
        UnlikelihoodTrainer(model=tiny_lm_path, args=DPOConfig(str(tmp_path), bf16=False), train_dataset=dataset)


def test_model_card_tags_and_citation(tiny_lm_path, tokenizer, tmp_path):
    trainer = UnlikelihoodTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_lm_path),
        args=_config(tmp_path),
        train_dataset=Dataset.from_list(PAIRS),
        processing_class=tokenizer,
    )
    assert {"trl", "trl-extras", "unlikelihood"} <= set(trainer.model.model_tags)
    trainer.create_model_card(model_name="tiny-unlikelihood")
    card = (tmp_path / "out" / "README.md").read_text()
    assert "welleck2020neural" in card and "Neural Text Generation with Unlikelihood Training" in card


# the TRL surface is pinned in tests/test_trl_surface.py
