"""What must agree on every DDP rank: whether a process group is up, and means over the ranks."""

import torch


def distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


@torch.no_grad()
def mean_over_ranks_(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` replaced in place by its mean over the ranks (unchanged on one process)."""
    if distributed():
        torch.distributed.all_reduce(tensor)
        tensor /= torch.distributed.get_world_size()
    return tensor


@torch.no_grad()
def average_buffers_across_ranks(module: torch.nn.Module) -> None:
    """Running statistics such as mapping.w_avg are updated from each rank's batch; their mean over ranks is the
    statistic of the global batch (they are linear in it), keeping every rank's G identical."""
    for b in module.buffers():
        if b.is_floating_point():
            mean_over_ranks_(b)
