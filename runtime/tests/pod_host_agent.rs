//! The whole pod path without a VM: `ember pod start` spawns the detached pod process, which
//! runs the guest agent as a host process (`EMBER_POD_HOST_AGENT`, test equipment) behind the
//! same hybrid-vsock socket a VM has; every container call goes through the agent protocol.
//! Needs root (namespaces), /bin/busybox and the ember-agent binary (built by
//! `cargo build -p ember-agent`, or named by `EMBER_AGENT_BIN`); skips with a message otherwise.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

mod support;

use support::{prerequisites, Env};

fn state_of(v: &serde_json::Value, cid: &str) -> (String, Option<i64>) {
    let c = v["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == cid)
        .unwrap();
    (
        c["state"].as_str().unwrap().to_string(),
        c["exit_code"].as_i64(),
    )
}

#[test]
fn pod_and_containers_through_the_agent() {
    let Some(agent) = prerequisites("pod_and_containers_through_the_agent") else {
        return;
    };
    let env = Env::new("life", agent);
    let rootfs = env.rootfs();
    let rootfs = rootfs.to_str().unwrap();
    env.ok(&["pod", "create", "p"]);
    // Created before the start: created in the agent when the pod starts.
    // c0 exits 0 on SIGTERM (as a pid-namespace init it has to handle it itself).
    let trap = "trap 'exit 0' TERM; while :; do sleep 1; done";
    env.ok(&[
        "container",
        "create",
        "p",
        "c0",
        "--rootfs-guest-path",
        rootfs,
        "--",
        "sh",
        "-c",
        trap,
    ]);
    let v = env.json(&["pod", "start", "--json", "p"]);
    assert_eq!(v["state"], "running");
    let vmm_pid = v["vmm_pid"].as_i64().unwrap();
    assert!(Path::new(&format!("/proc/{vmm_pid}")).exists());
    assert!(v["timings"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["name"] == "agent_ready"));

    // Created while the pod runs: straight into the agent.
    env.create_sleeper("p", "c1");
    let c = env.json(&["container", "start", "--json", "p", "c1"]);
    assert_eq!(c["state"], "running");
    assert!(c["pid"].as_i64().unwrap() > 0);
    env.ok(&["container", "start", "p", "c0"]);

    // exec: output and exit codes.
    let out = env.run(&[
        "container",
        "exec",
        "p",
        "c1",
        "--",
        "echo",
        "hello from c1",
    ]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello from c1\n");
    let out = env.run(&[
        "container",
        "exec",
        "p",
        "c1",
        "--",
        "sh",
        "-c",
        "echo oops >&2; exit 3",
    ]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(String::from_utf8_lossy(&out.stderr), "oops\n");
    // -i passes stdin through to EOF; without it the process reads EOF at once.
    for (flag, want) in [(Some("-i"), "3 lines\n"), (None, "0 lines\n")] {
        let mut args = vec!["container", "exec"];
        args.extend(flag);
        args.extend(["p", "c1", "--", "sh", "-c", "echo \"$(wc -l) lines\""]);
        let mut child = env
            .cmd(&args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut input = child.stdin.take().unwrap();
        // Errors are fine without -i: the process does not read.
        let _ = input.write_all(b"a\nb\nc\n");
        drop(input);
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{flag:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), want, "{flag:?}");
    }

    // ps lists the container's process.
    let ps = env.json(&["container", "ps", "--json", "p", "c1"]);
    assert!(
        ps.as_array()
            .unwrap()
            .iter()
            .any(|p| p["cmd"].as_str().unwrap().contains("sleep 1000")),
        "{ps}"
    );

    // A container whose process ends: status notices, with the exit code.
    env.ok(&[
        "container",
        "create",
        "p",
        "c2",
        "--rootfs-guest-path",
        rootfs,
        "--",
        "sh",
        "-c",
        "exit 7",
    ]);
    env.ok(&["container", "start", "p", "c2"]);
    assert_eq!(
        env.run(&["container", "wait", "p", "c2"]).status.code(),
        Some(7)
    );
    let v = env.json(&["pod", "status", "--json", "p"]);
    assert_eq!(state_of(&v, "c2"), ("stopped".into(), Some(7)));

    // kill with a signal: 128 + 9.
    env.ok(&["container", "kill", "p", "c1", "KILL"]);
    assert_eq!(
        env.run(&["container", "wait", "p", "c1"]).status.code(),
        Some(137)
    );
    let c = env.json(&["container", "status", "--json", "p", "c1"]);
    assert_eq!(
        (c["state"].as_str(), c["exit_code"].as_i64()),
        (Some("stopped"), Some(137))
    );
    // Refused on a stopped container.
    assert_eq!(
        env.run(&["container", "exec", "p", "c1", "--", "true"])
            .status
            .code(),
        Some(1)
    );

    // stop (SIGTERM to all, SIGKILL after a grace period) and delete.
    let c = env.json(&["container", "stop", "--json", "p", "c0"]);
    assert_eq!(c["state"], "stopped");
    assert_eq!(c["exit_code"], 0, "c0 handled SIGTERM");
    env.ok(&["container", "delete", "p", "c0"]);

    // pause / resume through the control socket.
    assert_eq!(
        env.json(&["pod", "pause", "--json", "p"])["state"],
        "paused"
    );
    assert_eq!(
        env.json(&["pod", "resume", "--json", "p"])["state"],
        "running"
    );

    // stop: the pod process ends; containers are stopped.
    let v = env.json(&["pod", "stop", "--json", "p"]);
    assert_eq!(v["state"], "stopped");
    assert!(
        !Path::new(&format!("/proc/{vmm_pid}/stat")).exists()
            || std::fs::read_to_string(format!("/proc/{vmm_pid}/stat"))
                .unwrap()
                .contains(") Z")
    );
    assert!(!env.root.join("@pods/p/control.sock").exists());
    env.ok(&["pod", "delete", "p"]);
    assert!(!env.root.join("@pods/p").exists());
}

#[test]
fn killing_the_pod_process_leaves_the_pod_stopped() {
    let Some(agent) = prerequisites("killing_the_pod_process_leaves_the_pod_stopped") else {
        return;
    };
    let env = Env::new("kill", agent);
    env.ok(&["pod", "create", "p"]);
    env.create_sleeper("p", "c");
    let v = env.json(&["pod", "start", "--json", "p"]);
    env.ok(&["container", "start", "p", "c"]);
    let pid = v["vmm_pid"].as_i64().unwrap() as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    // kill(2) only queues the signal: wait until the process is gone (or a zombie).
    let gone = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                s.rsplit_once(") ")
                    .is_some_and(|(_, rest)| rest.starts_with('Z'))
            })
            .unwrap_or(true)
    };
    for _ in 0..500 {
        if gone(pid) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(gone(pid), "pod process {pid} survived SIGKILL");
    // Separate invocations see it stopped.
    let v = env.json(&["pod", "status", "--json", "p"]);
    assert_eq!(v["state"], "stopped", "{v}");
    assert!(v["stop_reason"]
        .as_str()
        .unwrap()
        .contains(&pid.to_string()));
    assert_eq!(state_of(&v, "c").0, "stopped");
    let list = env.json(&["pod", "list", "--json"]);
    assert_eq!(list[0]["state"], "stopped");
    // Calls that need the VM fail cleanly instead of hanging.
    let out = env.run(&["container", "exec", "p", "c", "--", "true"]);
    assert_eq!(out.status.code(), Some(1));
    env.ok(&["pod", "delete", "p"]);
}

/// A pod whose VM ends on its own (here: its host agent is killed) is marked stopped by its pod
/// process, which runs the poststop hooks through its hook runner (its main thread may not
/// start programs under its seccomp filter): each hook gets the stopped state, a failing one
/// is logged and the next still runs, and the runner is gone with the pod process.
#[test]
fn a_pod_that_ends_on_its_own_runs_its_poststop_hooks_through_the_runner() {
    let Some(agent) =
        prerequisites("a_pod_that_ends_on_its_own_runs_its_poststop_hooks_through_the_runner")
    else {
        return;
    };
    let env = Env::new("poststop", agent);
    let first = env.root.join("poststop-1.json");
    let third = env.root.join("poststop-3.txt");
    let cfg = env.root.join("pod.json");
    let hooks = serde_json::json!({"hooks": {"poststop": [
        {"path": "/bin/sh", "args": ["sh", "-c", format!("cat > {}", first.display())]},
        {"path": "/bin/sh", "args": ["sh", "-c", "echo refused >&2; exit 3"]},
        {"path": "/bin/sh", "args": ["sh", "-c", format!("echo third > {}", third.display())]},
    ]}});
    fs::write(&cfg, hooks.to_string()).unwrap();
    env.ok(&["pod", "create", "--config", cfg.to_str().unwrap(), "p"]);
    env.create_sleeper("p", "c");
    let v = env.json(&["pod", "start", "--json", "p"]);
    env.ok(&["container", "start", "p", "c"]);
    let vmm = v["vmm_pid"].as_i64().unwrap() as i32;
    let kids = children(vmm);
    let is_runner = |pid: &i32| {
        fs::read(format!("/proc/{pid}/cmdline"))
            .map(|c| String::from_utf8_lossy(&c).contains("__hooks"))
            .unwrap_or(false)
    };
    let (runners, agents): (Vec<i32>, Vec<i32>) = kids.iter().partition(|p| is_runner(p));
    assert_eq!(
        (runners.len(), agents.len()),
        (1, 1),
        "the pod process's children: {kids:?}"
    );
    assert!(!first.exists(), "a poststop hook ran while the pod ran");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agents[0]),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let state = || env.json(&["pod", "status", "--json", "p"]);
    assert!(
        support::wait_for(Duration::from_secs(30), || state()["state"] == "stopped"),
        "still {}",
        state()
    );
    // The record says stopped once the hooks ran (they run under the record's lock).
    let got: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&first).unwrap()).unwrap();
    assert_eq!(got["id"], "p", "{got}");
    assert_eq!(got["status"], "stopped", "{got}");
    assert_eq!(fs::read_to_string(&third).unwrap().trim(), "third");
    assert!(support::wait_for(
        Duration::from_secs(10),
        || support::gone(vmm)
    ));
    assert!(
        support::gone(runners[0]),
        "the hook runner outlived its pod"
    );
    let log = fs::read_to_string(env.pod_dir("p").join("vmm.log")).unwrap();
    assert!(
        log.contains("poststop hook: Hook /bin/sh failed (exit code 3): refused"),
        "{log}"
    );
    env.ok(&["pod", "delete", "p"]);
}

/// `ember pod events` follows a running pod: each container's exit (its code, or the signal
/// that killed it), pause and resume, and the VM's end, after which the stream ends; a
/// stopped pod has no events to follow.
#[test]
fn pod_events_tell_exits_pause_resume_and_the_end() {
    let Some(agent) = prerequisites("pod_events_tell_exits_pause_resume_and_the_end") else {
        return;
    };
    let env = Env::new("events", agent);
    env.ok(&["pod", "create", "p"]);
    env.create_sleeper("p", "c");
    env.create_container("p", "q", &["sh", "-c", "exit 3"]);
    env.ok(&["pod", "start", "p"]);
    let follower = env
        .cmd(&["pod", "events", "--json", "p"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The subscription is made in milliseconds; what happens before it is not told.
    std::thread::sleep(Duration::from_secs(1));
    env.ok(&["container", "start", "p", "q"]);
    // `wait` exits with the container's code.
    assert_eq!(
        env.run(&["container", "wait", "p", "q"]).status.code(),
        Some(3)
    );
    env.ok(&["pod", "pause", "p"]);
    env.ok(&["pod", "resume", "p"]);
    env.ok(&["container", "start", "p", "c"]);
    env.ok(&["container", "kill", "p", "c", "KILL"]);
    assert_eq!(
        env.run(&["container", "wait", "p", "c"]).status.code(),
        Some(137)
    );
    env.ok(&["pod", "stop", "p"]);
    let out = follower.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let events: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    let at = |want: &serde_json::Value| {
        events
            .iter()
            .position(|e| {
                want.as_object()
                    .unwrap()
                    .iter()
                    .all(|(k, v)| e.get(k) == Some(v))
            })
            .unwrap_or_else(|| panic!("no {want} in {events:#?}"))
    };
    let q = at(
        &serde_json::json!({"event": "container_exited", "container": "q", "code": 3,
                                   "signal": null}),
    );
    let paused = at(&serde_json::json!({"event": "paused"}));
    let resumed = at(&serde_json::json!({"event": "resumed"}));
    let c = at(
        &serde_json::json!({"event": "container_exited", "container": "c", "code": 137,
                                   "signal": 9}),
    );
    assert!(q < resumed && paused < resumed && resumed < c, "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"vm_ended"), "{kinds:?}");
    assert_eq!(kinds.len(), 5, "{kinds:?}");
    assert!(events.iter().all(|e| e["unix_ms"].as_u64().unwrap() > 0));
    // Nothing to follow once stopped.
    let out = env.run(&["pod", "events", "p"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("it must be running to follow its events"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    env.ok(&["pod", "delete", "p"]);
}

/// The pod process's children (the host agent, in this machine).
fn children(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for task in fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
    {
        let Ok(task) = task else { continue };
        let kids = fs::read_to_string(task.path().join("children")).unwrap_or_default();
        out.extend(
            kids.split_whitespace()
                .filter_map(|k| k.parse::<i32>().ok()),
        );
    }
    out
}

/// A pod whose agent stops answering (the host agent stopped by SIGSTOP, as a guest's agent
/// starved by a real-time busy loop would be) is stopped once its `agent_timeout_secs` passed,
/// with that reason in its record and its log; a paused pod, whose agent cannot answer either,
/// is left alone for longer than that.
#[test]
fn a_pod_whose_agent_stops_answering_is_stopped_with_the_reason() {
    let Some(agent) = prerequisites("a_pod_whose_agent_stops_answering_is_stopped_with_the_reason")
    else {
        return;
    };
    let env = Env::new("silent", agent);
    let cfg = env.root.join("pod.json");
    fs::write(&cfg, r#"{"agent_timeout_secs": 10}"#).unwrap();
    env.ok(&["pod", "create", "--config", cfg.to_str().unwrap(), "p"]);
    env.create_sleeper("p", "c");
    let v = env.json(&["pod", "start", "--json", "p"]);
    env.ok(&["container", "start", "p", "c"]);
    let vmm = v["vmm_pid"].as_i64().unwrap() as i32;

    env.ok(&["pod", "pause", "p"]);
    std::thread::sleep(Duration::from_secs(17));
    env.ok(&["pod", "resume", "p"]);
    let out = env.ok(&["container", "exec", "p", "c", "--", "echo", "alive"]);
    assert_eq!(
        out.trim(),
        "alive",
        "a pause outlasting the limit stopped the pod"
    );

    let agents = children(vmm);
    assert_eq!(agents.len(), 1, "the pod process's children: {agents:?}");
    // A wait on the container meanwhile ends with the pod's end and its reason.
    let waiter = env
        .cmd(&["container", "wait", "p", "c"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let stopped = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agents[0]),
        nix::sys::signal::Signal::SIGSTOP,
    )
    .unwrap();
    let state = || env.json(&["pod", "status", "--json", "p"]);
    assert!(
        support::wait_for(Duration::from_secs(60), || state()["state"] == "stopped"),
        "still {} after 60 s of a silent agent",
        state()
    );
    let took = stopped.elapsed();
    // The silence counts from the last answer, up to one health-check interval (5 s) before
    // the agent stopped.
    assert!(took >= Duration::from_secs(5), "stopped after {took:?}");
    let v = state();
    let reason = v["stop_reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("the guest agent did not answer for")
            && reason.contains("(agent_timeout_secs 10): the VM was stopped"),
        "{v}"
    );
    assert_eq!(state_of(&v, "c").0, "stopped");
    let waited = waiter.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&waited.stderr);
    assert_eq!(waited.status.code(), Some(1), "{err}");
    assert!(
        err.contains(
            "Pod p stopped while Wait waited on its agent: the guest agent did not answer for"
        ),
        "{err}"
    );
    let log = fs::read_to_string(env.pod_dir("p").join("vmm.log")).unwrap();
    assert!(
        log.contains("the guest agent did not answer its health check"),
        "{log}"
    );
    assert!(support::wait_for(
        Duration::from_secs(10),
        || support::gone(vmm)
    ));
    assert!(
        support::gone(agents[0]),
        "the silent agent outlived its pod"
    );
    env.ok(&["pod", "delete", "p"]);
    let leaks = env.leaks();
    assert!(leaks.none(), "{leaks:?}");
}

/// A pod whose machine never gets ready: `pod start` fails with a clear error after the start
/// timeout, kills the pod process, and leaves the pod ready to try again.
#[test]
fn start_timeout_and_early_exit_fail_cleanly() {
    let env = Env::new("fail", PathBuf::from("/bin/false"));
    let silent = env.root.join("silent-agent");
    std::fs::write(&silent, "#!/bin/sh\nexec sleep 60\n").unwrap();
    std::fs::set_permissions(&silent, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let cfg = env.root.join("pod.json");
    std::fs::write(&cfg, r#"{"start_timeout_secs": 1}"#).unwrap();
    env.ok(&["pod", "create", "--config", cfg.to_str().unwrap(), "p"]);

    // The "agent" exits at once: the VM ended before it was ready.
    let out = env.run(&["pod", "start", "p"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ended before the guest agent was ready"),
        "{err}"
    );
    assert_eq!(
        env.json(&["pod", "status", "--json", "p"])["state"],
        "ready"
    );

    env.ok(&["pod", "delete", "p"]);

    // The "agent" never announces itself: timeout, and the pod process is gone. (The machine
    // is the pod's, chosen when it was created.)
    let created = env
        .cmd(&["pod", "create", "--config", cfg.to_str().unwrap(), "q"])
        .env("EMBER_POD_HOST_AGENT", &silent)
        .output()
        .unwrap();
    assert!(created.status.success());
    let out = env.run(&["pod", "start", "q"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("did not announce itself within 1s"), "{err}");
    let v = env.json(&["pod", "status", "--json", "q"]);
    assert_eq!(v["state"], "ready");
    assert!(v["vmm_pid"].is_null());
    for sock in ["control.sock", "vsock.sock", "vsock.sock_1025"] {
        assert!(
            !env.root.join("@pods/q").join(sock).exists(),
            "{sock} left behind"
        );
    }
    env.ok(&["pod", "delete", "q"]);
}

// The runc CLI the engines drive, end to end through the pod library and the pod process with
// the agent as the pod's machine: `ember run` relays the container's stdout and stderr and
// exits with its code; `create`/`start` of a long-running container, which `ember pod status`
// lists in its pod; `exec` with its own stdio and exit code; `ps`; `kill`; `delete` leaves no
// pod behind.

/// A bundle with a busybox rootfs and `args` as its process.
fn bundle(dir: &Path, name: &str, args: &[&str]) -> PathBuf {
    let b = dir.join(name);
    let root = b.join("rootfs");
    for d in ["bin", "proc", "dev", "sys", "tmp", "etc", "work"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    for a in ["sh", "echo", "cat", "sleep", "hostname", "pwd", "true"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(a)).unwrap();
    }
    let config = serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {"user": {"uid": 0, "gid": 0}, "args": args,
                    "env": ["PATH=/bin", "GREETING=hello"], "cwd": "/work",
                    "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 512, "soft": 256}]},
        "root": {"path": "rootfs"},
        "hostname": "ocibox",
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"},
                   {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid"]},
                   {"destination": "/etc/hosts", "type": "bind", "source": "/etc/hosts", "options": ["rbind"]}],
        "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "uts"}, {"type": "ipc"}]}
    });
    fs::write(b.join("config.json"), config.to_string()).unwrap();
    b
}

/// [`bundle`] whose spec asks for a network namespace of its own (no path): its pod is made
/// at `start`.
fn bundle_with_own_netns(dir: &Path, name: &str, args: &[&str]) -> PathBuf {
    let b = bundle(dir, name, args);
    let cfg = b.join("config.json");
    let mut spec: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&cfg).unwrap()).unwrap();
    spec["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"type": "network"}));
    fs::write(&cfg, spec.to_string()).unwrap();
    b
}

/// The OCI status (`created`, `running`, `stopped`) `ember state` prints for `id`.
fn oci_status(env: &Env, id: &str) -> String {
    let v = env.json(&["state", id]);
    v["status"].as_str().unwrap_or_default().to_string()
}

#[test]
fn runc_cli_through_the_pod_library_and_the_real_agent() {
    let Some(agent) = prerequisites("runc_cli_through_the_pod_library_and_the_real_agent") else {
        return;
    };
    let oci = Env::new("oci", agent);

    // `run`: output and exit code of the container come back through the pod.
    let b = bundle(
        &oci.root,
        "b1",
        &[
            "sh",
            "-c",
            "echo $GREETING from $(hostname) in $(pwd) nofile=$(ulimit -n); echo oops >&2; exit 3",
        ],
    );
    let out = oci
        .cmd(&["run", "--bundle", b.to_str().unwrap(), "c1"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello from ocibox in /work nofile=256\n"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("oops\n"));
    // `run` deletes what it ran, as runc does.
    assert!(!oci.run(&["state", "c1"]).status.success());

    // A command that is not in the rootfs fails `create` with runc's words (engines map them
    // to their exit codes: podman's 127), before anything is made.
    for (args, want) in [
        (
            &["nosuchcmd"][..],
            r#"exec: "nosuchcmd": executable file not found in $PATH"#,
        ),
        (
            &["/no/such/cmd"][..],
            r#"exec: "/no/such/cmd": stat /no/such/cmd: no such file or directory"#,
        ),
    ] {
        let b = bundle(&oci.root, &format!("nocmd{}", args[0].len()), args);
        let out = oci
            .cmd(&["create", "--bundle", b.to_str().unwrap(), "nocmd"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        // The log line quotes its message (runc's format): \" for ".
        let err = String::from_utf8_lossy(&out.stderr).replace("\\\"", "\"");
        assert!(!out.status.success() && err.contains(want), "{err}");
        assert!(!oci.run(&["state", "nocmd"]).status.success());
        assert_eq!(oci.ok(&["pod", "list", "--json"]).trim(), "[]");
    }

    // A long-running container: in its pod's record, exec, ps, kill, delete.
    let b = bundle(&oci.root, "b2", &["sleep", "1000"]);
    oci.create(&b, "c2");
    assert_eq!(oci_status(&oci, "c2"), "created");
    oci.ok(&["start", "c2"]);
    assert_eq!(oci_status(&oci, "c2"), "running");
    let pod: serde_json::Value =
        serde_json::from_str(&oci.ok(&["pod", "status", "--json", "c2"])).unwrap();
    assert_eq!(pod["state"], "running", "{pod}");
    assert_eq!(pod["containers"][0]["id"], "c2", "{pod}");
    assert_eq!(pod["containers"][0]["state"], "running", "{pod}");

    // The pid `state` reports is where engines reach the container's files (`podman cp`
    // joins its mount namespace): its root is the container's rootfs, not the host's.
    let pid = oci.json(&["state", "c2"])["pid"].as_i64().unwrap();
    // The shim is filtered (its deny-list: no module loading, ptrace, ...).
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(
        status.lines().any(|l| l == "Seccomp:\t2"),
        "the shim has no seccomp filter"
    );
    let probe = format!("ember-cp-probe-{}", std::process::id());
    fs::write(format!("/proc/{pid}/root/{probe}"), b"copied").unwrap();
    let landed = b.join("rootfs").join(&probe);
    let on_host = Path::new("/").join(&probe);
    let in_rootfs = fs::read(&landed).ok();
    let _ = fs::remove_file(&on_host);
    assert_eq!(
        in_rootfs.as_deref(),
        Some(&b"copied"[..]),
        "not in the rootfs"
    );
    let _ = fs::remove_file(&landed);

    let out = oci.run(&[
        "exec",
        "--env",
        "GREETING=hi",
        "c2",
        "sh",
        "-c",
        "echo exec $GREETING; grep -q ' /tmp tmpfs' /proc/mounts && echo tmpfs; exit 4",
    ]);
    assert_eq!(out.status.code(), Some(4));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "exec hi\ntmpfs\n");
    let ps = oci.ok(&["ps", "c2"]);
    assert!(ps.contains("sleep"), "{ps}");
    oci.ok(&["kill", "c2", "KILL"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while oci_status(&oci, "c2") != "stopped" {
        assert!(Instant::now() < deadline, "c2 did not stop after SIGKILL");
        std::thread::sleep(Duration::from_millis(50));
    }
    oci.ok(&["delete", "c2"]);
    let pods = oci.ok(&["pod", "list", "--json"]);
    assert_eq!(pods.trim(), "[]", "no pod is left");
}

/// A container whose spec joins another running container's namespaces by that container's
/// pid (a podman pod's members join the infra container's `/proc/PID/ns/ipc` and `uts`) is
/// made in that container's pod, where those namespaces are, and joins them there: one pod,
/// the same IPC namespace, the owner's hostname. Deleting the member leaves the owner's pod
/// running; nothing is left at the end.
#[test]
fn a_container_joining_anothers_namespaces_by_pid_is_made_in_its_pod() {
    let Some(agent) =
        prerequisites("a_container_joining_anothers_namespaces_by_pid_is_made_in_its_pod")
    else {
        return;
    };
    let oci = Env::new("oci-joiner", agent);
    let create = |b: &Path, id: &str| {
        oci.create(b, id);
        oci.ok(&["start", id]);
    };
    let infra = bundle(&oci.root, "b-infra", &["sleep", "1000"]);
    create(&infra, "infra");
    let pid = oci.json(&["state", "infra"])["pid"].as_i64().unwrap();
    let infra_ipc = oci.ok(&["exec", "infra", "busybox", "readlink", "/proc/self/ns/ipc"]);

    let member = |name: &str, args: &[&str]| {
        let b = bundle(&oci.root, &format!("b-{name}"), args);
        let cfg = b.join("config.json");
        let mut spec: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(&cfg).unwrap()).unwrap();
        spec["hostname"] = "member".into();
        spec["linux"]["namespaces"] = serde_json::json!([
            {"type": "pid"}, {"type": "mount"},
            {"type": "ipc", "path": format!("/proc/{pid}/ns/ipc")},
            {"type": "uts", "path": format!("/proc/{pid}/ns/uts")}]);
        fs::write(&cfg, spec.to_string()).unwrap();
        b
    };
    let m1 = member(
        "m1",
        &["sh", "-c", "busybox readlink /proc/self/ns/ipc; hostname"],
    );
    let out = oci
        .cmd(&["run", "--bundle", m1.to_str().unwrap(), "m1"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{}ocibox\n", infra_ipc),
        "the member has the owner's IPC namespace and name"
    );

    let m2 = member("m2", &["sleep", "1000"]);
    create(&m2, "m2");
    let pods = oci.json(&["pod", "list", "--json"]);
    assert_eq!(pods.as_array().map(Vec::len), Some(1), "one pod: {pods}");
    let pod = oci.json(&["pod", "status", "--json", "infra"]);
    let ids: Vec<&str> = pod["containers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["id"].as_str())
        .collect();
    assert_eq!(ids, ["infra", "m2"], "{pod}");
    oci.ok(&["delete", "--force", "m2"]);
    assert_eq!(oci_status(&oci, "infra"), "running");
    let pod = oci.json(&["pod", "status", "--json", "infra"]);
    assert_eq!(pod["containers"].as_array().map(Vec::len), Some(1), "{pod}");

    // The VM is the owner's: when it exits, a member still in it stops at once (its shim
    // notices that the pod is gone; the engine's stop of the member then finds it stopped).
    let m3 = member("m3", &["sleep", "1000"]);
    create(&m3, "m3");
    oci.ok(&["kill", "infra", "KILL"]);
    let t = Instant::now();
    while oci_status(&oci, "m3") != "stopped" {
        assert!(
            t.elapsed() < Duration::from_secs(4),
            "m3 still {} after its pod's owner exited",
            oci_status(&oci, "m3")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    oci.ok(&["delete", "infra"]);
    oci.ok(&["delete", "m3"]);
    let leaks = oci.leaks();
    assert!(leaks.none(), "{leaks:?}");
}

/// A create that fails after its pod started (a `createRuntime` hook that fails): the pod and
/// its pod process go, nothing is left, and the engine's `--log` file ends with create's own
/// error — the line an engine shows — not with what the cleanup or the pod process logged.
#[test]
fn a_create_failing_after_its_pod_started_ends_the_log_with_its_own_error() {
    let Some(agent) =
        prerequisites("a_create_failing_after_its_pod_started_ends_the_log_with_its_own_error")
    else {
        return;
    };
    let oci = Env::new("oci-hookfail", agent);
    let b = bundle(&oci.root, "b", &["sleep", "1000"]);
    let cfg = b.join("config.json");
    let mut spec: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&cfg).unwrap()).unwrap();
    spec["hooks"] = serde_json::json!({"createRuntime": [
        {"path": "/bin/sh", "args": ["sh", "-c", "echo hook says no >&2; exit 9"]}]});
    fs::write(&cfg, spec.to_string()).unwrap();
    let log = oci.root.join("engine.log");
    let out = oci
        .cmd(&["--log", log.to_str().unwrap(), "--log-format", "json"])
        .args(["create", "--bundle", b.to_str().unwrap(), "c1"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = fs::read_to_string(&log).unwrap();
    // The pod process logged there too (the engine's log is its second log).
    assert!(text.contains("VMM process"), "{text}");
    let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(last["level"], "error", "{text}");
    let msg = last["msg"].as_str().unwrap();
    assert!(
        msg.starts_with("ember create failed") && msg.contains("createRuntime"),
        "{text}"
    );
    assert!(!oci.run(&["state", "c1"]).status.success());
    let leaks = oci.leaks();
    assert!(leaks.none(), "{leaks:?}");
}

/// A spec asking for a network namespace of its own (containerd's runc shim, `ctr run`): the
/// shim takes one (the namespace of the pid `state` reports, which CNI may configure before
/// start) and the container's pod starts with it at `start`. From create on, the pod is
/// recorded (ready, not booted) with the container in it; a created container killed or
/// deleted takes its pod with it, and nothing is left.
#[test]
fn a_container_with_its_own_network_namespace_gets_its_pod_at_start() {
    let Some(agent) =
        prerequisites("a_container_with_its_own_network_namespace_gets_its_pod_at_start")
    else {
        return;
    };
    let oci = Env::new("oci-netns", agent);
    let log = oci.root.join("engine.log");
    // The runtime configuration reaches the pod made at start.
    let conf = oci.root.join("config.toml");
    fs::write(&conf, "[runtime]\nagent_timeout_secs = 45\n").unwrap();
    let with_netns = |name: &str| bundle_with_own_netns(&oci.root, name, &["sleep", "1000"]);
    let create = |b: &Path, id: &str| {
        let ok = oci
            .cmd(&["--log", log.to_str().unwrap()])
            .args(["create", "--bundle", b.to_str().unwrap(), id])
            .env("EMBER_CONFIG", &conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(ok.success(), "create {id}");
    };
    let shim_pid = |id: &str| -> i32 {
        let v: serde_json::Value = serde_json::from_str(&oci.ok(&["state", id])).unwrap();
        v["pid"].as_i64().unwrap() as i32
    };

    let b = with_netns("n1");
    create(&b, "c1");
    assert_eq!(oci_status(&oci, "c1"), "created");
    let pid = shim_pid("c1");
    assert_ne!(
        fs::read_link(format!("/proc/{pid}/ns/net")).unwrap(),
        fs::read_link("/proc/self/ns/net").unwrap(),
        "the shim is in the host's network namespace"
    );
    // Recorded, not booted: the pod is ready with its container created in it.
    let pod: serde_json::Value =
        serde_json::from_str(&oci.ok(&["pod", "status", "--json", "c1"])).unwrap();
    assert_eq!(pod["state"], "ready", "{pod}");
    assert_eq!(pod["vmm_pid"], serde_json::Value::Null, "{pod}");
    assert_eq!(pod["containers"][0]["id"], "c1", "{pod}");
    assert_eq!(pod["containers"][0]["state"], "ready", "{pod}");
    assert_eq!(
        oci.ok(&["ps", "c1"]).lines().count(),
        1,
        "processes before start"
    );
    oci.ok(&["start", "c1"]);
    assert_eq!(oci_status(&oci, "c1"), "running");
    let pod: serde_json::Value =
        serde_json::from_str(&oci.ok(&["pod", "status", "--json", "c1"])).unwrap();
    assert_eq!(pod["containers"][0]["state"], "running", "{pod}");
    let record: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(oci.pod_dir("c1").join("state.json")).unwrap())
            .unwrap();
    assert_eq!(record["config"]["agent_timeout_secs"], 45, "{record}");
    let out = oci.ok(&["exec", "c1", "echo", "in-c1"]);
    assert_eq!(out.trim(), "in-c1");
    oci.ok(&["kill", "c1", "KILL"]);
    assert!(support::wait_for(Duration::from_secs(30), || oci_status(
        &oci, "c1"
    )
        == "stopped"));
    oci.ok(&["delete", "c1"]);
    // The shim logs to the engine's log for the container's whole life (it closed what the
    // engine passed it, but not its log file).
    let text = fs::read_to_string(&log).unwrap();
    assert!(text.contains("container c1 exited with code 137"), "{text}");

    // Killed before it started: stopped, its pod (never booted) gone with it.
    create(&with_netns("n2"), "c2");
    assert!(oci.pod_dir("c2").exists(), "c2's pod is recorded at create");
    let pid = shim_pid("c2");
    oci.ok(&["kill", "c2", "KILL"]);
    assert!(support::wait_for(Duration::from_secs(30), || oci_status(
        &oci, "c2"
    )
        == "stopped"));
    assert!(!oci.pod_dir("c2").exists(), "c2's pod after the kill");
    oci.ok(&["delete", "c2"]);
    assert!(support::wait_for(
        Duration::from_secs(10),
        || support::gone(pid)
    ));

    // Deleted before it started.
    create(&with_netns("n3"), "c3");
    let pid = shim_pid("c3");
    oci.ok(&["delete", "--force", "c3"]);
    assert!(support::wait_for(
        Duration::from_secs(10),
        || support::gone(pid)
    ));
    assert!(!oci.run(&["state", "c3"]).status.success());
    assert!(!oci.pod_dir("c3").exists(), "c3's pod after the delete");
    let leaks = oci.leaks();
    assert!(leaks.none(), "{leaks:?}");
}

/// A container whose pod cannot boot at start (its agent exits at once): `start` fails with
/// the reason, and the container is stopped as runc's is when its process cannot run: its
/// shim ends (exit 255), its pod goes, `delete` removes the rest, nothing is left.
#[test]
fn a_container_whose_pod_cannot_boot_at_start_is_stopped() {
    if prerequisites("a_container_whose_pod_cannot_boot_at_start_is_stopped").is_none() {
        return;
    }
    let oci = Env::new("oci-noboot", PathBuf::from("/bin/false"));
    let b = bundle_with_own_netns(&oci.root, "b", &["true"]);
    oci.create(&b, "c");
    let v = oci.json(&["state", "c"]);
    let pid = v["pid"].as_i64().unwrap() as i32;
    let start = oci.run(&["start", "c"]);
    assert!(!start.status.success(), "start of a pod that cannot boot");
    let err = String::from_utf8_lossy(&start.stderr);
    assert!(err.contains("agent"), "no reason given: {err}");
    assert!(
        support::wait_for(Duration::from_secs(10), || support::gone(pid)),
        "the shim of a container that could not start runs on"
    );
    assert_eq!(oci_status(&oci, "c"), "stopped");
    assert!(!oci.pod_dir("c").exists(), "its pod after the failed start");
    oci.ok(&["delete", "c"]);
    let leaks = oci.leaks();
    assert!(leaks.none(), "{leaks:?}");
}

/// The pod process keeps its containers' table: a container whose process exits is recorded
/// stopped, with its exit code, by the pod process itself (from the agent's event stream),
/// before any client asks the agent.
#[test]
fn the_pod_process_records_a_container_exit_itself() {
    let Some(agent) = prerequisites("the_pod_process_records_a_container_exit_itself") else {
        return;
    };
    let env = Env::new("exit-record", agent);
    env.ok(&["pod", "create", "p"]);
    env.create_container("p", "q", &["sh", "-c", "exit 3"]);
    env.ok(&["pod", "start", "p"]);
    env.ok(&["container", "start", "p", "q"]);
    // Read the record itself: `status` would ask the agent and record it too.
    let record = env.root.join("@pods/p/state.json");
    let q = || -> serde_json::Value {
        let rec: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(&record).unwrap()).unwrap();
        rec["containers"]["q"].clone()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while q()["state"] != "stopped" {
        assert!(Instant::now() < deadline, "not recorded: {}", q());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(q()["exit_code"], 3, "{}", q());
    env.ok(&["pod", "stop", "p"]);
}
