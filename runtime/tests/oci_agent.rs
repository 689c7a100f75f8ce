//! The OCI sandbox against the real guest agent run on the host (`ember-agent --listen
//! unix:`), no VM: a bundle's config mapped to the agent's ContainerSpec, the container's
//! stdout relayed to the descriptor `create` got, its exit code, exec with its own stdio,
//! ps, kill, and teardown.
//!
//! Needs root (the agent makes namespaces and mounts), /bin/busybox and the `ember-agent`
//! binary beside this test's target directory (`cargo build -p ember-agent`, or
//! `EMBER_AGENT_BIN`); skips with a message otherwise.

use agent::protocol::RootfsSpec;
use runtime::oci::bundle::{Bundle, ProcessConfig};
use runtime::oci::sandbox::{Sandbox, Stdio};
use runtime::oci::vm::{container_spec, AgentSandbox, UnixConnector};
use std::fs::{self, File};
use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn agent_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("EMBER_AGENT_BIN") {
        return Some(PathBuf::from(p));
    }
    // target/<profile>/deps/oci_agent-... -> target/<profile>/ember-agent
    let exe = std::env::current_exe().ok()?;
    let p = exe.parent()?.parent()?.join("ember-agent");
    p.is_file().then_some(p)
}

struct Agent {
    child: Child,
    dir: PathBuf,
    sock: PathBuf,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn start_agent(bin: &Path) -> Agent {
    let dir = std::env::temp_dir().join(format!("ember-oci-agent-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("agent.sock");
    let announce = dir.join("announce.sock");
    let listener = UnixListener::bind(&announce).unwrap();
    let child = Command::new(bin)
        .arg("--listen")
        .arg(format!("unix:{}", sock.display()))
        .arg("--announce")
        .arg(format!("unix:{}", announce.display()))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut agent = Agent { child, dir, sock };
    listener.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match listener.accept() {
            Ok((mut s, _)) => {
                s.set_nonblocking(false).unwrap();
                agent::client::read_hello(&mut s).unwrap();
                break;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(Instant::now() < deadline, "agent did not announce itself");
                assert!(matches!(agent.child.try_wait(), Ok(None)), "agent exited");
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
    agent.dir = agent.dir.clone();
    agent
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

/// Stdio whose stdout and stderr go to pipes we read; stdin is empty.
fn pipes() -> (Stdio, File, File) {
    let (out_r, out_w) = nix::unistd::pipe().unwrap();
    let (err_r, err_w) = nix::unistd::pipe().unwrap();
    let null: OwnedFd = File::open("/dev/null").unwrap().into();
    (
        Stdio {
            stdin: null,
            stdout: out_w,
            stderr: err_w,
        },
        File::from(out_r),
        File::from(err_r),
    )
}

fn read_all(mut f: File) -> String {
    let mut s = String::new();
    f.read_to_string(&mut s).unwrap();
    s
}

#[test]
fn oci_container_through_the_real_agent() {
    if !nix::unistd::geteuid().is_root() || !Path::new("/bin/busybox").exists() {
        eprintln!("skipping: needs root and /bin/busybox");
        return;
    }
    let Some(bin) = agent_bin() else {
        eprintln!("skipping: ember-agent binary not built (cargo build -p ember-agent)");
        return;
    };
    let agent = start_agent(&bin);

    // A container whose output and exit code come back through the sandbox.
    let b = bundle(
        &agent.dir,
        "b1",
        &[
            "sh",
            "-c",
            "echo $GREETING from $(hostname) in $(pwd) nofile=$(ulimit -n); echo oops >&2; exit 3",
        ],
    );
    let cfg = Bundle::load(&b).unwrap().container_config("c1").unwrap();
    let mut spec = container_spec(&cfg, "/dev/unused", None);
    // No block device on the host: the agent uses the bundle's directory.
    spec.rootfs = RootfsSpec::Path {
        path: cfg.rootfs.display().to_string(),
        read_only: false,
    };
    // The host bind mount is not carried into a guest; the tmpfs is.
    assert_eq!(spec.mounts.len(), 1);
    assert_eq!(spec.mounts[0].destination, "/tmp");
    let (stdio, out, err) = pipes();
    let torn_down = Arc::new(AtomicBool::new(false));
    let flag = torn_down.clone();
    let sb = AgentSandbox::create(
        "c1",
        spec,
        Box::new(UnixConnector {
            path: agent.sock.clone(),
        }),
        stdio,
        Box::new(move || flag.store(true, Ordering::SeqCst)),
    )
    .unwrap();
    assert!(sb.start().unwrap() > 0);
    assert_eq!(sb.wait().unwrap(), 3);
    assert_eq!(read_all(out), "hello from ocibox in /work nofile=256\n");
    assert_eq!(read_all(err), "oops\n");
    sb.shutdown();
    assert!(torn_down.load(Ordering::SeqCst));

    // A long-running container: exec with its own stdio, ps, kill.
    let b = bundle(&agent.dir, "b2", &["sleep", "1000"]);
    let cfg = Bundle::load(&b).unwrap().container_config("c2").unwrap();
    let mut spec = container_spec(&cfg, "/dev/unused", None);
    spec.rootfs = RootfsSpec::Path {
        path: cfg.rootfs.display().to_string(),
        read_only: false,
    };
    let (stdio, _out, _err) = pipes();
    let sb = AgentSandbox::create(
        "c2",
        spec,
        Box::new(UnixConnector {
            path: agent.sock.clone(),
        }),
        stdio,
        Box::new(|| {}),
    )
    .unwrap();
    sb.start().unwrap();
    let (exec_stdio, exec_out, _exec_err) = pipes();
    let mut pids = Vec::new();
    let p = ProcessConfig {
        args: vec![
            "sh".into(),
            "-c".into(),
            "echo exec $GREETING; exit 4".into(),
        ],
        env: vec!["PATH=/bin".into(), "GREETING=hi".into()],
        cwd: "/".into(),
        ..Default::default()
    };
    let code = sb
        .exec("e1", &p, exec_stdio, &mut |pid| pids.push(pid))
        .unwrap();
    assert_eq!(code, 4);
    assert_eq!(pids.len(), 1);
    assert_eq!(read_all(exec_out), "exec hi\n");
    let procs = sb.processes().unwrap();
    assert!(
        procs.iter().any(|(_, cmd)| cmd.contains("sleep")),
        "{procs:?}"
    );
    sb.signal(libc::SIGKILL, false).unwrap();
    assert_eq!(sb.wait().unwrap(), 128 + libc::SIGKILL);
    sb.shutdown();
}
