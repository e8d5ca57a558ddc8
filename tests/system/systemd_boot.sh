#!/usr/bin/env bash
# systemd_boot.sh CACHE CHECKOUT: the project's system test of its systemd units (run by test_system.py).
#
# Adapted from ../shared/system/systemd-boot.sh (the team's recipe): the same machine, plus what this project
# promises on top: `systemctl reload` synchronous and truthful (ExecReload= studio-watch reload), journal
# priorities (`journalctl -p err` finds the errors), `status` exit codes, the watchdog shortened to 10 s.
#
# Boots a real systemd (PID 1 in systemd-nspawn) on a Debian 12 machine whose own PID 1 is not systemd, installs
# studio-watch from CHECKOUT in it the way docs/operations.md says (system user, venv in /opt/studio-watch,
# /etc/studio-watch/config.yaml 0640 root:studio-watch, token 0600 root:root handed over by LoadCredential=,
# ACL on /srv/capture, the shipped units), points it at a `studio-watch sandbox` unit on loopback and checks the
# units for real. Prints one PASS/FAIL line per check, then powers the machine off and cleans up.
#
#   CACHE     a folder for what is prepared once: the debootstrapped root (base-root/, then systemd-root/);
#             each run works on a fresh copy of systemd-root (run-root/), removed at the end (KEEP=1 keeps it)
#   CHECKOUT  a studio-watch checkout; its working tree (tracked + untracked-not-ignored files) is installed
#
# Env: MIRROR (default: the first Debian URI apt uses here), WATCHDOG_SEC (default: the unit's own 60 s; set e.g.
# 10 to shorten the SIGSTOP check with a drop-in), MAX_SECONDS (whole-run limit, default 900), KEEP=1.
# Needs root, apt (Debian's packages) and PyPI through pip. Exit status: the number of FAILs (0 = all passed).
set -uo pipefail

CACHE=${1:?usage: systemd-boot.sh CACHE CHECKOUT}
CHECKOUT=${2:?usage: systemd-boot.sh CACHE CHECKOUT}
CACHE=$(mkdir -p "$CACHE" && cd "$CACHE" && pwd)
CHECKOUT=$(cd "$CHECKOUT" && pwd)
MAX_SECONDS=${MAX_SECONDS:-900}
WATCHDOG_SEC=${WATCHDOG_SEC:-10}
MACHINE=sw-test
CG=sw-test-nspawn-$$
RUN_ROOT=$CACHE/run-root
LOG=$CACHE/logs
mkdir -p "$LOG"
T_START=$SECONDS
FAILS=0
PASSES=0
NSPAWN_PID=

. "$(dirname "${BASH_SOURCE[0]}")/common.sh"   # say pass fail die start_timer host_packages base_root

[ "$(id -u)" = 0 ] || die "run as root"

# ---- the whole run is time-bounded ------------------------------------------------------------------------------
start_timer systemd_boot.sh

cgroup_hierarchies() {  # the hierarchies nspawn cares about: hybrid (name=systemd + unified) or pure v2
  if [ -f /sys/fs/cgroup/cgroup.controllers ]; then echo /sys/fs/cgroup; return; fi
  for h in /sys/fs/cgroup/systemd /sys/fs/cgroup/unified; do [ -d "$h" ] && echo "$h"; done
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ -n "$NSPAWN_PID" ] && kill -0 "$NSPAWN_PID" 2>/dev/null; then
    say "cleanup: powering the machine off"
    ct timeout 20 systemctl poweroff >/dev/null 2>&1
    for _ in $(seq 1 30); do kill -0 "$NSPAWN_PID" 2>/dev/null || break; sleep 1; done
    if kill -0 "$NSPAWN_PID" 2>/dev/null; then
      local n
      n=$(nspawn_real)
      say "cleanup: nspawn ${n:-?} still there, SIGTERM then SIGKILL"
      [ -n "$n" ] && { kill -TERM "$n" 2>/dev/null; sleep 5; kill -KILL "$n" 2>/dev/null; }
      kill -TERM "$NSPAWN_PID" 2>/dev/null
    fi
  fi
  for h in $(cgroup_hierarchies); do  # the cgroups this script created (empty once the machine is gone)
    [ -d "$h/$CG" ] && find "$h/$CG" -depth -type d -exec rmdir {} \; 2>/dev/null
  done
  if [ "${KEEP:-0}" != 1 ]; then rm -rf "$RUN_ROOT"; fi
  finish "$rc"
}
trap cleanup EXIT
trap 'exit 101' INT TERM

# ---- host packages ---------------------------------------------------------------------------------------------
need_pkgs=()
for p in systemd-container debootstrap; do dpkg -s "$p" >/dev/null 2>&1 || need_pkgs+=("$p"); done
host_packages apt-install "${need_pkgs[@]}"

# nspawn without machined and without a systemd PID 1 here: --register=no --keep-unit; run from a cgroup of its own
# and in a private mount namespace with a tmpfs on /run/systemd (this host's /run is on disk, and nspawn refuses to
# clean up its propagation folder there). The container shares the host network: the sandbox is on loopback.
NSP=$CACHE/bin/nsp   # a script, so that `timeout` can run it; it becomes systemd-nspawn (exec all the way)
mkdir -p "$CACHE/bin"
{
  echo '#!/bin/bash'
  echo "# only this process (which becomes systemd-nspawn) moves into the cgroup $CG"
  echo "for h in $(cgroup_hierarchies | tr '\n' ' '); do mkdir -p \"\$h/$CG\" && echo \$\$ > \"\$h/$CG/cgroup.procs\"; done"
  echo 'exec unshare --mount --propagation private bash -c '\''mount -t tmpfs -o mode=0755 tmpfs /run/systemd && exec systemd-nspawn -q --register=no --keep-unit "$@"'\'' nsp "$@"'
} >"$NSP"
chmod +x "$NSP"

base_root

# ---- the systemd root: base + systemd, dbus, acl (setfacl, docs step 4), procps --------------------------------
SYSROOT=$CACHE/systemd-root
if [ ! -f "$SYSROOT/.sw-complete" ]; then
  say "preparing $SYSROOT (systemd, dbus, acl, procps)"
  rm -rf "$SYSROOT"
  cp -a "$BASE" "$SYSROOT" && rm -f "$SYSROOT/.sw-complete"
  timeout 300 "$NSP" -D "$SYSROOT" --pipe /bin/sh -c 'export DEBIAN_FRONTEND=noninteractive; apt-get update -q &&
      apt-get install -y -q --no-install-recommends systemd systemd-sysv dbus acl procps && apt-get clean' \
    >"$LOG/systemd-root-apt.log" 2>&1 || die "apt-get in the root failed: $(tail -3 "$LOG/systemd-root-apt.log")"
  touch "$SYSROOT/.sw-complete"
fi

# ---- this run's machine: a fresh copy, the checkout, the venv ---------------------------------------------------
say "fresh machine root $RUN_ROOT"
rm -rf "$RUN_ROOT"
cp -a "$SYSROOT" "$RUN_ROOT" || die "copy of $SYSROOT failed"
# no console to ask passwords on in the container: these two fail there and make the boot "degraded"
for u in systemd-ask-password-console.path systemd-ask-password-wall.path; do
  ln -sf /dev/null "$RUN_ROOT/etc/systemd/system/$u"
done
mkdir -p "$RUN_ROOT/src/sw"
if git -C "$CHECKOUT" rev-parse --git-dir >/dev/null 2>&1; then
  (cd "$CHECKOUT" && git ls-files -z -co --exclude-standard | tar --null -T - -cf -) | tar -C "$RUN_ROOT/src/sw" -xf -
else
  cp -a "$CHECKOUT/." "$RUN_ROOT/src/sw/"
fi
say "pip install the checkout into /opt/studio-watch/venv (docs step 2)"
timeout 300 "$NSP" -D "$RUN_ROOT" --pipe /bin/sh -c 'python3 -m venv /opt/studio-watch/venv &&
    /opt/studio-watch/venv/bin/pip install -q --disable-pip-version-check /src/sw' >"$LOG/pip.log" 2>&1 \
  && pass install-venv "pip install /src/sw into /opt/studio-watch/venv" \
  || die "pip install failed: $(tail -5 "$LOG/pip.log")"

# ---- boot -------------------------------------------------------------------------------------------------------
boot() {  # sets NSPAWN_PID (our background job) and BOOT_STATE
  "$NSP" -b -M "$MACHINE" -D "$RUN_ROOT" --console=read-only </dev/null >>"$LOG/boot.log" 2>&1 &
  NSPAWN_PID=$!
  local i
  BOOT_STATE=
  for i in $(seq 1 60); do
    sleep 1
    BOOT_STATE=$(ct systemctl is-system-running 2>/dev/null)
    case "$BOOT_STATE" in running|degraded) break ;; esac
  done
}
nspawn_real() {  # the systemd-nspawn process under our background job
  local p=$NSPAWN_PID i
  for i in 1 2 3 4; do
    [ -n "$p" ] || return 1
    [ "$(cat /proc/"$p"/comm 2>/dev/null)" = systemd-nspawn ] && { echo "$p"; return 0; }
    p=$(ps -o pid= --ppid "$p" | head -1 | tr -d ' ')
  done
  return 1
}
ct() {  # a command inside the booted machine: nsenter into the namespaces of its PID 1 (nspawn's child)
  local n l
  n=$(nspawn_real) || return 125
  l=$(ps -o pid= --ppid "$n" | head -1 | tr -d ' ')
  [ -n "$l" ] || return 125
  nsenter --target "$l" --mount --uts --ipc --net --pid --cgroup --root --wd \
    env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 SYSTEMD_PAGER= SYSTEMD_COLORS=0 \
    "$@"
}
cts() { ct timeout "${T:-60}" bash -c "$1"; }  # a shell snippet inside the machine, time-bounded

: >"$LOG/boot.log"
T0=$SECONDS
boot
state=$BOOT_STATE
case "$state" in
  running) pass boot "systemd is PID 1 in the machine, is-system-running=running after $((SECONDS - T0))s" ;;
  degraded) fail boot "is-system-running=degraded: $(cts 'systemctl --failed --no-legend' | tr '\n' ';')" ;;
  *) fail boot "no running systemd after 60s: $(tail -5 "$LOG/boot.log" | tr '\n' ';')"; exit 1 ;;
esac
[ "$(cts 'cat /proc/1/comm')" = systemd ] || fail pid1 "PID 1 in the machine is not systemd"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
PORT=$(free_port)
MPORT=$(free_port)

# ---- install as docs/operations.md says ------------------------------------------------------------------------
cat >"$RUN_ROOT/root/install.sh" <<EOF
set -euo pipefail
# the sandbox Studio, a plain unit on loopback; PUTs throttled to 2 MB/s so an upload can be caught in flight
cat > /etc/systemd/system/studio-sandbox.service <<UNIT
[Unit]
Description=studio-watch sandbox (local Canvas Studio emulator, loopback only)
[Service]
ExecStart=/opt/studio-watch/venv/bin/studio-watch sandbox --host 127.0.0.1 --port $PORT --put-bytes-per-second 2000000
DynamicUser=yes
[Install]
WantedBy=multi-user.target
UNIT
# 1. the user
useradd --system --user-group --home-dir /var/lib/studio-watch --shell /usr/sbin/nologin studio-watch
# capture folders (ReadWritePaths=/srv/capture must exist)
install -d -m 0755 /srv/capture /srv/capture/room-101 /srv/capture/room-101-uploaded /srv/capture/room-102 \
  /srv/capture/room-103 /srv/ro-room
# 3. config (0640 root:studio-watch) and token (0600 root:root)
install -d -m 0755 /etc/studio-watch
cat > /tmp/config.yaml <<YAML
studio:
  url: http://127.0.0.1:$PORT
  token_file: /run/credentials/studio-watch.service/token
state_db: /var/lib/studio-watch/state.db
rescan_seconds: 30
defaults:
  settle_seconds: 2
folders:
  - path: /srv/capture/room-101
    collection_id: 2
    after_upload: move
    move_to: /srv/capture/room-101-uploaded
  - path: /srv/ro-room
    collection_id: 1
    after_upload: keep
YAML
install -m 0640 -o root -g studio-watch /tmp/config.yaml /etc/studio-watch/config.yaml
(umask 077; printf '%s' sandbox-token > /etc/studio-watch/token)
# the template instance room102: its own config, token, state dir; \${CREDENTIALS_DIRECTORY} and /healthz
cat > /tmp/room102.yaml <<YAML
studio:
  url: http://127.0.0.1:$PORT
  token_file: \\\${CREDENTIALS_DIRECTORY}/token
state_db: /var/lib/studio-watch/room102/state.db
metrics:
  listen: 127.0.0.1:$MPORT
defaults:
  settle_seconds: 2
folders:
  - path: /srv/capture/room-102
    collection_id: 3
    after_upload: delete
YAML
install -m 0640 -o root -g studio-watch /tmp/room102.yaml /etc/studio-watch/room102.yaml
(umask 077; printf '%s' sandbox-token > /etc/studio-watch/room102.token)
# 4. ACLs: read-write on the capture tree, read-only on the keep folder outside ReadWritePaths=
setfacl -R -m u:studio-watch:rwX -m d:u:studio-watch:rwX /srv/capture
setfacl -m u:studio-watch:rX /srv/ro-room
# 5. the units
install -m 0644 /src/sw/systemd/studio-watch.service /src/sw/systemd/studio-watch@.service /etc/systemd/system/
systemctl daemon-reload
systemctl start studio-sandbox.service
for i in \$(seq 1 50); do python3 -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$PORT/_sandbox/state', timeout=1)" 2>/dev/null && break; sleep 0.2; done
EOF
if cts 'bash /root/install.sh' >"$LOG/install.log" 2>&1; then
  pass install-docs-steps "useradd, config 0640, token 0600, setfacl, units, sandbox on 127.0.0.1:$PORT"
else
  fail install-docs-steps "$(tail -5 "$LOG/install.log" | tr '\n' ';')"; exit 1
fi

# helpers run inside the machine
cat >"$RUN_ROOT/root/lib.py" <<EOF
import json, sys, urllib.request
def state():
    return json.load(urllib.request.urlopen("http://127.0.0.1:$PORT/_sandbox/state", timeout=5))
if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "media":   # completed media with this title: count
        t = sys.argv[2]
        print(sum(1 for m in state()["media"] if m.get("title") == t and m.get("state") == "completed"))
    elif cmd == "violations":
        print(len(state()["violations"]))
    elif cmd == "journal":   # every studio-watch line JSON? error events at priority <= 3?
        n = ok = 0; errs = []; bad = []
        for line in sys.stdin:
            e = json.loads(line)
            if not str(e.get("SYSLOG_IDENTIFIER", "")).startswith("studio-watch"):
                continue
            n += 1
            try:
                d = json.loads(e["MESSAGE"]); ok += 1
            except Exception:
                bad.append(str(e.get("MESSAGE"))[:120]); continue
            if d.get("level") in ("error", "critical"):
                errs.append((d.get("event"), e.get("PRIORITY")))
        print(json.dumps({"lines": n, "json": ok, "non_json": bad[:3], "errors": errs}))
EOF
media() { cts "python3 /root/lib.py media '$1'"; }
wait_for() {  # wait_for SECONDS 'shell condition inside the machine'
  local end=$((SECONDS + $1))
  while [ $SECONDS -lt $end ]; do cts "$2" >/dev/null 2>&1 && return 0; sleep 0.5; done
  return 1
}
drop() {  # drop DIR NAME BYTES: written under a temporary name, then renamed (as a recorder does)
  cts "head -c $3 /dev/urandom > '$1/.$2.part' && mv '$1/.$2.part' '$1/$2'"
}
mainpid() { cts "systemctl show -p MainPID --value ${1:-studio-watch}"; }
prop() { cts "systemctl show -p $2 --value $1"; }
journal_since() { cts "journalctl -u ${2:-studio-watch} -o cat --no-pager --since '$1'"; }
now() { cts 'date "+%Y-%m-%d %H:%M:%S"'; }

# ---- 1. start: Type=notify reaches active -----------------------------------------------------------------------
T=150 cts 'systemctl start studio-watch' >"$LOG/start.log" 2>&1
if [ "$(prop studio-watch ActiveState)/$(prop studio-watch SubState)" = active/running ]; then
  pass start-notify-active "systemctl start returned after READY=1 ($(journal_since '-2min' | grep -c daemon_ready) daemon_ready)"
else
  fail start-notify-active "$(prop studio-watch ActiveState)/$(prop studio-watch SubState): $(cts 'journalctl -u studio-watch -n 15 --no-pager' | tr '\n' ';')"
  exit 1
fi

# ---- 2. STATUS= in systemctl status ------------------------------------------------------------------------------
st=$(cts 'systemctl status studio-watch --no-pager' | grep 'Status:')
[[ "$st" == *'Status: "'*completed* ]] && pass status-text "${st## }" || fail status-text "no Status: line: $st"

# ---- 3. the hardening is in force on the running daemon ----------------------------------------------------------
P=$(mainpid)
h=$(cts "grep -E '^(Uid|CapBnd|NoNewPrivs|Seccomp):' /proc/$P/status | tr -s '\t ' ' ' | tr '\n' ' '; echo; wc -l < /proc/$P/uid_map;
         awk '\$5==\"/\"{print \$6}' /proc/$P/mountinfo | tail -1; grep ' /proc ' /proc/$P/mountinfo | tail -1 | sed 's/.* - //';
         stat -c '%a %U' /run/credentials/studio-watch.service/token")
mapfile -t hl <<<"$h"
if [[ "${hl[0]}" == *"CapBnd: 0000000000000000"* && "${hl[0]}" == *"NoNewPrivs: 1"* && "${hl[0]}" == *"Seccomp: 2"* \
      && "${hl[1]}" == 2 && "${hl[2]}" == ro,* && "${hl[3]}" == *hidepid=invisible*subset=pid* ]]; then
  pass hardening-in-force "${hl[0]}| uid_map lines=${hl[1]} (PrivateUsers) | / ${hl[2]%%,*} | proc ${hl[3]##* }"
else
  fail hardening-in-force "$(printf '%s | ' "${hl[@]}")"
fi
case "${hl[4]}" in
  [0-7]00\ *) pass load-credential "/run/credentials/studio-watch.service/token: mode/owner ${hl[4]}, read by the daemon" ;;
  *) fail load-credential "token: ${hl[4]:-missing}" ;;
esac

# ---- 4. a dropped file is uploaded and moved ----------------------------------------------------------------------
drop /srv/capture/room-101 lecture1.mp4 500000
if wait_for 30 '[ -f /srv/capture/room-101-uploaded/lecture1.mp4 ]' && [ "$(media lecture1)" = 1 ]; then
  pass upload-and-move "lecture1.mp4: 1 media in the sandbox, moved to room-101-uploaded"
else
  fail upload-and-move "$(journal_since '-1min' | tail -5 | tr '\n' ';')"
fi
touch_old='touch -d "-1 min"'
cts "head -c 300000 /dev/urandom > /srv/ro-room/.k.part && mv /srv/ro-room/.k.part /srv/ro-room/kept.mp4 && $touch_old /srv/ro-room/kept.mp4"
if wait_for 30 "[ \"\$(python3 /root/lib.py media kept)\" = 1 ]" && cts '[ -f /srv/ro-room/kept.mp4 ]'; then
  pass keep-folder-outside-rw "upload from /srv/ro-room (not in ReadWritePaths=, after_upload: keep) works"
else
  fail keep-folder-outside-rw "$(journal_since '-1min' | grep ro-room | tail -3 | tr '\n' ';')"
fi

sc=$(cts "setpriv --reuid=studio-watch --regid=studio-watch --init-groups /opt/studio-watch/venv/bin/studio-watch status -c /etc/studio-watch/config.yaml >/dev/null; echo \$?")
[ "$sc" = 0 ] && pass status-exit-0 "studio-watch status as the service user: exit 0 (nothing needs a person)" || fail status-exit-0 "exit $sc"

# ---- 5. systemd-analyze ---------------------------------------------------------------------------------------------
v=$(cts 'systemd-analyze verify /etc/systemd/system/studio-watch.service studio-watch@room102.service 2>&1')
[ -z "$v" ] && pass analyze-verify "no output" || fail analyze-verify "$(echo "$v" | tr '\n' ';')"
for u in studio-watch.service studio-watch@room102.service; do
  e=$(cts "systemd-analyze security $u --no-pager" | grep -o 'Overall exposure level for .*' )
  lvl=$(echo "$e" | grep -oE '[0-9]+\.[0-9]+' | head -1)
  if [ -n "$lvl" ] && awk "BEGIN{exit !($lvl <= 2.0)}"; then pass "security-$u" "$e"; else fail "security-$u" "$e"; fi
done

# ---- 6. reload (SIGHUP): a folder added; then a bad config rejected ------------------------------------------------
P=$(mainpid); since=$(now)
cts "cat /etc/studio-watch/config.yaml > /tmp/c.yaml && printf '  - path: /srv/capture/room-103\n    collection_id: 3\n    after_upload: delete\n' >> /tmp/c.yaml && install -m 0640 -o root -g studio-watch /tmp/c.yaml /etc/studio-watch/config.yaml"
cts 'systemctl reload studio-watch'; rrc=$?
# synchronous: when systemctl reload has returned, the daemon has applied the config (no waiting here)
if [ $rrc = 0 ] && cts "journalctl -u studio-watch -o cat --since '$since' | grep -q '\"folders\": 3, .*config_reloaded'"; then
  pass reload-synchronous "systemctl reload rc=0 returned after the daemon's config_reloaded (folders=3)"
else
  fail reload-synchronous "rc=$rrc; config_reloaded not yet logged when systemctl reload returned"
fi
if wait_for 10 "journalctl -u studio-watch -o cat --since '$since' | grep -q '\"folders\": 3, .*config_reloaded'"; then
  drop /srv/capture/room-103 r103.mp4 200000
  if wait_for 30 '[ ! -e /srv/capture/room-103/r103.mp4 ]' && [ "$(media r103)" = 1 ] && [ "$(mainpid)" = "$P" ]; then
    pass reload-sighup "systemctl reload rc=$rrc; config_reloaded folders=3; new folder uploads; same pid $P"
  else
    fail reload-sighup "new folder did not upload: $(journal_since "$since" | tail -3 | tr '\n' ';')"
  fi
else
  fail reload-sighup "rc=$rrc, no config_reloaded: $(journal_since "$since" | tail -3 | tr '\n' ';')"
fi
since=$(now)
cts 'cp /etc/studio-watch/config.yaml /root/config.good; echo "bogus_key: 1" >> /etc/studio-watch/config.yaml'
cts 'systemctl reload studio-watch'; rrc=$?
if [ $rrc != 0 ] && wait_for 10 "journalctl -u studio-watch -o cat --since '$since' | grep -q config_reload_rejected" && [ "$(prop studio-watch ActiveState)" = active ]; then
  pass reload-rejects-bad-config "systemctl reload rc=$rrc (not 0), still active, config_reload_rejected logged"
else
  fail reload-rejects-bad-config "$(journal_since "$since" | tail -3 | tr '\n' ';')"
fi
cts 'install -m 0640 -o root -g studio-watch /root/config.good /etc/studio-watch/config.yaml && systemctl reload studio-watch'

# ---- 7. stop during an upload: clean exit, the job resumes on the next start ------------------------------------------
drop /srv/capture/room-101 long.mp4 20000000   # 10 s at the sandbox's 2 MB/s
wait_for 20 "journalctl -u studio-watch -o cat --since '-30s' | grep -q '\"path\": \"/srv/capture/room-101/long.mp4\", \"event\": \"upload_url_issued\"'"
sleep 3
ms() { date +%s%3N; }
T0=$(ms); T=60 cts 'systemctl stop studio-watch'; src=$?; dtms=$(($(ms) - T0)); dt=$((dtms / 1000))
res="$(prop studio-watch Result) status=$(prop studio-watch ExecMainStatus)"
jobstate=$(cts "/opt/studio-watch/venv/bin/studio-watch jobs -c /etc/studio-watch/config.yaml" | awk '/long.mp4/{print $2}')
if [ $src = 0 ] && [ "$res" = "success status=0" ] && [ "$dt" -lt 45 ]; then
  pass stop-clean "systemctl stop during a PUT: rc=0, Result=$res, ${dtms} ms, job left at ${jobstate:-?}"
else
  fail stop-clean "rc=$src Result=$res ${dt}s: $(journal_since '-1min' | tail -4 | tr '\n' ';')"
fi
T=150 cts 'systemctl start studio-watch'
if wait_for 40 '[ -f /srv/capture/room-101-uploaded/long.mp4 ]' && [ "$(media long)" = 1 ]; then
  pass resume-after-stop "long.mp4 resumed from ${jobstate:-?} and completed once"
else
  fail resume-after-stop "$(journal_since '-1min' | tail -4 | tr '\n' ';')"
fi

# ---- 8. watchdog: SIGSTOP the main process; WatchdogSec= kills and restarts it ----------------------------------------
if [ -n "${WATCHDOG_SEC:-}" ]; then
  cts "mkdir -p /etc/systemd/system/studio-watch.service.d && printf '[Service]\nWatchdogSec=$WATCHDOG_SEC\n' > /etc/systemd/system/studio-watch.service.d/watchdog.conf && systemctl daemon-reload && systemctl restart studio-watch"
fi
wd=$(prop studio-watch WatchdogUSec)
P=$(mainpid); n0=$(prop studio-watch NRestarts); since=$(now); T0=$SECONDS
cts "kill -STOP $P"
limit=$(( ${WATCHDOG_SEC:-60} + 40 ))
if wait_for "$limit" "[ \"\$(systemctl show -p NRestarts --value studio-watch)\" -gt $n0 ] && [ \"\$(systemctl show -p SubState --value studio-watch)\" = running ]"; then
  msg=$(cts "journalctl -u studio-watch --no-pager --since '$since'" | grep -oE 'Watchdog timeout \(limit [^)]*\)!|Killing process [0-9]+ .* with signal [A-Z]+' | tr '\n' ' ')
  pass watchdog-restart "WatchdogUSec=$wd; SIGSTOP pid $P -> '$msg' -> running again as pid $(mainpid) after $((SECONDS - T0))s"
else
  fail watchdog-restart "WatchdogUSec=$wd; after ${limit}s: $(cts "journalctl -u studio-watch --no-pager --since '$since'" | grep -v '{"' | tail -5 | tr '\n' ';')"
  cts "kill -CONT $P" 2>/dev/null
fi
if [ -n "${WATCHDOG_SEC:-}" ]; then
  cts 'rm -r /etc/systemd/system/studio-watch.service.d && systemctl daemon-reload && systemctl restart studio-watch'
fi

# ---- 9. SIGKILL: Restart=on-failure ----------------------------------------------------------------------------------
P=$(mainpid); n0=$(prop studio-watch NRestarts)
cts 'systemctl kill -s SIGKILL studio-watch'
if wait_for 20 "[ \"\$(systemctl show -p NRestarts --value studio-watch)\" -gt $n0 ] && [ \"\$(systemctl show -p SubState --value studio-watch)\" = running ]"; then
  pass restart-on-sigkill "pid $P killed, running again as $(mainpid)"
else
  fail restart-on-sigkill "$(prop studio-watch ActiveState)/$(prop studio-watch SubState)"
fi

# ---- 10. the template unit with a second config ------------------------------------------------------------------------
T=150 cts 'systemctl start studio-watch@room102'; trc=$?
drop /srv/capture/room-102 r102.mp4 300000
if [ $trc = 0 ] && wait_for 30 '[ ! -e /srv/capture/room-102/r102.mp4 ]' && [ "$(media r102)" = 1 ] \
   && cts '[ -f /var/lib/studio-watch/room102/state.db ] && [ -f /run/credentials/studio-watch@room102.service/token ]'; then
  pass template-instance "studio-watch@room102: own state dir, credential, \${CREDENTIALS_DIRECTORY}, upload + delete"
else
  fail template-instance "rc=$trc: $(cts 'journalctl -u studio-watch@room102 -n 8 --no-pager' | tr '\n' ';')"
fi
hz=$(cts "python3 -c \"import urllib.request as u; print(u.urlopen('http://127.0.0.1:$MPORT/healthz', timeout=3).status)\"")
hl=$(cts "setpriv --reuid=studio-watch --regid=studio-watch --init-groups /opt/studio-watch/venv/bin/studio-watch health -c /etc/studio-watch/config.yaml; echo \$?")
[ "$hz" = 200 ] && [ "$hl" = 0 ] && pass health "/healthz of room102: $hz; 'studio-watch health' (lock) of the main unit: exit $hl" \
  || fail health "/healthz=$hz, health(lock)=$hl"

# ---- 11. failure modes the docs describe -----------------------------------------------------------------------------------
cts 'cp /etc/studio-watch/room102.yaml /root/room102.good; echo "workers: 0" >> /etc/studio-watch/room102.yaml; systemctl restart studio-watch@room102' >/dev/null 2>&1
sleep 7
r="$(prop studio-watch@room102 Result) status=$(prop studio-watch@room102 ExecMainStatus) restarts=$(prop studio-watch@room102 NRestarts) $(prop studio-watch@room102 ActiveState)"
[ "$r" = "exit-code status=2 restarts=0 failed" ] && pass bad-config-no-restart "$r: $(cts 'journalctl -u studio-watch@room102 -o cat -n 20 --no-pager' | grep -m1 -o 'workers: [^"]*')" \
  || fail bad-config-no-restart "$r"
cts 'install -m 0640 -o root -g studio-watch /root/room102.good /etc/studio-watch/room102.yaml; systemctl reset-failed studio-watch@room102'
since=$(now)
cts 'mkdir -p /etc/systemd/system/studio-watch@room102.service.d && printf "[Service]\nReadWritePaths=/srv/not-there\n" > /etc/systemd/system/studio-watch@room102.service.d/rw.conf && systemctl daemon-reload; systemctl start studio-watch@room102' >/dev/null 2>&1
m=$(cts "journalctl -u studio-watch@room102 --no-pager --since '$since'" | grep -m1 -o 'Failed to set up mount namespacing.*')
[ -n "$m" ] && pass missing-rw-path-fails "$m" || fail missing-rw-path-fails "no 'Failed to set up mount namespacing' line"
cts 'rm -r /etc/systemd/system/studio-watch@room102.service.d; systemctl daemon-reload; systemctl reset-failed studio-watch@room102; systemctl start studio-watch@room102'

# ---- 12. journal: JSON lines (and their priority) --------------------------------------------------------------------------
j=$(cts 'journalctl -u studio-watch -u studio-watch@room102 -o json --no-pager | python3 /root/lib.py journal')
lines=$(echo "$j" | python3 -c 'import json,sys; print(json.load(sys.stdin)["lines"])' 2>/dev/null)
njson=$(echo "$j" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["lines"]-d["json"])' 2>/dev/null)
if [ -n "$lines" ] && [ "$lines" -gt 0 ]; then
  others=$(echo "$j" | python3 -c 'import json,sys; print(json.load(sys.stdin)["non_json"])')
  if [ "$njson" = 0 ]; then pass journal-json "all $lines daemon lines are JSON objects (the fatal config error too)"
  else
    fail journal-json "$njson of $lines daemon lines are not JSON: $others"
  fi
  errs=$(echo "$j" | python3 -c 'import json,sys; e=json.load(sys.stdin)["errors"]; print(len(e), sum(1 for _,p in e if p is not None and int(p) <= 3), e[:3])')
  set -- $errs
  if [ "$1" -gt 0 ] && [ "$2" = "$1" ]; then pass journal-priority "error events at PRIORITY<=3: $errs"
  elif [ "$1" -gt 0 ]; then fail journal-priority "error-level events logged at PRIORITY 6 (info): $errs ('journalctl -p err' misses them)"
  else fail journal-priority "no error-level event to look at: $errs"
  fi
  perr=$(cts 'journalctl -u studio-watch -u studio-watch@room102 -p err -o cat --no-pager' | grep -c '"level": "\(error\|critical\)"')
  pinfo=$(cts 'journalctl -u studio-watch -p err -o cat --no-pager' | grep -c '"level": "info"')
  [ "$perr" -gt 0 ] && [ "$pinfo" = 0 ] && pass journalctl-p-err "journalctl -p err: $perr error/critical lines, $pinfo info lines" \
    || fail journalctl-p-err "journalctl -p err: $perr error/critical lines, $pinfo info lines"
  # the daemon's last word on a bad config is JSON too (bad-config-no-restart above wrote it)
  fat=$(cts 'journalctl -u studio-watch@room102 -p crit -o cat --no-pager' | grep -c '"event": "config_invalid"')
  [ "$fat" -gt 0 ] && pass journal-fatal-json "config_invalid as a JSON line at priority 2 ($fat)" || fail journal-fatal-json "no config_invalid line at -p crit"

else
  fail journal-json "no journal lines: $j"
fi

# ---- 13. enable, reboot: the units come back on their own --------------------------------------------------------------------
cts 'systemctl enable studio-sandbox studio-watch studio-watch@room102' >/dev/null 2>&1
ct timeout 20 systemctl poweroff >/dev/null 2>&1
for _ in $(seq 1 40); do kill -0 "$NSPAWN_PID" 2>/dev/null || break; sleep 1; done
if kill -0 "$NSPAWN_PID" 2>/dev/null; then fail poweroff "machine still up 40s after poweroff"; else
  wait "$NSPAWN_PID"; prc=$?
  pass poweroff "nspawn exited $prc after systemctl poweroff (studio-watch stopped: $(grep -c 'Stopped.*studio-watch' "$LOG/boot.log") lines)"
  NSPAWN_PID=
  boot
  state=$BOOT_STATE
  sleep 6   # past settle_seconds: a file the daemon wrongly took for new would be on its way by now
  a="$(prop studio-watch ActiveState) $(prop studio-watch@room102 ActiveState) $(prop studio-sandbox ActiveState)"
  n=$(cts "python3 -c 'import sys; sys.path.insert(0, \"/root\"); import lib; print(len(lib.state()[\"media\"]))'")
  [ "$a" = "active active active" ] && [ "$n" = 0 ] \
    && pass enabled-after-reboot "$state; studio-watch, studio-watch@room102, sandbox active; the fresh sandbox got $n uploads ($(prop studio-watch StatusText))" \
    || fail enabled-after-reboot "$state; $a; media in the fresh sandbox: $n"
fi
exit 0
