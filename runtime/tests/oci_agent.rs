//! The runc CLI the engines drive, end to end through the pod library and the pod process,
//! with the real guest agent run on the host as the pod's machine (`EMBER_POD_HOST_AGENT`,
//! test equipment), no VM: `ember run` relays the container's stdout and stderr and exits
//! with its code; `create`/`start` of a long-running container, which `ember pod status`
//! lists in its pod; `exec` with its own stdio and exit code; `ps`; `kill`; `delete` leaves
//! no pod behind.
//!
//! Needs root (the agent makes namespaces and mounts), /bin/busybox and the `ember-agent`
//! binary beside the `ember` binary (`cargo build -p ember-agent`, or `EMBER_AGENT_BIN`);
//! skips with a message otherwise.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn agent_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("EMBER_AGENT_BIN") {
        return Some(PathBuf::from(p));
    }
    let ember = PathBuf::from(env!("CARGO_BIN_EXE_ember"));
    let p = ember.parent()?.join("ember-agent");
    p.is_file().then_some(p)
}

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

struct Oci {
    root: PathBuf,
    agent: PathBuf,
}

impl Drop for Oci {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.root);
    }
}

impl Oci {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_ember"));
        c.arg("--root")
            .arg(self.root.join("state"))
            .args(args)
            .env("EMBER_POD_HOST_AGENT", &self.agent)
            .stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "ember {args:?}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn status(&self, id: &str) -> String {
        let v: serde_json::Value = serde_json::from_str(&self.ok(&["state", id])).unwrap();
        v["status"].as_str().unwrap_or_default().to_string()
    }
}

#[test]
fn runc_cli_through_the_pod_library_and_the_real_agent() {
    if !nix::unistd::geteuid().is_root() || !Path::new("/bin/busybox").exists() {
        eprintln!("skipping: needs root and /bin/busybox");
        return;
    }
    let Some(agent) = agent_bin() else {
        eprintln!("skipping: ember-agent binary not built (cargo build -p ember-agent)");
        return;
    };
    // Not under /tmp or /run: the agent mounts tmpfs there in its own mount namespace.
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("ember-oci-agent-{}", std::process::id()));
    let _ = fs::remove_dir_all(&root);
    fs::create_dir_all(&root).unwrap();
    let oci = Oci { root, agent };

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
    let out = oci.run(&["run", "--bundle", b.to_str().unwrap(), "c1"]);
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

    // A long-running container: in its pod's record, exec, ps, kill, delete.
    let b = bundle(&oci.root, "b2", &["sleep", "1000"]);
    let created = oci
        .cmd(&["create", "--bundle", b.to_str().unwrap(), "c2"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(created.success());
    assert_eq!(oci.status("c2"), "created");
    oci.ok(&["start", "c2"]);
    assert_eq!(oci.status("c2"), "running");
    let pod: serde_json::Value =
        serde_json::from_str(&oci.ok(&["pod", "status", "--json", "c2"])).unwrap();
    assert_eq!(pod["state"], "running", "{pod}");
    assert_eq!(pod["containers"][0]["id"], "c2", "{pod}");
    assert_eq!(pod["containers"][0]["state"], "running", "{pod}");

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
    while oci.status("c2") != "stopped" {
        assert!(Instant::now() < deadline, "c2 did not stop after SIGKILL");
        std::thread::sleep(Duration::from_millis(50));
    }
    oci.ok(&["delete", "c2"]);
    let pods = oci.ok(&["pod", "list", "--json"]);
    assert_eq!(pods.trim(), "[]", "no pod is left");
}
