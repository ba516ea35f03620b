#!/usr/bin/env bash
# node.sh DIR PORT CONTROLLER_PORT JARS_DIR - runs one Apache Kafka node (4.1.1,
# and 3.9.1 for the SCRAM test: deploy/kafka/pom-3.9.xml) in KRaft combined
# mode (broker and controller in one process) on loopback, with
# its configuration and data under DIR.  The test harness (tests/harness/stack.c)
# and deploy/kafka-local both start Kafka through this script, so the two run
# the same broker with the same settings.
#
# The first run writes DIR/server.properties and formats DIR/data with a new
# cluster id; a later run on the same DIR (a restart, e.g. after SIGKILL) reuses
# both.  The script ends by exec'ing the JVM, so the PID that started it is the
# broker's: stop it with SIGTERM (a clean shutdown) or SIGKILL.
#
# KINFER_KAFKA_JAVA_OPTS replaces the JVM options below (a small heap, the serial
# collector and the C1 compiler only: a node starts in about two seconds).
#
# A locked-down listener beside the plaintext one (tests/harness/kt_kafka.c,
# docs/security.md), read at the first run only:
#   KINFER_KAFKA_SASL_SSL_PORT  a SASL_SSL listener: TLS, then SASL PLAIN or
#                               SCRAM-SHA-512
#   KINFER_KAFKA_SSL_PORT       an SSL listener with mutual TLS: a client
#                               proves itself with a certificate signed by
#                               KINFER_KAFKA_CLIENT_CA (PEM) instead of SASL
#   KINFER_KAFKA_KEYSTORE       the broker's key and certificate, PKCS#12
#   KINFER_KAFKA_KEYSTORE_PASSWORD_FILE  the keystore's password, in a file
#   KINFER_KAFKA_USERS_FILE     its users, one "name password" per line (no
#                               spaces, quotes, commas or brackets in either):
#                               PLAIN's list in server.properties, and SCRAM
#                               credentials stored by the storage tool when
#                               formatting (librdkafka 2.0.2, Debian 12's,
#                               fails SCRAM against Kafka 4.x, not 3.9.x:
#                               docs/security.md)
# The plaintext listener stays (the harness's admin client uses it, and so do
# the broker's own inter-broker and controller connections).
set -euo pipefail

dir=${1:?usage: node.sh DIR PORT CONTROLLER_PORT JARS_DIR}
port=${2:?usage: node.sh DIR PORT CONTROLLER_PORT JARS_DIR}
cport=${3:?usage: node.sh DIR PORT CONTROLLER_PORT JARS_DIR}
jars=${4:?usage: node.sh DIR PORT CONTROLLER_PORT JARS_DIR}
dir=$(cd "$dir" && pwd)
[ -d "$jars" ] || { echo "kafka: no jars in $jars (deploy/kafka/fetch-jars.sh)" >&2; exit 1; }

java_opts=${KINFER_KAFKA_JAVA_OPTS:-"-Xms64m -Xmx512m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Xshare:auto"}
# slf4j-simple: Kafka's own log lines on stderr, with times, at INFO.
log_opts="-Dorg.slf4j.simpleLogger.showDateTime=true \
-Dorg.slf4j.simpleLogger.dateTimeFormat=HH:mm:ss.SSS -Djava.awt.headless=true"

props="$dir/server.properties"
sasl_port=${KINFER_KAFKA_SASL_SSL_PORT:-}
listeners="PLAINTEXT://127.0.0.1:$port"
protomap="PLAINTEXT:PLAINTEXT"
if [ -n "$sasl_port" ]; then
  listeners="$listeners,SASL_SSL://127.0.0.1:$sasl_port"
  protomap="$protomap,SASL_SSL:SASL_SSL"
fi
ssl_port=${KINFER_KAFKA_SSL_PORT:-}
if [ -n "$ssl_port" ]; then
  listeners="$listeners,SSL://127.0.0.1:$ssl_port"
  protomap="$protomap,SSL:SSL"
fi
if [ ! -f "$props" ]; then
  cat >"$props.tmp" <<PROPS
# Written by deploy/kafka/node.sh: one node, broker and controller, loopback only.
node.id=1
process.roles=broker,controller
listeners=$listeners,CONTROLLER://127.0.0.1:$cport
advertised.listeners=$listeners
listener.security.protocol.map=$protomap,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
# A static quorum of this one node: no --standalone formatting, no bootstrap
# controller discovery.
controller.quorum.voters=1@127.0.0.1:$cport
log.dirs=$dir/data
# One copy of everything, including the internal topics, which default to 3
# and could never be created on one node.
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
default.replication.factor=1
min.insync.replicas=1
# Consumers join a new group at once, not after the default 3 s.
group.initial.rebalance.delay.ms=0
# After a crash, the restarted node waits out its previous self's broker
# session before it serves (9 s by default); 4 s keeps a restart quick.
broker.session.timeout.ms=4000
broker.heartbeat.interval.ms=1000
# Like production clusters: topics are created on purpose (the harness and
# kafka-local create kinfer.jobs and kinfer.dlq), never by a typo.
auto.create.topics.enable=false
num.partitions=1
num.network.threads=2
num.io.threads=4
PROPS
  if [ -n "$sasl_port" ]; then
    ks=${KINFER_KAFKA_KEYSTORE:?KINFER_KAFKA_SASL_SSL_PORT needs KINFER_KAFKA_KEYSTORE}
    kspass=$(cat "${KINFER_KAFKA_KEYSTORE_PASSWORD_FILE:?KINFER_KAFKA_SASL_SSL_PORT needs KINFER_KAFKA_KEYSTORE_PASSWORD_FILE}")
    plain=""
    while read -r name pass; do
      [ -n "$name" ] && plain="$plain user_$name=\"$pass\""
    done <"${KINFER_KAFKA_USERS_FILE:?KINFER_KAFKA_SASL_SSL_PORT needs KINFER_KAFKA_USERS_FILE}"
    cat >>"$props.tmp" <<PROPS
# The SASL_SSL listener: TLS with the broker's certificate (clients check it
# against their CA), then PLAIN against this list or SCRAM-SHA-512 against
# the credentials stored at format.
sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-512
listener.name.sasl_ssl.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required$plain;
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.ssl.keystore.type=PKCS12
listener.name.sasl_ssl.ssl.keystore.location=$ks
listener.name.sasl_ssl.ssl.keystore.password=$kspass
listener.name.sasl_ssl.ssl.key.password=$kspass
PROPS
    chmod 600 "$props.tmp"
  fi
  if [ -n "$ssl_port" ]; then
    ks=${KINFER_KAFKA_KEYSTORE:?KINFER_KAFKA_SSL_PORT needs KINFER_KAFKA_KEYSTORE}
    kspass=$(cat "${KINFER_KAFKA_KEYSTORE_PASSWORD_FILE:?KINFER_KAFKA_SSL_PORT needs KINFER_KAFKA_KEYSTORE_PASSWORD_FILE}")
    cat >>"$props.tmp" <<PROPS
# The SSL listener: mutual TLS. The broker shows its certificate and asks for
# the client's, which must chain to this CA (a PEM truststore); the client's
# principal is its certificate's subject (User:CN=...).
listener.name.ssl.ssl.client.auth=required
listener.name.ssl.ssl.truststore.type=PEM
listener.name.ssl.ssl.truststore.location=${KINFER_KAFKA_CLIENT_CA:?KINFER_KAFKA_SSL_PORT needs KINFER_KAFKA_CLIENT_CA}
listener.name.ssl.ssl.keystore.type=PKCS12
listener.name.ssl.ssl.keystore.location=$ks
listener.name.ssl.ssl.keystore.password=$kspass
listener.name.ssl.ssl.key.password=$kspass
PROPS
    chmod 600 "$props.tmp"
  fi
  mv "$props.tmp" "$props"
fi

# shellcheck disable=SC2086 # the options are words
if [ ! -f "$dir/data/meta.properties" ]; then
  cluster_id=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | cut -c1-22)
  # one start in 64 drew an id starting with '-', which the tool took for an
  # option ("--cluster-id: expected one argument"); a first 'A' is as valid
  case "$cluster_id" in -*) cluster_id="A${cluster_id#-}" ;; esac
  # SCRAM credentials the KRaft way (KIP-900): records of the bootstrap
  # metadata, written when the log directory is formatted.
  scram=()
  if [ -n "${KINFER_KAFKA_SASL_SSL_PORT:-}" ]; then
    while read -r name pass; do
      [ -n "$name" ] && scram+=(--add-scram "SCRAM-SHA-512=[name=\"$name\",password=\"$pass\"]")
    done <"$KINFER_KAFKA_USERS_FILE"
  fi
  java $java_opts $log_opts -cp "$jars/*" kafka.tools.StorageTool format \
       --cluster-id "$cluster_id" --config "$props" --ignore-formatted "${scram[@]}" \
       >"$dir/format.log" 2>&1 ||
    { echo "kafka: formatting $dir/data failed:" >&2; tail -20 "$dir/format.log" >&2; exit 1; }
fi
# shellcheck disable=SC2086
exec java $java_opts $log_opts -cp "$jars/*" kafka.Kafka "$props"
