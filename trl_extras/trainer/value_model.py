"""Per-token value models (critics) for PPO, built from ordinary sequence classifiers.

A reward model is an ``AutoModelForSequenceClassification`` with one label: a transformer backbone and a linear
``score`` head that TRL reads at the last token. Read at *every* position instead, the same network predicts a value
``V(s_t)`` for each prefix, which is all a PPO critic is. So a value model here is any one-label sequence classifier of a
decoder (or a ``peft.PeftModel`` of one), saved and loaded with ``save_pretrained``/``from_pretrained``; no custom
value-head class and no custom checkpoint format.

```python
from transformers import AutoModelForSequenceClassification
from trl_extras.trainer.value_model import per_token_values

critic = AutoModelForSequenceClassification.from_pretrained(reward_model_path, num_labels=1)
values = per_token_values(critic, input_ids, attention_mask, logits_to_keep=completion_length)  # (B, C)
```
"""

from __future__ import annotations

import contextlib
import copy
import os

import torch
from torch import nn
from transformers import AutoModelForSequenceClassification, PreTrainedModel, TrainerCallback
from trl.trainer.utils import disable_dropout_in_model

__all__ = [
    "PerTokenValueModel",
    "PolicyAndValueWrapper",
    "ZeroGradAfterStep",
    "add_value_param_groups",
    "build_value_model",
    "check_value_model",
    "check_value_model_vocabulary",
    "has_new_value_head",
    "load_value_weights",
    "per_token_values",
    "value_model_from_policy",
    "value_model_from_pretrained",
    "zero_value_head",
]


def _unwrap_peft(model: nn.Module) -> nn.Module:
    return model.get_base_model() if hasattr(model, "get_base_model") and hasattr(model, "peft_config") else model


def _backbone_and_head(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    base = _unwrap_peft(model)
    prefix = getattr(base, "base_model_prefix", None)
    backbone = getattr(base, prefix, None) if prefix else None
    head = getattr(base, "score", None)
    if backbone is None or not isinstance(head, nn.Module):
        raise ValueError(
            f"The value model ({type(base).__name__}) must be a one-label `AutoModelForSequenceClassification` of a "
            "decoder: a backbone under `base_model_prefix` and a linear `score` head applied to every position."
        )
    return backbone, head


def per_token_values(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    logits_to_keep: int,
    batch_size: int | None = None,
) -> torch.Tensor:
    """``V(s_t)`` for each of the last ``logits_to_keep`` tokens of ``input_ids``: the score head on the hidden state
    of the position *before* the token, i.e. the value of the state the token was sampled in.

    Args:
        model: one-label sequence classifier (or a ``PeftModel`` of one).
        input_ids: ``(B, L)`` prompt (left-padded) followed by the completion (right-padded).
        attention_mask: ``(B, L)``.
        logits_to_keep: ``C``, the completion length.
        batch_size: forward in chunks of this many rows (memory); ``None`` for one chunk.

    Returns:
        ``(B, C)`` float32 values, unmasked.
    """
    backbone, head = _backbone_and_head(model)
    batch_size = batch_size or input_ids.size(0)
    chunks = []
    for start in range(0, input_ids.size(0), batch_size):
        ids = input_ids[start : start + batch_size]
        mask = attention_mask[start : start + batch_size]
        position_ids = (mask.long().cumsum(-1) - 1).clamp(min=0)  # left padding does not shift positions
        hidden = backbone(input_ids=ids, attention_mask=mask, position_ids=position_ids, use_cache=False)[0]
        hidden = hidden[:, -logits_to_keep - 1 : -1]  # (b, C, H): states s_t = (prompt, completion[:t])
        chunks.append(head(hidden).squeeze(-1).float())  # (b, C)
    return torch.cat(chunks, dim=0)


class PerTokenValueModel(nn.Module):
    """``per_token_values`` as a module's ``forward``, so a data-parallel wrapper sees the forward it has to sync."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, logits_to_keep, batch_size=None):
        return per_token_values(self.model, input_ids, attention_mask, logits_to_keep, batch_size)


class PolicyAndValueWrapper(nn.Module):
    """Policy and critic as one module, for engines that shard or sync exactly the module they are given (DeepSpeed
    ZeRO, FSDP2): one engine, one optimizer, one gathered state dict (keys `policy.*` and `value_model.*`).

    Every call goes through this root's `forward` (FSDP2 unshards the root-held parameters in the root's pre-forward,
    which a direct call to a submodule would skip): `head="policy"` (the default, so TRL's calls `model(**inputs)`
    are the policy's) forwards to the policy, `head="value"` returns `per_token_values` of the critic. `generate`
    and any attribute this module lacks (`config`, `generation_config`, `peft_config`, `disable_adapter`, ...) are
    the policy's, so the trainer keeps treating it as the model.
    """

    def __init__(self, policy: nn.Module, value_model: nn.Module):
        super().__init__()
        self.policy = policy
        self.value_model = value_model
        # FSDP's transformer-based auto wrap reads the layer classes to shard from here
        names = [name for module in (policy, value_model) for name in getattr(module, "_no_split_modules", None) or []]
        self._no_split_modules = list(dict.fromkeys(names))

    def forward(self, *args, head: str = "policy", **kwargs):
        if head == "policy":
            return self.policy(*args, **kwargs)
        if head == "value":
            return per_token_values(self.value_model, *args, **kwargs)
        raise ValueError(f"PolicyAndValueWrapper.forward: `head` must be 'policy' or 'value', got {head!r}.")

    def generate(self, *args, **kwargs):
        return self.policy.generate(*args, **kwargs)

    @property
    def is_gradient_checkpointing(self) -> bool:
        return bool(getattr(self.policy, "is_gradient_checkpointing", False))

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None):
        self.policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gradient_checkpointing_kwargs)

    def gradient_checkpointing_disable(self):
        self.policy.gradient_checkpointing_disable()

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)  # parameters, buffers, submodules
        except AttributeError:
            if name in ("policy", "value_model") or "policy" not in self.__dict__.get("_modules", {}):
                raise
            return getattr(self._modules["policy"], name)

    def split_state_dict(self, state_dict: dict) -> tuple[dict, dict]:
        """A state dict of this module (e.g. gathered by the engine) as `(policy's, value model's)`."""
        parts: tuple[dict, dict] = ({}, {})
        for key, value in state_dict.items():
            head, _, rest = key.partition(".")
            if head not in ("policy", "value_model"):
                raise ValueError(
                    f"PolicyAndValueWrapper state dict key {key!r} is neither `policy.*` nor `value_model.*`."
                )
            parts[head == "value_model"][rest] = value
        return parts


def value_model_from_pretrained(path: str, **kwargs) -> PreTrainedModel:
    """A one-label sequence classifier from ``path`` (a reward model, or a causal LM whose ``score`` head is new).

    ``dtype`` defaults to float32, as TRL does for models it loads from a path. ``has_new_value_head(model)`` says
    whether the head came from the checkpoint.
    """
    kwargs = dict(kwargs)
    kwargs.setdefault("dtype", torch.float32)
    model, info = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=1, output_loading_info=True, **kwargs
    )
    model._new_value_head = any(key.split(".")[0] == "score" for key in info["missing_keys"])
    return model


def has_new_value_head(model: nn.Module) -> bool:
    """Whether ``model``'s ``score`` head was initialised here rather than loaded (built by this module only)."""
    return bool(getattr(_unwrap_peft(model), "_new_value_head", False))


def zero_value_head(model: nn.Module) -> None:
    """Set the ``score`` head to zero, in place: ``V(s) = 0`` for every state until the critic has trained.

    Under DeepSpeed ZeRO-3 (a model built inside ``deepspeed.zero.Init``) each process holds a slice of every
    parameter and an empty placeholder in its place: the head is gathered, zeroed and partitioned again."""
    _, head = _backbone_and_head(model)
    params = list(head.parameters())
    gathered = contextlib.nullcontext()
    if any(hasattr(param, "ds_id") for param in params):  # partitioned by ZeRO-3
        import deepspeed

        gathered = deepspeed.zero.GatheredParameters(params, modifier_rank=0)
    with gathered, torch.no_grad():
        for param in params:
            param.zero_()


def value_model_from_policy(policy: nn.Module, **kwargs) -> PreTrainedModel:
    """A value model with the policy's backbone and a freshly initialised scalar ``score`` head.

    Loaded from the policy's checkpoint directory when it has one (this also covers quantized and PEFT policies: the
    value model gets full-precision base weights); otherwise the backbone weights are copied from ``policy``.
    """
    base = _unwrap_peft(policy)
    source = getattr(base.config, "_name_or_path", None)
    if source and os.path.isdir(source):
        return value_model_from_pretrained(source, **kwargs)
    if getattr(base, "is_loaded_in_4bit", False) or getattr(base, "is_loaded_in_8bit", False) or base is not policy:
        raise ValueError(
            "Cannot build a value model from a quantized or PEFT policy that was not loaded from a local directory; "
            "pass `value_model` (a path or a one-label sequence classifier) to the trainer."
        )
    config = copy.deepcopy(base.config)
    config.num_labels = 1
    value_model = AutoModelForSequenceClassification.from_config(config, dtype=kwargs.get("dtype", torch.float32))
    backbone, _ = _backbone_and_head(value_model)
    backbone.load_state_dict(getattr(base, base.base_model_prefix).state_dict())
    value_model._new_value_head = True
    return value_model


def load_value_weights(model: nn.Module, directory: str) -> None:
    """Load weights written by ``model.save_pretrained(directory)`` back into ``model``, in place.

    In place matters on resume: the optimizer already holds these parameter objects.
    """
    from safetensors.torch import load_file

    if hasattr(model, "peft_config"):
        from peft import set_peft_model_state_dict
        from peft.utils import load_peft_weights

        set_peft_model_state_dict(model, load_peft_weights(directory))
        return
    files = sorted(name for name in os.listdir(directory) if name.endswith(".safetensors"))
    if not files:
        raise FileNotFoundError(f"No .safetensors weights in {directory} to load the value model from.")
    state_dict = {}
    for name in files:
        state_dict.update(load_file(os.path.join(directory, name)))
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"The value model weights in {directory} do not match the value model: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}."
        )


# ---- the trainer's critic -----------------------------------------------------------------------------------------


def build_value_model(value_model, model, reward_funcs, args) -> nn.Module:
    """PPOTrainer's critic: `value_model` as given (a path or a module), or initialised as `args.value_model_init`
    says, from the first reward model in `reward_funcs` or from the policy `model` (a path or a module).

    A new value head is drawn from `args.seed`, so that it is the same in every run and every process (the Trainer
    seeds only later), and zeroed when `args.value_head_init == "zero"`."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        critic = _critic(value_model, model, reward_funcs, args)
    if args.value_head_init == "zero" and has_new_value_head(critic):
        zero_value_head(critic)
    return critic


def _critic(value_model, model, reward_funcs, args) -> nn.Module:
    init_kwargs = args.value_model_init_kwargs or {}
    if isinstance(value_model, str):
        return value_model_from_pretrained(value_model, **init_kwargs)
    if isinstance(value_model, nn.Module):
        return value_model
    if value_model is not None:
        raise TypeError(f"`value_model` must be a path, a module or None, got `{type(value_model).__name__}`.")

    reward_list = reward_funcs if isinstance(reward_funcs, list) else [reward_funcs]
    reward_models = [f for f in reward_list if isinstance(f, (str, nn.Module))]
    init = args.value_model_init or ("reward_model" if reward_models else "policy")
    if init == "reward_model":
        if not reward_models:
            raise ValueError(
                "`value_model_init='reward_model'` needs a reward model (a path or a sequence classifier) in "
                "`reward_funcs`; pass one, a `value_model`, or set `value_model_init='policy'`."
            )
        source = reward_models[0]
        return value_model_from_pretrained(source, **init_kwargs) if isinstance(source, str) else copy.deepcopy(source)
    if isinstance(model, str):
        return value_model_from_pretrained(model, **init_kwargs)
    return value_model_from_policy(model, **init_kwargs)


def check_value_model_vocabulary(
    value_model, reward_funcs, args, policy_tokenizer, reward_processing_classes, reward_func_names
) -> None:
    """The critic reads the policy's token ids: the tokenizer it was built with must map every token to the same id.

    `value_model` and `reward_funcs` are what the trainer was given; `reward_processing_classes` and
    `reward_func_names` the trainer's lists (one entry per reward function)."""
    reward_list = reward_funcs if isinstance(reward_funcs, list) else [reward_funcs]
    if value_model is None and (args.value_model_init or "reward_model") == "reward_model":
        index = next((i for i, f in enumerate(reward_list) if isinstance(f, (str, nn.Module))), None)
        if index is None:
            return
        tokenizer, source = reward_processing_classes[index], f"the reward model `{reward_func_names[index]}`"
    elif isinstance(value_model, str) and os.path.isfile(os.path.join(value_model, "tokenizer_config.json")):
        from transformers import AutoTokenizer

        tokenizer, source = AutoTokenizer.from_pretrained(value_model), f"`value_model` ({value_model})"
    else:
        return
    policy_vocab, value_vocab = policy_tokenizer.get_vocab(), tokenizer.get_vocab()
    if policy_vocab == value_vocab:
        return
    differ = sorted(t for t in policy_vocab if value_vocab.get(t) != policy_vocab[t])
    example = differ[0] if differ else next(t for t in value_vocab if t not in policy_vocab)
    raise ValueError(
        f"The value model is built from {source}, whose tokenizer differs from the policy's "
        f"({len(differ)} of the policy's {len(policy_vocab)} tokens have another id or none, e.g. {example!r}: "
        f"{policy_vocab.get(example)} for the policy, {value_vocab.get(example)} for the value model). The critic "
        "reads the policy's token ids, so it would see the wrong tokens. Pass `value_model=` a one-label sequence "
        "classifier that shares the policy's tokenizer, or set `value_model_init='policy'` to build the critic "
        "from the policy."
    )


def check_value_model(
    critic, value_model, reward_funcs, args, tokenizer, reward_processing_classes, reward_func_names
) -> None:
    """The critic reads the policy's token ids and trains: the same vocabulary as the policy's ``tokenizer``
    (``check_value_model_vocabulary``, which takes the other arguments), enough embeddings, some trainable
    parameters; then ``args.disable_dropout`` and ``args.gradient_checkpointing`` applied to it as to the policy."""
    check_value_model_vocabulary(
        value_model, reward_funcs, args, tokenizer, reward_processing_classes, reward_func_names
    )
    num_embeddings = critic.get_input_embeddings().num_embeddings
    if num_embeddings < len(tokenizer):
        raise ValueError(
            f"The value model has {num_embeddings} token embeddings but the policy's tokenizer has "
            f"{len(tokenizer)} tokens: the value model reads the policy's token ids, so it must share its tokenizer."
        )
    if not any(p.requires_grad for p in critic.parameters()):
        raise ValueError("The value model has no trainable parameters (every `requires_grad` is False).")
    if args.disable_dropout:
        disable_dropout_in_model(critic)
    if args.gradient_checkpointing and getattr(critic, "supports_gradient_checkpointing", False):
        critic.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs=args.gradient_checkpointing_kwargs or {"use_reentrant": False}
        )


def add_value_param_groups(optimizer, value_model: nn.Module, decay: set[str], args, given: bool) -> None:
    """Add the critic's trainable parameters that ``optimizer`` does not hold yet, in two groups: the names in
    ``decay`` with ``args.weight_decay``, the rest without; at ``args.value_learning_rate`` when set. ``given``: the
    optimizer was passed in by the user, so a missing critic is an error rather than something to add."""
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    named = [(n, p) for n, p in value_model.named_parameters() if p.requires_grad and id(p) not in held]
    if named and given:
        raise ValueError(
            "The optimizer passed in `optimizers` does not hold the value model's trainable parameters; build it "
            "over `list(model.parameters()) + list(value_model.parameters())`, or let the trainer create it."
        )
    lr = {} if args.value_learning_rate is None else {"lr": args.value_learning_rate}
    for weight_decay, params in (
        (args.weight_decay, [p for n, p in named if n in decay]),
        (0.0, [p for n, p in named if n not in decay]),
    ):
        if params:
            optimizer.add_param_group({"params": params, "weight_decay": weight_decay, **lr})


class ZeroGradAfterStep(TrainerCallback):
    """Zero a module's gradients where the Trainer zeroes the policy's: after every optimizer step."""

    def __init__(self, module: nn.Module):
        self.module = module

    def on_step_end(self, args, state, control, **kwargs):
        self.module.zero_grad(set_to_none=True)
