"""One PPO update of `PolicyAndValueWrapper` sharded with torch's FSDP2 over gloo, against the same update unsharded
(`tests/test_ppo_engines.py`).

    python -m torch.distributed.run --nproc_per_node 2 tests/_fsdp2_ppo_run.py LM_DIR CRITIC_DIR OUT_FILE

Every rank builds the same policy and critic. The reference copy stays whole and takes the loss over all 8 rows; the
sharded copy is prepared by accelerate's `fsdp2_prepare_model` (the FSDP2 plugin's TRANSFORMER_BASED_WRAP) and each
rank takes its 4 rows. The loss calls the root twice, as `PPOTrainer._compute_loss` does: the
policy head (log-probs of the completion tokens), then the value head. Rank 0 writes the largest differences of the
gradients, of the parameters after one AdamW step, of the split, gathered state dict (what `PPOTrainer._save`
writes) and of a greedy `generate` through the root to `OUT_FILE` (JSON).
"""

import copy
import json
import os
import sys
from types import SimpleNamespace

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import FSDPModule, register_fsdp_forward_method
from torch.distributed.tensor import DTensor
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from trl_extras.losses.masked import masked_sum
from trl_extras.losses.ppo import ppo_policy_loss, ppo_value_loss
from trl_extras.trainer.value_model import PolicyAndValueWrapper

ROWS, PROMPT, COMPLETION, VF_COEF = 8, 5, 4, 0.5


def batch(vocab_size: int):
    """8 left-padded prompts + right-padded completions, and the rollout tensors of a PPO minibatch."""
    g = torch.Generator().manual_seed(0)
    input_ids = torch.randint(3, vocab_size, (ROWS, PROMPT + COMPLETION), generator=g)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, :2] = 0  # left padding of two prompts
    attention_mask[5, :1] = 0
    completion_mask = torch.ones(ROWS, COMPLETION)
    completion_mask[2, 2:] = 0  # completions of different lengths
    completion_mask[6, 1:] = 0
    attention_mask[:, PROMPT:] = completion_mask.long()
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "mask": completion_mask,
        "old_logps": -3.0 + 0.1 * torch.randn(ROWS, COMPLETION, generator=g),
        "advantages": torch.randn(ROWS, COMPLETION, generator=g),
        "old_values": 0.1 * torch.randn(ROWS, COMPLETION, generator=g),
        "returns": torch.randn(ROWS, COMPLETION, generator=g),
    }


def loss_of(model, rows, num_tokens, world_size):
    """PPO loss of `rows` as a token sum over the whole batch's `num_tokens` (x world_size: FSDP averages ranks)."""
    out = model(input_ids=rows["input_ids"], attention_mask=rows["attention_mask"], use_cache=False)
    logits = out.logits[:, PROMPT - 1 : -1].float()  # (b, T): the logits that predicted the completion tokens
    logps = logits.log_softmax(-1).gather(-1, rows["input_ids"][:, PROMPT:].unsqueeze(-1)).squeeze(-1)
    values = model(rows["input_ids"], rows["attention_mask"], COMPLETION, head="value")  # (b, T)
    policy_loss, _, _ = ppo_policy_loss(logps, rows["old_logps"], rows["advantages"], 0.2)
    value_loss, _ = ppo_value_loss(values, rows["old_values"], rows["returns"], 0.2)
    return masked_sum(policy_loss + VF_COEF * value_loss, rows["mask"], dim=None) * world_size / num_tokens


def shard(model: PolicyAndValueWrapper, rank: int) -> PolicyAndValueWrapper:
    """accelerate's own FSDP2 preparation (`fsdp2_prepare_model`), as `configs/accelerate/fsdp2.yaml` sets it up: each
    decoder layer of `_no_split_modules`, the policy's embeddings, its final norm and head, then the root. On a CPU
    `Accelerator` falls back to MULTI_CPU, so it gets the few attributes it reads from a stand-in."""
    from accelerate import FullyShardedDataParallelPlugin
    from accelerate.utils.fsdp_utils import fsdp2_prepare_model

    plugin = FullyShardedDataParallelPlugin(
        fsdp_version=2, auto_wrap_policy="transformer_based_wrap", reshard_after_forward=True,
        cpu_ram_efficient_loading=False, state_dict_type="FULL_STATE_DICT",
    )  # fmt: skip
    accelerator = SimpleNamespace(
        state=SimpleNamespace(fsdp_plugin=plugin), device=torch.device("cpu"), is_main_process=rank == 0,
        mixed_precision="no", torch_device_mesh=None, parallelism_config=None,
    )  # fmt: skip
    model = fsdp2_prepare_model(accelerator, model)
    register_fsdp_forward_method(model, "generate")  # as transformers' Trainer does under FSDP
    return model


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys(), sorted(set(a) ^ set(b))[:5]
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def main(lm_dir, critic_dir, out_file):
    dist.init_process_group("gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    policy = AutoModelForCausalLM.from_pretrained(lm_dir, dtype=torch.float32)
    critic = AutoModelForSequenceClassification.from_pretrained(critic_dir, num_labels=1, dtype=torch.float32)
    reference = PolicyAndValueWrapper(policy, critic)
    sharded = shard(copy.deepcopy(reference), rank)
    rows = batch(policy.config.vocab_size)
    num_tokens = rows["mask"].sum()
    mine = {k: v.chunk(world_size)[rank] for k, v in rows.items()}

    reference_optimizer = torch.optim.AdamW(reference.parameters(), lr=1e-3)
    sharded_optimizer = torch.optim.AdamW(sharded.parameters(), lr=1e-3)
    loss_of(reference, rows, num_tokens, 1).backward()
    loss_of(sharded, mine, num_tokens, world_size).backward()
    grads = {n: p.grad.full_tensor() for n, p in sharded.named_parameters()}
    grad_diff = max_diff(grads, {n: p.grad for n, p in reference.named_parameters()})
    grad_max = [max(p.grad.abs().max().item() for p in part.parameters()) for part in reference.children()]
    reference_optimizer.step()
    sharded_optimizer.step()
    params = {n: p.full_tensor() for n, p in sharded.named_parameters()}
    param_diff = max_diff(params, dict(reference.named_parameters()))
    not_sharded = [n for n, p in sharded.named_parameters() if not isinstance(p.data, DTensor)]
    units = sorted(n for n, m in sharded.named_modules() if isinstance(m, FSDPModule))

    # what PPOTrainer._save gets under FSDP2 (`accelerator.get_state_dict`: a full state dict) and splits
    full = get_model_state_dict(sharded, options=StateDictOptions(full_state_dict=True, cpu_offload=True))  # rank 0

    with torch.no_grad():
        prompt = {
            "input_ids": rows["input_ids"][:2, :PROMPT],
            "attention_mask": torch.ones(2, PROMPT, dtype=torch.long),
        }
        kwargs = dict(max_new_tokens=4, do_sample=False, pad_token_id=policy.config.pad_token_id)
        same_generation = torch.equal(sharded.generate(**prompt, **kwargs), reference.generate(**prompt, **kwargs))
    if rank == 0:
        policy_state, value_state = sharded.split_state_dict(full)
        result = {
            "world_size": world_size,
            "not_sharded": not_sharded,
            "fsdp_units": units,
            "grad_diff": grad_diff,
            "grad_max": grad_max,  # policy's, critic's: both heads train
            "param_diff": param_diff,
            "saved_policy_diff": max_diff(policy_state, reference.policy.state_dict()),
            "saved_value_diff": max_diff(value_state, reference.value_model.state_dict()),
            "saved_keys": [len(policy_state), len(value_state), len(policy.state_dict()), len(critic.state_dict())],
            "same_generation": same_generation,
        }
        with open(out_file, "w") as f:
            json.dump(result, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main(*sys.argv[1:4])
