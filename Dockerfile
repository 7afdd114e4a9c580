# meetstream-live: the receiver in a container. Slim, non-root, with a health check.
#   docker build -t meetstream-live .
#   docker run -p 9876:9876 -v "$PWD/recordings:/recordings" meetstream-live
# Settings come from MEETSTREAM_LIVE_* variables (docs/config.md) or a mounted --config file.

FROM python:3.12-slim AS wheel
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY core core
COPY adapters adapters
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.12-slim
# numpy and the rest come as wheels: no compiler in the image. uvloop and trio for --adapter.
COPY --from=wheel /wheels /wheels
RUN pip install --no-cache-dir "$(ls /wheels/*.whl)[uvloop,trio]" \
    && rm -rf /wheels \
    && useradd --system --uid 10001 --user-group --no-create-home meetstream \
    && mkdir /recordings && chown meetstream:meetstream /recordings
USER 10001:10001
ENV PYTHONUNBUFFERED=1 \
    MEETSTREAM_LIVE_HOST=0.0.0.0 \
    MEETSTREAM_LIVE_PORT=9876 \
    MEETSTREAM_LIVE_OUTPUT=/recordings
VOLUME ["/recordings"]
EXPOSE 9876
# Liveness: /healthz answers while the process serves (readiness, /readyz, is for the
# orchestrator's load balancing: 503 while draining, at the connection limit, disk low).
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; url = 'http://127.0.0.1:%s/healthz' % os.environ.get('MEETSTREAM_LIVE_PORT', '9876'); sys.exit(0 if urllib.request.urlopen(url, timeout=4).status == 200 else 1)"]
# SIGTERM drains (--drain-timeout, 30 s): give `docker stop` more than that (--time 40).
STOPSIGNAL SIGTERM
ENTRYPOINT ["meetstream-live"]
CMD ["serve"]
