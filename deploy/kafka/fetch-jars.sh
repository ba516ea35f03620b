#!/usr/bin/env bash
# fetch-jars.sh OUT_DIR [POM] - the jars of the single-node Kafka named by POM
# (default deploy/kafka/pom.xml, Kafka 4.1.1; pom-3.9.xml is the SCRAM test's
# 3.9.1) into OUT_DIR/jars, resolved by Maven from Maven Central and cached in
# ~/.m2.
#
# Used by the Makefile (the real-Kafka tests) and by deploy/kafka-local.  Does
# nothing when OUT_DIR/jars was filled from this very pom before (OUT_DIR/pom.sha
# records which), so it costs nothing after the first run.  A failed download
# is retried once: a first CI run fetches about 45 MB.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
out=${1:?usage: fetch-jars.sh OUT_DIR [POM]}
pom=${2:-"$here/pom.xml"}
[ -f "$pom" ] || { echo "kafka: no pom $pom" >&2; exit 1; }
pom=$(cd "$(dirname "$pom")" && pwd)/$(basename "$pom")
mkdir -p "$out"
out=$(cd "$out" && pwd) # Maven resolves relative paths against the pom's folder
want=$(sha256sum "$pom" | cut -d' ' -f1)

if [ -f "$out/pom.sha" ] && [ "$(cat "$out/pom.sha")" = "$want" ] && [ -d "$out/jars" ]; then
  exit 0
fi
for tool in mvn java; do
  if ! command -v "$tool" >/dev/null; then
    echo "kafka: $tool not found (make deps installs maven and openjdk-17-jre-headless)" >&2
    exit 1
  fi
done

mkdir -p "$out"
rm -rf "$out/jars.tmp"
for attempt in 1 2; do
  # -B: no progress bars or colours in CI logs.
  if mvn -q -B -f "$pom" dependency:copy-dependencies -DincludeScope=runtime \
         -DoutputDirectory="$out/jars.tmp" >"$out/mvn.log" 2>&1; then
    break
  fi
  if [ "$attempt" = 2 ]; then
    echo "kafka: resolving the Kafka jars with Maven failed twice; its output:" >&2
    cat "$out/mvn.log" >&2
    exit 1
  fi
  echo "kafka: Maven failed (see $out/mvn.log), retrying once" >&2
  rm -rf "$out/jars.tmp"
done
# Swapped in whole, so an interrupted run never leaves half a classpath.
rm -rf "$out/jars"
mv "$out/jars.tmp" "$out/jars"
echo "$want" >"$out/pom.sha"
echo "kafka: $(ls "$out/jars" | wc -l) jars in $out/jars" >&2
