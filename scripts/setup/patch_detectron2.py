#!/usr/bin/env python3
"""Patch an unpacked ``pb1-detectron2==0.6`` source tree (upstream detectron2 v0.6) so it installs and runs
on Python 3.11, torch 2.14, numpy 2, Pillow >= 10 and setuptools >= 81, with no C++ extension.

Usage: ``python patch_detectron2.py SRC_DIR``. Every edit checks that its target text occurs exactly as
often as expected; any other source tree makes this script exit non-zero naming the file and the text.
"""
import os
import re
import shutil
import sys


class PatchError(RuntimeError):
    pass


def replace(root, rel, old, new, count=1):
    """Replace ``old`` by ``new`` in ``root/rel``; ``old`` must occur exactly ``count`` times."""
    path = os.path.join(root, rel)
    if not os.path.isfile(path):
        raise PatchError(f"{path}: file missing; not the expected pb1-detectron2 0.6 source")
    with open(path) as f:
        text = f.read()
    found = text.count(old)
    if found != count:
        raise PatchError(f"{path}: expected {count} occurrence(s) of {old!r}, found {found}; "
                         "not the expected pb1-detectron2 0.6 source")
    with open(path, "w") as f:
        f.write(text.replace(old, new))


STUB_C = '''"""Pure-Python stand-in for detectron2._C: this detectron2 was built without its C++ extension.
Unavailable: rotated-box ops, deformable convolution, the fast COCO evaluation
(use COCOEvaluator(..., use_fast_impl=False)). RoIAlign and NMS come from torchvision."""


def get_compiler_version():
    return "none (detectron2._C is a pure-Python stub)"


def get_cuda_version():
    return "not available"


def has_cuda():
    return False


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    raise AttributeError(
        f"detectron2._C.{name} is unavailable: detectron2 was installed without its C++ extension; "
        "for COCO evaluation use COCOEvaluator(..., use_fast_impl=False)")
'''

# numpy 2 removed these aliases of builtins.
NP_ALIASES = {"int": "int", "float": "np.float64", "bool": "bool", "str": "str", "object": "object"}
NP_ALIAS_RE = re.compile(r"\bnp\.(int|float|bool|str|object)\b(?!\w)")


def patch(root):
    if not os.path.isfile(os.path.join(root, "detectron2", "__init__.py")):
        raise PatchError(f"{root}: no detectron2/__init__.py; not a detectron2 source tree")
    # 1. setup.py installs configs/ from the source root, but the sdist keeps them under model_zoo/.
    zoo_configs, root_configs = (os.path.join(root, "detectron2/model_zoo/configs"),
                                 os.path.join(root, "configs"))
    if not os.path.exists(root_configs):
        if not os.path.isdir(zoo_configs):
            raise PatchError(f"{zoo_configs}: missing; not the expected pb1-detectron2 0.6 source")
        shutil.move(zoo_configs, root_configs)
    # 2. No C++ sources in the sdist: build without the extension, provide a stub module.
    replace(root, "setup.py", "    ext_modules=get_extensions(),", "    ext_modules=[],")
    with open(os.path.join(root, "detectron2/_C.py"), "w") as f:
        f.write(STUB_C)
    # 3. Pillow >= 10 removed Image.LINEAR (a default argument: import error).
    replace(root, "detectron2/data/transforms/transform.py", "interp=Image.LINEAR", "interp=Image.BILINEAR")
    # 4. setuptools >= 81 has no pkg_resources (model_zoo.get_config_file).
    zoo = "detectron2/model_zoo/model_zoo.py"
    replace(root, zoo, "import pkg_resources\n", "")
    replace(root, zoo,
            'pkg_resources.resource_filename(\n        "detectron2.model_zoo", os.path.join("configs", config_path)\n    )',
            'os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", config_path)')
    # 5. numpy 2: np.int, np.float, ... are gone.
    for folder, _, files in os.walk(os.path.join(root, "detectron2")):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                with open(path) as f:
                    text = f.read()
                new = NP_ALIAS_RE.sub(lambda m: NP_ALIASES[m.group(1)], text)
                if new != text:
                    with open(path, "w") as f:
                        f.write(new)
    # 6. Python 3.11: random.sample refuses a set (MapDataset's retry path).
    replace(root, "detectron2/data/common.py", "self._rng.sample(self._fallback_candidates, k=1)",
            "self._rng.sample(sorted(self._fallback_candidates), k=1)")
    # 7. torch >= 2 has no caffe2; detectron2.export imports its caffe2 API unconditionally.
    replace(root, "detectron2/export/__init__.py", "from .api import *\n",
            "try:  # caffe2 is absent from torch >= 2\n"
            "    from caffe2.proto import caffe2_pb2 as _caffe2_pb2  # noqa: F401\n"
            "except ImportError:\n"
            "    pass\n"
            "else:\n"
            "    from .api import *\n")
    # 8. torch >= 2 schedulers subclass LRScheduler, not _LRScheduler: resume lost their state.
    replace(root, "detectron2/engine/hooks.py",
            "isinstance(self.scheduler, torch.optim.lr_scheduler._LRScheduler)",
            "isinstance(self.scheduler, torch.optim.lr_scheduler.LRScheduler)", count=2)
    # 9. Multi-process on CPU-only machines, as later detectron2 releases do: launch uses the gloo backend
    #    when there is no GPU (0.6 asserts CUDA and NCCL), and DDP wraps a CPU model without device_ids.
    launch = "detectron2/engine/launch.py"
    replace(root, launch,
            '    assert torch.cuda.is_available(), "cuda is not available. Please check your installation."\n',
            "    has_gpu = torch.cuda.is_available()\n")
    replace(root, launch, '            backend="NCCL",', '            backend="NCCL" if has_gpu else "GLOO",')
    replace(root, launch,
            "    assert num_gpus_per_machine <= torch.cuda.device_count()\n    torch.cuda.set_device(local_rank)\n",
            "    if has_gpu:\n        assert num_gpus_per_machine <= torch.cuda.device_count()\n"
            "        torch.cuda.set_device(local_rank)\n")
    replace(root, "detectron2/engine/defaults.py", '    if "device_ids" not in kwargs:\n',
            '    if "device_ids" not in kwargs and torch.cuda.is_available():\n')


def main(argv):
    if len(argv) != 2:
        print("usage: patch_detectron2.py SRC_DIR", file=sys.stderr)
        return 2
    try:
        patch(argv[1])
    except PatchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"patched {argv[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
