# SMYRF-BigGAN images.
#   GPU (default):  docker build -t smyrf-biggan .
#                   docker run --gpus all --ipc=host -v $PWD/runs:/app/runs -v /data:/data smyrf-biggan \
#                          --config configs/celebahq128_smyrf.yaml
#   multi-GPU:      docker run ... --entrypoint torchrun smyrf-biggan --nproc_per_node=8 train.py --config ...
#   TPU VM:         docker build --target tpu -t smyrf-biggan:tpu .
#                   docker run --privileged --net=host -v ... smyrf-biggan:tpu --config ... runtime.kind=xla
# Both run as the non-root user `gan`; mount runs/ and the prepared data.

ARG CUDA_BASE=pytorch/pytorch:2.9.0-cuda12.8-cudnn9-runtime

# ---------------------------------------------------------------------------------------------------------------------
FROM ${CUDA_BASE} AS gpu
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# The base image brings torch (2.9, which our code supports alongside 2.14); install the rest of the pinned stack.
COPY requirements/main.txt /tmp/requirements.txt
RUN grep -v -E '^(torch|torchvision)==' /tmp/requirements.txt > /tmp/req-notorch.txt \
 && pip install -r /tmp/req-notorch.txt \
 && useradd --create-home --uid 1000 gan
WORKDIR /app
COPY --chown=gan:gan . /app
USER gan
# FID weights are converted once at build time so that containers never touch the network.
RUN python -m biggan.fid install-weights
ENTRYPOINT ["python", "train.py"]
CMD ["--config", "configs/demo.yaml"]

# ---------------------------------------------------------------------------------------------------------------------
FROM python:3.11-slim AS tpu
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PJRT_DEVICE=TPU
COPY requirements/xla.txt /tmp/requirements-xla.txt
RUN pip install -r /tmp/requirements-xla.txt \
 && pip install 'torch-xla[tpu]==2.9.0' \
 && useradd --create-home --uid 1000 gan
WORKDIR /app
COPY --chown=gan:gan . /app
USER gan
RUN python -m biggan.fid install-weights
ENTRYPOINT ["python", "train.py"]
CMD ["--config", "configs/celebahq128_smyrf.yaml", "runtime.kind=xla"]

# The default target is the GPU image.
FROM gpu
