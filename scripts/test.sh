#!/usr/bin/env bash
# The whole test suite, on a fresh machine with only the Rust toolchain:
# installs what the tests run against and is missing (real HAProxy, OpenSSH,
# socat, etcd; cargo-nextest), checks formatting and lints, runs every test.
# The README's test command; .ci/run calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v haproxy >/dev/null 2>&1 || need+=(haproxy)
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ssh >/dev/null 2>&1 || need+=(openssh-client)
command -v ssh-keygen >/dev/null 2>&1 || need+=(openssh-client)
# The front-end tier tests run socat on the "hosts" (socket_command).
command -v socat >/dev/null 2>&1 || need+=(socat)
# The store conformance suite runs a real etcd (and etcdctl to set it up).
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
command -v etcdctl >/dev/null 2>&1 || need+=(etcd-client)
command -v git >/dev/null 2>&1 || need+=(git)
command -v man >/dev/null 2>&1 || need+=(man-db)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
haproxy -v | sed -n 1p   # sed reads to the end: `head` could close the pipe early (SIGPIPE under pipefail)
/usr/sbin/sshd -V 2>&1 | sed -n 1p || true

if ! command -v cargo-nextest >/dev/null 2>&1; then
  cargo install cargo-nextest --locked
fi

# Lints are part of the build.
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings

cargo nextest run --workspace
