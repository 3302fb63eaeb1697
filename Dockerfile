# Tryggbro gateway image: `tryggbro serve` as a non-root user.
# Build: docker build -t tryggbro .
# Run:   docker run -p 8080:8080 -v tryggbro-data:/var/lib/tryggbro \
#          -v $PWD/site.toml:/etc/tryggbro/tryggbro.toml:ro \
#          -e TRYGGBRO_ALARMPLATFORM_API_KEY=... -e TRYGGBRO_ADMIN_VIEWER_TOKENS=... \
#          -e TRYGGBRO_ADMIN_OPERATOR_TOKENS=... tryggbro
# (the secrets the configuration names by *_env; without a mounted site.toml the
# example configuration is used, with its paths moved under /var/lib/tryggbro)
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TRYGGBRO_CONFIG=/etc/tryggbro/tryggbro.toml

RUN groupadd --system tryggbro \
 && useradd --system --gid tryggbro --home-dir /var/lib/tryggbro --create-home tryggbro

WORKDIR /opt/tryggbro
COPY pyproject.toml README.md ./
COPY hub ./hub
COPY plugins ./plugins
RUN pip install ".[postgres]" $(for p in plugins/*/pyproject.toml; do printf "./%s " "${p%/pyproject.toml}"; done)

# Code tables and the example configuration, adjusted for the container's paths.
COPY mappings /opt/tryggbro/mappings
COPY tryggbro.example.toml /etc/tryggbro/tryggbro.toml
RUN sed -i \
      -e 's|^data_dir = .*|data_dir = "/var/lib/tryggbro"|' \
      -e 's|^mappings_dir = .*|mappings_dir = "/opt/tryggbro/mappings"|' \
      -e 's|^url = "sqlite:///var/tryggbro.db"|url = "sqlite:////var/lib/tryggbro/tryggbro.db"|' \
      -e 's|^host = "127.0.0.1"|host = "0.0.0.0"|' \
      -e 's|^path = "var/delivered"|path = "/var/lib/tryggbro/delivered"|' \
      /etc/tryggbro/tryggbro.toml

USER tryggbro
VOLUME ["/var/lib/tryggbro"]
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s \
  CMD python -c "import urllib.request as u; u.urlopen('http://127.0.0.1:8080/readyz', timeout=4)"

# SIGTERM stops intake, finishes in-flight work and releases leases.
STOPSIGNAL SIGTERM
CMD ["tryggbro", "serve"]
