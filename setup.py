"""em3-tf: EM3 multimodal ranking (Fusion-Q-Former, LoRA, CIC) for TFRS, TFX and TF Serving.

Install with ./setup.sh (it applies constraints.txt and the Python 3.11 workaround TFX 1.16
needs); `pip install -e .` alone resolves the same pins only if constraints.txt is given with -c.
"""

from setuptools import find_packages, setup

setup(
    name="em3-tf",
    version="0.1.0",
    description="EM3: end-to-end training of multimodal model and ranking model, on TFRS/TFX/TF Serving",
    packages=find_packages(include=["em3_tf", "em3_tf.*", "pipelines", "pipelines.*",
                                    "serving", "serving.*"]),
    python_requires=">=3.10,<3.12",
    install_requires=[
        "tensorflow==2.16.2",
        "tf-keras==2.16.0",
        "keras>=3.0",
        "keras-hub==0.31.0",
        "tensorflow-text==2.16.1",
        "tensorflow-recommenders==0.7.7",
        "tensorflow-serving-api==2.16.1",
        "tfx==1.16.0",
        "apache-beam[gcp]==2.59.0",
        "protobuf==4.25.9",
        "safetensors",
        "numpy<2",
        "tqdm",
        "matplotlib",
    ],
    extras_require={"test": ["pytest"], "kfp": ["kfp==2.8.0", "kfp-pipeline-spec==0.3.0"]},
    entry_points={"console_scripts": ["em3-train=em3_tf.train:main"]},
)
