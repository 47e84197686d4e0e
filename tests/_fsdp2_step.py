"""Two SFT steps of a tiny causal LM sharded with torch's FSDP2 (``fully_shard``) over gloo processes, and the same
steps unsharded on the whole batch: the driver of ``tests/test_fsdp2_cpu.py``.

``torchrun --nproc_per_node 2 tests/_fsdp2_step.py MODEL OUT``. The model is sharded as accelerate's ``fsdp2.yaml``
asks (``fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP``: every decoder layer, ``_no_split_modules``, then the root;
``fsdp_reshard_after_forward: true``); each process trains on its half of a fixed batch of equal-length rows (so a
mean of the two halves' token means is the whole batch's token mean). Rank 0 also trains an unsharded copy on the
whole batch, then writes ``OUT/result.pt``: both state dicts after the steps (the sharded one gathered with
``full_tensor()``), the initial one, the losses, how the parameters were sharded, and what accelerate makes of an
FSDP2 launch in these CPU processes (the variables ``accelerate launch`` sets from ``fsdp2.yaml``).
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist

BATCH, LENGTH, STEPS, LR = 4, 12, 2, 0.5


def batches(vocab_size: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return [torch.randint(3, vocab_size, (BATCH, LENGTH), generator=generator) for _ in range(STEPS)]


def train(model, inputs: list[torch.Tensor]) -> list[float]:
    """Plain SGD on the causal-LM loss (token mean), one step per batch."""
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    losses = []
    for input_ids in inputs:
        loss = model(input_ids=input_ids, labels=input_ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.detach())
    return losses


def accelerate_engine() -> str:
    """The ``distributed_type`` accelerate gives these processes when its launcher asked for FSDP2 on the CPU."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    os.environ.update(ACCELERATE_USE_FSDP="true", FSDP_VERSION="2", FSDP_AUTO_WRAP_POLICY="TRANSFORMER_BASED_WRAP")
    try:
        return Accelerator(cpu=True).distributed_type.value
    finally:
        for name in ("ACCELERATE_USE_FSDP", "FSDP_VERSION", "FSDP_AUTO_WRAP_POLICY"):
            del os.environ[name]
        AcceleratorState._reset_state()


def main(model_path: str, out: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor
    from transformers import AutoModelForCausalLM

    dist.init_process_group("gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    engine = accelerate_engine()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    initial = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    inputs = batches(model.config.vocab_size)

    mesh = init_device_mesh("cpu", (world_size,))
    layer_classes = tuple(type(m) for m in model.modules() if type(m).__name__ in model._no_split_modules)
    for module in model.modules():
        if isinstance(module, layer_classes):
            fully_shard(module, mesh=mesh, reshard_after_forward=True)
    fully_shard(model, mesh=mesh, reshard_after_forward=True)
    sharding = {
        name: {
            "placements": [str(p) for p in param.placements],
            "local": param.to_local().numel(),
            "full": param.numel(),
        }
        for name, param in model.named_parameters()
        if isinstance(param, DTensor)
    }
    rows = BATCH // world_size
    local_losses = train(model, [batch[rank * rows : (rank + 1) * rows] for batch in inputs])
    losses = []
    for loss in local_losses:  # the whole batch's loss: the mean of the processes' (equal token counts)
        dist.all_reduce(loss)
        losses.append(loss.item() / world_size)
    sharded = {
        name: tensor.full_tensor() if isinstance(tensor, DTensor) else tensor
        for name, tensor in model.state_dict().items()
    }
    if rank == 0:
        reference = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
        reference_losses = [loss.item() for loss in train(reference, inputs)]
        torch.save(
            {
                "world_size": world_size,
                "accelerate_engine": engine,
                "initial": initial,
                "sharded": sharded,
                "reference": reference.state_dict(),
                "losses": losses,
                "reference_losses": reference_losses,
                "sharding": sharding,
                "num_parameters": len(list(reference.parameters())),
            },
            f"{out}/result.pt",
        )
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
