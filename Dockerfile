# syntax=docker/dockerfile:1
#
# default-policy-operator's image:   docker build -t default-policy-operator .
#
# builder: wheels of the project (its templates included) and of every dependency.
# final:   a virtualenv at /opt/venv installed from those wheels only (no index, no compiler),
#          run as an unprivileged numeric user, so `runAsNonRoot` can verify it.
#
# tests/test_dockerfile.py performs these steps outside Docker and runs the result.

FROM python:3.11-slim AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY templates/ templates/
COPY operator/ operator/
# operator/default_policy_operator/templates is a symlink to ../../templates: setuptools
# follows it, so the wheel carries the templates as package data.
RUN pip wheel --no-deps --wheel-dir /wheels . \
    && pip wheel --wheel-dir /wheels /wheels/default_policy_operator-*.whl

FROM python:3.11-slim
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
# The wheels are bind-mounted from the builder, so they never become a layer of this image.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-index --find-links=/wheels /wheels/default_policy_operator-*.whl \
    && /opt/venv/bin/pip uninstall --yes pip
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# Numeric, so that Kubernetes can check runAsNonRoot; matches the Deployment's runAsUser.
USER 65532:65532
EXPOSE 8080 8081
ENTRYPOINT ["dpo", "run"]
