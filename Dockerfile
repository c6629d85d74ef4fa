# Federation broker: production image. `broker serve` runs gunicorn; configure with environment variables
# (see README "Configuration"). Migrations run as a separate step: `broker db upgrade`.
FROM python:3.11-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY broker ./broker
RUN python -m venv /opt/broker \
 && /opt/broker/bin/pip install --upgrade pip \
 && /opt/broker/bin/pip install .

FROM python:3.11-slim-bookworm
# bookworm, named: the runtime package names below (libxmlsec1, not trixie's libxmlsec1t64) are its own
# xmlsec and lxml wheels bundle libxml2/libxmlsec1; the runtime needs only the C libraries below.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libxml2 libxmlsec1 libxmlsec1-openssl libltdl7 ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 broker \
 && useradd --system --uid 10001 --gid broker --home-dir /app --shell /usr/sbin/nologin broker
COPY --from=build /opt/broker /opt/broker
WORKDIR /app
COPY config ./config
COPY metadata ./metadata
ENV PATH="/opt/broker/bin:$PATH" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    BROKER_ENV=production
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=3s --start-period=10s \
  CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status == 200 else 1)"
ENTRYPOINT ["broker"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
