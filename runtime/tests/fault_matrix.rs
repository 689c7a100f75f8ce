//! The fault matrix of a pod's lifecycle (host-agent mode). For each step of create, start,
//! container start, exec, stop and delete, an ember process involved there (the CLI client,
//! the pod process) stops itself at that step (`EMBER_TEST_PAUSE_AT=<step>`, the test seam in
//! `pod_vmm::proc::pause_at`) and is killed with SIGKILL; each verb also runs on a full
//! (ENOSPC) and on a read-only state root (a read-only view of it: the pod process keeps the
//! writable root), where `status` must still answer. After each cell: `status` explains the pod (or says
//! it does not exist), `delete --force` removes it, and nothing is left (processes, mounts,
//! sockets, state entries). Prints the table kept in `rig/RELIABILITY.md` ("Fault matrix"):
//! `cargo test -p ember-runtime --test fault_matrix -- --nocapture`.

mod support;

use std::process::{Child, Stdio};
use std::time::Duration;
use support::{
    drop_view, fill, kill9, mount_small_tmpfs, prerequisites, processes_naming, read_only_view,
    wait_for, Env,
};

/// How far a cell's pod is brought before its verb runs.
#[derive(Clone, Copy, PartialEq, PartialOrd)]
enum Setup {
    Nothing,
    Created,
    Running,
    ContainerRunning,
}

const VERBS: [(&str, Setup, &[&str]); 6] = [
    ("create", Setup::Nothing, &["pod", "create", "p"]),
    ("start", Setup::Created, &["pod", "start", "p"]),
    (
        "container start",
        Setup::Running,
        &["container", "start", "p", "c0"],
    ),
    (
        "exec",
        Setup::ContainerRunning,
        &["container", "exec", "p", "c0", "--", "true"],
    ),
    ("stop", Setup::ContainerRunning, &["pod", "stop", "p"]),
    (
        "delete",
        Setup::ContainerRunning,
        &["pod", "delete", "--force", "p"],
    ),
];

/// (step, verb index, who pauses there, who is killed).
const KILLS: [(&str, usize, Who, Who); 13] = [
    ("create:dir", 0, Who::Client, Who::Client),
    ("start:intent", 1, Who::Client, Who::Client),
    ("start:spawned", 1, Who::Client, Who::Client),
    ("start:spawned", 1, Who::Client, Who::Pod),
    ("vmm:ready", 1, Who::Pod, Who::Client),
    ("vmm:ready", 1, Who::Pod, Who::Pod),
    ("start:recorded", 1, Who::Client, Who::Client),
    ("container-start:intent", 2, Who::Client, Who::Client),
    ("exec:call", 3, Who::Client, Who::Client),
    ("exec:call", 3, Who::Client, Who::Pod),
    ("stop:intent", 4, Who::Client, Who::Client),
    ("stop:requested", 4, Who::Client, Who::Client),
    ("delete:removing", 5, Who::Client, Who::Client),
];

#[derive(Clone, Copy, Debug, PartialEq)]
enum Who {
    Client,
    Pod,
}

fn setup(env: &Env, to: Setup) {
    if to >= Setup::Created {
        env.ok(&["pod", "create", "p"]);
        env.create_sleeper("p", "c0");
    }
    if to >= Setup::Running {
        env.ok(&["pod", "start", "p"]);
    }
    if to >= Setup::ContainerRunning {
        env.ok(&["container", "start", "p", "c0"]);
    }
}

fn stopped(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.rsplit_once(") ").is_some_and(|(_, r)| r.starts_with('T')))
}

fn pod_process(env: &Env) -> Option<i32> {
    processes_naming(&env.root).into_iter().find(|pid| {
        std::fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|c| String::from_utf8_lossy(&c).contains("__vmm"))
    })
}

/// After a cell: what `status` says, whether `delete --force` removed it, what leaked.
fn check(env: &Env) -> (String, bool, String) {
    let st = env.run(&["pod", "status", "--json", "p"]);
    let explained = if st.status.success() {
        let v: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
        let reason = v["stop_reason"].as_str().unwrap_or("").to_string();
        let short: String = reason.chars().take(40).collect();
        if short.is_empty() {
            v["state"].as_str().unwrap().to_string()
        } else {
            format!("{} ({short})", v["state"].as_str().unwrap())
        }
    } else {
        let err = String::from_utf8_lossy(&st.stderr);
        if err.contains("does not exist") {
            "does not exist".into()
        } else {
            format!("ERROR {}", err.trim())
        }
    };
    let del = env.run(&["pod", "delete", "--force", "p"]);
    let removed =
        del.status.success() || String::from_utf8_lossy(&del.stderr).contains("does not exist");
    let l = env.leaks();
    let mounts = l
        .mounts
        .iter()
        .filter(|m| **m != env.root.to_string_lossy())
        .count();
    let leaks = format!(
        "{}/{}/{}/{}",
        l.processes.len(),
        mounts,
        l.sockets.len(),
        l.dirs.len()
    );
    (explained, removed, leaks)
}

fn wait_child(c: &mut Child) -> String {
    match c.wait().unwrap().code() {
        Some(n) => format!("exit {n}"),
        None => "killed".into(),
    }
}

#[test]
fn fault_matrix() {
    let Some(agent) = prerequisites("fault_matrix") else {
        return;
    };
    let mut rows = Vec::new();
    let mut bad = Vec::new();
    for (step, verb, pauses, victim) in KILLS {
        let env = Env::new("matrix", agent.clone());
        let (name, to, args) = VERBS[verb];
        setup(&env, to);
        let mut client = env
            .cmd(args)
            .env("EMBER_TEST_PAUSE_AT", step)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let cpid = client.id() as i32;
        let paused = match pauses {
            Who::Client => wait_for(Duration::from_secs(20), || stopped(cpid)).then_some(cpid),
            Who::Pod => {
                let mut p = None;
                wait_for(Duration::from_secs(20), || {
                    p = pod_process(&env).filter(|p| stopped(*p));
                    p.is_some()
                });
                p
            }
        };
        let Some(paused) = paused else {
            bad.push(format!("{step}: nothing paused"));
            let _ = client.kill();
            continue;
        };
        let target = match victim {
            Who::Client => cpid,
            Who::Pod => pod_process(&env).unwrap_or(paused),
        };
        kill9(target);
        if paused != target {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(paused),
                nix::sys::signal::Signal::SIGCONT,
            );
        }
        let client_end = wait_child(&mut client);
        // Give an orphaned pod process its moment to end itself.
        wait_for(Duration::from_secs(5), || pod_process(&env).is_none());
        let after_kill = processes_naming(&env.root).len();
        let (explained, removed, leaks) = check(&env);
        let cell = format!(
            "| {name} | `{step}` | {victim:?} | {client_end} | {after_kill} | {explained} | {} | {leaks} |",
            if removed { "yes" } else { "NO" }
        );
        if !removed || leaks != "0/0/0/0" || explained.starts_with("ERROR") {
            bad.push(cell.clone());
        }
        rows.push(cell);
    }
    for fault in ["full", "read-only"] {
        for (name, to, args) in VERBS {
            let env = Env::new("matrix", agent.clone());
            mount_small_tmpfs(&env.root, "16m");
            setup(&env, to);
            let filler = (fault == "full").then(|| fill(&env.root));
            // Read-only: the verb sees the root through a read-only bind mount while the pod
            // process keeps the writable root (a running pod process holds files open for
            // writing there, so the tmpfs itself cannot go read-only: EBUSY).
            let view = (fault == "read-only").then(|| read_only_view(&env.root));
            let out = env
                .cmd_in(view.as_deref().unwrap_or(&env.root), args)
                .output()
                .unwrap();
            let outcome = if out.status.success() {
                "ok".to_string()
            } else {
                let err = String::from_utf8_lossy(&out.stderr);
                let cause = if err.contains("No space") {
                    "ENOSPC"
                } else if err.contains("Read-only") {
                    "EROFS"
                } else {
                    "other"
                };
                format!("exit {} ({cause})", out.status.code().unwrap_or(-1))
            };
            // Reads work while the fault lasts.
            let read = env
                .cmd_in(
                    view.as_deref().unwrap_or(&env.root),
                    &["pod", "status", "p"],
                )
                .output()
                .unwrap();
            let read_err = String::from_utf8_lossy(&read.stderr).into_owned();
            let read_ok = read.status.success() || read_err.contains("does not exist");
            if let Some(f) = filler {
                std::fs::remove_file(f).unwrap();
            }
            if let Some(v) = view {
                drop_view(&v);
            }
            let after = processes_naming(&env.root).len();
            let (explained, removed, leaks) = check(&env);
            let cell = format!(
                "| {name} | {fault} root | - | {outcome} | {after} | {explained} | {} | {leaks} |",
                if removed { "yes" } else { "NO" }
            );
            if !removed || leaks != "0/0/0/0" || explained.starts_with("ERROR") || !read_ok {
                bad.push(format!("{cell} (status during the fault: {read_err})"));
            }
            rows.push(cell);
        }
    }
    println!("| verb | fault (step) | killed | verb's end | processes after | status says | delete --force removes | leaks (proc/mount/sock/entries) |");
    println!("|---|---|---|---|---|---|---|---|");
    for r in &rows {
        println!("{r}");
    }
    assert!(
        bad.is_empty(),
        "cells that leak or are not explained:\n{}",
        bad.join("\n")
    );
}
