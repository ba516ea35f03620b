#!/usr/bin/env bash
# kafka-certs.sh DIR - the TLS material of a test's locked-down Kafka
# (kt_stack_start_kafka_secure), made with the openssl CLI in DIR:
#   ca.pem            a private CA (the clients' ssl.ca.location)
#   broker.p12        the broker's key and certificate (CN localhost, SANs
#                     IP:127.0.0.1 and DNS:localhost), signed by the CA, as a
#                     PKCS#12 keystore for the JVM
#   broker.pass       its random password (node.sh reads it from the file)
#   other-ca.pem      a second CA: a client trusting only it must refuse the
#                     broker
#   client.pem        a client certificate for mutual TLS (CN kinfer-worker,
#   client.key        clientAuth), signed by the CA; its key encrypted with
#   client.pass       the password in client.pass (ssl.key.password)
#   stranger.pem      a client certificate (CN kinfer-worker) signed by the
#   stranger.key      other CA: the broker must refuse it
# Keys are EC P-256: quick to make, and every TLS 1.2/1.3 stack speaks it.
set -euo pipefail
dir=${1:?usage: kafka-certs.sh DIR}
cd "$dir"
umask 077
ossl() { openssl "$@" 2>>certs.log; }
ossl ecparam -name prime256v1 -genkey -noout -out ca.key
ossl req -x509 -new -key ca.key -sha256 -days 2 -subj "/CN=kinfer test CA" \
  -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
  -out ca.pem
ossl ecparam -name prime256v1 -genkey -noout -out broker.key
ossl req -new -key broker.key -subj "/CN=localhost" -out broker.csr
printf '%s\n' "subjectAltName=IP:127.0.0.1,DNS:localhost" "extendedKeyUsage=serverAuth" \
  "basicConstraints=CA:FALSE" >broker.ext
ossl x509 -req -in broker.csr -CA ca.pem -CAkey ca.key -CAcreateserial -sha256 -days 2 \
  -extfile broker.ext -out broker.pem
head -c 18 /dev/urandom | base64 | tr '+/' '-_' >broker.pass
ossl pkcs12 -export -name broker -inkey broker.key -in broker.pem -certfile ca.pem \
  -passout "file:broker.pass" -out broker.p12
ossl ecparam -name prime256v1 -genkey -noout -out other-ca.key
ossl req -x509 -new -key other-ca.key -sha256 -days 2 -subj "/CN=kinfer other CA" \
  -addext basicConstraints=critical,CA:TRUE -out other-ca.pem
# client certificates: one from each CA, for the same name
printf '%s\n' "extendedKeyUsage=clientAuth" "basicConstraints=CA:FALSE" >client.ext
head -c 18 /dev/urandom | base64 | tr '+/' '-_' >client.pass
ossl ecparam -name prime256v1 -genkey -noout -out client.plain.key
ossl pkcs8 -topk8 -v2 aes-256-cbc -in client.plain.key -passout "file:client.pass" -out client.key
ossl req -new -key client.plain.key -subj "/CN=kinfer-worker" -out client.csr
ossl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -sha256 -days 2 \
  -extfile client.ext -out client.pem
ossl ecparam -name prime256v1 -genkey -noout -out stranger.key
ossl req -new -key stranger.key -subj "/CN=kinfer-worker" -out stranger.csr
ossl x509 -req -in stranger.csr -CA other-ca.pem -CAkey other-ca.key -CAcreateserial -sha256 \
  -days 2 -extfile client.ext -out stranger.pem
rm -f client.plain.key
chmod 644 ca.pem other-ca.pem
