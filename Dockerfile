# syntax=docker/dockerfile:1
# The shoal image: the same image runs `shoal scheduler` and `shoal worker`.
#
#   docker build -t shoal:0.1.0 .                          # CPU: python slim
#   docker build -t shoal:0.1.0-gpu --build-arg VARIANT=gpu .  # CUDA runtime + the gpu extra
#
# Stages: `wheel` builds shoal's wheel from this source tree; `cpu` and `gpu`
# are the two runtime bases; the last stage installs the wheel (and, for the
# GPU variant, the `gpu` extra) into a virtual environment on the base chosen
# by VARIANT. No compiler is installed in any stage: every dependency comes
# as a binary wheel.

ARG VARIANT=cpu
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:12.4.1-runtime-ubuntu22.04

# -- the wheel, built from the source tree -------------------------------------------
FROM ${PYTHON_IMAGE} AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY shoal ./shoal
RUN python -m pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# -- runtime bases ------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS cpu
ENV SHOAL_EXTRAS=""
# Debian's versions of tini are not pinned: the base image's release decides
# them, and a pin would break the build at each point release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/* \
    && ln -s /usr/local/bin/python3 /usr/local/bin/shoal-python

FROM ${CUDA_IMAGE} AS gpu
ENV SHOAL_EXTRAS="[gpu]" \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
# As above: Ubuntu's versions follow the CUDA base image's release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini python3.11 python3.11-venv \
    && rm -rf /var/lib/apt/lists/* \
    && ln -s /usr/bin/python3.11 /usr/local/bin/shoal-python

# -- the image ----------------------------------------------------------------------------
FROM ${VARIANT}
ARG VARIANT
LABEL org.opencontainers.image.title="shoal" \
      org.opencontainers.image.description="shoal scheduler and worker (${VARIANT})" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=wheel /wheels /wheels
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN shoal-python -m venv /opt/shoal \
    && wheel="$(echo /wheels/shoal-*.whl)" \
    && /opt/shoal/bin/pip install --no-cache-dir "${wheel}${SHOAL_EXTRAS}" \
    && rm -rf /wheels \
    && useradd --create-home --uid 10001 --user-group shoal
ENV PATH=/opt/shoal/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    SHOAL_HTTP_PORT=8787
USER 10001
WORKDIR /home/shoal
# 7786: the scheduler's protocol port; 8787: its HTTP port (health, metrics, dashboard).
EXPOSE 7786 8787
# /health is the scheduler's or worker's liveness endpoint on $SHOAL_HTTP_PORT
# (set it to a worker's --http-port when the image runs a worker).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('SHOAL_HTTP_PORT', '8787'), timeout=4)"]
# tini is PID 1: it reaps children and passes SIGTERM on, so that a worker retires.
ENTRYPOINT ["tini", "--", "shoal"]
CMD ["scheduler", "--host", "0.0.0.0"]
