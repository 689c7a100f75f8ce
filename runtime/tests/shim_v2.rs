//! containerd's shim v2 as containerd drives it: a containerd of this test's own (its root,
//! state and socket in a scratch directory, the CRI plugin off) finds `containerd-shim-ember-v2`
//! on its PATH (a link to the `ember` binary) and runs `ctr run --runtime
//! io.containerd.ember.v2`; the pods' machine is the guest agent run on the host
//! (`EMBER_POD_HOST_AGENT`, test equipment), so no VM is needed. Checked: output and exit
//! code of `ctr run`, a detached task with `ctr task exec` (its own output and exit code),
//! `ps`, `kill`, `delete`, and that nothing is left: no ember process, no pod, no state.
//!
//! Needs root, containerd and ctr (Debian's `containerd`), /bin/busybox and the ember-agent
//! binary; skips with a message otherwise.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn agent_bin() -> Option<PathBuf> {
    let ember = PathBuf::from(env!("CARGO_BIN_EXE_ember"));
    let p = ember.parent()?.join("ember-agent");
    p.is_file().then_some(p)
}

/// Root, /bin/busybox and Debian's containerd and ctr; says what is missing.
fn prerequisites() -> bool {
    if !nix::unistd::geteuid().is_root() || !Path::new("/bin/busybox").exists() {
        eprintln!("skipping: needs root and /bin/busybox");
        return false;
    }
    if !have("containerd") || !have("ctr") {
        eprintln!("skipping: containerd and ctr not installed (Debian's containerd)");
        return false;
    }
    true
}

fn have(cmd: &str) -> bool {
    Command::new(cmd)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

struct Containerd {
    dir: PathBuf,
    child: Child,
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // What a failed test left (shims, pod processes) goes too.
        for (pid, _) in ember_pids(&self.dir) {
            // SAFETY: plain kill(2) of a process this test's containerd started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let _ = Command::new("umount")
            .arg("-R")
            .arg(self.dir.join("root"))
            .stderr(Stdio::null())
            .status();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl Containerd {
    /// A containerd of its own for the test `name`, whose pods' agent is `agent`.
    fn start(name: &str, agent: &Path) -> Containerd {
        // A short path: containerd's and the shim's sockets live under it.
        let dir = PathBuf::from(format!("/var/tmp/ember-ctd-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("bin")).unwrap();
        std::os::unix::fs::symlink(
            env!("CARGO_BIN_EXE_ember"),
            dir.join("bin/containerd-shim-ember-v2"),
        )
        .unwrap();
        let config = format!(
            "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = \"{d}/ctd.sock\"\n",
            d = dir.display()
        );
        fs::write(dir.join("config.toml"), config).unwrap();
        let path = format!(
            "{}:{}",
            dir.join("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let child = Command::new("containerd")
            .arg("-c")
            .arg(dir.join("config.toml"))
            .env("PATH", path)
            .env("EMBER_POD_HOST_AGENT", agent)
            .env("EMBER_ROOT", dir.join("ember"))
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.join("containerd.log")).unwrap())
            .spawn()
            .unwrap();
        let ctd = Containerd { dir, child };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ctd.ctr(&["version"]).status.success() {
            assert!(Instant::now() < deadline, "containerd did not come up");
            std::thread::sleep(Duration::from_millis(100));
        }
        ctd
    }

    fn ctr(&self, args: &[&str]) -> Output {
        Command::new("ctr")
            .arg("-a")
            .arg(self.dir.join("ctd.sock"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.ctr(args);
        assert!(
            out.status.success(),
            "ctr {args:?}: {}\n{}\ncontainerd.log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `ctr run -d` of task `id` (`sleep 1000`) with ember's shim v2 on `rootfs`.
    fn run_sleeper(&self, rootfs: &str, id: &str) {
        self.ok(&[
            "run",
            "-d",
            "--runtime",
            "io.containerd.ember.v2",
            "--rootfs",
            rootfs,
            id,
            "sleep",
            "1000",
        ]);
    }

    /// Waits until task `id` no longer runs; `why` names what should have stopped it.
    fn wait_not_running(&self, id: &str, why: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.task_status(id) == "RUNNING" {
            assert!(Instant::now() < deadline, "{id} still running after {why}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The STATUS `ctr task ls` shows for `id`.
    fn task_status(&self, id: &str) -> String {
        self.ok(&["task", "ls"])
            .lines()
            .find(|l| l.split_whitespace().next() == Some(id))
            .and_then(|l| l.split_whitespace().nth(2).map(str::to_string))
            .unwrap_or_default()
    }
}

fn busybox_rootfs(dir: &Path) -> PathBuf {
    let r = dir.join("rootfs");
    for d in ["bin", "proc", "dev", "sys", "tmp", "etc"] {
        fs::create_dir_all(r.join(d)).unwrap();
    }
    fs::copy("/bin/busybox", r.join("bin/busybox")).unwrap();
    for a in ["sh", "echo", "sleep", "true", "cat", "stty", "tty"] {
        std::os::unix::fs::symlink("busybox", r.join("bin").join(a)).unwrap();
    }
    r
}

/// ember processes (shims, pod processes, host agents) started for the containerd in `dir`
/// (its environment names `dir`).
fn ember_processes(dir: &Path) -> Vec<String> {
    ember_pids(dir).into_iter().map(|(_, cmd)| cmd).collect()
}

/// [`ember_processes`] with their pids.
fn ember_pids(dir: &Path) -> Vec<(i32, String)> {
    let needle = dir.to_string_lossy().into_owned();
    let mut found = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let exe = fs::read_link(e.path().join("exe")).unwrap_or_default();
        let name = exe.file_name().unwrap_or_default().to_string_lossy();
        if name != "ember" && name != "ember-agent" {
            continue;
        }
        let env = fs::read(e.path().join("environ")).unwrap_or_default();
        if String::from_utf8_lossy(&env).contains(&needle) {
            let cmd = fs::read(e.path().join("cmdline")).unwrap_or_default();
            let pid = e.file_name().to_string_lossy().parse().unwrap_or(0);
            found.push((pid, String::from_utf8_lossy(&cmd).replace('\0', " ")));
        }
    }
    found
}

/// Waits until no ember process of the containerd in `dir` runs and no ember state is left
/// (containerd cleans up after a dead shim in its own time: `shim delete`), then checks that
/// no task is left.
fn assert_nothing_left(ctd: &Containerd) {
    let state = || -> Vec<_> {
        fs::read_dir(ctd.dir.join("ember"))
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ember_processes(&ctd.dir).is_empty() || !state().is_empty() {
        assert!(
            Instant::now() < deadline,
            "left running: {:?}; ember state left: {:?}",
            ember_processes(&ctd.dir),
            state()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(ctd.ok(&["task", "ls"]).lines().count() <= 1);
}

/// The one running task's pod is hosted by its shim: the pod record names the shim's
/// process (the server, `EMBER_SHIM_V2` in its environment) as the VMM's, marked hosted, and
/// no pod process of its own (`ember pod __vmm`) runs.
fn assert_the_shim_is_the_pod_process(dir: &Path) {
    let procs = ember_processes(dir);
    assert!(
        !procs.iter().any(|p| p.contains("__vmm")),
        "a pod process of its own runs: {procs:?}"
    );
    let pods: Vec<PathBuf> = fs::read_dir(dir.join("ember/@pods"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("state.json").is_file())
        .collect();
    assert_eq!(pods.len(), 1, "{pods:?}");
    let rec: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(pods[0].join("state.json")).unwrap()).unwrap();
    assert_eq!(rec["vmm"]["hosted"], true, "{rec}");
    let pid = rec["vmm"]["pid"].as_i64().unwrap();
    let env = fs::read(format!("/proc/{pid}/environ")).unwrap();
    let env = String::from_utf8_lossy(&env);
    assert!(
        env.split('\0').any(|v| v == "EMBER_SHIM_V2=1"),
        "the pod's VMM process {pid} is not the shim server"
    );
    let threads: Vec<String> = fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .filter_map(|t| fs::read_to_string(t.path().join("comm")).ok())
        .map(|c| c.trim().to_string())
        .collect();
    for name in ["pod-vmm", "control", "agent-watch"] {
        assert!(
            threads.iter().any(|t| t == name),
            "no {name} thread in the shim: {threads:?}"
        );
    }
    // Every thread of the shim is filtered, containerd's ttrpc threads too (its deny-list).
    for t in fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        let status = fs::read_to_string(t.path().join("status")).unwrap_or_default();
        let comm = fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        assert!(
            status.lines().any(|l| l == "Seccomp:\t2"),
            "shim thread {} ({}) has no seccomp filter",
            t.file_name().to_string_lossy(),
            comm.trim()
        );
    }
}

#[test]
fn ctr_runs_tasks_through_containerd_shim_ember_v2() {
    if !prerequisites() {
        return;
    }
    let Some(agent) = agent_bin() else {
        eprintln!("skipping: ember-agent binary not built (cargo build -p ember-agent)");
        return;
    };
    let ctd = Containerd::start("tasks", &agent);
    let rootfs = busybox_rootfs(&ctd.dir);
    let rootfs = rootfs.to_str().unwrap();
    let runtime = ["--runtime", "io.containerd.ember.v2", "--rootfs", rootfs];

    // A task's output and exit code.
    let mut args = vec!["run", "--rm"];
    args.extend(runtime);
    args.extend(["t1", "sh", "-c", "echo hello; exit 3"]);
    let out = ctd.ctr(&args);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\n");

    // A detached task: exec, ps, kill, delete.
    ctd.run_sleeper(rootfs, "t2");
    assert_eq!(ctd.task_status("t2"), "RUNNING");
    // A second start is refused and leaves it running.
    assert!(!ctd.ctr(&["task", "start", "-d", "t2"]).status.success());
    assert_eq!(ctd.task_status("t2"), "RUNNING");
    assert_the_shim_is_the_pod_process(&ctd.dir);
    let out = ctd.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        "t2",
        "sh",
        "-c",
        "echo from-exec; exit 4",
    ]);
    assert_eq!(out.status.code(), Some(4));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "from-exec\n");
    let ps = ctd.ok(&["task", "ps", "t2"]);
    assert!(ps.lines().count() >= 2, "{ps}");
    // Its usage (Stats, as cgroup v1 metrics): at least its one process.
    let metrics = ctd.ok(&["task", "metrics", "t2"]);
    let pids: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("pids.current"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no pids.current in:\n{metrics}"));
    assert!(pids >= 1, "{metrics}");

    // A signal to an exec'd process (`kill --exec-id`) ends that process, not the task.
    let sock = ctd.dir.join("ctd.sock");
    let mut long = Command::new("ctr")
        .arg("-a")
        .arg(&sock)
        .args(["task", "exec", "--exec-id", "e2", "t2", "sleep", "1000"])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while ctd.ok(&["task", "ps", "t2"]).lines().count() < 3 {
        assert!(Instant::now() < deadline, "exec e2 did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    ctd.ok(&["task", "kill", "--exec-id", "e2", "-s", "TERM", "t2"]);
    let status = long.wait().unwrap();
    assert_eq!(status.code(), Some(128 + 15), "exec e2 after SIGTERM");
    assert_eq!(ctd.task_status("t2"), "RUNNING");
    let out = ctd.ctr(&["task", "kill", "--exec-id", "nope", "t2"]);
    assert!(
        !out.status.success(),
        "a signal to an unknown exec was accepted"
    );

    // An exec's stdin piped from ctr ends when ctr's does (CloseIO): cat gets its end.
    let mut cat = Command::new("ctr")
        .arg("-a")
        .arg(&sock)
        .args(["task", "exec", "--exec-id", "e3", "t2", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    cat.stdin.take().unwrap().write_all(b"piped in\n").unwrap();
    let out = cat.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "piped in\n");

    // Terminal tasks and execs (`-t`; ctr under `script`, for a terminal of its own whose size
    // it passes on with ResizePty): the process's stdio is a pty in the container, sized as
    // ctr's terminal, its exit code ctr's.
    let terminal = |ctr_args: &str| {
        let cmd = format!(
            "stty rows 41 cols 97; ctr -a {} {ctr_args} sh -c 'sleep 1; tty; stty size; exit 5'",
            sock.display()
        );
        Command::new("script")
            .args(["-qefc", &cmd, "/dev/null"])
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    for ctr_args in [
        format!("run -t --rm --runtime io.containerd.ember.v2 --rootfs {rootfs} t3"),
        "task exec -t --exec-id e4 t2".to_string(),
    ] {
        let out = terminal(&ctr_args);
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(5), "ctr {ctr_args}: {text}");
        assert!(text.contains("/dev/pts/"), "ctr {ctr_args}: no pty: {text}");
        assert!(
            text.contains("41 97"),
            "ctr {ctr_args}: not resized: {text}"
        );
    }
    ctd.ok(&["task", "kill", "-s", "KILL", "t2"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while ctd.task_status("t2") != "STOPPED" {
        assert!(Instant::now() < deadline, "t2 did not stop after SIGKILL");
        std::thread::sleep(Duration::from_millis(50));
    }
    ctd.ok(&["task", "delete", "t2"]);
    ctd.ok(&["container", "rm", "t2"]);

    // A shim killed -9 takes its pod's VM with it (the VM is the shim's); containerd's cleanup
    // (`shim delete`) removes the rest, and the task is seen stopped.
    ctd.run_sleeper(rootfs, "t4");
    let rec: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(ctd.dir.join("ember/@pods/t4/state.json")).unwrap(),
    )
    .unwrap();
    let shim = rec["vmm"]["pid"].as_i64().unwrap() as i32;
    // SAFETY: plain kill(2) of the shim process the pod record names.
    unsafe { libc::kill(shim, libc::SIGKILL) };
    ctd.wait_not_running("t4", "its shim died");
    let _ = ctd.ctr(&["task", "delete", "t4"]);
    ctd.ok(&["container", "rm", "t4"]);

    // The pod API stops the shim's pod from outside (`ember pod stop`): its VM ends in the
    // shim, which tells containerd that the task is stopped; the shim itself runs on until
    // containerd deletes the task.
    ctd.run_sleeper(rootfs, "t5");
    let stop = Command::new(env!("CARGO_BIN_EXE_ember"))
        .arg("--root")
        .arg(ctd.dir.join("ember"))
        .args(["pod", "stop", "t5"])
        .output()
        .unwrap();
    assert!(
        stop.status.success(),
        "{}",
        String::from_utf8_lossy(&stop.stderr)
    );
    ctd.wait_not_running("t5", "its pod stopped");
    ctd.ok(&["task", "delete", "t5"]);
    ctd.ok(&["container", "rm", "t5"]);

    // Nothing is left: no shim, pod process or agent; no pod; no state.
    assert_nothing_left(&ctd);
}

/// A task whose pod cannot start (its agent exits at once) is stopped once its start failed,
/// as under runc when the container's process cannot run: `ctr run --rm` fails with the
/// reason and removes the task and the container; a detached one is seen STOPPED and deleted
/// by `ctr task delete`. Nothing is left.
#[test]
fn a_task_whose_pod_cannot_start_stops_and_leaves_nothing() {
    if !prerequisites() {
        return;
    }
    let ctd = Containerd::start("nostart", Path::new("/bin/false"));
    let rootfs = busybox_rootfs(&ctd.dir);
    let rootfs = rootfs.to_str().unwrap();
    let runtime = ["--runtime", "io.containerd.ember.v2", "--rootfs", rootfs];

    let mut args = vec!["run", "--rm"];
    args.extend(runtime);
    args.extend(["f1", "true"]);
    let out = ctd.ctr(&args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "ctr run of a pod that cannot start: {err}"
    );
    assert!(err.contains("agent"), "no reason given: {err}");
    assert!(
        !ctd.ok(&["container", "ls", "-q"])
            .lines()
            .any(|l| l == "f1"),
        "ctr run --rm left its container"
    );

    let mut args = vec!["run", "-d"];
    args.extend(runtime);
    args.extend(["f2", "true"]);
    assert!(!ctd.ctr(&args).status.success());
    assert_eq!(ctd.task_status("f2"), "STOPPED");
    ctd.ok(&["task", "delete", "f2"]);
    ctd.ok(&["container", "rm", "f2"]);
    assert_nothing_left(&ctd);
}

/// A task whose command is not in its rootfs fails Create with runc's words, before any VM.
#[test]
fn a_task_whose_command_is_missing_fails_create_as_under_runc() {
    if !prerequisites() {
        return;
    }
    let ctd = Containerd::start("nocmd", Path::new("/bin/false"));
    let rootfs = busybox_rootfs(&ctd.dir);
    let out = ctd.ctr(&[
        "run",
        "--rm",
        "--runtime",
        "io.containerd.ember.v2",
        "--rootfs",
        rootfs.to_str().unwrap(),
        "m1",
        "/no/such/cmd",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("failed to create shim task")
            && err
                .contains(r#"exec: "/no/such/cmd": stat /no/such/cmd: no such file or directory"#),
        "{err}"
    );
    assert_nothing_left(&ctd);
}
