# cdrservice image: gunicorn on :8887, static files collected, running as a non-root user.
#   docker build -t cdrservice .
# Configuration comes from the environment (see .env.example): SECRET_KEY and DATABASE_URL
# at least (the code directory is read-only for the service, so no SQLite file in it).
# docker-compose.yml runs it with PostgreSQL and applies migrations before starting.

# --- builder: wheels for every pinned requirement, installed into a venv ---
FROM python:3.11-slim AS builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
COPY requirements.txt /wheels/requirements.txt
RUN pip wheel --wheel-dir /wheels -r /wheels/requirements.txt \
    && python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-index --find-links=/wheels -r /wheels/requirements.txt

# --- final: the venv only; no compilers, no wheel files ---
FROM python:3.11-slim
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PORT=8887
RUN groupadd --system --gid 10001 cdr \
    && useradd --system --uid 10001 --gid cdr --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin cdr
COPY --from=builder /opt/venv /opt/venv

WORKDIR /app
# The code belongs to root: the service can read it, not change it.
COPY . .
# collectstatic needs settings, and settings need a SECRET_KEY: a throwaway one, set for this
# command only (an ARG, not an ENV: it is not in the image's environment).
ARG COLLECTSTATIC_SECRET_KEY=collectstatic-only-placeholder-never-used-to-sign-anything-0000
RUN SECRET_KEY="$COLLECTSTATIC_SECRET_KEY" python manage.py collectstatic --no-input --verbosity 0

# gunicorn's workers share their metrics through files there (see cdrs/metrics.py). Set
# after the build steps so that the service's user creates the directory at run time.
ENV PROMETHEUS_MULTIPROC_DIR=/tmp/cdr-metrics
USER cdr
EXPOSE 8887
# No curl in slim images: python's urllib. Host = first ALLOWED_HOSTS name (Django rejects
# others); /healthz is exempt from SECURE_SSL_REDIRECT, so the probe needs no proxy header.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; h = os.environ.get('ALLOWED_HOSTS', '').split(',')[0].strip().lstrip('.').replace('*', '') or 'localhost'; u.urlopen(u.Request('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8887'), headers={'Host': h}), timeout=4)"]
CMD ["gunicorn", "-c", "gunicorn.conf.py", "cdrservice.wsgi"]
