"""geossl: self-supervised pretraining of Earth-observation foundation models in JAX."""

from setuptools import find_packages, setup

CORE = [
    "jax>=0.10", "flax>=0.12.8", "optax>=0.2.8", "orbax-checkpoint>=0.12", "grain>=0.2.18",
    "tensorflow-datasets", "numpy", "ml-collections", "absl-py", "protobuf>=4", "crc32c",
    "tifffile", "tqdm", "safetensors", "scipy", "threadpoolctl",
    "opencv-python-headless", "h5py",
    # jax's dtype extension: 0.7.0 registers its new dtypes' numpy loops in 1.0–1.4 s at import
    # (0.6.0: 0.1 s), which every process (main.py, each grain worker) would pay
    "ml-dtypes<0.7",
]
TORCH = ["torch", "torchvision", "timm"]
TEST = TORCH + [
    "pytest", "pytest-xdist", "scikit-learn", "scipy", "bigearthnet-common==2.8.0", "nbclient",
    "nbformat", "ipykernel", "matplotlib", "import-linter", "torchgeo==0.8.1",
    "tensorboardX",  # its copy of TensorFlow's Event protobuf reads geossl's event files
]

setup(
    name="geossl",
    version="0.1.0",
    description="Self-supervised pretraining of Earth-observation foundation models in JAX",
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["geossl", "geossl.*", "configs", "data_prep"]),
    install_requires=CORE,
    extras_require={"torch": TORCH, "test": TEST},
    license="Apache-2.0",
)
