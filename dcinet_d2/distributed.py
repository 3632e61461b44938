"""Detectron2's ``launch`` with the process group closed when each worker returns.

Without it, a worker process of a multi-process CPU run (gloo) could exit while gloo's threads were still
alive and abort ("terminate called without an active exception", SIGABRT) after finishing its work.
"""
import torch.distributed as dist
from detectron2.engine import launch as _d2_launch

__all__ = ["launch"]


def _closing_worker(main_func, *args):
    result = main_func(*args)  # on an exception, launch stops the other workers
    if dist.is_available() and dist.is_initialized():
        dist.barrier()  # no rank tears down gloo while another still talks to it
        dist.destroy_process_group()
    return result


def launch(main_func, num_gpus_per_machine, num_machines=1, machine_rank=0, dist_url=None, args=()):
    """As ``detectron2.engine.launch`` (same arguments); ``main_func`` must be picklable (module level)."""
    _d2_launch(_closing_worker, num_gpus_per_machine, num_machines=num_machines, machine_rank=machine_rank,
               dist_url=dist_url, args=(main_func, *args))
