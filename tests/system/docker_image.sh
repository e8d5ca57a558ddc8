#!/usr/bin/env bash
# docker_image.sh CACHE CHECKOUT: the project's system test of its image and compose example (run by
# test_system.py). Adapted from ../shared/system/docker-image.sh (the team's recipe), plus what this project
# promises on top: the config as a bind-mounted file (compose.studio-watch.yaml), STUDIO_WATCH_CONFIG set in the
# image (`docker compose exec studio-watch studio-watch status` as written), a recorder that stops on SIGTERM.
#
# Builds studio-watch's Dockerfile from CHECKOUT for real on a Debian 12 machine with no Docker Hub: starts a
# dockerd if none answers, makes a local base image (a debootstrapped bookworm with python3, venv and pip, kept in
# CACHE/base-root), builds the project's Dockerfile with only its FROM line changed to that image, and checks the
# container: upload of a dropped file against a `studio-watch sandbox` on 127.0.0.1 (--network host), the
# HEALTHCHECK, non-root uid 10001, `docker stop` exit 0 with an upload in flight and the resume on the next start,
# a replaced container on the same state volume, and compose.example.yaml (adapted minimally) where a compose
# binary exists. Prints one PASS/FAIL line per check; removes what it created and stops a dockerd it started.
#
#   CACHE     a folder for what is prepared once (base-root/, dockerd state); the same CACHE as systemd-boot.sh
#             shares its base root
#   CHECKOUT  a studio-watch checkout (the build context, as `docker build .` there would use it)
#
# Env: MIRROR, MAX_SECONDS (default 900), COMPOSE=0 to skip compose, NO_CACHE=1 for docker build --no-cache.
# Exit status: the number of FAILs (0 = all passed); 100+ when it could not get that far.
set -uo pipefail

CACHE=${1:?usage: docker-image.sh CACHE CHECKOUT}
CHECKOUT=${2:?usage: docker-image.sh CACHE CHECKOUT}
CACHE=$(mkdir -p "$CACHE" && cd "$CACHE" && pwd)
CHECKOUT=$(cd "$CHECKOUT" && pwd)
MAX_SECONDS=${MAX_SECONDS:-900}
LOG=$CACHE/logs
W=$CACHE/docker-work
IMAGE=studio-watch:systemtest
BASE_IMAGE=localbase:bookworm
P=swt   # prefix of every container, volume and compose project this script makes
mkdir -p "$LOG"
T_START=$SECONDS
FAILS=0
PASSES=0
STARTED_DOCKERD=
COMPOSE_CMD=()

. "$(dirname "${BASH_SOURCE[0]}")/common.sh"   # say pass fail die start_timer host_packages base_root
ms()   { date +%s%3N; }
[ "$(id -u)" = 0 ] || die "run as root"

start_timer docker_image.sh

D() { timeout "${T:-120}" "$DOCKER" "$@"; }

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ -n "${DOCKER:-}" ] && D info >/dev/null 2>&1; then
    if [ ${#COMPOSE_CMD[@]} -gt 0 ] && [ -f "$W/compose/compose.yaml" ]; then
      (cd "$W/compose" && timeout 60 "${COMPOSE_CMD[@]}" -p "$P-compose" -f compose.yaml down -v -t 5 >/dev/null 2>&1)
    fi
    D ps -a --format '{{.ID}} {{.Names}}' | awk -v p="$P-" 'index($2, p) == 1 {print $1}' | xargs -r timeout 60 "$DOCKER" rm -f -v >/dev/null 2>&1
    D volume ls --format '{{.Name}}' | awk -v p="$P-" 'index($1, p) == 1' | xargs -r timeout 60 "$DOCKER" volume rm >/dev/null 2>&1
  fi
  if [ -n "$STARTED_DOCKERD" ] && kill -0 "$STARTED_DOCKERD" 2>/dev/null; then
    say "cleanup: stopping the dockerd this script started (pid $STARTED_DOCKERD)"
    kill -TERM "$STARTED_DOCKERD"
    for _ in $(seq 1 30); do kill -0 "$STARTED_DOCKERD" 2>/dev/null || break; sleep 1; done
    kill -0 "$STARTED_DOCKERD" 2>/dev/null && kill -KILL "$STARTED_DOCKERD"
    for h in /sys/fs/cgroup/*/ /sys/fs/cgroup/; do  # the cgroup parent it was given, once empty
      [ -d "$h/sw-test-docker" ] && find "$h/sw-test-docker" -depth -type d -exec rmdir {} \; 2>/dev/null
    done
  fi
  finish "$rc"
}
trap cleanup EXIT
trap 'exit 101' INT TERM

# ---- host packages ---------------------------------------------------------------------------------------------
need_pkgs=()
command -v dockerd >/dev/null || need_pkgs+=(docker.io)
command -v debootstrap >/dev/null || need_pkgs+=(debootstrap)
if [ "${COMPOSE:-1}" != 0 ] && ! docker compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null; then
  need_pkgs+=(docker-compose)
fi
host_packages apt-docker "${need_pkgs[@]}"
# Debian's client matches Debian's daemon (a newer docker CLI elsewhere on PATH may lack the legacy builder)
DOCKER=/usr/bin/docker
[ -x "$DOCKER" ] || DOCKER=$(command -v docker) || die "no docker client"

# ---- a daemon: the one that answers, or our own -----------------------------------------------------------------
if [ -n "${DOCKER_HOST:-}" ] && T=10 D info >/dev/null 2>&1; then
  say "using the dockerd at $DOCKER_HOST"
elif DOCKER_HOST=unix:///var/run/docker.sock T=10 D info >/dev/null 2>&1; then
  export DOCKER_HOST=unix:///var/run/docker.sock
  say "using the dockerd at $DOCKER_HOST"
else
  DR=$CACHE/dockerd
  [ ${#DR} -gt 60 ] && DR=/tmp/sw-test-dockerd   # containerd's socket path below it must stay < 108 bytes
  mkdir -p "$DR/exec" "$DR/config"
  export DOCKER_HOST=unix://$DR/docker.sock DOCKER_CONFIG=$DR/config
  for driver in overlay2 vfs; do
    say "starting dockerd (storage driver $driver, no iptables, no bridge; log $LOG/dockerd.log)"
    dockerd --data-root=/var/lib/docker --exec-root="$DR/exec" --pidfile="$DR/docker.pid" -H "$DOCKER_HOST" \
      --storage-driver=$driver --iptables=false --ip6tables=false --bridge=none --cgroup-parent=/sw-test-docker \
      </dev/null >>"$LOG/dockerd.log" 2>&1 &
    STARTED_DOCKERD=$!
    for _ in $(seq 1 40); do
      T=5 D info >/dev/null 2>&1 && break
      kill -0 "$STARTED_DOCKERD" 2>/dev/null || break
      sleep 0.5
    done
    T=5 D info >/dev/null 2>&1 && break
    kill -TERM "$STARTED_DOCKERD" 2>/dev/null; sleep 2; STARTED_DOCKERD=
  done
  [ -n "$STARTED_DOCKERD" ] || die "dockerd did not start: $(tail -5 "$LOG/dockerd.log")"
fi
pass dockerd "$(D version --format 'server {{.Server.Version}}'), storage $(D info --format '{{.Driver}}')${STARTED_DOCKERD:+, started here as pid $STARTED_DOCKERD}"

# ---- the base root and image --------------------------------------------------------------------------------------
base_root
stamp=$(stat -c %Y "$BASE/.sw-complete")
if [ "$(D image inspect --format '{{index .Config.Labels "sw.base-stamp"}}' "$BASE_IMAGE" 2>/dev/null)" != "$stamp" ]; then
  say "docker import $BASE -> $BASE_IMAGE"
  # PIP_BREAK_SYSTEM_PACKAGES: Debian's pip refuses a system-wide install (PEP 668); python:3.11-slim's does not
  tar -C "$BASE" --exclude=./.sw-complete --exclude='./var/cache/apt/archives/*.deb' --exclude='./var/cache/apt/*.bin' \
      --exclude='./var/lib/apt/lists/*' -c . \
    | T=300 D import -c "LABEL sw.base-stamp=$stamp" \
        -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 PIP_BREAK_SYSTEM_PACKAGES=1' \
        -c 'CMD ["python3"]' - "$BASE_IMAGE" >/dev/null || die "docker import failed"
fi
pass base-image "$BASE_IMAGE: $(D run --rm --network none "$BASE_IMAGE" python3 -c 'import sys; print("Python", sys.version.split()[0])')"

# ---- the project's image, FROM changed and nothing else --------------------------------------------------------------
rm -rf "$W"; mkdir -p "$W"
sed -E "s|^FROM python:3\.11-slim\b|FROM $BASE_IMAGE|" "$CHECKOUT/Dockerfile" >"$W/Dockerfile.local"
changed=$(diff "$CHECKOUT/Dockerfile" "$W/Dockerfile.local" | grep -c '^>')
[ "$changed" = 1 ] || fail dockerfile-from "expected one FROM python:3.11-slim line, changed $changed lines"
say "docker build -f $W/Dockerfile.local $CHECKOUT (log $LOG/docker-build.log)"
T0=$(ms)
if T=600 D build --network host ${NO_CACHE:+--no-cache} -f "$W/Dockerfile.local" -t "$IMAGE" "$CHECKOUT" >"$LOG/docker-build.log" 2>&1; then
  pass build "$(( ($(ms) - T0) / 1000 ))s; only change: $(diff "$CHECKOUT/Dockerfile" "$W/Dockerfile.local" | grep '^>' | sed 's/^> //'); $(D image inspect --format '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}')"
else
  fail build "$(grep -vE '^ ---> |^Removing intermediate' "$LOG/docker-build.log" | tail -8 | tr '\n' ';')"; exit 1
fi

cfg=$(D image inspect --format '{{.Config.User}}|{{json .Config.Entrypoint}}|{{json .Config.Cmd}}|{{json .Config.Healthcheck.Test}}|{{json .Config.Volumes}}|{{.Config.StopSignal}}' "$IMAGE")
case "$cfg" in
  '10001:10001|["studio-watch"]|["run","-c","/config/config.yaml"]|["CMD","studio-watch","health","-c","/config/config.yaml"]|{"/var/lib/studio-watch":{}}|SIGTERM')
    pass image-config "$cfg" ;;
  *) fail image-config "$cfg" ;;
esac
idout=$(D run --rm --network none --entrypoint sh "$IMAGE" -c 'id; getent group 10001 || echo "no group 10001"; getent passwd studio-watch; echo "config=$STUDIO_WATCH_CONFIG"')
case "$idout" in
  *"no group 10001"*) fail image-group-10001 "USER 10001:10001 names a gid that has no group: $(echo "$idout" | tr '\n' ';')" ;;
  *) pass image-group-10001 "$(echo "$idout" | tr '\n' ';')" ;;
esac
case "$idout" in
  *"config=/config/config.yaml"*) pass image-config-env "STUDIO_WATCH_CONFIG=/config/config.yaml" ;;
  *) fail image-config-env "STUDIO_WATCH_CONFIG not set in the image: $(echo "$idout" | tail -1)" ;;
esac
D run --rm --network none "$IMAGE" run -c /config/none.yaml >/dev/null 2>&1; rc=$?
[ $rc = 2 ] && pass bad-config-exit-2 "run with a missing config exits 2" || fail bad-config-exit-2 "exit $rc"

# ---- run: sandbox on loopback, the daemon with a bind-mounted drop folder, a state volume, the token as a file ----------
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
PORT=$(free_port)
MPORT=$(free_port)
mkdir -p "$W/drop/in" "$W/drop/done"
chown -R 10001:10001 "$W/drop"
printf '%s' sandbox-token >"$W/token"; chown 10001:10001 "$W/token"; chmod 600 "$W/token"
cat >"$W/config.yaml" <<EOF
studio:
  url: http://127.0.0.1:$PORT
  token_file: /run/secrets/studio_token
state_db: /var/lib/studio-watch/state.db
rescan_seconds: 30
defaults:
  settle_seconds: 2
folders:
  - path: /recordings/in
    collection_id: 2
    after_upload: move
    move_to: /recordings/done
EOF
chmod 644 "$W/config.yaml"
MOUNTS=(-v "$W/drop:/recordings" -v "$P-state:/var/lib/studio-watch" -v "$W/config.yaml:/config/config.yaml:ro"
        -v "$W/token:/run/secrets/studio_token:ro")
run_daemon() {  # [extra docker run options]: the Dockerfile header's `docker run`, on the host network
  D run -d --name "$P-daemon" --network host "$@" "${MOUNTS[@]}" "$IMAGE" >/dev/null
}
media() {  # completed media with this title in the sandbox
  curl -s --max-time 5 "http://127.0.0.1:$PORT/_sandbox/state" \
    | python3 -c "import json,sys; print(sum(1 for m in json.load(sys.stdin)['media'] if m.get('title') == '$1' and m.get('state') == 'completed'))" 2>/dev/null
}
wait_for() { local end=$((SECONDS + $1)); while [ $SECONDS -lt $end ]; do eval "$2" >/dev/null 2>&1 && return 0; sleep 0.5; done; return 1; }
drop() {  # NAME BYTES: written under a temporary name as uid 10001, then renamed
  head -c "$2" /dev/urandom >"$W/drop/in/.$1.part" && chown 10001:10001 "$W/drop/in/.$1.part" && mv "$W/drop/in/.$1.part" "$W/drop/in/$1"
}
jobs_state() {  # the job state of a file, read by a one-off container on the same volume
  D run --rm --network none "${MOUNTS[@]}" "$IMAGE" jobs -c /config/config.yaml 2>/dev/null | awk -v f="$1" '$0 ~ f {print $2}'
}

D run -d --name "$P-sandbox" --network host --no-healthcheck "$IMAGE" \
  sandbox --host 127.0.0.1 --port "$PORT" --put-bytes-per-second 2000000 >/dev/null
wait_for 20 "curl -sf --max-time 1 http://127.0.0.1:$PORT/_sandbox/state" || { fail sandbox "$(D logs "$P-sandbox" 2>&1 | tail -3)"; exit 1; }
run_daemon || { fail run "docker run failed"; exit 1; }
T0=$SECONDS

drop talk1.mp4 500000
if wait_for 30 "[ -f '$W/drop/done/talk1.mp4' ] && [ \"\$(media talk1)\" = 1 ]"; then
  pass upload-and-move "talk1.mp4: 1 media in the sandbox, moved to /recordings/done"
else
  fail upload-and-move "$(D logs --tail 5 "$P-daemon" 2>&1 | tr '\n' ';')"
fi
top=$(D top "$P-daemon" -o pid,uid,args | tail -n +2 | awk '{$1=""; print substr($0, 2)}')
[[ "$top" == 10001\ * ]] && pass non-root "uid $top" || fail non-root "$top"
if wait_for 70 "[ \"\$($DOCKER inspect --format '{{.State.Health.Status}}' $P-daemon)\" = healthy ]"; then
  pass healthcheck "healthy $((SECONDS - T0))s after start (HEALTHCHECK interval 30s, lock variant)"
else
  fail healthcheck "$(D inspect --format '{{.State.Health.Status}} {{json .State.Health.Log}}' "$P-daemon" | cut -c1-300)"
fi

# docker stop with an upload in flight: exit 0, the job resumes on the next start
drop long.mp4 20000000   # 10 s at the sandbox's 2 MB/s
wait_for 20 "$DOCKER logs $P-daemon 2>&1 | grep -q '\"path\": \"/recordings/in/long.mp4\", \"event\": \"upload_url_issued\"'"
sleep 3
T0=$(ms); T=60 D stop -t 45 "$P-daemon" >/dev/null; dt=$(($(ms) - T0))
ec=$(D inspect --format '{{.State.ExitCode}}' "$P-daemon")
js=$(jobs_state long.mp4)
[ "$ec" = 0 ] && pass stop-exit-0 "docker stop -t 45 during a PUT: exit $ec after ${dt} ms, job left at ${js:-?}" \
  || fail stop-exit-0 "exit $ec after ${dt} ms: $(D logs --tail 4 "$P-daemon" 2>&1 | tr '\n' ';')"
D start "$P-daemon" >/dev/null
if wait_for 40 "[ -f '$W/drop/done/long.mp4' ] && [ \"\$(media long)\" = 1 ]"; then
  pass resume-after-stop "long.mp4 resumed from ${js:-?} and completed once"
else
  fail resume-after-stop "$(D logs --tail 5 "$P-daemon" 2>&1 | tr '\n' ';')"
fi

# a replaced container on the same state volume (now with compose.example.yaml's hardening): nothing uploaded
# twice, new files still go
D rm -f -v "$P-daemon" >/dev/null
run_daemon --read-only --tmpfs /tmp --cap-drop ALL --security-opt no-new-privileges
drop talk2.mp4 300000
if wait_for 30 "[ \"\$(media talk2)\" = 1 ]" && [ "$(media talk1)" = 1 ] && [ "$(media long)" = 1 ]; then
  pass replaced-container "new container (--read-only, --cap-drop ALL, no-new-privileges), same volume: talk2 uploaded, talk1/long not again"
else
  fail replaced-container "talk1=$(media talk1) long=$(media long) talk2=$(media talk2)"
fi
T0=$(ms); T=30 D stop "$P-daemon" >/dev/null; dt=$(($(ms) - T0))
ec=$(D inspect --format '{{.State.ExitCode}}' "$P-daemon")
[ "$ec" = 0 ] && pass stop-default-timeout "docker stop (10 s default): exit 0 after ${dt} ms" || fail stop-default-timeout "exit $ec"
D logs "$P-daemon" >"$LOG/daemon-container.log" 2>&1
bad=$(grep -vc '^{' "$LOG/daemon-container.log")
[ "$bad" = 0 ] && pass logs-json "$(wc -l <"$LOG/daemon-container.log") log lines, all JSON" || fail logs-json "$bad non-JSON lines"

# ---- compose.example.yaml, adapted minimally -----------------------------------------------------------------------------
if [ "${COMPOSE:-1}" != 0 ]; then
  if docker compose version >/dev/null 2>&1; then COMPOSE_CMD=(docker compose); flavour=v2
  elif command -v docker-compose >/dev/null; then COMPOSE_CMD=(docker-compose); flavour=$(docker-compose version --short 2>/dev/null)
  fi
fi
if [ ${#COMPOSE_CMD[@]} -gt 0 ]; then
  mkdir -p "$W/compose"; cd "$W/compose" || exit 1
  printf '%s' sandbox-token >studio_token; chown 10001 studio_token; chmod 600 studio_token
  # What changes, and why: no registry (busybox, build: . with python:3.11-slim) -> local images; the sandbox is on
  # the host's loopback -> network_mode: host and no ports:; an http:// Studio on loopback, collection 2 of the
  # sandbox, metrics on loopback; compose v1 (Debian's 1.29) has no `configs: content:` and ignores configs: outside
  # swarm -> the same config as a file, bind-mounted.
  # What changes, and why: no registry (busybox, build: . with python:3.11-slim) -> local images; the sandbox is on
  # the host's loopback -> network_mode: host and no ports:; in the config file beside it: an http:// Studio on
  # loopback, collection 2 of the sandbox, metrics on loopback, a shorter settle.
  PORT=$PORT MPORT=$MPORT IMAGE=$IMAGE BASE_IMAGE=$BASE_IMAGE python3 - "$CHECKOUT" <<'PY'
import os, re, sys
src = open(os.path.join(sys.argv[1], "compose.example.yaml")).read()
s = src.replace("image: busybox:1.36", "image: " + os.environ["BASE_IMAGE"])
s = re.sub(r"build: \.[^\n]*", "image: %s\n    network_mode: host" % os.environ["IMAGE"], s, count=1)
s = re.sub(r"    ports:\n      - \"127\.0\.0\.1:9464:9464\"[^\n]*\n", "", s)
assert "./compose.studio-watch.yaml:/config/config.yaml:ro" in s, "the config is not a bind-mounted file"
open("compose.yaml", "w").write(s)
cfg = open(os.path.join(sys.argv[1], "compose.studio-watch.yaml")).read()
cfg = cfg.replace("url: https://myschool.instructuremedia.com", "url: http://127.0.0.1:" + os.environ["PORT"])
cfg = cfg.replace("listen: 0.0.0.0:9464", "listen: 127.0.0.1:" + os.environ["MPORT"])
cfg = cfg.replace("collection_id: 1234", "collection_id: 2").replace("settle_seconds: 30", "settle_seconds: 5")
open("compose.studio-watch.yaml", "w").write(cfg)
PY
  chmod 644 compose.studio-watch.yaml   # as the example's header says
  diff -u "$CHECKOUT/compose.example.yaml" compose.yaml >"$LOG/compose.diff"
  C() { timeout "${T:-120}" "${COMPOSE_CMD[@]}" -p "$P-compose" -f compose.yaml "$@"; }
  if T=60 C config -q >"$LOG/compose-config.log" 2>&1 && T=180 C up -d >"$LOG/compose-up.log" 2>&1; then
    pass compose-up "${COMPOSE_CMD[*]} $flavour; changes in $LOG/compose.diff: $(grep -c '^[-+][^-+]' "$LOG/compose.diff") lines"
    sw=$(C ps -q studio-watch); rec=$(C ps -q recorder)
    if wait_for 40 "[ \"\$(curl -s --max-time 3 http://127.0.0.1:$PORT/_sandbox/state | grep -o '\"title\": \"lecture-' | wc -l)\" -ge 1 ]"; then
      pass compose-upload "the recorder's file went to the sandbox"
    else
      fail compose-upload "$(C logs --tail 5 studio-watch 2>&1 | tr '\n' ';')"
    fi
    if wait_for 70 "[ \"\$($DOCKER inspect --format '{{.State.Health.Status}}' $sw)\" = healthy ]"; then
      pass compose-health "healthy (/healthz on 127.0.0.1:$MPORT: $(curl -s --max-time 3 http://127.0.0.1:$MPORT/healthz | tr -d '\n'))"
    else
      fail compose-health "$(D inspect --format '{{.State.Health.Status}} {{json .State.Health.Log}}' "$sw" | cut -c1-300)"
    fi
    # the command compose.example.yaml's header gives, as written; then with the config named
    st=$(C exec -T studio-watch studio-watch status 2>&1 | head -3 | tr '\n' ';')
    [[ "$st" == *"daemon:  running"* ]] && pass compose-exec-status-as-doc "$st" \
      || fail compose-exec-status-as-doc "'docker compose exec studio-watch studio-watch status': $st"
    st=$(C exec -T studio-watch studio-watch status -c /config/config.yaml 2>&1 | head -3 | tr '\n' ';')
    ro=$(C exec -T studio-watch sh -c 'touch /x 2>&1; grep CapEff /proc/1/status; stat -c "token %a uid %u" /run/secrets/studio_token' 2>&1 | tr '\n' ';')
    [[ "$st" == *"daemon:  running"* ]] && pass compose-exec-status-c "$st | $ro" || fail compose-exec-status-c "$st | $ro"
    T0=$(ms); T=90 C stop >/dev/null 2>&1; dt=$(($(ms) - T0))
    ecs=$(D inspect --format '{{.State.ExitCode}}' "$sw"); ecr=$(D inspect --format '{{.State.ExitCode}}' "$rec")
    [ "$ecs" = 0 ] && pass compose-stop-studio-watch "exit 0 (whole compose stop: ${dt} ms)" || fail compose-stop-studio-watch "exit $ecs"
    [ "$ecr" = 0 ] && pass compose-stop-recorder "exit 0" \
      || fail compose-stop-recorder "the example's recorder (sh as PID 1, no TERM trap) ignores SIGTERM: exit $ecr after ${dt} ms"
    T=60 C down -v >/dev/null 2>&1
  else
    fail compose-up "$(cat "$LOG/compose-config.log" "$LOG/compose-up.log" | tail -5 | tr '\n' ';')"
  fi
  cd "$CACHE" || true
else
  echo "SKIP compose                       no docker compose / docker-compose"
fi
exit 0
