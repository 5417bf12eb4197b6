# One image for every Parseq process: web (gunicorn), worker, scheduler.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PARSEQ_HOST=0.0.0.0 \
    PARSEQ_VAR_DIR=/data/var \
    PARSEQ_ENVS_DIR=/data/envs

# setpriv and prlimit (util-linux) launch sandboxed parsers: fail the build if they are missing.
RUN useradd --create-home --uid 10001 parseq && setpriv --version && prlimit --version
WORKDIR /app

COPY requirements.txt .
RUN pip install uv==0.13.9 && uv pip install --system -r requirements.txt

COPY pyproject.toml requirements.in README.md ./
COPY parseq ./parseq
COPY parseq_sdk ./parseq_sdk
COPY parsers ./parsers
COPY notebooks ./notebooks
RUN uv pip install --system --no-deps . \
    && mkdir -p /data/var /data/envs \
    && chown -R parseq:parseq /data

# web, scheduler and init run as this user; docker-compose runs the worker as root (with few
# capabilities) so that parsers run as users of their own: README "Deployment".
USER parseq
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --retries=5 \
    CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8000/api/v1/health', timeout=4)" || exit 1
CMD ["gunicorn", "--bind", "0.0.0.0:8000", "--workers", "2", "--threads", "4", "parseq.web.wsgi:app"]
