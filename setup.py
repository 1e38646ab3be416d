"""RPN preprocessing pipeline (Apache Beam) and trainer (Keras) for Faster R-CNN.

`--setup_file ./setup.py` ships this package to Dataflow / Flink workers.
TensorFlow comes from an extra so that CPU and GPU users pick their build:
`pip install .[cpu]` (tensorflow-cpu) or `pip install .[gpu]` (tensorflow with CUDA).
"""
import os
import re

import setuptools

TF_VERSION = "2.21.*"
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "pipeline", "__init__.py"),
          encoding="utf-8") as f:  # one place for the version
  VERSION = re.search(r'__version__ = "([^"]+)"', f.read()).group(1)

setuptools.setup(
    name="rpn-pipeline",
    version=VERSION,
    description=("Beam pipeline turning ILSVRC images into RPN training TFRecords, "
                 "and an RPN trainer"),
    python_requires=">=3.10",
    # pipeline/ is one package per layer (core, io, model, beam, commands).
    packages=setuptools.find_packages(include=["pipeline", "pipeline.*", "trainer", "trainer.*"]),
    install_requires=[
        "apache-beam[tfrecord]>=2.77,<3",
        "numpy>=1.26,<2.5",
        "pillow>=10",
        "defusedxml>=0.7",
        "google-crc32c>=1.5",
        "matplotlib>=3.8",
    ],
    extras_require={
        "cpu": [f"tensorflow-cpu=={TF_VERSION}", "tensorboard"],
        "gpu": [f"tensorflow[and-cuda]=={TF_VERSION}", "tensorboard"],
        "gcp": ["apache-beam[gcp,tfrecord]>=2.77,<3"],
        # make quality's Selective Search baseline (and its test) only; not used by the product.
        "bench": ["opencv-contrib-python-headless>=4.8"],
        "test": [f"tensorflow-cpu=={TF_VERSION}", "tensorboard", "pytest>=8", "pytest-timeout>=2",
                 "ruff>=0.15", "opencv-contrib-python-headless>=4.8"],
    },
    entry_points={
        "console_scripts": [
            "rpn-preprocess=pipeline.commands.preprocess:main",
            "rpn-anchors=pipeline.commands.anchors:main",
            "rpn-sample-data=pipeline.commands.sample_data:main",
            "rpn-draw=pipeline.commands.draw:main",
            "rpn-train=trainer.cli:train_main",
            "rpn-propose=trainer.cli:propose_main",
            "rpn-export=trainer.cli:export_main",
            "rpn-evaluate=trainer.evaluate:main",
        ],
    },
)
