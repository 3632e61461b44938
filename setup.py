"""dcinet-d2: I-Net and DC-I-Net (joint detection and re-identification for image search) on Detectron2.

Detectron2 itself is installed by scripts/setup_env.sh (patched source build), not by pip's resolver.
"""
from setuptools import find_packages, setup

setup(
    name="dcinet_d2",
    version="0.1.0",
    description="Tasks Integrated Networks (I-Net, DC-I-Net) for person / image search on Detectron2",
    packages=find_packages(include=["dcinet_d2", "dcinet_d2.*"]),
    # The review page of `dcinet-search serve`: plain files served as they are.
    package_data={"dcinet_d2.search": ["static/*.html", "static/*.css", "static/*.js"]},
    python_requires=">=3.11,<3.12",
    install_requires=[],  # pinned in requirements.txt; see scripts/setup_env.sh
    entry_points={
        "console_scripts": [
            "dcinet-eval=dcinet_d2.evaluation.cli:main",
            "dcinet-search=dcinet_d2.search.cli:main",
        ]
    },
)
