#!/usr/bin/env bash
# install-deps.sh - apt-get install the Debian packages kinfer needs, when missing.
# Used by `make deps` (and so by `make run` and `make test`).  Does nothing, and
# needs no root, when everything is already installed.
set -euo pipefail

PKGS=(
  build-essential pkg-config
  librdkafka-dev libmsgpack-dev libopenblas-dev libhiredis-dev libcmocka-dev libjansson-dev
  libssl-dev uthash-dev libmicrohttpd-dev
  clang libclang-rt-14-dev clang-format
  redis-server
  prometheus
  python3 python3-numpy python3-msgpack python3-confluent-kafka python3-redis
  python3-prometheus-client
  # kinfer top: reads the workers' /metrics over HTTP
  libcurl4-openssl-dev
  # kinfer top: its live screen
  libncurses-dev
  # tests/py/test_top_tmux.py drives kinfer top in a real terminal
  tmux
  # the Python client (producer-tool/python): its test installs it with pip into a venv
  python3-venv
  python3-pip
  python3-setuptools
  # kinfer-convert sklearn, tests/py/test_sklearn_serving.py, test_client_lib.py, the guide in docs/models.md
  python3-sklearn
  # kinfer-convert torch and its tests (skipped when absent): 178 MB to download, 767 MB
  # installed, 47 s to install here; tests/py skips the PyTorch cases without it
  python3-torch
  # Signed jobs: Ed25519 (common/kf_sign.c)
  libsodium-dev
  # Signed jobs: the tests' independent Ed25519 signer (tests/py/test_signed_jobs.py)
  python3-cryptography
  # A genuine Apache Kafka for tests/realkafka and deploy/kafka-local: Debian has
  # no Kafka, so Maven resolves its jars from Maven Central (deploy/kafka/).
  openjdk-17-jre-headless maven
  # deploy/ asset checks (tests/py/test_deploy_assets.py): YAML parsing
  python3-yaml
  # and shellcheck on deploy/ scripts
  shellcheck
  # The openssl CLI: tests/harness/kafka-certs.sh makes the CA and certificates
  # of the TLS + SASL Kafka listener of tests/realkafka/test_real_secure.c.
  openssl
)
# `kubectl kustomize` renders the Kubernetes overlays: Debian's kubectl 1.20
# (kustomize v2.0.3, offline), unless a kubectl is already there (another
# package owning /usr/bin/kubectl would conflict with it).
if ! command -v kubectl >/dev/null; then
  PKGS+=(kubernetes-client)
fi

missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "kinfer: installing missing Debian packages: ${missing[*]}" >&2
SUDO=
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null; then SUDO=sudo; else
    echo "kinfer: missing packages and not root (no sudo): apt-get install ${missing[*]}" >&2
    exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
