#!/usr/bin/env bash
# Installs the Debian packages the tests use when they are missing: redis-server (shared limiter tests),
# postfix (smtp-source/smtp-sink protocol peers and the ingress benchmark), podman + runc + debootstrap
# (container test), prometheus (promtool for the alert rules). Needs root and apt-get; elsewhere it says
# what is missing and the tests that need it skip with a loud reason.
set -euo pipefail
need=()
command -v redis-server >/dev/null || need+=(redis-server)
command -v smtp-source >/dev/null || [ -x /usr/sbin/smtp-source ] || need+=(postfix)
command -v podman >/dev/null || need+=(podman)
command -v runc >/dev/null || need+=(runc)
command -v debootstrap >/dev/null || [ -x /usr/sbin/debootstrap ] || need+=(debootstrap)
command -v promtool >/dev/null || need+=(prometheus)
if [ ${#need[@]} -eq 0 ]; then
  echo "test dependencies: all present"
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "test dependencies missing (${need[*]}) and cannot apt-get install here: the tests that need them will skip" >&2
  exit 0
fi
echo "installing test dependencies: ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections 2>/dev/null || true
apt-get update -q >/dev/null
apt-get install -y -q --no-install-recommends "${need[@]}" >/tmp/ses-relay-apt.log 2>&1 || {
  echo "apt-get install failed; see /tmp/ses-relay-apt.log" >&2
  tail -20 /tmp/ses-relay-apt.log >&2
  exit 1
}
# The prometheus package starts a server on :9090 and redis-server one on :6379; the tests start their own.
for svc in prometheus redis-server postfix; do
  (command -v systemctl >/dev/null && systemctl stop "$svc" 2>/dev/null) || service "$svc" stop >/dev/null 2>&1 || true
done
echo "test dependencies installed"
