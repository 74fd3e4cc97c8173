# Offline RL single-file algorithms on a CUDA 12.8 runtime with Python 3.11.
#   docker build -t offline-rl .
#   docker run --rm --gpus all -v ~/.d4rl:/root/.d4rl -v "$PWD/runs:/workspace/runs" offline-rl \
#       python algorithms/iql.py --config configs/iql/d4rl/hopper/medium.yaml
# See README "Reproduce a paper table". Not built in this project's CI (no Docker there): CI lints
# this file with hadolint (tests/test_docker_and_fetch.py).
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04

# TORCH_INDEX: PyPI's torch 2.13.0 Linux wheel is built for CUDA 13 (it requires cuda-toolkit 13.0.3),
# which this CUDA 12 image and older drivers cannot run, so torch comes from PyTorch's cu128 index.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    MUJOCO_GL=egl \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility,graphics \
    PATH=/opt/venv/bin:$PATH

# Python 3.11 from the deadsnakes PPA (Ubuntu 22.04 ships 3.10); EGL/GL libraries for MuJoCo.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends software-properties-common gpg-agent \
    && add-apt-repository -y ppa:deadsnakes/ppa \
    && apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
       libegl1 libgl1 libglvnd0 libosmesa6 git \
    && rm -rf /var/lib/apt/lists/* \
    && python3.11 -m venv /opt/venv

WORKDIR /workspace
COPY requirements.txt .
RUN pip install --index-url "$TORCH_INDEX" torch==2.13.0 \
    && pip install -r requirements.txt

COPY . .
CMD ["python", "-m", "pytest", "tests", "-q"]
