"""Several processes on the CPU (Detectron2's launch with the gloo backend, patched in at set-up)."""
import socket

from detectron2.engine import launch

from dcinet_d2.testing import train_steps_checking_memories


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_keep_identical_memories_after_every_step(tmp_path):
    """Two ranks see different images; after every step their OLP dictionaries, class centers (with their
    seen flags) and parameters are identical, as one large batch would leave them."""
    out = tmp_path / "steps"
    launch(train_steps_checking_memories, 2, dist_url=f"tcp://127.0.0.1:{_free_port()}", args=(4, str(out)))
    assert out.read_text() == "4"


def test_launched_worker_closes_its_process_group_on_return():
    """dcinet_d2.distributed.launch's workers destroy the gloo group when they return (a worker exiting with
    gloo's threads alive could abort: SIGABRT, "terminate called without an active exception")."""
    import torch.distributed as dist

    from dcinet_d2.distributed import _closing_worker

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    try:
        assert _closing_worker(lambda a, b: a + b, 2, 3) == 5
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
