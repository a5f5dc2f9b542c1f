#!/usr/bin/env bash
# What `make test` needs beside Go, make and git: a C compiler (the race detector needs cgo)
# and the real tools the tests run — redis-server and redis-cli, openssl, curl, python3 (the
# permissive upstream of the attack tests), the mosquitto broker and clients (TCP audiences),
# haproxy (a load balancer sending the PROXY protocol). Missing ones are installed as Debian packages
# when this runs as root with apt-get; otherwise it stops, naming each and how to install it.
# No test skips for want of a tool, so a green run means every test ran.
set -uo pipefail

# tool -> Debian package
tools=(cc:gcc redis-server:redis-server redis-cli:redis-tools openssl:openssl curl:curl python3:python3
  mosquitto:mosquitto mosquitto_sub:mosquitto-clients mosquitto_pub:mosquitto-clients haproxy:haproxy)

missing=() pkgs=()
for tp in "${tools[@]}"; do
  tool=${tp%%:*} pkg=${tp##*:}
  command -v "$tool" >/dev/null 2>&1 || { missing+=("$tool"); pkgs+=("$pkg"); }
done
# gcc without the C library's headers cannot link the race detector's runtime.
if command -v cc >/dev/null 2>&1 && ! printf '#include <stdlib.h>\nint main(void){return 0;}\n' | cc -x c -o /dev/null - >/dev/null 2>&1; then
  missing+=("libc headers"); pkgs+=(libc6-dev)
fi
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "setup: installing ${pkgs[*]} (for ${missing[*]})"
  export DEBIAN_FRONTEND=noninteractive
  if apt-get update -qq && apt-get install -y -qq --no-install-recommends "${pkgs[@]}" libc6-dev >/dev/null; then
    exit 0
  fi
  echo "setup: apt-get install failed" >&2
fi
{
  echo "make test needs these, and will not skip the tests that use them:"
  for i in "${!missing[@]}"; do
    printf '  %-14s apt-get install %s\n' "${missing[$i]}" "${pkgs[$i]}"
  done
  echo "install them (as root: sudo apt-get install ${pkgs[*]}), or run make test as root, which installs them."
} >&2
exit 1
