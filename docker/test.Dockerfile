# The sandbox's escape tests inside the service image, as its uid 1000 (scripts/compose_check.sh):
#   docker build -f docker/test.Dockerfile -t longctx:sandbox-test tests   (the context: tests/)
# pytest goes into a layer of its own; the service image stays without pip.
ARG IMAGE=longctx:cpu
FROM ${IMAGE}
USER root
RUN python3 -m ensurepip >/dev/null && python3 -m pip install --no-cache-dir -q pytest \
    && find /opt/venv -name __pycache__ -prune -exec rm -rf {} +
COPY __init__.py /opt/tests/tests/__init__.py
COPY agent/__init__.py agent/test_sandbox.py /opt/tests/tests/agent/
USER longctx
WORKDIR /opt/tests
CMD ["python3", "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", "tests/agent/test_sandbox.py"]
