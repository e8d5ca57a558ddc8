# common.sh: what systemd_boot.sh and docker_image.sh share, sourced by both (they set CACHE, LOG, T_START,
# PASSES and FAILS first): the PASS/FAIL lines, the whole-run timer, Debian packages for the host, and the
# debootstrapped bookworm root (CACHE/base-root) both machines start from.

say()  { printf '%s [%4ds] %s\n' "$(date +%T)" "$((SECONDS - T_START))" "$*"; }
pass() { PASSES=$((PASSES + 1)); printf 'PASS %-28s %s\n' "$1" "${2:-}"; }
fail() { FAILS=$((FAILS + 1)); printf 'FAIL %-28s %s\n' "$1" "${2:-}"; }
die()  { say "ABORT: $*"; exit 100; }

# start_timer NAME: after MAX_SECONDS the script is told to stop (its EXIT trap cleans up); sets TIMER_PID
start_timer() {
  ( sleep "$MAX_SECONDS"; echo "TIMEOUT $1: over MAX_SECONDS=${MAX_SECONDS}s, cleaning up"; kill -TERM $$ 2>/dev/null ) &
  TIMER_PID=$!
}

# finish RC: the end of each script's cleanup: the timer stopped, the tally said, the exit status (the number of
# FAILs, or RC when it is 100 or more: the run could not get that far)
finish() {
  kill $(ps -o pid= --ppid "$TIMER_PID" 2>/dev/null) "$TIMER_PID" 2>/dev/null   # the timer and its sleep
  say "done: $PASSES passed, $FAILS failed, $((SECONDS - T_START))s"
  [ "$1" -ge 100 ] && exit "$1"
  exit $((FAILS > 99 ? 99 : FAILS))
}

# host_packages LOGNAME PACKAGE...: apt-get install those given (the caller lists only the missing ones)
host_packages() {
  local logname=$1; shift
  [ $# -gt 0 ] || return 0
  say "apt-get install $*"
  timeout 300 apt-get update -q >"$LOG/apt-update.log" 2>&1
  DEBIAN_FRONTEND=noninteractive timeout 300 apt-get install -y -q "$@" >"$LOG/$logname.log" 2>&1 \
    || die "apt-get install failed: $(tail -3 "$LOG/$logname.log")"
}

mirror() {
  [ -n "${MIRROR:-}" ] && { echo "$MIRROR"; return; }
  local m
  m=$(grep -hE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' | grep -v security | head -1)
  [ -n "$m" ] || m=$(grep -hE '^deb ' /etc/apt/sources.list 2>/dev/null | awk '{print $2}' | grep -v security | head -1)
  [ -n "$m" ] || { echo "no Debian mirror in apt's sources: set MIRROR" >&2; return 1; }
  echo "$m"
}

# base_root: BASE=CACHE/base-root, debootstrapped once (python3, venv, pip, the CA certificates)
base_root() {
  BASE=$CACHE/base-root
  [ -f "$BASE/.sw-complete" ] && return 0
  say "debootstrap bookworm into $BASE from $(mirror)"
  rm -rf "$BASE"
  timeout 600 debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
    bookworm "$BASE" "$(mirror)" >"$LOG/debootstrap.log" 2>&1 || die "debootstrap failed: $(tail -3 "$LOG/debootstrap.log")"
  # this machine reaches PyPI through a TLS proxy with its own CA: give the root the same CA set and tell pip
  mkdir -p "$BASE/usr/local/share/ca-certificates"
  cp /usr/local/share/ca-certificates/*.crt "$BASE/usr/local/share/ca-certificates/" 2>/dev/null
  chroot "$BASE" update-ca-certificates >/dev/null 2>&1
  printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' > "$BASE/etc/pip.conf"
  touch "$BASE/.sw-complete"
}
