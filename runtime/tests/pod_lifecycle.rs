//! A pod's lifecycle that cannot leak (host-agent mode): a `pod start` client killed while it
//! waits for the guest leaves no pod process behind and a pod that `status` explains; a full
//! state root splits neither a pod start, a container start nor a pod stop from the guest, and
//! `status` tells what the guest has where the record could not say it.

mod support;

use std::path::{Path, PathBuf};
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

/// Creates pod `p` with a host agent that takes a second to start, and starts it in a
/// `pod start` child (output discarded); returns once its pod process exists.
fn start_slowly(env: &Env) -> std::process::Child {
    let slow = slow_agent(env);
    let created = env
        .cmd(&["pod", "create", "p"])
        .env("EMBER_POD_HOST_AGENT", &slow)
        .output()
        .unwrap();
    assert!(created.status.success());
    let starter = env
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
    starter
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
        let mut starter = start_slowly(&env);
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
    let mut first = start_slowly(&env);
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
    support::mount_small_tmpfs(&env.root, "8m");
    env.ok(&["pod", "create", "p"]);
    env.create_sleeper("p", "c0");
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

/// A pod `p` with a running container `c0` on a small tmpfs root.
fn running_pod_on_tmpfs(env: &Env) {
    support::mount_small_tmpfs(&env.root, "8m");
    env.ok(&["pod", "create", "p"]);
    env.create_sleeper("p", "c0");
    env.ok(&["pod", "start", "p"]);
    env.ok(&["container", "start", "p", "c0"]);
}

/// Whether `pid` is stopped (SIGSTOP: it reached its `EMBER_TEST_PAUSE_AT` step).
fn paused(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.rsplit_once(") ").is_some_and(|(_, r)| r.starts_with('T')))
}

/// Runs `args` with `EMBER_TEST_PAUSE_AT=step`, fills the root while it waits there, lets it
/// go on; returns its output and the filler file.
fn run_filling_at(env: &Env, step: &str, args: &[&str]) -> (std::process::Output, PathBuf) {
    let child = env
        .cmd(args)
        .env("EMBER_TEST_PAUSE_AT", step)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    assert!(
        wait_for(Duration::from_secs(20), || paused(pid)),
        "{args:?} did not reach {step}"
    );
    let filler = support::fill(&env.root);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGCONT,
    )
    .unwrap();
    (child.wait_with_output().unwrap(), filler)
}

#[test]
fn a_full_state_root_fails_stop_and_delete_before_they_touch_the_vm() {
    let Some(agent) = prerequisites("a_full_state_root_fails_stop_and_delete") else {
        return;
    };
    let env = Env::new("stop-enospc", agent);
    running_pod_on_tmpfs(&env);
    let vmm = pod_processes(&env.root);
    assert_eq!(vmm.len(), 1);
    let filler = support::fill(&env.root);
    for args in [
        &["pod", "stop", "p"][..],
        &["pod", "delete", "--force", "p"],
    ] {
        let out = env.run(args);
        assert_eq!(out.status.code(), Some(1), "{args:?} on a full root fails");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("No space left"), "{args:?}: {err}");
        // The VM runs on, as the record says.
        assert_eq!(pod_processes(&env.root), vmm, "{args:?} stopped the VM");
        let v = env.json(&["pod", "status", "--json", "p"]);
        assert_eq!(v["state"], "running", "{v}");
        assert_eq!(v["containers"][0]["state"], "running", "{v}");
        let out = env.ok(&["container", "exec", "p", "c0", "--", "echo", "hi"]);
        assert_eq!(out, "hi\n");
    }
    std::fs::remove_file(filler).unwrap();
    let v = env.json(&["pod", "stop", "--json", "p"]);
    assert_eq!(v["state"], "stopped", "{v}");
    assert!(v["stop_reason"].is_null(), "{v}");
    env.ok(&["pod", "delete", "p"]);
    assert!(env.leaks().mounts == vec![env.root.to_string_lossy().into_owned()]);
    assert!(env.leaks().processes.is_empty(), "{:?}", env.leaks());
}

#[test]
fn a_stop_that_cannot_record_its_end_leaves_a_record_that_says_so() {
    let Some(agent) = prerequisites("a_stop_that_cannot_record_its_end") else {
        return;
    };
    let env = Env::new("stop-end", agent);
    running_pod_on_tmpfs(&env);
    let vmm = pod_processes(&env.root);
    // The intent is stored; the root fills before the stop records its end.
    let (out, filler) = run_filling_at(&env, "stop:intent", &["pod", "stop", "p"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("No space left"), "{err}");
    assert!(
        wait_for(Duration::from_secs(10), || vmm.iter().all(|p| gone(*p))),
        "the stop did not stop the VM"
    );
    // The VM is gone, and so says the record (through its stop intent), full root or not.
    for pass in ["full", "freed"] {
        let v = env.json(&["pod", "status", "--json", "p"]);
        assert_eq!(v["state"], "stopped", "{pass}: {v}");
        let reason = v["stop_reason"].as_str().unwrap_or_default();
        assert!(reason.contains("stop interrupted"), "{pass}: {v}");
        assert_eq!(v["containers"][0]["state"], "stopped", "{pass}: {v}");
        let warned = v["warnings"].as_array().is_some_and(|w| {
            w.iter()
                .any(|w| w.as_str().unwrap().contains("not recorded"))
        });
        assert_eq!(warned, pass == "full", "{pass}: {v}");
        if pass == "full" {
            std::fs::remove_file(&filler).unwrap();
        }
    }
    let rec = std::fs::read_to_string(env.pod_dir("p").join("state.json")).unwrap();
    assert!(!rec.contains("\"stopping\""), "{rec}");
    env.ok(&["pod", "delete", "p"]);
    assert!(env.leaks().processes.is_empty(), "{:?}", env.leaks());
}

#[test]
fn status_tells_how_an_interrupted_container_start_stands() {
    let Some(agent) = prerequisites("status_tells_how_an_interrupted_container_start_stands")
    else {
        return;
    };
    let env = Env::new("cstart-status", agent);
    running_pod_on_tmpfs(&env);
    env.create_sleeper("p", "c1");
    // The agent starts c1; the root fills before the start records it.
    let (out, filler) = run_filling_at(
        &env,
        "container-start:intent",
        &["container", "start", "p", "c1"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("No space left"));
    let rec = std::fs::read_to_string(env.pod_dir("p").join("state.json")).unwrap();
    assert!(
        rec.contains("\"starting\": true"),
        "the intent stays: {rec}"
    );
    let c1 = |v: &serde_json::Value| {
        v["containers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"] == "c1")
            .cloned()
            .unwrap()
    };
    // Full root, read-only view of it, then free again: status says what the agent has.
    let v = env.json(&["pod", "status", "--json", "p"]);
    assert_eq!(c1(&v)["state"], "running", "full: {v}");
    let view = support::read_only_view(&env.root);
    let st = env
        .cmd_in(&view, &["pod", "status", "--json", "p"])
        .output()
        .unwrap();
    support::drop_view(&view);
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    assert_eq!(c1(&v)["state"], "running", "read-only: {v}");
    std::fs::remove_file(filler).unwrap();
    let v = env.json(&["pod", "status", "--json", "p"]);
    assert_eq!(c1(&v)["state"], "running", "{v}");
    assert!(v["warnings"].is_null(), "{v}");
    let rec = std::fs::read_to_string(env.pod_dir("p").join("state.json")).unwrap();
    assert!(!rec.contains("\"starting\""), "recorded now: {rec}");
    let out = env.ok(&["container", "exec", "p", "c1", "--", "echo", "hi"]);
    assert_eq!(out, "hi\n");
    env.ok(&["pod", "delete", "--force", "p"]);
    assert!(env.leaks().processes.is_empty(), "{:?}", env.leaks());
}

/// A guest whose agent stops answering (here: its socket taken over by a listener that
/// never accepts, so calls connect and then hear nothing) does not take its pod's verbs with
/// it: `status` answers from the record and the pod process, `stop` gives up on the agent's
/// sync after its short call, stops the machine and says so in the stop reason, and nothing is
/// left.
#[test]
fn a_pod_whose_agent_never_answers_is_still_stopped_and_deleted() {
    let Some(agent) = prerequisites("a_pod_whose_agent_never_answers") else {
        return;
    };
    let env = Env::new("agent-silent", agent);
    running_pod_on_tmpfs(&env);
    let vmm = pod_processes(&env.root);
    let all = processes_naming(&env.root);
    let sock = env.pod_dir("p").join("agent.sock");
    std::fs::remove_file(&sock).unwrap();
    let _silent = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let v = env.json(&["pod", "status", "--json", "p"]);
    assert_eq!(v["state"], "running", "{v}");
    let v = env.json(&["pod", "stop", "--json", "p"]);
    assert_eq!(v["state"], "stopped", "{v}");
    let reason = v["stop_reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("without the guest's sync"),
        "{v}\n{}",
        std::fs::read_to_string(env.pod_dir("p").join("vmm.log")).unwrap_or_default()
    );
    assert!(
        wait_for(Duration::from_secs(10), || all.iter().all(|p| gone(*p))),
        "the pod process or its agent outlived the stop"
    );
    assert!(!vmm.is_empty());
    env.ok(&["pod", "delete", "p"]);
    assert!(env.leaks().processes.is_empty(), "{:?}", env.leaks());
}
