//! Pod and container API checks (scenario 30-pods.sh): one pod booted in the virtual KVM host,
//! containers from the guest's busybox root and from a pod disk, every call a separate `ember`
//! invocation.

use crate::passed;

fn has(output: &str, needle: &str) -> bool {
    output.lines().any(|l| l.contains(needle))
}

#[test]
fn pod_starts_with_its_containers_and_hooks() {
    let Some(s) = passed("pods-start") else {
        return;
    };
    assert!(has(&s.output, "pod p1 running"), "{}", s.output);
    assert!(has(&s.output, "container c1 ready"), "{}", s.output);
    assert!(
        has(&s.output, "prestart hook got the state"),
        "{}",
        s.output
    );
    // --timings prints the start phases.
    assert!(has(&s.output, "agent_ready"), "{}", s.output);
}

#[test]
fn containers_start() {
    let Some(s) = passed("pods-containers-start") else {
        return;
    };
    assert!(has(&s.output, "container c1 running pid"), "{}", s.output);
}

#[test]
fn exec_prints_output_and_reports_exit_code() {
    let Some(s) = passed("pods-exec") else { return };
    assert!(has(&s.output, "exec output: hello-from-c1"), "{}", s.output);
    assert!(has(&s.output, "exec exit=5"), "{}", s.output);
}

#[test]
fn ps_lists_the_container_process() {
    let Some(s) = passed("pods-ps") else { return };
    assert!(has(&s.output, "sleep 1000"), "{}", s.output);
}

#[test]
fn exit_code_of_a_finished_container_is_reported() {
    let Some(s) = passed("pods-exit-code") else {
        return;
    };
    assert!(has(&s.output, "c2 exit=7"), "{}", s.output);
    assert!(has(&s.output, "container c2 stopped"), "{}", s.output);
    assert!(
        has(&s.output, "c2's exit seen by its pod process"),
        "{}",
        s.output
    );
}

#[test]
fn kill_with_a_signal() {
    let Some(s) = passed("pods-kill") else { return };
    assert!(has(&s.output, "c3 exit=137"), "{}", s.output);
}

#[test]
fn pause_and_resume() {
    let Some(s) = passed("pods-pause-resume") else {
        return;
    };
    // The running container is paused with its pod.
    assert!(
        s.output
            .lines()
            .any(|l| l.starts_with("container c1 paused")),
        "{}",
        s.output
    );
    for line in ["paused", "resumed", "exec after resume ok"] {
        assert!(has(&s.output, line), "{line} missing:\n{}", s.output);
    }
}

#[test]
fn list_and_status_from_separate_invocations() {
    let Some(s) = passed("pods-list-status") else {
        return;
    };
    assert!(
        s.output
            .lines()
            .any(|l| l.starts_with("p1 ") && l.contains("running")),
        "{}",
        s.output
    );
}

#[test]
fn container_rootfs_on_a_pod_disk() {
    let Some(s) = passed("pods-disk-rootfs") else {
        return;
    };
    assert!(has(&s.output, "marker: disk-rootfs-ok"), "{}", s.output);
}

#[test]
fn stop_and_delete() {
    let Some(s) = passed("pods-stop-delete") else {
        return;
    };
    assert!(has(&s.output, "pod p1 stopped"), "{}", s.output);
    assert!(has(&s.output, "pod directory removed"), "{}", s.output);
    assert!(has(&s.output, "poststop hook ran"), "{}", s.output);
}

#[test]
fn killed_pod_process_leaves_the_pod_stopped() {
    let Some(s) = passed("pods-vmm-killed") else {
        return;
    };
    assert!(
        has(&s.output, "pod p2 stopped (VMM process"),
        "{}",
        s.output
    );
}

/// `ember pod events` on the running pod told, in order, the guest agent's report of c3's end
/// (killed by SIGKILL), the pause and the resume, each with its time.
#[test]
fn pod_events_follow_a_running_pod() {
    let Some(s) = passed("pods-events") else {
        return;
    };
    let lines: Vec<&str> = s.output.lines().filter(|l| l.starts_with("20")).collect();
    let what: Vec<&str> = lines
        .iter()
        .map(|l| l.split_once(' ').map_or("", |(_, w)| w))
        .collect();
    assert_eq!(
        what,
        [
            "container c3 exited: killed by signal 9 (code 137)",
            "paused",
            "resumed"
        ],
        "{}",
        s.output
    );
}

/// Every thread of the pod process runs under a seccomp filter: the guest-facing ones under
/// their own, the main thread (whose poststop hooks run in a runner) under the control list.
#[test]
fn pod_process_threads_are_confined_by_seccomp() {
    let Some(s) = passed("pods-seccomp") else {
        return;
    };
    let mode = |thread: &str| {
        s.output
            .lines()
            .find(|l| l.starts_with(&format!("thread {thread} ")))
            .unwrap_or_else(|| panic!("no thread {thread} in:\n{}", s.output))
            .to_string()
    };
    for thread in ["vcpu0", "event-loop", "control", "vm"] {
        assert!(mode(thread).contains("seccomp=2"), "{}", s.output);
    }
    // The vCPU stacks its filter on the one of the thread that started it.
    assert!(mode("vcpu0").contains("filters=2"), "{}", s.output);
    // Capabilities per thread: none for a vCPU, the file ones for the event loop.
    assert!(
        mode("vcpu0").contains("caps=0000000000000000"),
        "{}",
        s.output
    );
    assert!(
        mode("event-loop").contains("caps=000000008800001f"),
        "{}",
        s.output
    );
    // The main thread too, since the VM was built (its poststop hooks run in a runner).
    assert!(
        mode("ember").contains("seccomp=2 filters=1"),
        "{}",
        s.output
    );
    let threads: Vec<&str> = s
        .output
        .lines()
        .filter(|l| l.starts_with("thread "))
        .collect();
    assert!(
        threads.iter().all(|l| l.contains(" seccomp=2 ")),
        "a thread without its filter: {threads:#?}"
    );
    // The vCPU runs as the pod's own user (0x60000000 + the pod process's pid); the other
    // threads stay root.
    let user = s
        .output
        .lines()
        .find_map(|l| l.strip_prefix("vcpu user: "))
        .unwrap_or_else(|| panic!("no vcpu user in:\n{}", s.output))
        .trim()
        .to_string();
    assert!(
        mode("vcpu0").ends_with(&format!(" uid={user}")),
        "{}",
        s.output
    );
    for thread in ["event-loop", "control", "vm", "ember"] {
        assert!(mode(thread).ends_with(" uid=0"), "{}", s.output);
    }
}

/// A guest flooding its console: its pod's console.log stops at the pod's limit (one marker,
/// one warning) and the other pod's exec answers throughout.
#[test]
fn a_console_flooding_guest_is_capped_and_another_pod_keeps_answering() {
    let Some(s) = passed("pods-misbehaving") else {
        return;
    };
    assert!(
        has(
            &s.output,
            "p1 exec after p3 filled its console: alive-after"
        ),
        "{}",
        s.output
    );
    assert!(
        has(&s.output, "p1 exec while p3 floods: alive-0"),
        "{}",
        s.output
    );
    let bytes: u64 = s
        .output
        .lines()
        .find_map(|l| l.strip_prefix("p3 console bytes: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no console size in:\n{}", s.output));
    // The limit plus the marker line.
    assert!(
        (65_536..=65_536 + 64).contains(&bytes),
        "{bytes}\n{}",
        s.output
    );
    assert!(has(&s.output, "p3 console markers: 1"), "{}", s.output);
    assert!(has(&s.output, "p3 vmm.log has the warning"), "{}", s.output);
    assert!(has(&s.output, "p3 stopped and deleted"), "{}", s.output);
}

/// `k=v` counters of the vsock device from a `PREFIX virtio-vsock@0x... k=v ...` line.
fn vsock_counters(output: &str, prefix: &str) -> std::collections::HashMap<String, u64> {
    let line = output
        .lines()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} line in:\n{output}"));
    line.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| {
            let v = v
                .parse()
                .unwrap_or_else(|_| panic!("{kv:?} in {line}", kv = (k, v)));
            (k.to_string(), v)
        })
        .collect()
}

/// A guest opening vsock connections as fast as it can: a host listener that never accepts
/// costs it refusals, not a stalled device; it stops at its own 512 connections; its own pod's
/// exec and another pod's exec answer meanwhile; the pod process's descriptors stay bounded
/// and the connections are gone once the container is killed.
#[test]
fn a_vsock_flooding_guest_stops_at_its_limit_and_both_pods_keep_answering() {
    let Some(s) = passed("pods-vsock-flood") else {
        return;
    };
    let out = &s.output;
    // "p5 busy listener: vsock-flood port 5004: opened 9 of 200, refused 191 (fd limit 4096)"
    let opened = |what: &str| -> (u64, u64) {
        let line = out
            .lines()
            .find_map(|l| l.strip_prefix(what))
            .unwrap_or_else(|| panic!("no {what:?} in:\n{out}"));
        let num = |after: &str| -> u64 {
            line.split(after)
                .nth(1)
                .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{after:?} in {line}"))
        };
        assert!(!line.contains("other error"), "{line}");
        (num("opened "), num("refused "))
    };
    let (busy_ok, busy_refused) = opened("p5 busy listener: vsock-flood port 5004: ");
    assert_eq!(busy_ok + busy_refused, 200, "{out}");
    // A backlog of 8 (the kernel takes one more): the rest refused.
    assert!((1..=16).contains(&busy_ok), "{busy_ok}\n{out}");
    let (held_ok, held_refused) = opened("p5 holding listener: vsock-flood port 5003: ");
    assert_eq!(held_ok + held_refused, 1200, "{out}");
    assert_eq!(busy_ok + held_ok, 512, "the guest's limit\n{out}");

    let flooded = vsock_counters(out, "p5 stats while flooded: ");
    assert_eq!(flooded["guest_connections"], 512, "{out}");
    assert_eq!(flooded["guest_refused_busy"], busy_refused, "{out}");
    assert_eq!(flooded["guest_refused_limit"], held_refused, "{out}");
    assert!(
        has(
            out,
            "p5 exec while its guest holds its connections: own-alive"
        ),
        "{out}"
    );
    assert!(
        has(out, "p1 exec while p5 holds its connections: alive-held"),
        "{out}"
    );
    let fds = |what: &str| -> u64 {
        out.lines()
            .find_map(|l| l.strip_prefix(what))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {what:?} in:\n{out}"))
    };
    let during = fds("p5 pod process descriptors while flooded: ");
    // The guest's 512, a host connection or two, and the process's own (under 128).
    assert!((512..512 + 128).contains(&during), "{during}\n{out}");
    let after = vsock_counters(out, "p5 stats after the kill: ");
    assert_eq!(after["guest_connections"], 0, "{out}");
    let left = fds("p5 pod process descriptors after the kill: ");
    assert!(left < 128, "{left}\n{out}");
    assert!(has(out, "p5 stopped and deleted"), "{out}");
}

/// A guest whose agent stops answering (a SCHED_FIFO busy loop on its one vCPU): the pod
/// process's health check stops its VM after `agent_timeout_secs` (30), records why and runs
/// its poststop hook, while the other pod's execs answer throughout.
#[test]
fn a_pod_whose_agent_stops_answering_is_stopped_with_the_reason_and_another_pod_carries_on() {
    let Some(s) = passed("pods-agent-silent") else {
        return;
    };
    let out = &s.output;
    assert!(has(out, "p6 exec before the hog spins: own-alive"), "{out}");
    let reason = out
        .lines()
        .find_map(|l| l.strip_prefix("p6 stopped after "))
        .unwrap_or_else(|| panic!("no stop line in:\n{out}"));
    assert!(
        reason.contains(": the guest agent did not answer for ")
            && reason.ends_with("(agent_timeout_secs 30): the VM was stopped"),
        "{reason}"
    );
    assert!(has(out, "p6 vmm.log has the warning"), "{out}");
    // The poststop hook ran, through the pod process's hook runner, with the stopped state.
    let hook = out
        .lines()
        .find_map(|l| l.strip_prefix("p6 poststop hook got: "))
        .unwrap_or_else(|| panic!("no poststop line in:\n{out}"));
    let state: serde_json::Value =
        serde_json::from_str(hook).unwrap_or_else(|e| panic!("{e}: {hook}\n{out}"));
    assert_eq!(state["id"], "p6", "{hook}");
    assert_eq!(state["status"], "stopped", "{hook}");
    assert!(has(out, "container hog stopped"), "{out}");
    let during: Vec<&str> = out
        .lines()
        .filter_map(|l| l.strip_prefix("p1 exec while p6's agent is silent: "))
        .collect();
    assert!(!during.is_empty(), "{out}");
    assert!(during.iter().all(|l| l.starts_with("alive-")), "{during:?}");
    assert!(
        has(out, "p1 exec after p6 was stopped: alive-after"),
        "{out}"
    );
    assert!(has(out, "p6 deleted"), "{out}");
}

/// A rate-limited disk (1 MiB/s): reading 8 MiB of it waits for tokens, an unlimited disk of
/// the same pod does not, and another pod's exec answers meanwhile; a flood of writes to the
/// unlimited disk, then to a virtio-fs share, leaves both pods' execs answering.
#[test]
fn a_rate_limited_disk_throttles_its_guest_and_another_pod_keeps_answering() {
    let Some(s) = passed("pods-throttled") else {
        return;
    };
    // "read of /dev/vda: exit 0, 7.4 s, 8388608 bytes"
    let read = |dev: &str| -> f64 {
        let line = s
            .output
            .lines()
            .find_map(|l| l.strip_prefix(&format!("read of /dev/{dev}: ")))
            .unwrap_or_else(|| panic!("no read of {dev} in:\n{}", s.output));
        assert!(line.starts_with("exit 0, "), "{line}\n{}", s.output);
        assert!(line.ends_with(", 8388608 bytes"), "{line}\n{}", s.output);
        line["exit 0, ".len()..]
            .split(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{line}"))
    };
    read("vdb");
    // 7 MiB beyond the full bucket at 1 MiB/s.
    let limited = read("vda");
    assert!(limited >= 6.5, "{limited} s\n{}", s.output);
    assert!(
        has(&s.output, "p1 exec while p4 reads its limited disk: alive"),
        "{}",
        s.output
    );
    // The floods of its unlimited disk (synced writes) and of its virtio-fs share: both pods'
    // execs answered during each; what the flood did, by its first number.
    let flood = |what: &str| -> u64 {
        for i in 1..=2 {
            for line in [
                format!("p1 exec while p4 floods its {what}: alive-{i}"),
                format!("p4 exec while it floods its {what}: own-alive-{i}"),
            ] {
                assert!(has(&s.output, &line), "no {line:?} in:\n{}", s.output);
            }
        }
        let report = s
            .output
            .lines()
            .find_map(|l| l.trim().strip_prefix(&format!("p4 {what} flood: exit 0, ")))
            .unwrap_or_else(|| panic!("no successful {what} flood in:\n{}", s.output));
        report
            .split(' ')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{report}"))
    };
    // MiB written to the disk; rounds of a 1 MiB rewrite and 10 small files on the share.
    assert!(flood("disk") >= 16, "{}", s.output);
    assert!(flood("share") >= 4, "{}", s.output);
    assert!(
        has(
            &s.output,
            "p4 share on the host after the flood: big0 big1 big2 big3"
        ),
        "{}",
        s.output
    );
    // `ember pod stats`: the limited disk (attached first) counted its waits, the other none.
    let waits: Vec<u64> = s
        .output
        .lines()
        .filter_map(|l| l.trim().strip_prefix("stats: virtio-blk@"))
        .filter_map(|l| l.split("requests_throttled=").nth(1)?.trim().parse().ok())
        .collect();
    assert_eq!(waits.len(), 2, "{}", s.output);
    assert!(waits[0] > 0 && waits[1] == 0, "{waits:?}\n{}", s.output);
    assert!(has(&s.output, "p4 stopped and deleted"), "{}", s.output);
}

/// The pod process's guest-facing threads run in a jail that holds only what the VM needs;
/// the main thread keeps the host's files.
#[test]
fn pod_process_guest_facing_threads_are_jailed() {
    let Some(s) = passed("pods-jail") else {
        return;
    };
    for thread in ["vcpu0", "event-loop"] {
        assert!(
            has(
                &s.output,
                &format!("thread {thread} cannot see /etc/passwd")
            ),
            "{}",
            s.output
        );
        assert!(
            has(&s.output, &format!("thread {thread} sees the kernel")),
            "{}",
            s.output
        );
        assert!(
            has(
                &s.output,
                &format!("thread {thread} sees the pod directory")
            ),
            "{}",
            s.output
        );
    }
    assert!(
        has(&s.output, "thread ember sees /etc/passwd"),
        "{}",
        s.output
    );
}

/// The pod process lives in its own cgroup, limited by its VM's size, removed with the pod.
#[test]
fn pod_process_has_its_own_cgroup_sized_from_its_vm() {
    let Some(s) = passed("pods-cgroup") else {
        return;
    };
    assert!(
        has(&s.output, "pod process cgroup: /ember/p1"),
        "{}",
        s.output
    );
    // 256 MiB of guest memory + 256 MiB for the VMM; one CPU per vCPU plus one.
    assert!(has(&s.output, "memory.max: 536870912"), "{}", s.output);
    assert!(has(&s.output, "pids.max: 256"), "{}", s.output);
    assert!(has(&s.output, "cpu.max: 200000 100000"), "{}", s.output);
    let Some(stop) = passed("pods-stop-delete") else {
        return;
    };
    assert!(has(&stop.output, "pod cgroup removed"), "{}", stop.output);
}
