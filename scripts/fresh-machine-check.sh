#!/usr/bin/env bash
# The README's set-up, checked on a truly fresh machine: a minimal Debian root file system
# (debootstrap), Go copied in, make and git installed (the README's prerequisites), this
# repository cloned; then `make demo` must print its tour and `make test` must pass, with
# nothing else installed by hand. Needs root, debootstrap (installed if missing) and Debian's
# package mirror; takes 10-20 minutes.
#
#   sudo bash scripts/fresh-machine-check.sh [ROOT_DIR]
#
# Machines here reach the Go module proxy through a CA in the host's bundle: it is copied into
# the root and named by SSL_CERT_FILE, or module downloads fail with "certificate signed by
# unknown authority".
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
root=${1:-/tmp/guardian-fresh-root}
goroot=$(go env GOROOT)
suite=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")

[ "$(id -u)" = 0 ] || { echo "run as root (debootstrap and chroot)" >&2; exit 1; }
command -v debootstrap >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null; }

cleanup() {
  for m in dev/pts dev proc sys; do umount -l "$root/$m" 2>/dev/null || true; done
}
trap cleanup EXIT

if [ ! -x "$root/bin/bash" ]; then
  echo "== debootstrap $suite (minbase) into $root"
  debootstrap --variant=minbase "$suite" "$root" http://deb.debian.org/debian >/dev/null
fi
mkdir -p "$root/etc/ssl/certs" "$root/usr/local"
cp /etc/resolv.conf "$root/etc/resolv.conf"
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/host-ca.crt"
rm -rf "$root/usr/local/go" && cp -a "$goroot" "$root/usr/local/go"
mount -t proc proc "$root/proc"
mount -t sysfs sys "$root/sys"
mount --bind /dev "$root/dev"
mount --bind /dev/pts "$root/dev/pts"

run() {
  chroot "$root" /usr/bin/env -i HOME=/root TERM=dumb PATH=/usr/local/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    SSL_CERT_FILE=/etc/ssl/host-ca.crt GIT_SSL_CAINFO=/etc/ssl/host-ca.crt /bin/bash -c "$1"
}
echo "== the README's prerequisites: make and git"
run 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq make git >/dev/null'
echo "== what else the fresh root has (none of these should be here yet)"
run 'for t in cc gcc redis-server openssl curl python3; do command -v $t >/dev/null && echo "  has $t" || echo "  no $t"; done'
rm -rf "$root/src/guardian"
mkdir -p "$root/src"
git clone -q --no-local "$repo" "$root/src/guardian"
echo "== make demo (until it prints its tour; the first build downloads the modules)"
run 'cd /src/guardian && { make demo DEMO_DIR=/tmp/demo > /tmp/demo.out 2>&1 & pid=$!; }
  for i in $(seq 300); do grep -q "Try it:" /tmp/demo.out && break; kill -0 $pid 2>/dev/null || break; sleep 1; done
  for p in /proc/[0-9]*; do tr "\0" " " < $p/cmdline 2>/dev/null | grep -q "^./bin/guardian demo" && kill ${p#/proc/}; done; wait $pid
  grep -q "Try it:" /tmp/demo.out && grep -q "listening on" /tmp/demo.out' \
  || { echo "make demo did not print its tour:"; cat "$root/tmp/demo.out"; exit 1; }
sed -n '1,4p' "$root/tmp/demo.out"
echo "== make test"
run 'cd /src/guardian && make test'
echo "== fresh machine: make demo printed its tour and make test passed"
