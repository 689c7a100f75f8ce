//! The shim life cycle through `runtime::oci::ops`, with a test sandbox in place of the VM:
//! create forks the shim (its pid in the pid file), start/ps/pause/resume/exec go through the
//! control socket, kill ends the container and the shim exits with its code, delete removes
//! everything. One test function: `create` forks, so nothing else may run in this binary.

use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;
use runtime::oci::bundle::{ContainerConfig, ProcessConfig};
use runtime::oci::control::{Client, Request, Response};
use runtime::oci::ops::{self, CreateOpts, Ctx};
use runtime::oci::sandbox::{Backend, Sandbox, SandboxError, Stdio, Usage};
use runtime::oci::state::{Status, Store};
use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::{Condvar, Mutex};

/// A container that "runs" until signalled; exec writes its args to the given stdout.
struct TestSandbox {
    exit: Mutex<Option<i32>>,
    cv: Condvar,
    /// Where `resize` writes the size it was given ("rows cols").
    resized: std::path::PathBuf,
}

impl TestSandbox {
    fn finish(&self, code: i32) {
        let mut g = self.exit.lock().unwrap();
        g.get_or_insert(code);
        self.cv.notify_all();
    }
}

impl Sandbox for TestSandbox {
    fn start(&self) -> Result<i32, SandboxError> {
        Ok(1)
    }
    fn wait(&self) -> Result<i32, SandboxError> {
        let mut g = self.exit.lock().unwrap();
        while g.is_none() {
            g = self.cv.wait(g).unwrap();
        }
        Ok(g.unwrap_or(0))
    }
    fn signal(&self, signal: i32, _all: bool) -> Result<(), SandboxError> {
        self.finish(128 + signal);
        Ok(())
    }
    fn signal_exec(&self, _exec_id: &str, _signal: i32) -> Result<(), SandboxError> {
        Err(SandboxError::Refused("no exec runs".into()))
    }
    fn resize(&self, _exec_id: Option<&str>, rows: u16, cols: u16) -> Result<(), SandboxError> {
        fs::write(&self.resized, format!("{rows} {cols}")).unwrap();
        Ok(())
    }
    fn exec(
        &self,
        _exec_id: &str,
        process: &ProcessConfig,
        stdio: Stdio,
        started: &mut dyn FnMut(i32),
    ) -> Result<i32, SandboxError> {
        started(2);
        let mut out = File::from(stdio.stdout);
        out.write_all(process.args.join(" ").as_bytes()).unwrap();
        Ok(7)
    }
    fn processes(&self) -> Result<Vec<(i32, String)>, SandboxError> {
        Ok(vec![(1, "sleep 1000".into())])
    }
    fn usage(&self) -> Result<Usage, SandboxError> {
        Ok(Usage {
            pids: 1,
            ..Default::default()
        })
    }
    fn pause(&self) -> Result<(), SandboxError> {
        Ok(())
    }
    fn resume(&self) -> Result<(), SandboxError> {
        Ok(())
    }
    fn update(&self, limits: &agent::protocol::CgroupLimits) -> Result<(), SandboxError> {
        let path = self.resized.with_file_name("updated");
        fs::write(path, serde_json::to_string(limits).unwrap()).unwrap();
        Ok(())
    }
    fn shutdown(&self) {
        self.finish(137);
    }
}

struct TestBackend {
    fail: bool,
    /// Never finish creating (a VM that does not boot).
    hang: bool,
}

impl Backend for TestBackend {
    fn create(
        &self,
        config: &ContainerConfig,
        state_dir: &Path,
        stdio: Stdio,
    ) -> Result<Box<dyn Sandbox>, SandboxError> {
        if config.process.terminal {
            // A terminal container's stdio is the pty whose master went to the console socket.
            let mut out = File::from(stdio.stdout);
            out.write_all(b"on the tty\n").unwrap();
        }
        if self.fail {
            return Err(SandboxError::Refused(format!("No VM for {}", config.id)));
        }
        if self.hang {
            loop {
                std::thread::sleep(std::time::Duration::from_secs(1));
            }
        }
        Ok(Box::new(TestSandbox {
            exit: Mutex::new(None),
            cv: Condvar::new(),
            resized: state_dir.join("resized"),
        }))
    }
}

const CONFIG: &str = r#"{"ociVersion":"1.0.2","process":{"user":{"uid":0,"gid":0},
  "args":["sleep","1000"],"cwd":"/"},"root":{"path":"rootfs"}}"#;

fn shim_exit(pid: i32) -> i32 {
    match waitpid(Pid::from_raw(pid), None).unwrap() {
        WaitStatus::Exited(_, code) => code,
        other => panic!("shim ended as {other:?}"),
    }
}

#[test]
fn shim_life_cycle() {
    let base = std::env::temp_dir().join(format!("ember-oci-shim-{}", std::process::id()));
    let _ = fs::remove_dir_all(&base);
    let bundle = base.join("bundle");
    fs::create_dir_all(bundle.join("rootfs")).unwrap();
    fs::write(bundle.join("config.json"), CONFIG).unwrap();
    let root = base.join("root");
    let ctx = Ctx {
        store: Store::new(Some(&root)),
    };
    let pid_file = base.join("c1.pid");
    let opts = CreateOpts {
        bundle: bundle.clone(),
        pid_file: Some(pid_file.clone()),
        console_socket: None,
    };
    let ok = TestBackend {
        fail: false,
        hang: false,
    };

    // create: the shim runs, its pid is in the pid file and the state.
    let pid = ops::create(&ctx, "c1", &opts, &ok).unwrap();
    assert_eq!(fs::read_to_string(&pid_file).unwrap(), pid.to_string());
    let st = ops::state(&ctx, "c1").unwrap();
    assert_eq!((st.status, st.pid), (Status::Created, pid));
    assert!(ops::create(&ctx, "c1", &opts, &ok).is_err());

    ops::start(&ctx, "c1").unwrap();
    assert_eq!(ops::state(&ctx, "c1").unwrap().status, Status::Running);
    assert_eq!(
        ops::ps(&ctx, "c1").unwrap(),
        vec![(1, "sleep 1000".to_string())]
    );
    ops::pause(&ctx, "c1").unwrap();
    assert_eq!(ops::state(&ctx, "c1").unwrap().status, Status::Paused);
    assert!(ops::pause(&ctx, "c1").is_err());
    ops::resume(&ctx, "c1").unwrap();
    assert_eq!(ops::state(&ctx, "c1").unwrap().status, Status::Running);
    // update: the limits reach the sandbox, converted as at create; the flags override the
    // resources object.
    let opts_u = ops::UpdateOpts {
        resources: Some(br#"{"memory": {"limit": 1048576}, "pids": {"limit": 5}}"#.to_vec()),
        pids_limit: Some(20),
        ..Default::default()
    };
    ops::update(&ctx, "c1", ops::update_limits(&opts_u).unwrap()).unwrap();
    let updated: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(ctx.store.dir("c1").join("updated")).unwrap())
            .unwrap();
    assert_eq!(updated["memory_max"], 1048576, "{updated}");
    assert_eq!(updated["pids_max"], 20, "{updated}");
    assert!(ops::update_limits(&ops::UpdateOpts {
        resources: Some(b"[1]".to_vec()),
        ..Default::default()
    })
    .is_err());

    // exec: the caller's descriptors reach the process; pid then exit code come back.
    let (mut r, w) = std::os::unix::net::UnixStream::pair().unwrap();
    let mut c = Client::connect(&ctx.store.dir("c1")).unwrap();
    let req = Request::Exec {
        exec_id: "e1".into(),
        process: ProcessConfig {
            args: vec!["echo".into(), "hi".into()],
            ..Default::default()
        },
    };
    let fd = w.as_raw_fd();
    c.send(&req, &[fd, fd, fd]).unwrap();
    drop(w);
    assert_eq!(c.recv().unwrap(), Response::Pid(2));
    assert_eq!(c.recv().unwrap(), Response::Exit(7));
    drop(c);
    let mut out = String::new();
    r.read_to_string(&mut out).unwrap();
    assert_eq!(out, "echo hi");

    // kill: the container ends, the shim exits with its code and records it.
    ops::kill_container(&ctx, "c1", libc::SIGTERM, false).unwrap();
    assert_eq!(shim_exit(pid), 128 + libc::SIGTERM);
    let st = ops::state(&ctx, "c1").unwrap();
    assert_eq!((st.status, st.pid), (Status::Stopped, 0));
    assert_eq!(ctx.store.load("c1").unwrap().exit_code, Some(143));
    assert!(ops::kill_container(&ctx, "c1", libc::SIGKILL, false).is_err());
    assert!(ops::update(&ctx, "c1", Default::default()).is_err());
    ops::delete(&ctx, "c1", false, &ok).unwrap();
    assert!(!ctx.store.dir("c1").exists());

    // delete of a created container stops its shim and leaves nothing.
    let pid2 = ops::create(
        &ctx,
        "c2",
        &CreateOpts {
            pid_file: None,
            ..opts.clone()
        },
        &ok,
    )
    .unwrap();
    ops::delete(&ctx, "c2", false, &ok).unwrap();
    assert_eq!(shim_exit(pid2), 137);
    assert!(!ctx.store.dir("c2").exists());

    // A terminal container: the pty master reaches the console socket, the container's
    // stdio is its slave.
    let tty_bundle = base.join("tty-bundle");
    fs::create_dir_all(tty_bundle.join("rootfs")).unwrap();
    fs::write(
        tty_bundle.join("config.json"),
        CONFIG.replace(r#""args""#, r#""terminal":true,"args""#),
    )
    .unwrap();
    let console = base.join("console.sock");
    let listener = std::os::unix::net::UnixListener::bind(&console).unwrap();
    let tty_opts = CreateOpts {
        bundle: tty_bundle.clone(),
        pid_file: None,
        console_socket: Some(console.clone()),
    };
    let pid3 = ops::create(&ctx, "t1", &tty_opts, &ok).unwrap();
    let (conn, _) = listener.accept().unwrap();
    let mut buf = [0u8; 64];
    let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let msg = nix::sys::socket::recvmsg::<()>(
        conn.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        nix::sys::socket::MsgFlags::empty(),
    )
    .unwrap();
    let mut master = None;
    for c in msg.cmsgs().unwrap() {
        if let nix::sys::socket::ControlMessageOwned::ScmRights(fds) = c {
            // SAFETY: the kernel just installed this descriptor for us.
            master = Some(unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fds[0]) });
        }
    }
    let mut master = master.expect("no pty master on the console socket");
    let mut got = [0u8; 11];
    master.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"on the tty\n");
    // The engine sizes its terminal on the master; the shim passes each size on.
    let resized = ctx.store.dir("t1").join("resized");
    for (rows, cols) in [(33u16, 77u16), (50, 132)] {
        let ws = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads a winsize that lives for the call.
        let rc = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
        assert_eq!(rc, 0);
        let want = format!("{rows} {cols}");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while fs::read_to_string(&resized).unwrap_or_default() != want {
            assert!(
                std::time::Instant::now() < deadline,
                "the shim did not pass on {want}"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
    ops::delete(&ctx, "t1", false, &ok).unwrap();
    assert_eq!(shim_exit(pid3), 137);
    // Without a console socket a terminal container is refused up front.
    let err = ops::create(
        &ctx,
        "t2",
        &CreateOpts {
            console_socket: None,
            ..tty_opts
        },
        &ok,
    )
    .unwrap_err();
    assert!(err.to_string().contains("console socket"), "{err}");

    // A backend failure is reported and nothing is left.
    let err = ops::create(
        &ctx,
        "c3",
        &opts,
        &TestBackend {
            fail: true,
            hang: false,
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("No VM for c3"), "{err}");
    assert!(!ctx.store.dir("c3").exists());
    assert!(fs::read_dir(&root).unwrap().next().is_none());

    // delete --force of a container still being created kills its shim; create then fails
    // and nothing is left.
    let creating = {
        let ctx = ctx.clone();
        let opts = CreateOpts {
            pid_file: None,
            ..opts.clone()
        };
        std::thread::spawn(move || {
            let hang = TestBackend {
                fail: false,
                hang: true,
            };
            ops::create(&ctx, "c4", &opts, &hang)
        })
    };
    let shim = loop {
        std::thread::sleep(std::time::Duration::from_millis(50));
        if let Ok(st) = ops::state(&ctx, "c4") {
            if st.status == Status::Creating && st.pid > 0 {
                break st.pid;
            }
        }
    };
    assert!(ops::delete(&ctx, "c4", false, &ok).is_err());
    ops::delete(&ctx, "c4", true, &ok).unwrap();
    let err = creating.join().unwrap().unwrap_err();
    assert!(err.to_string().contains("shim died"), "{err}");
    assert!(!ctx.store.dir("c4").exists());
    assert!(!std::path::Path::new(&format!("/proc/{shim}")).exists());
    fs::remove_dir_all(&base).unwrap();
}
