//! OCI checks (scenario 50-oci.sh): real podman and containerd drive ember in the Debian root
//! of the virtual KVM host ([`rig::debian::DebianHost`]). That host boots once for these
//! tests, separately from the initramfs-only host of the other modules (it needs the Debian
//! disk and more memory).
//!
//! Skips (prints why, passes) when the Debian image (scripts/build-debian-host.sh), the host
//! kernel, QEMU or the static ember are missing, unless `EMBER_E2E` is set.
//! Env: `EMBER_E2E_OCI_LOG` (console log, default $TMPDIR/ember-e2e-oci-console.log).

use rig::debian::{self, DebianHost};
use rig::{RunReport, Section};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

enum Run {
    Skipped(String),
    Ran(Box<RunReport>),
    Failed(String),
}

static DEBIAN: OnceLock<Run> = OnceLock::new();

fn required() -> bool {
    std::env::var_os("EMBER_E2E").is_some_and(|v| !v.is_empty() && v != "0")
}

fn boot() -> Run {
    let ember = std::env::var("EMBER_BIN").unwrap_or_else(|_| rig::vhost::DEFAULT_EMBER.into());
    if !Path::new(&ember).is_file() {
        return Run::Skipped(format!("{ember} missing (scripts/build-guest-image.sh)"));
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let scenarios = match debian::oci_scenarios(&dir) {
        Ok(s) => s,
        Err(e) => return Run::Failed(e.to_string()),
    };
    let log = std::env::var_os("EMBER_E2E_OCI_LOG")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("ember-e2e-oci-console.log"));
    let host = match DebianHost::new(None) {
        Ok(h) => h,
        Err(e @ debian::Error::NoImage(_)) => return Run::Skipped(e.to_string()),
        Err(e @ debian::Error::Host(_)) => return Run::Skipped(rig_report(&e)),
        Err(e) => return Run::Failed(rig_report(&e)),
    };
    let host = host.configure(|mut h| {
        for s in scenarios {
            h = h.scenario(s);
        }
        crate::with_rerun(h.timeout(3600).log(&log))
    });
    eprintln!(
        "e2e oci: booting the Debian virtual host; console log: {}",
        log.display()
    );
    match host.run() {
        Ok(r) => {
            crate::report_reruns(&r, &log);
            Run::Ran(Box::new(r))
        }
        Err(e) => Run::Failed(rig_report(&e)),
    }
}

fn rig_report(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn section(name: &str) -> Option<&'static Section> {
    let report = match DEBIAN.get_or_init(boot) {
        Run::Ran(r) => r,
        Run::Skipped(why) => {
            assert!(
                !required(),
                "EMBER_E2E is set but a prerequisite is missing: {why}"
            );
            eprintln!("e2e oci: SKIPPED (set EMBER_E2E=1 to make this a failure): {why}");
            return None;
        }
        Run::Failed(e) => panic!("e2e oci: the Debian virtual host could not run: {e}"),
    };
    match report.sections.get(name) {
        Some(s) => Some(s),
        None => {
            let lines: Vec<&str> = report.console.lines().collect();
            panic!(
                "section {name:?} missing (outcome {:?}); console tail:\n{}",
                report.outcome,
                lines[lines.len().saturating_sub(40)..].join("\n")
            )
        }
    }
}

fn passed(name: &str) -> Option<&'static Section> {
    let s = section(name)?;
    assert_eq!(s.rc, 0, "section {name:?} failed; output:\n{}", s.output);
    Some(s)
}

/// The lines of `s` that begin with `rt` and a space, without that prefix.
fn prefixed(s: &Section, rt: &str) -> Vec<String> {
    s.output
        .lines()
        .filter_map(|l| l.trim().strip_prefix(&format!("{rt} ")))
        .map(str::to_string)
        .collect()
}

/// The number after `key` on the section's line that starts with it (trimmed).
fn number(s: &Section, key: &str) -> u64 {
    s.output
        .lines()
        .find_map(|l| l.trim().strip_prefix(key))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {key:?} in:\n{}", s.output))
}

fn has_line(s: &Section, want: &str) -> bool {
    s.output.lines().any(|l| l.trim() == want)
}

#[test]
fn podman_run_with_ember_prints_hello() {
    let Some(s) = passed("podman-hello") else {
        return;
    };
    assert!(has_line(s, "hello"), "output:\n{}", s.output);
}

#[test]
fn podman_reports_the_containers_exit_code() {
    let Some(s) = passed("podman-exit-code") else {
        return;
    };
    assert!(has_line(s, "exit=3"), "output:\n{}", s.output);
}

/// Volumes and the rootfs are shared live, as under runc (same run, same checks, both
/// runtimes): the container's write reaches the host while it runs, the host's write is seen
/// inside, `:ro` refuses writes, `podman diff` lists the file it made in its rootfs, and
/// podman's /etc/hosts carries the --add-host entry.
#[test]
fn podman_volumes_and_rootfs_are_live_as_under_runc() {
    let Some(s) = passed("podman-volumes") else {
        return;
    };
    for rt in ["runc", "ember"] {
        for want in [
            format!("{rt} host sees: from-container"),
            format!("{rt} diff: A /made-in-container"),
            format!("{rt} exit: 0"),
            format!("{rt} says: 10.1.2.3 db.example"),
            format!("{rt} says: volume-data-42"),
            format!("{rt} says: ro-refused"),
            format!("{rt} says: from-host"),
        ] {
            assert!(has_line(s, &want), "no {want:?} in:\n{}", s.output);
        }
    }
}

/// podman's default bridge network beside runc: the container's eth0 has a 10.88/16 address,
/// a published port answers from the host (127.0.0.1 and the bridge gateway) and on the
/// container's address, CNI installed its NAT, and the container reaches a host listener.
#[test]
fn podman_bridge_network_and_published_ports_work_as_under_runc() {
    let Some(s) = passed("podman-network") else {
        return;
    };
    for rt in ["runc", "ember"] {
        let eth0 = s
            .output
            .lines()
            .find_map(|l| l.trim().strip_prefix(&format!("{rt} eth0: ")))
            .unwrap_or("none");
        assert!(
            eth0.starts_with("10.88.") && eth0.ends_with("/16"),
            "{rt}: eth0 {eth0:?}:\n{}",
            s.output
        );
        for want in [
            format!("{rt} ports: 0.0.0.0:18080->80/tcp"),
            format!("{rt} published port via 127.0.0.1: ok"),
            format!("{rt} published port via 10.88.0.1: ok"),
            format!("{rt} container address port 80: ok"),
            format!("{rt} nat dnat: yes"),
            format!("{rt} nat masquerade: yes"),
            format!("{rt} container to host: ok"),
        ] {
            assert!(has_line(s, &want), "no {want:?} in:\n{}", s.output);
        }
    }
}

/// `--memory 1g --cpus 2 --pids-limit 100` beside runc: the container's own cgroup shows the
/// same limits under both; ember's VM is sized from them (about 1 GiB + the guest's overhead,
/// 2 vCPUs).
#[test]
fn podman_resources_limit_the_container_as_under_runc() {
    let Some(s) = passed("podman-resources") else {
        return;
    };
    for rt in ["runc", "ember"] {
        for want in [
            format!("{rt} memory.max 1073741824"),
            format!("{rt} cpu.max 200000 100000"),
            format!("{rt} pids.max 100"),
        ] {
            assert!(has_line(s, &want), "no {want:?} in:\n{}", s.output);
        }
    }
    let value = |key: &str| number(s, key);
    assert_eq!(value("ember nproc"), 2, "output:\n{}", s.output);
    // The host side: the engine's container process sits in the spec's cgroupsPath under
    // both runtimes (ember's shim and pod process), limited there, removed with the container.
    let cgroup = |rt: &str| {
        s.output
            .lines()
            .find_map(|l| l.trim().strip_prefix(&format!("{rt} host cgroup: ")))
            .unwrap_or_else(|| panic!("no {rt} host cgroup in:\n{}", s.output))
            .to_string()
    };
    assert_eq!(cgroup("ember"), cgroup("runc"), "output:\n{}", s.output);
    assert!(
        value("ember host memory.max:") >= 512 << 20,
        "output:\n{}",
        s.output
    );
    assert!(value("ember host procs:") >= 2, "output:\n{}", s.output);
    for rt in ["runc", "ember"] {
        let want = format!("{rt} host cgroup removed");
        assert!(has_line(s, &want), "no {want:?} in:\n{}", s.output);
    }
    let kib = value("ember memtotal_kib");
    assert!(
        (1 << 20) * 9 / 10 < kib && kib < (1 << 20) * 13 / 10,
        "ember's guest has {kib} KiB, not about 1 GiB + overhead:\n{}",
        s.output
    );
}

/// config.toml's rx_rate_limiter_max_rate (8 Mbit/s) throttles what a container receives on
/// podman's bridge: a 4 MiB fetch takes at least 3 s (unlimited, well under a second); every
/// byte arrives under each runtime.
#[test]
fn podman_network_frames_wait_for_the_configured_rate() {
    let Some(s) = passed("podman-net-limit") else {
        return;
    };
    // "ember limited: 4194304 bytes in 4.3 s"
    let send = |label: &str| -> f64 {
        let line = s
            .output
            .lines()
            .find_map(|l| l.trim().strip_prefix(&format!("{label}: ")))
            .unwrap_or_else(|| panic!("no {label:?} in:\n{}", s.output));
        assert!(
            line.starts_with("4194304 bytes in "),
            "{line}\n{}",
            s.output
        );
        line["4194304 bytes in ".len()..]
            .trim_end_matches(" s")
            .parse()
            .unwrap_or_else(|_| panic!("{line}"))
    };
    send("runc");
    let unlimited = send("ember unlimited");
    let limited = send("ember limited");
    // 3 MiB beyond the full bucket's first MiB, at 1 MiB/s.
    assert!(
        limited >= 3.0 && limited > unlimited,
        "limited {limited} s, unlimited {unlimited} s\n{}",
        s.output
    );
}

/// A container floods podman's bridge with UDP (no rate limiter), under runc and under ember:
/// while it floods, another container's exec and its own exec answer, the bridge receives
/// its datagrams, and the host carries on after it.
#[test]
fn podman_udp_flood_leaves_execs_working() {
    let Some(s) = passed("podman-net-flood") else {
        return;
    };
    for rt in ["runc", "ember"] {
        let lines = prefixed(s, rt);
        for i in 1..=2 {
            for (what, want) in [
                (
                    "exec in another container while one floods:",
                    format!("alive-{i}"),
                ),
                ("exec in the flooding container:", format!("own-alive-{i}")),
            ] {
                assert!(
                    lines
                        .iter()
                        .any(|l| l.starts_with(what) && l.ends_with(&want)),
                    "{rt}: no {what:?} {want:?} in:\n{}",
                    s.output
                );
            }
        }
        assert!(
            lines
                .iter()
                .any(|l| l.as_str() == "host after the flood: alive-after"),
            "{rt}: {}",
            s.output
        );
        let flood = lines
            .iter()
            .find_map(|l| l.strip_prefix("flood: udp-flood: sent "))
            .unwrap_or_else(|| panic!("{rt}: no flood count in:\n{}", s.output));
        let sent: u64 = flood.split(' ').next().unwrap().parse().unwrap();
        assert!(sent > 1000, "{rt}: only {sent} datagrams sent: {flood}");
        let received: u64 = lines
            .iter()
            .find_map(|l| {
                l.strip_prefix("bridge ")?
                    .split(" received ")
                    .nth(1)?
                    .strip_suffix(" packets during the execs")?
                    .parse()
                    .ok()
            })
            .unwrap_or_else(|| panic!("{rt}: no bridge count in:\n{}", s.output));
        assert!(received > 100, "{rt}: the bridge got {received} packets");
    }
}

/// The rest of config.json as runc applies it: one container with capabilities, hostname, a
/// sysctl, oom_score_adj, rlimits, an extra group, a read-only root, a device, a masked path
/// and no_new_privs prints what it sees, and one with the default capabilities makes device
/// nodes and opens them (the device controller), a user without HOME gets runc's, and
/// `podman cp` into and out of a running container reaches its rootfs and volume (not the
/// host's files), and a container with a user namespace (`--uidmap`) has the spec's ids
/// (its files in a volume owned by the mapped uids); ember's lines equal runc's.
#[test]
fn podman_config_fidelity_equals_runc() {
    let Some(s) = passed("podman-fidelity") else {
        return;
    };
    let lines = |rt: &str| prefixed(s, rt);
    let (runc, ember) = (lines("runc"), lines("ember"));
    assert!(runc.len() >= 14, "runc printed too little:\n{}", s.output);
    // The device controller refuses a node runc does not allow, even to root with MKNOD.
    for want in [
        "mknod b 8:0: ok",
        "open b 8:0: Operation not permitted",
        "open c 1:1: Operation not permitted",
        "open c 1:3 made in the rootfs: ok",
        "open /dev/null: ok",
        "privileged sys: rw",
        "command nosuchcmd: exit=127",
        "command /no/such/cmd: exit=127",
        "command /etc/passwd: exit=126",
        "home: /tmp",
        "cp in: cp-in",
        "cp into the volume: cp-in",
        "cp out: made-inside",
        "the host's /tmp got the copy: no",
        "userns uid_map: 0 100000 65536",
        "userns id: 0:0",
        "userns /bin/sh owner: 0:0",
        "userns volume write: ok",
        "userns /dev/null: ok",
        "userns exec id: 1000",
        "userns volume owners: 100000:100000 101000:101000",
        "userns exec -t: /dev/pts/0",
        "userns auto:  0 200000 65534 0",
        "userns privileged: a:e8 0",
        "update: 134217728 20",
    ] {
        assert!(
            runc.iter().any(|l| l == want),
            "runc: no {want:?}:\n{}",
            s.output
        );
    }
    assert_eq!(runc, ember, "output:\n{}", s.output);
}

/// A podman pod under ember is one VM: its members join the infra container's namespaces
/// there, so they share localhost, the pod's hostname, the IPC namespace and its /dev/shm,
/// one eth0 and the published port, a shared PID namespace with `--share pid`, the user
/// namespace of a `--userns=auto` pod (files owned by its mapped root); `container:NAME`
/// joiners of a container outside a pod do the same; `pod stop` ends cleanly. ember's lines
/// equal runc's, and no pod is left.
#[test]
fn podman_pods_share_what_they_share_under_runc() {
    let Some(s) = passed("podman-pod") else {
        return;
    };
    let lines = |rt: &str| -> Vec<String> {
        prefixed(s, rt)
            .into_iter()
            .filter(|l| !l.starts_with("pods left:"))
            .collect()
    };
    let (runc, ember) = (lines("runc"), lines("ember"));
    for want in [
        "localhost: served-in-the-pod",
        "hostname: podhost",
        "kernel: the same",
        "ipc: the same",
        "shm: shm-of-web",
        "eth0 addresses: 1",
        "published: served-in-the-pod",
        "pod: Running 2",
        "pod stop: rc=0 0 errors",
        "pod after stop: Exited",
        "userns pod id: 0",
        "userns pod proc: ok",
        "userns pod namespace: the same",
        "userns pod file owner: the mapped root",
        "ipc container: shm-of-solo",
        "network container: served-by-solo",
    ] {
        assert!(
            runc.iter().any(|l| l == want),
            "runc: no {want:?}:\n{}",
            s.output
        );
    }
    assert!(
        runc.iter()
            .any(|l| l.starts_with("pid pod: ") && l.contains("sleep")),
        "runc: the pid pod's member sees no sleep:\n{}",
        s.output
    );
    assert_eq!(runc, ember, "output:\n{}", s.output);
    assert!(has_line(s, "ember pods left: 0"), "output:\n{}", s.output);
}

/// CRI grouping with Kata's annotations: members run in their sandbox's VM (same kernel
/// boot id, one pod), each with its rootfs shared by virtio-fs (a share withdrawn when it is
/// deleted); the pod API's containers in a running pod take disk slots.
#[test]
fn cri_pod_members_join_the_sandbox_vm() {
    let Some(s) = passed("cri-pod") else { return };
    for want in [
        "pods while m1 exists: sb1",
        "shares while m1 exists: m1.rootfs sb1.rootfs",
        "m1: same VM as sb1",
        "shares after deleting m1: sb1.rootfs",
        "shares while m2 exists: m2.rootfs sb1.rootfs",
        "m2: same VM as sb1",
        "shares after deleting m2: sb1.rootfs",
        "pods at the end: 0",
        // The pod API: containers created in a running pod, one after the other in its slot.
        "live c1: exec-ok /bin/busybox",
        "live slot disks with c1: 1",
        "live slot disks after c1: 0",
        "live c2: exec-ok /bin/busybox",
        "live slot disks with c2: 1",
        "live slot disks after c2: 0",
        "live pod deleted",
    ] {
        assert!(has_line(s, want), "no {want:?} in:\n{}", s.output);
    }
    // No disks: the rootfs are shared.
    assert!(has_line(s, "blocks:"), "output:\n{}", s.output);
}

/// `podman run -it` and `podman exec -it`: a pty sized as podman's terminal, as under runc.
#[test]
fn podman_tty_is_a_pty_sized_as_under_runc() {
    let Some(s) = passed("podman-tty") else {
        return;
    };
    let lines = |rt: &str| prefixed(s, rt);
    for want in [
        "runc run: /dev/pts/0",
        "runc run: 41 97",
        "runc run: stdin-is-a-tty",
        "runc run: exit=4",
        "runc exec: 33 88",
        "runc exec: exit=6",
    ] {
        assert!(has_line(s, want), "no {want:?} in:\n{}", s.output);
    }
    assert_eq!(lines("runc"), lines("ember"), "output:\n{}", s.output);
}

#[test]
fn podman_exec_into_a_running_container() {
    let Some(s) = passed("podman-exec") else {
        return;
    };
    assert!(has_line(s, "from-exec"), "output:\n{}", s.output);
    assert!(has_line(s, "exec-exit=5"), "output:\n{}", s.output);
    // The container is in its pod's record: the pod's id and the container's, both its id.
    assert!(
        has_line(s, "pod status lists web: 2"),
        "output:\n{}",
        s.output
    );
}

#[test]
fn podman_stop_and_rm_leave_nothing_behind() {
    let Some(s) = passed("podman-stop-rm") else {
        return;
    };
    for want in [
        "stop=0",
        "rm=0",
        "ember processes: 0",
        "state dirs: 0",
        "pods: 0",
    ] {
        assert!(has_line(s, want), "no {want:?} in:\n{}", s.output);
    }
}

#[test]
fn containerd_runc_shim_runs_ember() {
    let Some(s) = passed("ctr-hello") else { return };
    assert!(has_line(s, "hello"), "output:\n{}", s.output);
}

#[test]
fn podman_run_bench_ran_with_both_runtimes() {
    let Some(s) = passed("oci-bench") else { return };
    for rt in ["runc", "ember"] {
        assert!(
            s.output
                .lines()
                .any(|l| l.starts_with(&format!("bench runtime={rt} ")) && l.contains(" rc=0 ")),
            "no successful {rt} run in:\n{}",
            s.output
        );
    }
    for l in s
        .output
        .lines()
        .filter(|l| l.starts_with("bench ") || l.starts_with("phases "))
    {
        eprintln!("{l}");
    }
}

/// ember's shim v2 runs tasks (exit codes, execs, kills, terminals, metrics, delete), hosts
/// the pod's VM itself (no pod process of its own) and leaves nothing behind.
#[test]
fn containerd_shim_v2_runs_tasks_and_leaves_nothing() {
    let Some(s) = passed("ctr-shim-v2") else {
        return;
    };
    for want in [
        "hello-v2",
        "v2-exit=3",
        "from-v2-exec",
        "v2-exec-exit=4",
        "v2-exec-killed=143",
        "v2-tty-exec-exit=6",
        "v2 tty exec: 41 97",
        "v2-tty-run-exit=7",
        "v2 tty run: /dev/pts/0",
        "v2 tty run: 33 88",
        "v2-delete=0",
        "v2 pod processes of their own: 0",
        "v2 pod hosted: yes",
        "v2 VMM process is the shim",
        "v2 shim threads: control pod-vmm vcpu0",
        "v2 containerd's log has the VMM's lines",
        "v2 shim cgroup: /default/v2k",
        "v2 killed shim: cgroup left 0",
        "v2 ember processes: 0",
        "v2 pods: 0",
        "v2 state dirs: 0",
        "v2 task mounts: 0",
    ] {
        assert!(has_line(s, want), "no {want:?} in:\n{}", s.output);
    }
    let metric = |name: &str| -> u64 {
        s.output
            .lines()
            .find_map(|l| l.trim().strip_prefix(&format!("v2 metrics {name}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no metric {name} in:\n{}", s.output))
    };
    assert!(metric("pids.current") >= 1, "output:\n{}", s.output);
    assert!(metric("memory.usage_in_bytes") > 0, "output:\n{}", s.output);
    assert!(metric("cpuacct.usage") > 0, "output:\n{}", s.output);
}

/// `ctr run --cni` (the task's network namespace configured between create and start) gives
/// the container the bridge's network under ember's shim v2 and under containerd's runc shim
/// running ember as under runc, and leaves the host's namespace as it was.
#[test]
fn ctr_run_cni_networks_the_task_as_under_runc() {
    let Some(s) = passed("ctr-cni") else {
        return;
    };
    let lines = |rt: &str| prefixed(s, rt);
    for want in [
        "runc eth0: 10.88",
        "runc default routes: 1",
        "runc the gateway answers",
        "runc exit=0",
    ] {
        assert!(has_line(s, want), "no {want:?} in:\n{}", s.output);
    }
    assert_eq!(lines("runc"), lines("ember"), "output:\n{}", s.output);
    assert_eq!(
        lines("runc"),
        lines("runc-shim-ember"),
        "output:\n{}",
        s.output
    );
    let counts = s
        .output
        .lines()
        .find_map(|l| l.trim().strip_prefix("the host's namespace before: "))
        .unwrap_or_else(|| panic!("no link counts in:\n{}", s.output));
    let (before, after) = counts.split_once("; after: ").expect("two counts");
    assert_eq!(before, after, "the host's links changed:\n{}", s.output);
}

/// containerd's resources beside runc: `ctr run --memory-limit 1g --cpus 2` sets the same
/// cgroup limits on the container under containerd's runc shim (plain runc), ember's shim v2
/// and the runc shim running ember, and ember's VM is sized by them (1 GiB + its overhead).
#[test]
fn ctr_resources_limit_the_container_as_under_runc_and_size_the_vm() {
    let Some(s) = passed("ctr-resources") else {
        return;
    };
    let value = |key: &str| number(s, key);
    for rt in ["runc", "ember", "runc-shim-ember"] {
        for want in [
            format!("{rt} memory.max 1073741824"),
            format!("{rt} cpu.max 200000 100000"),
            format!("{rt} exit=0"),
        ] {
            assert!(has_line(s, &want), "no {want:?} in:\n{}", s.output);
        }
    }
    for rt in ["ember", "runc-shim-ember"] {
        let kib = value(&format!("{rt} memtotal_kib "));
        assert!(
            (1 << 20..(1 << 20) + (512 << 10)).contains(&kib),
            "{rt}: a VM of {kib} KiB for a 1 GiB limit:\n{}",
            s.output
        );
        assert_eq!(value(&format!("{rt} nproc ")), 2, "output:\n{}", s.output);
    }
    // runc's container sees the host's memory.
    assert!(value("runc memtotal_kib ") > value("ember memtotal_kib "));
}

/// containerd beside runc: a bind mount is live both ways under containerd's runc shim and
/// under ember's shim v2.
#[test]
fn ctr_bind_mounts_are_live_as_under_runc() {
    let Some(s) = passed("ctr-volumes") else {
        return;
    };
    for rt in ["runc", "ember"] {
        for want in [
            format!("{rt} says: host-data-7"),
            format!("{rt} host sees: from-ctr"),
        ] {
            assert!(has_line(s, &want), "no {want:?} in:\n{}", s.output);
        }
    }
}

/// containerd's CRI plugin, driven by the project's CRI client (rig/cri-test) as the kubelet
/// drives it: RunPodSandbox, CreateContainer x2, StartContainer, ExecSync, ContainerStatus,
/// `kubectl exec -it` and `attach -it` (streaming Exec/Attach with a terminal, its size and
/// stdin), StopContainer, StopPodSandbox, RemovePodSandbox — with the RuntimeClass handler runc and
/// with ember (its shim v2), the pod on containerd's CNI network. Under ember both containers
/// share one kernel that is not the host's (one VM for the pod), see the pod's IP, hostname
/// and namespaces as under runc, reach and are reached by the host, and nothing of the pod
/// remains.
#[test]
fn cri_pod_with_the_ember_handler_runs_in_one_vm_as_under_runc() {
    let Some(s) = passed("cri-handlers") else {
        return;
    };
    let value = |h: &str, key: &str| -> String {
        let prefix = format!("{h}: {key}");
        s.output
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| panic!("no {prefix:?} line in:\n{}", s.output))
    };
    for h in ["runc", "ember"] {
        for want in [
            "sandbox SANDBOX_READY",
            "c1 CONTAINER_RUNNING",
            "c2 CONTAINER_RUNNING",
            "c1 and c2 share one kernel: yes",
            "c1 memory.max after UpdateContainerResources: 67108864",
            "c1 eth0 has the pod's IP: yes",
            "hostname is the sandbox's: yes",
            "c1 and c2 share uts and ipc namespaces: yes",
            "c1 -> host http: from-the-host",
            "exec stdout=out-ok stderr=err-ok exit=3",
            "exec -it: RESULT-42 size=30x100 terminal=yes /dev/pts/ exit=5",
            "attach -it: ATTACH-42 terminal=yes",
            "c3 after detach: CONTAINER_RUNNING",
            "c2 stats: cpu counted yes, working set counted yes",
            "c2 after c1 stopped: c2-still-answers",
            "after RemovePodSandbox: 0 sandboxes, 0 containers",
            "ember processes left: 0",
            "pods left: 0",
            "state dirs left: 0",
            "task mounts left: 0",
            "sandbox mounts left: 0",
        ] {
            let want = format!("{h}: {want}");
            assert!(has_line(s, &want), "no {want:?} in:\n{}", s.output);
        }
    }
    // The host reaches c2's server on the pod's IP (it serves c2's /etc/hostname).
    assert_eq!(value("runc", "host -> c2 http:"), "cri-runc");
    assert_eq!(value("ember", "host -> c2 http:"), "cri-ember");
    assert_eq!(value("runc", "containers run on the host's kernel:"), "yes");
    assert_eq!(value("ember", "containers run on the host's kernel:"), "no");
    // ember's pod VM runs in the pod's one shim (no pod process of its own).
    assert_eq!(value("runc", "shims running a vCPU:"), "0");
    assert_eq!(value("ember", "shims running a vCPU:"), "1");
    assert_eq!(value("ember", "pod processes of their own:"), "0");
    // A stopped container ends the same way (state and exit code) under both.
    assert_eq!(
        value("ember", "c1 after stop:"),
        value("runc", "c1 after stop:")
    );
    for l in s.output.lines().filter(|l| l.contains(": phases ")) {
        eprintln!("{l}");
    }
}

#[test]
fn podman_containers_start_from_an_oci_template_as_under_runc() {
    let Some(s) = passed("podman-template") else {
        return;
    };
    for rt in ["runc", "ember"] {
        assert!(s.output.contains(&format!("{rt} exit=3")), "{}", s.output);
    }
    assert!(
        s.output.contains("ember: started from the template"),
        "{}",
        s.output
    );
    // Both containers got an address on podman's bridge.
    assert!(s.output.matches("inet 10.88.").count() >= 2, "{}", s.output);
    let runs: Vec<&str> = s
        .output
        .lines()
        .filter(|l| l.starts_with("template-bench "))
        .collect();
    assert_eq!(runs.len(), 9, "{}", s.output);
    assert!(runs.iter().all(|l| l.contains(" rc=0 ")), "{}", s.output);
}
