"""End to end, the paper's regime on the CPU (configs/cpu/dcinet_mnv2_synth.yaml: ImageNet MobileNetV2), on
synthetic data of a seed the configs were not tuned on: the memory losses learn (end well below their uniform
values). The run is the shared `demo_run` (conftest.py); its search is checked in test_train_evaluate.py."""
import pytest

# The shared training (conftest.py) runs in the first test's setup: about 4 minutes on 2 idle cores, 15 or
# more on a loaded machine, over pytest.ini's per-test limit.
pytestmark = pytest.mark.timeout(2400)


def _last_mean(rows, key, n=3):
    values = [r[key] for r in rows if key in r][-n:]
    return sum(values) / len(values)


@pytest.mark.slow
def test_memory_losses_end_well_below_their_uniform_values(demo_run):
    # Measured (300 iterations, data seed 7): OLP 1.97 against 5.54, C2HEP 0.23 against 2.77 (means of the last
    # 3 logged values); the from-scratch ResNet-18 config's stayed at or above them.
    for name, ratio in (("olp", 0.7), ("c2hep", 0.5)):
        rows = demo_run["rows"]
        loss, uniform = _last_mean(rows, f"reid/{name}"), _last_mean(rows, f"reid/{name}_uniform")
        assert loss < ratio * uniform, (name, loss, uniform)

