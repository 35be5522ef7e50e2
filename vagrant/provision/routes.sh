#!/bin/sh
# Routes to the lab's other segments through the gateway: each argument is
# PREFIX=NEXT_HOP. Vagrant's own NIC keeps the default route.
set -eu
for r in "$@"; do
    ip route replace "${r%%=*}" via "${r#*=}"
done
