//! A pod's lifecycle that cannot leak (host-agent mode): a `pod start` client killed while it
//! waits for the guest leaves no pod process behind and a pod that `status` explains; a full
//! state root splits neither a pod start nor a container start from the guest.

mod support;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use support::{gone, kill9, prerequisites, processes_naming, wait_for, Env};

/// An "agent" that takes a second before it runs the real one, so that a start waits.
fn slow_agent(env: &Env) -> std::path::PathBuf {
    let p = env.root.with_extension("slow-agent");
    std::fs::write(
        &p,
        format!("#!/bin/sh\nsleep 1\nexec {} \"$@\"\n", env.agent.display()),
    )
    .unwrap();
    std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    p
}

/// The pod processes (`ember ... pod __vmm`) of a root.
fn pod_processes(root: &Path) -> Vec<i32> {
    processes_naming(root)
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains("__vmm"))
        })
        .collect()
}

#[test]
fn a_killed_starter_leaves_no_pod_process_and_a_pod_status_explains() {
    let Some(agent) = prerequisites("a_killed_starter_leaves_no_pod_process") else {
        return;
    };
    for signal in [libc::SIGKILL, libc::SIGTERM] {
        let env = Env::new(&format!("starter{signal}"), agent.clone());
        let slow = slow_agent(&env);
        let created = env
            .cmd(&["pod", "create", "p"])
            .env("EMBER_POD_HOST_AGENT", &slow)
            .output()
            .unwrap();
        assert!(created.status.success());
        let mut starter = env
            .cmd(&["pod", "start", "p"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        assert!(
            wait_for(Duration::from_secs(10), || !pod_processes(&env.root)
                .is_empty()),
            "no pod process appeared"
        );
        let vmm = pod_processes(&env.root)[0];
        // SAFETY: plain kill(2) of our own child.
        unsafe { libc::kill(starter.id() as i32, signal) };
        starter.wait().unwrap();
        // The pod process was never committed: it ends itself, agent and all.
        assert!(
            wait_for(Duration::from_secs(10), || gone(vmm)),
            "signal {signal}: pod process {vmm} runs on without its starter"
        );
        assert!(
            wait_for(Duration::from_secs(5), || processes_naming(&env.root)
                .is_empty()),
            "signal {signal}: left running: {:?}",
            processes_naming(&env.root)
        );
        // The record explains what happened.
        let v = env.json(&["pod", "status", "--json", "p"]);
        assert_eq!(v["state"], "stopped", "signal {signal}: {v}");
        let reason = v["stop_reason"].as_str().unwrap_or_default();
        assert!(reason.contains("start interrupted"), "{v}");
        // It starts again, once, and delete --force takes everything.
        let v = env.json(&["pod", "start", "--json", "p"]);
        assert_eq!(v["state"], "running");
        assert_eq!(pod_processes(&env.root).len(), 1);
        env.ok(&["pod", "delete", "--force", "p"]);
        let leaks = env.leaks();
        assert!(leaks.none(), "signal {signal}: {leaks:?}");
    }
}

#[test]
fn a_start_in_progress_is_refused_and_a_dead_starters_start_recovered() {
    let Some(agent) = prerequisites("a_start_in_progress_is_refused") else {
        return;
    };
    let env = Env::new("inprogress", agent);
    let slow = slow_agent(&env);
    let created = env
        .cmd(&["pod", "create", "p"])
        .env("EMBER_POD_HOST_AGENT", &slow)
        .output()
        .unwrap();
    assert!(created.status.success());
    let mut first = env
        .cmd(&["pod", "start", "p"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(wait_for(Duration::from_secs(10), || !pod_processes(
        &env.root
    )
    .is_empty()));
    // A second start while the first one's starter lives is refused at once.
    let out = env.run(&["pod", "start", "p"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("being started by ember process {}", first.id())),
        "{err}"
    );
    assert!(first.wait().unwrap().success());
    assert_eq!(pod_processes(&env.root).len(), 1, "one pod process");
    // The record says who runs it; killing the pod process is noticed.
    let v = env.json(&["pod", "status", "--json", "p"]);
    kill9(v["vmm_pid"].as_i64().unwrap() as i32);
    let v = env.json(&["pod", "status", "--json", "p"]);
    assert_eq!(v["state"], "stopped");
    env.ok(&["pod", "delete", "--force", "p"]);
    assert!(env.leaks().none(), "{:?}", env.leaks());
}

#[test]
fn a_full_state_root_splits_no_container_start_from_the_guest() {
    let Some(agent) = prerequisites("a_full_state_root_splits_no_container_start") else {
        return;
    };
    let env = Env::new("enospc", agent);
    let rootfs = env.rootfs();
    support::mount_small_tmpfs(&env.root, "8m");
    env.ok(&["pod", "create", "p"]);
    env.ok(&[
        "container",
        "create",
        "p",
        "c0",
        "--rootfs-guest-path",
        rootfs.to_str().unwrap(),
        "--",
        "sleep",
        "1000",
    ]);
    env.ok(&["pod", "start", "p"]);
    let filler = support::fill(&env.root);
    let out = env.run(&["container", "start", "p", "c0"]);
    assert_eq!(out.status.code(), Some(1), "a start on a full root fails");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("No space left"), "{err}");
    // What the record says is what the guest has.
    let v = env.json(&["pod", "status", "--json", "p"]);
    let c0 = &v["containers"][0];
    assert_eq!(c0["state"], "ready", "{v}");
    std::fs::remove_file(filler).unwrap();
    // The retry starts it (it does not find it running behind the record's back).
    env.ok(&["container", "start", "p", "c0"]);
    let v = env.json(&["pod", "status", "--json", "p"]);
    assert_eq!(v["containers"][0]["state"], "running", "{v}");
    let out = env.ok(&["container", "exec", "p", "c0", "--", "echo", "hi"]);
    assert_eq!(out, "hi\n");
    env.ok(&["pod", "delete", "--force", "p"]);
    assert!(env.leaks().mounts == vec![env.root.to_string_lossy().into_owned()]);
}
