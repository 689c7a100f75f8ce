# 40-templates: template pods inside the virtual KVM host. A pod is booted once and its VM
# snapshotted when its agent is ready (`ember template create`); pods whose config names the
# template start by restoring it (memory mapped copy-on-write from the template's file), and
# each makes the guest its own (clock, entropy, hostname).
# Sourced by the host's /init after /rig/lib.sh.
# Sections: template-create, template-pods (two pods from one template: exec, different
# hostnames, boot ids and random bytes), template-disk (a disk slot of a restored pod written
# by a container, the bytes found in the host's image file), template-share (a host directory
# shared live into a restored pod), template-bad (a pod that does not fit, a missing and a
# corrupt template: one error each, nothing left running), template-snapshot (a running
# pod saved while it runs on; one whose guest mounted the shared filesystem refused),
# template-delete (pods started from a template outlive it).

export EMBER_ROOT=/run/ember-templates
TLOG=/tmp/templates.log

cat >/tmp/tmpl.json <<JSON
{ "mem_mib": 256, "disk_slots": 1, "start_timeout_secs": 240 }
JSON
cat >/tmp/from-tmpl.json <<JSON
{ "mem_mib": 256, "disk_slots": 1, "start_timeout_secs": 240, "template": "base" }
JSON

tmpl_console() {
    echo "--- console.log"; tail -n 30 "$EMBER_ROOT/@pods/$1/console.log" 2>/dev/null
    echo "--- vmm.log"; tail -n 20 "$EMBER_ROOT/@pods/$1/vmm.log" 2>/dev/null
}

template_create() {
    ember template create base --config /tmp/tmpl.json || return 1
    ember template list
    ember template list --json | grep -q '"name": "base"' || return 1
    ls -ls "$EMBER_ROOT/@templates/base/snapshot"
    # Nothing of the pod it was made from is left.
    ember pod list
    [ "$(ember pod list --json | grep -c '"id"')" -eq 0 ] && echo "no pod left"
}
section template-create template_create

template_pods() {
    for p in t1 t2; do
        ember pod create --config /tmp/from-tmpl.json $p || return 1
        ember container create $p c --rootfs-guest-path / -- sleep 1000 || return 1
        if ! ember pod start --timings $p 2>/tmp/$p-start.err; then
            cat /tmp/$p-start.err
            tmpl_console $p
            return 1
        fi
        cat /tmp/$p-start.err
        ember container start $p c || return 1
        ember container exec $p c -- sh -c \
            'echo "$(hostname) $(cat /proc/sys/kernel/random/boot_id) $(head -c 16 /dev/urandom | od -An -tx1 | tr -d " \n")"' \
            >/tmp/$p.id || { tmpl_console $p; return 1; }
        echo "$p identity: $(cat /tmp/$p.id)"
        grep -q "restored guest made its own" "$EMBER_ROOT/@pods/$p/vmm.log" && echo "$p: restored"
    done
    for i in 1 2 3; do
        a=$(cut -d' ' -f$i /tmp/t1.id)
        b=$(cut -d' ' -f$i /tmp/t2.id)
        [ -n "$a" ] && [ "$a" != "$b" ] || { echo "field $i the same: $a"; return 1; }
        echo "field $i differs"
    done
}
section template-pods template_pods

template_disk() {
    dd if=/dev/zero of=/tmp/tvol.img bs=1M count=0 seek=16 2>/dev/null
    mke2fs -q -F /tmp/tvol.img >/dev/null 2>&1 || return 1
    token="ember-template-disk-$$"
    cat >/tmp/tdisk.json <<JSON
{ "rootfs": { "guest_path": { "path": "/" } },
  "volume": { "image": { "path": "/tmp/tvol.img", "read_only": false } },
  "mounts": [ { "destination": "/data", "source": ".", "from_volume": true } ],
  "process": { "env": ["PATH=/bin:/sbin:/usr/bin"],
               "args": ["sh", "-c", "echo $token > /data/token.txt && sync && cat /data/token.txt"] } }
JSON
    ember container create --config /tmp/tdisk.json t1 disk || { tmpl_console t1; return 1; }
    ember container start t1 disk || return 1
    ember container wait t1 disk; rc=$?
    echo "disk container exit=$rc"
    [ "$rc" -eq 0 ] || { tmpl_console t1; return 1; }
    ember container delete t1 disk || return 1
    n=$(grep -c "$token" /tmp/tvol.img)
    echo "token in the host's image file: $n"
    [ "$n" -ge 1 ]
}
section template-disk template_disk

template_share() {
    mkdir -p /tmp/tshare && echo from-host >/tmp/tshare/in.txt
    ember container create t2 sh --rootfs-guest-path / --volume /tmp/tshare:/share \
        -- sh -c 'cat /share/in.txt && echo from-guest > /share/out.txt' || return 1
    ember container start t2 sh || return 1
    ember container wait t2 sh; rc=$?
    echo "share container exit=$rc; host sees: $(cat /tmp/tshare/out.txt 2>&1)"
    [ "$rc" -eq 0 ] && [ "$(cat /tmp/tshare/out.txt)" = from-guest ]
}
section template-share template_share

template_bad() {
    # Does not fit: another memory size.
    sed 's/"mem_mib": 256/"mem_mib": 320/' /tmp/from-tmpl.json >/tmp/misfit.json
    ember pod create --config /tmp/misfit.json bad1 || return 1
    ember pod start bad1 2>/tmp/bad1.err; rc1=$?
    echo "misfit: exit=$rc1 $(cat /tmp/bad1.err)"
    # Does not exist.
    sed 's/"template": "base"/"template": "nothere"/' /tmp/from-tmpl.json >/tmp/missing.json
    ember pod create --config /tmp/missing.json bad2 || return 1
    ember pod start bad2 2>/tmp/bad2.err; rc2=$?
    echo "missing: exit=$rc2 $(cat /tmp/bad2.err)"
    # Corrupt: a copy of base with one byte of its state changed.
    cp -r "$EMBER_ROOT/@templates/base" "$EMBER_ROOT/@templates/broken" || return 1
    printf X | dd of="$EMBER_ROOT/@templates/broken/snapshot/state" bs=1 seek=100 conv=notrunc 2>/dev/null
    sed 's/"template": "base"/"template": "broken"/' /tmp/from-tmpl.json >/tmp/broken.json
    ember pod create --config /tmp/broken.json bad3 || return 1
    ember pod start bad3 2>/tmp/bad3.err; rc3=$?
    echo "corrupt: exit=$rc3 $(cat /tmp/bad3.err)"
    ember pod list
    for p in bad1 bad2 bad3; do
        ember pod status --json $p | grep -q '"vmm_pid": [0-9]' && { echo "$p has a VMM process"; return 1; }
        ember pod delete $p || return 1
    done
    ember template delete broken || return 1
    [ $rc1 -ne 0 ] && [ $rc2 -ne 0 ] && [ $rc3 -ne 0 ] \
        && [ "$(wc -l </tmp/bad1.err)" -eq 1 ] && [ "$(wc -l </tmp/bad3.err)" -eq 1 ]
}
section template-bad template_bad

template_snapshot() {
    # A running pod's VM saved while it runs on; t2's guest has mounted the shared
    # filesystem (template-share): refused, nothing left.
    rm -rf /tmp/t1snap /tmp/t2snap
    ember pod snapshot t1 /tmp/t1snap || return 1
    ls -ls /tmp/t1snap
    out=$(ember container exec t1 c -- echo after-snapshot) || return 1
    echo "t1 after its snapshot: $out"
    ember pod snapshot t2 /tmp/t2snap 2>/tmp/t2snap.err; rc=$?
    echo "t2: exit=$rc $(cat /tmp/t2snap.err)"
    [ "$out" = after-snapshot ] && [ $rc -ne 0 ] && [ ! -e /tmp/t2snap ] \
        && ember container exec t2 c -- true && return 0
    ember pod status t2
    tmpl_console t2
    return 1
}
section template-snapshot template_snapshot

template_delete() {
    ember template delete base || return 1
    ember template list
    out=$(ember container exec t1 c -- echo still-here) || return 1
    echo "t1 after the template's deletion: $out"
    for p in t1 t2; do
        ember pod stop $p || return 1
        ember pod delete $p || return 1
    done
    [ "$out" = still-here ] && [ ! -e "$EMBER_ROOT/@templates/base" ]
}
section template-delete template_delete
