#!/bin/bash
# Provisions the gateway VM of the Vagrant lab (run by `vagrant up gw` and
# `vagrant provision gw`, as root; idempotent). Arguments: NAME=MAC for each
# segment NIC and the uplink NIC (from the Vagrantfile's LINKS).
#
# 1. names the lab's NICs as coresvc's configuration does (mgmt0, dvnt0,
#    dvntm0, up0), by MAC, now and at every boot (systemd .link files);
# 2. installs the build's Debian packages and Rust (rustup), then the
#    project's own setup (`cargo xtask setup --no-packages`: the nightly's
#    rust-src, bpf-linker, bpffs, the PXE guest's kernel and busybox);
# 3. builds coresvc and installs it as /usr/local/bin/coresvc;
# 4. fills the TFTP root (vagrant/tftp) with `cargo xtask pxe-root`;
# 5. checks vagrant/coresvc.toml and (re)starts coresvc.service, which runs
#    coresvc with that file in place: edit it on the host, then
#    `vagrant rsync gw` and `vagrant ssh gw -c 'sudo systemctl reload coresvc'`.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
REPO=/coresvc
CONFIG=$REPO/vagrant/coresvc.toml
TFTP_ROOT=$REPO/vagrant/tftp
export CARGO_TARGET_DIR=/var/cache/coresvc/target
say() { echo "==> [gw] $*"; }

say "naming the lab's NICs by MAC"
mkdir -p /etc/systemd/network
for pair in "$@"; do
    name=${pair%%=*}
    mac=${pair#*=}
    printf '[Match]\nMACAddress=%s\n\n[Link]\nName=%s\n' "$mac" "$name" >"/etc/systemd/network/10-coresvc-$name.link"
    current=$(ip -o link | awk -v mac="$mac" 'index($0, "link/ether " mac " ") { sub(/:$/, "", $2); sub(/@.*$/, "", $2); print $2 }')
    if [ -z "$current" ]; then
        echo "no NIC has MAC $mac (for $name)" >&2
        exit 1
    fi
    if [ "$current" != "$name" ]; then
        ip link set dev "$current" down
        ip link set dev "$current" name "$name"
    fi
    ip link set dev "$name" up
done

say "Debian packages for the build and the dataplane"
apt-get update -q
apt-get install -y -q --no-install-recommends \
    ca-certificates curl gcc libc6-dev pkg-config bpftool iproute2 ethtool ipxe

if ! command -v cargo >/dev/null && [ ! -x "$HOME/.cargo/bin/cargo" ]; then
    say "Rust (rustup, stable)"
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
fi
export PATH="$HOME/.cargo/bin:$PATH"

cd "$REPO"
say "cargo xtask setup --no-packages"
cargo xtask setup --no-packages
say "building coresvc"
cargo build --release -p coresvc
install -m 0755 "$CARGO_TARGET_DIR/release/coresvc" /usr/local/bin/coresvc

say "boot files in $TFTP_ROOT"
cargo xtask pxe-root --shell "$TFTP_ROOT"

say "configuration and service"
coresvc check "$CONFIG"
# The repository's unit (dist/coresvc.service), pointed at this lab's
# configuration by a drop-in.
install -m 0644 dist/coresvc.service /etc/systemd/system/coresvc.service
install -D -m 0644 vagrant/provision/coresvc-vagrant.conf \
    /etc/systemd/system/coresvc.service.d/vagrant.conf
systemctl daemon-reload
systemctl enable coresvc.service
systemctl restart coresvc.service
for _ in $(seq 50); do
    coresvc status >/dev/null 2>&1 && break
    sleep 0.2
done
coresvc status
say "ready: \`vagrant up dvnt-client\` boots a diskless guest from coresvc"
