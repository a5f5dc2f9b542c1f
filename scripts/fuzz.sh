#!/usr/bin/env bash
# Runs each fuzz target (package:Target) for FUZZTIME (the first argument).
#
# Go 1.26's fuzz coordinator can end a run with a bare "context deadline exceeded" at the
# -fuzztime boundary, having found nothing (golang/go#75804, fixed in Go 1.27). A real finding
# always writes its failing input to testdata/fuzz/ and says so; so that signature alone —
# the deadline, no failing input, no panic — is retried once, and anything else fails.
set -u
fuzztime=$1
shift
status=0
for t in "$@"; do
  pkg=${t%%:*}
  name=${t##*:}
  echo "== $name ($pkg, $fuzztime)"
  for attempt in 1 2; do
    out=$(go test -run XXX -fuzz "^${name}\$" -fuzztime "$fuzztime" "$pkg" 2>&1)
    rc=$?
    printf '%s\n' "$out" | tail -n 4
    [ $rc -eq 0 ] && break
    if [ $attempt -eq 1 ] && grep -q 'context deadline exceeded' <<<"$out" &&
       ! grep -qE 'Failing input written|panic:|_test\.go:[0-9]+:' <<<"$out"; then
      echo "   (no failing input: the fuzz coordinator's deadline race, golang/go#75804; running it once more)"
      continue
    fi
    status=1
    break
  done
done
exit $status
