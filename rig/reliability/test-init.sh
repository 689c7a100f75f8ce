#!/bin/sh
# Reliability-test guest /init (NOT the product guest image): prints the agent's readiness line
# the way the real agent does, then reboots the guest.
mount -t proc proc /proc
mount -t sysfs sysfs /sys
echo "ember-agent: ready (test init, uptime $(cut -d' ' -f1 /proc/uptime))" > /dev/console
reboot -f
