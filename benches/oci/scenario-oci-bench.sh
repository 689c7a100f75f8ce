# oci-bench: `podman run --rm IMAGE true` with runc and with ember in the Debian root of the
# virtual KVM host, RUNS times each (sections bench-<runtime>-<i>), then one ember container by
# runc operation: create (with ember's own phases), start-to-exit, rm (section bench-phases).
# Generated settings come first (RUNS=...); see benches/oci/run.sh.

DEB=/debian
mkdir -p "$DEB" && mount -t ext4 /dev/vda "$DEB" || { echo "no Debian disk"; return 0; }
mkdir -p "$DEB/usr/local/bin" "$DEB/var/lib/ember/guest"
cp /usr/local/bin/ember "$DEB/usr/local/bin/ember"
cp /var/lib/ember/guest/* "$DEB/var/lib/ember/guest/" 2>/dev/null
for d in proc sys dev; do mount --bind "/$d" "$DEB/$d"; done
mount --bind /dev/pts "$DEB/dev/pts"
cat >/tmp/dch <<DCH
#!/bin/sh
exec chroot $DEB /usr/bin/env -i HOME=/root TERM=dumb \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "\$@"
DCH
chmod 755 /tmp/dch
/tmp/dch sh -c 'ember-debian-init setup &&
    podman import /var/lib/ember-oci/busybox-rootfs.tar localhost/busybox >/dev/null'

cat >"$DEB/usr/local/bin/timed" <<'TIMED'
#!/bin/sh
# timed CMD...: run CMD, print "wall_ms=N rc=N" after its output.
t0=$(date +%s%N)
"$@"
rc=$?
t1=$(date +%s%N)
echo "wall_ms=$(( (t1 - t0) / 1000000 )) rc=$rc"
TIMED
chmod 755 "$DEB/usr/local/bin/timed"

for rt in runc ember; do
    i=1
    while [ "$i" -le "$RUNS" ]; do
        section_timeout 900 "bench-$rt-$i" /tmp/dch sh -c "
            /usr/local/bin/timed podman --runtime $( [ $rt = ember ] && echo /usr/local/bin/ember || echo runc ) \
                run --rm localhost/busybox true >/var/tmp/bench.out 2>&1
            cat /var/tmp/bench.out"
        # A pod guest that never reached /init: the nested first-KVM_RUN stall of this test
        # machine (it strikes every VM of an unlucky host boot): ask the rig for a new host.
        if grep -q "did not announce itself" "$DEB/var/tmp/bench.out" 2>/dev/null &&
            ! grep -q init_start "$DEB/var/tmp/bench.out"; then
            retry_host "oci-bench: the pod guest never reached /init"
        fi
        i=$((i + 1))
    done
done

section_timeout 900 bench-phases /tmp/dch sh -c '
    R="--runtime /usr/local/bin/ember"
    podman $R create --name ph localhost/busybox true >/dev/null
    echo "op=create $(/usr/local/bin/timed podman $R init ph | tail -1)"
    echo "phases $(cat /run/ember/$(podman inspect -f "{{.ID}}" ph)/timings.json)"
    echo "op=start-to-exit $(/usr/local/bin/timed podman $R start -a ph | tail -1)"
    echo "op=rm $(/usr/local/bin/timed podman $R rm ph | tail -1)"'
