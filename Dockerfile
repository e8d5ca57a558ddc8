# studio-watch as a container: a sidecar next to a recorder, sharing its recordings volume.
#
#   docker build -t studio-watch .
#   docker run -v recordings:/recordings -v studio-watch-state:/var/lib/studio-watch \
#              -v ./config.yaml:/config/config.yaml:ro studio-watch
#
# compose.example.yaml shows the whole setup (token as a secret, metrics port, polling observer notes).
FROM python:3.11-slim

# STUDIO_WATCH_CONFIG: every command finds the config without -c, so `docker compose exec studio-watch
# studio-watch status` works as written.
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    STUDIO_WATCH_CONFIG=/config/config.yaml

# Every dependency ships a wheel for CPython 3.11 on manylinux x86_64 and aarch64, so no compiler is needed;
# --only-binary makes that a build failure rather than a silent source build if it ever stops being true.
COPY . /src
RUN pip install --no-cache-dir --only-binary=:all: /src \
    && rm -rf /src \
    && mkdir -p /usr/share/bash-completion/completions \
    && studio-watch completion bash > /usr/share/bash-completion/completions/studio-watch

# A fixed non-root uid and gid, so host-side files (the token secret, bind-mounted folders) can be chowned to
# them. The group is made first with its own fixed gid: `useradd --user-group` would pick any free system gid,
# and USER 10001:10001 would then name a group that does not exist.
RUN groupadd --system --gid 10001 studio-watch \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/studio-watch --no-create-home \
        --shell /usr/sbin/nologin studio-watch \
    && install -d -m 0700 -o 10001 -g 10001 /var/lib/studio-watch \
    && install -d -m 0755 /config

# The state database (state.db, its lock and WAL files): keep it on a named volume so uploads resume after a
# container is replaced. Declared after the chown so a new volume starts out owned by uid 10001.
VOLUME ["/var/lib/studio-watch"]

USER 10001:10001
WORKDIR /var/lib/studio-watch

# 0 when the daemon's /healthz answers 200 (metrics.listen set) or, without metrics, while it holds the
# database lock. start-period covers crash recovery and the first scan.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["studio-watch", "health", "-c", "/config/config.yaml"]

# SIGTERM (docker stop) is a graceful stop: give it more than the daemon's 30 s worker join, e.g.
# `docker stop -t 45` or `stop_grace_period: 45s` in compose.
STOPSIGNAL SIGTERM
ENTRYPOINT ["studio-watch"]
CMD ["run", "-c", "/config/config.yaml"]
