# labelwheel API server. Build:  docker build -t labelwheel .
# The image holds the code and its locked dependencies; all state lives in the /data volume
# (embedded default) or in PostgreSQL + S3 when LABELWHEEL_DATABASE_URL / LABELWHEEL_BLOB_URL say so.

FROM python:3.11-slim AS build
RUN pip install --no-cache-dir uv
WORKDIR /app
ENV UV_LINK_MODE=copy UV_COMPILE_BYTECODE=1
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-dev --no-install-project
COPY service service
COPY flywheel flywheel
COPY annotation annotation
COPY storage storage
COPY migrations migrations
COPY alembic.ini ./
RUN uv sync --frozen --no-dev

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 labelwheel && mkdir /data && chown labelwheel /data
COPY --from=build /app /app
WORKDIR /app
ENV PATH=/app/.venv/bin:$PATH \
    LABELWHEEL_DATA_DIR=/data \
    LABELWHEEL_HOST=0.0.0.0 \
    LABELWHEEL_PORT=8000
VOLUME /data
USER labelwheel
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"
CMD ["labelwheel", "serve"]
