//! The agent running on the host over a Unix socket (no VM): every request, stdio streams,
//! and malformed / oversize / out-of-order messages.
//!
//! Container tests need root (mounts, namespaces) and skip with a message otherwise; they
//! build a small rootfs from busybox-static at /bin/busybox.

use agent::client::{self, AgentCalls, AgentClient, ClientError};
use agent::protocol::{
    self, Capabilities, ContainerSpec, ContainerState, Device, ErrorKind, Mount, Namespace,
    ProcessSpec, Request, RequestFrame, ResponseFrame, Rlimit, RootfsSpec, SharedNamespaces,
    StdioStream, MAX_FRAME_SIZE, PROTOCOL_VERSION,
};
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

static COUNTER: AtomicU32 = AtomicU32::new(0);
const IO_TIMEOUT: Duration = Duration::from_secs(30);

struct TestAgent {
    child: Child,
    dir: PathBuf,
    sock: PathBuf,
    cgroup_root: Option<PathBuf>,
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn cgroup2_mount() -> Option<PathBuf> {
    ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .iter()
        .map(PathBuf::from)
        .find(|p| agent::cgroup::is_cgroup2(p))
}

/// The binary under test: `EMBER_AGENT_BIN` (e.g. the static release build) or this crate's.
fn agent_bin() -> String {
    std::env::var("EMBER_AGENT_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_ember-agent").into())
}

impl TestAgent {
    fn start() -> TestAgent {
        Self::start_with(&[])
    }

    fn start_with(extra: &[&str]) -> TestAgent {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("ember-agent-test-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("agent.sock");
        let announce = dir.join("announce.sock");
        let listener = UnixListener::bind(&announce).unwrap();
        let mut cmd = Command::new(agent_bin());
        cmd.args(extra);
        cmd.arg("--listen")
            .arg(format!("unix:{}", sock.display()))
            .arg("--announce")
            .arg(format!("unix:{}", announce.display()))
            .arg("--state-dir")
            .arg(dir.join("state"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        let mut cgroup_root = None;
        if is_root() {
            if let Some(cg) = cgroup2_mount() {
                let root = cg.join(format!("ember-test-{}-{n}", std::process::id()));
                if std::fs::create_dir(&root).is_ok() {
                    cmd.arg("--cgroup-root").arg(&root);
                    cgroup_root = Some(root);
                }
            }
        }
        let mut child = cmd.spawn().unwrap();
        // The agent announces itself: no polling of its socket.
        listener.set_nonblocking(true).unwrap();
        let deadline = Instant::now() + IO_TIMEOUT;
        let hello = loop {
            match listener.accept() {
                Ok((mut s, _)) => {
                    s.set_nonblocking(false).unwrap();
                    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
                    break client::read_hello(&mut s).unwrap();
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    assert!(Instant::now() < deadline, "agent did not announce itself");
                    if let Ok(Some(st)) = child.try_wait() {
                        panic!("agent exited early: {st}");
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => panic!("accept: {e}"),
            }
        };
        assert_eq!(hello.version, PROTOCOL_VERSION);
        assert_eq!(hello.pid, child.id());
        assert_eq!(hello.listen, format!("unix:{}", sock.display()));
        assert!(hello.uptime_ms > 0);
        // The ready line is on stdout, too.
        let mut line = String::new();
        let mut out = child.stdout.take().unwrap();
        let mut b = [0u8; 1];
        while !line.ends_with('\n') {
            assert_eq!(out.read(&mut b).unwrap(), 1, "stdout closed early");
            line.push(b[0] as char);
        }
        assert_eq!(line.trim_end(), protocol::READY_LINE);
        TestAgent {
            child,
            dir,
            sock,
            cgroup_root,
        }
    }

    fn connect(&self) -> UnixStream {
        let s = client::connect_unix(&self.sock).unwrap();
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        s
    }

    fn client(&self) -> AgentClient<UnixStream> {
        AgentClient::new(self.connect())
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// A busybox rootfs directory for containers.
    fn rootfs(&self, name: &str) -> PathBuf {
        let root = self.dir.join(name);
        for d in ["bin", "proc", "dev", "sys", "tmp", "etc"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
        for applet in [
            "sh", "echo", "cat", "sleep", "hostname", "id", "ls", "true", "test", "[", "wc",
            "touch", "tty", "stty",
        ] {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
        }
        std::fs::write(root.join("etc/marker"), name).unwrap();
        root
    }

    fn spec(&self, rootfs: &Path, args: &[&str]) -> ContainerSpec {
        ContainerSpec {
            rootfs: RootfsSpec::Path {
                path: rootfs.display().to_string(),
                read_only: false,
            },
            mounts: vec![],
            hostname: Some("box1".into()),
            namespaces: protocol::default_namespaces(),
            process: ProcessSpec::new(args.iter().copied()),
            cgroup_path: None,
            volume: None,
            limits: Default::default(),
            linux: Default::default(),
            share: None,
        }
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(root) = &self.cgroup_root {
            // Leftover container cgroups (a failed test) first, then ours.
            if let Ok(entries) = std::fs::read_dir(root.join("ember")) {
                for e in entries.flatten() {
                    let _ = std::fs::remove_dir(e.path());
                }
            }
            let _ = std::fs::remove_dir(root.join("ember"));
            let _ = std::fs::remove_dir(root);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// For a test that needs root: the agent and a busybox rootfs named `rootfs` (None: the
/// test is skipped, with the reason printed).
fn root_agent(test: &str, rootfs: &str) -> Option<(TestAgent, PathBuf)> {
    if !needs_root(test) {
        return None;
    }
    let t = TestAgent::start();
    let r = t.rootfs(rootfs);
    Some((t, r))
}

fn needs_root(test: &str) -> bool {
    if !is_root() {
        eprintln!("skipping {test}: needs root (mounts, namespaces)");
        return false;
    }
    if !Path::new("/bin/busybox").exists() {
        eprintln!("skipping {test}: /bin/busybox (busybox-static) missing");
        return false;
    }
    true
}

fn kind(r: Result<impl std::fmt::Debug, ClientError>) -> ErrorKind {
    match r {
        Err(e) => e
            .agent_kind()
            .unwrap_or_else(|| panic!("not an agent error: {e:?}")),
        Ok(v) => panic!("expected an error, got {v:?}"),
    }
}

fn raw_call(conn: &mut UnixStream, body: &[u8]) -> ResponseFrame {
    protocol::write_frame(conn, body).unwrap();
    protocol::recv(conn).unwrap()
}

fn read_all(mut s: UnixStream) -> String {
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn ping_and_stats() {
    let t = TestAgent::start();
    let mut c = t.client();
    let pong = c.ping().unwrap();
    assert_eq!(pong.version, PROTOCOL_VERSION);
    assert_eq!(pong.agent_version, env!("CARGO_PKG_VERSION"));
    let stats = c.stats().unwrap();
    assert!(stats.containers.is_empty());
    assert!(stats.mem_total_kib > 0);
    assert!(stats.mem_available_kib <= stats.mem_total_kib);
}

#[test]
fn malformed_messages_get_errors_and_connection_survives() {
    let mut t = TestAgent::start();
    let mut conn = t.connect();
    let r = raw_call(&mut conn, b"this is not json");
    assert_eq!(r.id, 0);
    assert_eq!(r.result.unwrap_err().kind, ErrorKind::BadRequest);

    let r = raw_call(&mut conn, br#"{"version":99,"id":5,"request":"Ping"}"#);
    assert_eq!(r.id, 5);
    assert_eq!(r.result.unwrap_err().kind, ErrorKind::VersionMismatch);

    let r = raw_call(
        &mut conn,
        br#"{"version":1,"id":6,"request":{"Teleport":{}}}"#,
    );
    assert_eq!(r.id, 6);
    assert_eq!(r.result.unwrap_err().kind, ErrorKind::BadRequest);

    let r = raw_call(
        &mut conn,
        br#"{"version":1,"id":7,"request":{"StartContainer":{"id":42}}}"#,
    );
    assert_eq!(r.id, 7);
    assert_eq!(r.result.unwrap_err().kind, ErrorKind::BadRequest);

    let r = raw_call(&mut conn, b"");
    assert_eq!(r.result.unwrap_err().kind, ErrorKind::BadRequest);

    // Same connection still serves well-formed requests.
    let mut c = AgentClient::new(conn);
    assert_eq!(c.ping().unwrap().version, PROTOCOL_VERSION);
    assert!(t.alive());
}

#[test]
fn oversize_frame_refused_without_crash() {
    let mut t = TestAgent::start();
    let mut conn = t.connect();
    // Claims 4 GiB - 1: must be refused from the header alone.
    conn.write_all(&u32::MAX.to_be_bytes()).unwrap();
    let r: ResponseFrame = protocol::recv(&mut conn).unwrap();
    assert_eq!(r.result.unwrap_err().kind, ErrorKind::FrameTooLarge);
    let mut rest = Vec::new();
    conn.read_to_end(&mut rest).unwrap();
    assert!(
        rest.is_empty(),
        "connection should close after an oversize frame"
    );

    let mut conn = t.connect();
    conn.write_all(&((MAX_FRAME_SIZE + 1) as u32).to_be_bytes())
        .unwrap();
    let r: ResponseFrame = protocol::recv(&mut conn).unwrap();
    assert_eq!(r.result.unwrap_err().kind, ErrorKind::FrameTooLarge);

    // A truncated frame and an abrupt close.
    let mut conn = t.connect();
    conn.write_all(&[0, 0, 0, 100, b'{']).unwrap();
    drop(conn);

    // The agent keeps serving new connections.
    assert!(t.alive());
    assert_eq!(t.client().ping().unwrap().version, PROTOCOL_VERSION);
}

/// A host-run agent answers `Restored` without touching its host: the host's boot id, no
/// clock step, the hostname as it was. Bad arguments get one BadRequest each, naming the
/// problem, and the connection keeps serving.
#[test]
fn restored_on_a_host_agent_checks_arguments_and_touches_nothing() {
    let mut t = TestAgent::start();
    let mut c = t.client();
    let hostname = nix::unistd::gethostname().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    // A day ahead: a guest would step its clock; the host's must stay.
    let ahead = (now + Duration::from_secs(86_400)).as_nanos() as u64;
    let info = c
        .restored(ahead, vec![0x5a; 64], "restored-pod.test".into())
        .unwrap();
    assert!(!info.boot_id.is_empty());
    assert_eq!(
        info.boot_id,
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .unwrap()
            .trim()
    );
    assert_eq!(info.clock_step_ms, 0);
    assert_eq!(nix::unistd::gethostname().unwrap(), hostname);
    let after = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    assert!(
        after < now + Duration::from_secs(3600),
        "the host clock moved"
    );

    let bad: [(Vec<u8>, &str, &str); 6] = [
        (vec![1; 31], "pod", "31 bytes"),
        (vec![1; 4097], "pod", "4097 bytes"),
        (vec![], "pod", "0 bytes"),
        (vec![1; 32], "", "hostname"),
        (vec![1; 32], "-pod", "hostname"),
        (vec![1; 32], "pod_1", "hostname"),
    ];
    for (entropy, name, says) in bad {
        match c.restored(ahead, entropy, name.into()) {
            Err(ClientError::Agent(e)) => {
                assert_eq!(e.kind, ErrorKind::BadRequest, "{e}");
                assert!(e.message.contains(says), "{says:?} not in {:?}", e.message);
            }
            other => panic!("expected a BadRequest for {name:?}, got {other:?}"),
        }
    }
    let long = "a".repeat(65);
    assert_eq!(
        kind(c.restored(ahead, vec![1; 32], long)),
        ErrorKind::BadRequest
    );
    assert_eq!(
        kind(c.restored(u64::MAX, vec![1; 32], "pod".into())),
        ErrorKind::BadRequest
    );
    // One answer per request: the same connection is still in step.
    assert_eq!(c.ping().unwrap().version, PROTOCOL_VERSION);
    assert_eq!(nix::unistd::gethostname().unwrap(), hostname);
    assert!(t.alive());
}

#[test]
fn requests_on_missing_containers_are_rejected() {
    let mut t = TestAgent::start();
    let mut c = t.client();
    assert_eq!(kind(c.start_container("nope")), ErrorKind::NotFound);
    assert_eq!(
        kind(c.exec("nope", "e1", ProcessSpec::new(["true"]))),
        ErrorKind::NotFound
    );
    assert_eq!(kind(c.wait("nope", None)), ErrorKind::NotFound);
    assert_eq!(kind(c.signal("nope", None, 15, false)), ErrorKind::NotFound);
    assert_eq!(
        kind(c.signal("nope", None, 0, false)),
        ErrorKind::BadRequest
    );
    assert_eq!(kind(c.process_list("nope")), ErrorKind::NotFound);
    assert_eq!(kind(c.pause("nope")), ErrorKind::NotFound);
    assert_eq!(kind(c.resume("nope")), ErrorKind::NotFound);
    assert_eq!(kind(c.destroy_container("nope")), ErrorKind::NotFound);
    assert_eq!(
        kind(c.resize_terminal("nope", None, 10, 10)),
        ErrorKind::NotFound
    );
    let spec = t.spec(Path::new("/nonexistent"), &["true"]);
    assert_eq!(
        kind(c.create_container("../escape", spec)),
        ErrorKind::BadRequest
    );
    let attach = t.client().attach_stdio("nope", None, StdioStream::Stdout);
    assert_eq!(kind(attach), ErrorKind::NotFound);
    assert!(t.alive());
    assert!(c.ping().is_ok());
}

#[test]
fn container_lifecycle_with_stdio() {
    let Some((mut t, rootfs)) = root_agent("container_lifecycle_with_stdio", "rootfs-life") else {
        return;
    };
    let mut spec = t.spec(
        &rootfs,
        &[
            "sh",
            "-c",
            "echo out; echo err >&2; hostname; cat /etc/marker; echo; \
             ls /scratch && echo scratch-ok; read line; echo got:$line; exit 3",
        ],
    );
    spec.mounts.push(Mount {
        destination: "/scratch".into(),
        source: "tmpfs".into(),
        fstype: Some("tmpfs".into()),
        options: vec!["size=1m".into(), "nosuid".into()],
        from_volume: false,
        from_share: false,
    });
    let mut c = t.client();
    c.create_container("life", spec.clone()).unwrap();
    assert_eq!(
        kind(c.create_container("life", spec)),
        ErrorKind::AlreadyExists
    );
    // Out of order: exec before start, resume while not paused.
    assert_eq!(
        kind(c.exec("life", "e1", ProcessSpec::new(["true"]))),
        ErrorKind::InvalidState
    );
    assert_eq!(kind(c.resume("life")), ErrorKind::InvalidState);
    let stats = c.stats().unwrap();
    assert_eq!(stats.containers.len(), 1);
    assert_eq!(stats.containers[0].state, ContainerState::Created);

    // Attach all three streams before start.
    let stdout = t
        .client()
        .attach_stdio("life", None, StdioStream::Stdout)
        .unwrap();
    let stderr = t
        .client()
        .attach_stdio("life", None, StdioStream::Stderr)
        .unwrap();
    let mut stdin = t
        .client()
        .attach_stdio("life", None, StdioStream::Stdin)
        .unwrap();
    // Each stream can be attached once at a time.
    assert_eq!(
        kind(t.client().attach_stdio("life", None, StdioStream::Stdin)),
        ErrorKind::InvalidState
    );
    let out_reader = std::thread::spawn(move || read_all(stdout));
    let err_reader = std::thread::spawn(move || read_all(stderr));

    let pid = c.start_container("life").unwrap();
    assert!(pid > 1);
    assert_eq!(kind(c.start_container("life")), ErrorKind::InvalidState);
    stdin.write_all(b"hello\n").unwrap();
    drop(stdin);

    let status = c.wait("life", None).unwrap();
    assert_eq!(status.code, 3);
    assert_eq!(status.signal, None);
    assert_eq!(
        out_reader.join().unwrap(),
        "out\nbox1\nrootfs-life\nscratch-ok\ngot:hello\n"
    );
    assert_eq!(err_reader.join().unwrap(), "err\n");
    // Exited: signals are refused, wait answers again.
    assert_eq!(
        kind(c.signal("life", None, 9, false)),
        ErrorKind::InvalidState
    );
    assert_eq!(c.wait("life", None).unwrap().code, 3);
    assert_eq!(
        c.stats().unwrap().containers[0].state,
        ContainerState::Stopped
    );

    c.destroy_container("life").unwrap();
    assert_eq!(kind(c.wait("life", None)), ErrorKind::NotFound);
    assert!(!t.dir.join("state/containers/life").exists());
    // The rootfs source is untouched.
    assert!(rootfs.join("etc/marker").exists());
    assert!(t.alive());
}

#[test]
fn mounts_from_the_volume_disk() {
    let Some((mut t, rootfs)) = root_agent("mounts_from_the_volume_disk", "rootfs-vol") else {
        return;
    };
    // The volume as the runtime stages it: one entry per host bind, named by its index.
    let vol = t.dir.join("volume-src");
    std::fs::create_dir_all(vol.join("1")).unwrap();
    std::fs::write(vol.join("0"), "10.1.2.3 db\n").unwrap();
    std::fs::write(vol.join("1/f"), "in-dir\n").unwrap();
    let mut spec = t.spec(
        &rootfs,
        &[
            "sh",
            "-c",
            "cat /etc/hosts /data/f; touch /data/new 2>/dev/null && echo rw || echo ro",
        ],
    );
    spec.volume = Some(RootfsSpec::Path {
        path: vol.display().to_string(),
        read_only: false,
    });
    for (dest, source, opts) in [
        ("/etc/hosts", "0", &["bind"][..]),
        ("/data", "1", &["rbind", "ro"]),
    ] {
        spec.mounts.push(Mount {
            destination: dest.into(),
            source: source.into(),
            fstype: None,
            options: opts.iter().map(|o| o.to_string()).collect(),
            from_volume: true,
            from_share: false,
        });
    }
    let mut c = t.client();
    let stdout = {
        c.create_container("vol", spec.clone()).unwrap();
        t.client()
            .attach_stdio("vol", None, StdioStream::Stdout)
            .unwrap()
    };
    let out = std::thread::spawn(move || read_all(stdout));
    c.start_container("vol").unwrap();
    assert_eq!(c.wait("vol", None).unwrap().code, 0);
    assert_eq!(out.join().unwrap(), "10.1.2.3 db\nin-dir\nro\n");
    c.destroy_container("vol").unwrap();
    // Unmounted and gone; the staged source and the rootfs (no /etc/hosts made) untouched.
    assert!(!t.dir.join("state/containers/vol").exists());
    assert!(vol.join("0").exists() && !vol.join("1/new").exists());

    // A from-volume mount without a volume is refused, leaving nothing behind.
    spec.volume = None;
    assert_eq!(
        kind(c.create_container("vol2", spec.clone())),
        ErrorKind::Failed
    );
    assert!(!t.dir.join("state/containers/vol2").exists());
    assert!(t.alive());
}

/// An `Events` connection hears of each container's init exit (code or signal), not of an
/// exec's; a second subscriber hears the same; a closed one does not disturb the agent.
#[test]
fn events_tell_of_container_exits_only() {
    let Some((mut t, rootfs)) = root_agent("events_tell_of_container_exits_only", "rootfs-ev")
    else {
        return;
    };
    let mut events = t.client().events().unwrap();
    let mut second = t.client().events().unwrap();
    drop(t.client().events().unwrap());
    let mut c = t.client();
    c.create_container("quick", t.spec(&rootfs, &["sh", "-c", "exit 5"]))
        .unwrap();
    c.create_container("long", t.spec(&rootfs, &["sleep", "1000"]))
        .unwrap();
    c.start_container("long").unwrap();
    // An exec's end is not a container's.
    c.exec("long", "e1", ProcessSpec::new(["true"])).unwrap();
    assert_eq!(c.wait("long", Some("e1")).unwrap().code, 0);
    c.start_container("quick").unwrap();
    let exited = |e: Option<Result<client::AgentEvent, ClientError>>| match e {
        Some(Ok(client::AgentEvent::ContainerExited {
            container_id,
            status,
        })) => (container_id, status.code, status.signal),
        other => panic!("not an exit event: {other:?}"),
    };
    assert_eq!(exited(events.next()), ("quick".into(), 5, None));
    c.signal("long", None, 9, false).unwrap();
    assert_eq!(exited(events.next()), ("long".into(), 137, Some(9)));
    assert_eq!(exited(second.next()), ("quick".into(), 5, None));
    assert_eq!(exited(second.next()), ("long".into(), 137, Some(9)));
    assert!(c.ping().is_ok());
    assert!(t.alive());
}

#[test]
fn exec_signal_process_list_pause() {
    let Some((mut t, rootfs)) = root_agent("exec_signal_process_list_pause", "rootfs-exec") else {
        return;
    };
    let mut c = t.client();
    c.create_container("ex", t.spec(&rootfs, &["sleep", "1000"]))
        .unwrap();
    let init_pid = c.start_container("ex").unwrap();

    // An exec joins the container's namespaces and root.
    let e1 = c
        .exec(
            "ex",
            "e1",
            ProcessSpec::new(["sh", "-c", "echo pid=$$; hostname; cat /etc/marker"]),
        )
        .unwrap();
    assert!(e1 > 1);
    let out = t
        .client()
        .attach_stdio("ex", Some("e1"), StdioStream::Stdout)
        .unwrap();
    let text = read_all(out);
    let mut lines = text.lines();
    let ns_pid: i32 = lines
        .next()
        .and_then(|l| l.strip_prefix("pid="))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid line in {text:?}"));
    assert_ne!(ns_pid, e1, "exec should see its pid-namespace pid");
    assert_eq!(lines.next(), Some("box1"));
    assert_eq!(lines.next(), Some("rootfs-exec"));
    assert_eq!(c.wait("ex", Some("e1")).unwrap().code, 0);
    assert_eq!(
        kind(c.exec("ex", "e1", ProcessSpec::new(["true"]))),
        ErrorKind::AlreadyExists
    );

    // A command that does not exist fails the exec; the container keeps running.
    assert_eq!(
        kind(c.exec("ex", "bad", ProcessSpec::new(["no-such-command"]))),
        ErrorKind::Failed
    );

    // Signal one exec'd process.
    let e2 = c
        .exec("ex", "e2", ProcessSpec::new(["sleep", "1000"]))
        .unwrap();
    let ps = c.process_list("ex").unwrap();
    assert!(ps
        .iter()
        .any(|p| p.pid == init_pid && p.cmd == "sleep 1000"));
    assert!(ps.iter().any(|p| p.pid == e2));
    c.signal("ex", Some("e2"), libc::SIGTERM, false).unwrap();
    let st = c.wait("ex", Some("e2")).unwrap();
    assert_eq!(
        (st.code, st.signal),
        (128 + libc::SIGTERM, Some(libc::SIGTERM))
    );

    if t.cgroup_root.is_some() {
        c.pause("ex").unwrap();
        assert_eq!(kind(c.pause("ex")), ErrorKind::InvalidState);
        assert_eq!(
            kind(c.exec("ex", "e3", ProcessSpec::new(["true"]))),
            ErrorKind::InvalidState
        );
        let stats = c.stats().unwrap();
        assert_eq!(stats.containers[0].state, ContainerState::Paused);
        assert!(stats.containers[0].pids >= 1);
        c.resume("ex").unwrap();
        assert_eq!(
            c.stats().unwrap().containers[0].state,
            ContainerState::Running
        );
    } else {
        eprintln!("no cgroup v2: pause/resume not exercised");
        assert_eq!(kind(c.pause("ex")), ErrorKind::Unsupported);
    }

    // Kill everything in the container.
    let _e4 = c
        .exec("ex", "e4", ProcessSpec::new(["sleep", "1000"]))
        .unwrap();
    c.signal("ex", None, libc::SIGKILL, true).unwrap();
    let st = c.wait("ex", None).unwrap();
    assert_eq!((st.code, st.signal), (137, Some(libc::SIGKILL)));
    assert_eq!(c.wait("ex", Some("e4")).unwrap().code, 137);
    c.destroy_container("ex").unwrap();
    if let Some(root) = &t.cgroup_root {
        assert!(!root.join("ember/ex").exists());
    }
    assert!(t.alive());
}

#[test]
fn credentials_rlimits_terminal_and_destroy_running() {
    let Some((mut t, rootfs)) = root_agent(
        "credentials_rlimits_terminal_and_destroy_running",
        "rootfs-cred",
    ) else {
        return;
    };
    let mut c = t.client();
    let mut spec = t.spec(&rootfs, &["sleep", "1000"]);
    spec.namespaces = vec![Namespace::Mount, Namespace::Pid];
    c.create_container("cred", spec).unwrap();
    c.start_container("cred").unwrap();

    let mut p = ProcessSpec::new([
        "sh",
        "-c",
        "id -u; id -g; id -G; ulimit -n; cd; pwd; [ -t 0 ] && echo tty || echo notty",
    ]);
    p.uid = 1000;
    p.gid = 1001;
    p.additional_gids = vec![1001, 1002];
    p.cwd = "/tmp".into();
    p.env.push("HOME=/tmp".into());
    p.rlimits = vec![Rlimit {
        kind: "RLIMIT_NOFILE".into(),
        soft: 64,
        hard: 128,
    }];
    p.no_new_privileges = true;
    c.exec("cred", "who", p).unwrap();
    let out = read_all(
        t.client()
            .attach_stdio("cred", Some("who"), StdioStream::Stdout)
            .unwrap(),
    );
    assert_eq!(out, "1000\n1001\n1001 1002\n64\n/tmp\nnotty\n");

    // The terminal is made in the container's own devpts: the process finds its pty there
    // (as under runc), and sees the size set after the exec.
    let mut p = ProcessSpec::new(["sh", "-c", "tty; read x; echo got-$x; stty size"]);
    p.terminal = true;
    c.exec("cred", "term", p).unwrap();
    c.resize_terminal("cred", Some("term"), 30, 100).unwrap();
    assert_eq!(
        kind(c.resize_terminal("cred", Some("who"), 30, 100)),
        ErrorKind::InvalidState
    );
    let stdout = t
        .client()
        .attach_stdio("cred", Some("term"), StdioStream::Stdout)
        .unwrap();
    let reader = std::thread::spawn(move || read_all(stdout));
    let mut stdin = t
        .client()
        .attach_stdio("cred", Some("term"), StdioStream::Stdin)
        .unwrap();
    stdin.write_all(b"abc\n").unwrap();
    assert_eq!(c.wait("cred", Some("term")).unwrap().code, 0);
    drop(stdin);
    let out = reader.join().unwrap();
    let lines: Vec<&str> = out.lines().map(|l| l.trim_end_matches('\r')).collect();
    assert!(lines.contains(&"/dev/pts/0"), "{out:?}");
    assert!(lines.contains(&"got-abc"), "{out:?}");
    assert!(lines.contains(&"30 100"), "{out:?}");

    // A container whose init has the terminal: the same, from create on.
    let mut spec = t.spec(&rootfs, &["sh", "-c", "tty; ls -l /dev/pts/0 | cut -c1-3"]);
    spec.process.terminal = true;
    c.create_container("term-init", spec).unwrap();
    let stdout = t
        .client()
        .attach_stdio("term-init", None, StdioStream::Stdout)
        .unwrap();
    let reader = std::thread::spawn(move || read_all(stdout));
    c.start_container("term-init").unwrap();
    assert_eq!(c.wait("term-init", None).unwrap().code, 0);
    let out = reader.join().unwrap();
    let lines: Vec<&str> = out.lines().map(|l| l.trim_end_matches('\r')).collect();
    assert_eq!(lines, ["/dev/pts/0", "crw"], "{out:?}");
    c.destroy_container("term-init").unwrap();

    // Destroy kills what still runs.
    c.destroy_container("cred").unwrap();
    assert_eq!(kind(c.process_list("cred")), ErrorKind::NotFound);
    assert!(t.alive());
}

#[test]
fn shutdown_stops_the_host_agent() {
    let mut t = TestAgent::start();
    let mut c = t.client();
    c.shutdown().unwrap();
    let deadline = Instant::now() + IO_TIMEOUT;
    let status = loop {
        if let Some(st) = t.child.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "agent did not exit");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success());
}

#[test]
fn raw_request_frames_roundtrip_ids() {
    let t = TestAgent::start();
    let mut conn = t.connect();
    for id in [1u64, 77, u64::MAX] {
        let req = RequestFrame {
            version: PROTOCOL_VERSION,
            id,
            request: Request::Ping,
        };
        protocol::send(&mut conn, &req).unwrap();
        let r: ResponseFrame = protocol::recv(&mut conn).unwrap();
        assert_eq!(r.id, id);
        assert!(r.result.is_ok());
    }
}

/// Pids of the children of `pid` (from /proc, all threads).
fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            if let Ok(c) = std::fs::read_to_string(t.path().join("children")) {
                out.extend(c.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
            }
        }
    }
    out
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
                .unwrap_or(false)
        })
        .unwrap_or(false)
}

/// The agent as PID 1 (in a new pid, mount and UTS namespace): early mounts, hostname,
/// orphan reaping, and Shutdown ending in reboot(2), which in a pid namespace kills its
/// init with SIGHUP.
/// A fresh scratch directory for an agent running as PID 1 in its own mount namespace: never under
/// /tmp or /run (the agent mounts fresh tmpfs there, hiding the test's sockets), which the
/// cargo target dir may well be (a checkout under /tmp).
fn pid1_test_dir(name: &str) -> PathBuf {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let base = if base.starts_with("/tmp") || base.starts_with("/run") {
        PathBuf::from("/var/tmp/ember-agent-tests")
    } else {
        base
    };
    let dir = base.join(format!("{name}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The agent as PID 1 of new pid, mount and uts namespaces (`unshare --fork`), serving `sock`,
/// announcing to `announce`, its state under `dir`, without cgroups; stdout piped.
fn pid1_agent(dir: &Path, sock: &Path, announce: &Path) -> Command {
    let mut cmd = Command::new("unshare");
    cmd.args(["--pid", "--mount", "--uts", "--fork", "--kill-child", "--"])
        .arg(agent_bin())
        .arg("--listen")
        .arg(format!("unix:{}", sock.display()))
        .arg("--announce")
        .arg(format!("unix:{}", announce.display()))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--cgroup-root")
        .arg(dir.join("no-cgroup"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    cmd
}

/// Accepts one connection, failing the test (instead of hanging) after `limit`.
fn accept_within(
    listener: &UnixListener,
    limit: Duration,
) -> (UnixStream, std::os::unix::net::SocketAddr) {
    listener.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + limit;
    loop {
        match listener.accept() {
            Ok((s, addr)) => {
                s.set_nonblocking(false).unwrap();
                return (s, addr);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(
                    Instant::now() < deadline,
                    "nobody connected within {limit:?}"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
}

#[test]
fn pid1_mode_in_pid_namespace() {
    use std::os::unix::process::ExitStatusExt;
    if !needs_root("pid1_mode_in_pid_namespace") {
        return;
    }
    if !Command::new("unshare")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
    {
        eprintln!("skipping pid1_mode_in_pid_namespace: no unshare(1)");
        return;
    }
    let dir = pid1_test_dir("pid1");
    let sock = dir.join("agent.sock");
    let announce = dir.join("announce.sock");
    let listener = UnixListener::bind(&announce).unwrap();
    let mut child = pid1_agent(&dir, &sock, &announce).spawn().unwrap();
    let (mut s, _) = accept_within(&listener, IO_TIMEOUT);
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let hello = client::read_hello(&mut s).unwrap();
    assert_eq!(hello.pid, 1, "agent should be PID 1 in its namespace");
    let mut out = child.stdout.take().unwrap();
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while line.last() != Some(&b'\n') {
        assert_eq!(out.read(&mut b).unwrap(), 1);
        line.push(b[0]);
    }
    assert_eq!(
        String::from_utf8_lossy(&line).trim_end(),
        protocol::READY_LINE
    );

    let agent_pid = *children_of(child.id())
        .first()
        .expect("unshare has the agent as its child");
    // Early mounts happened in the agent's mount namespace.
    let mounts = std::fs::read_to_string(format!("/proc/{agent_pid}/mounts")).unwrap();
    for m in [
        " /proc proc ",
        " /dev devtmpfs ",
        " /run tmpfs ",
        " /sys/fs/cgroup cgroup2 ",
    ] {
        assert!(mounts.contains(m), "missing mount {m:?}");
    }

    let conn = client::connect_unix(&sock).unwrap();
    conn.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut c = AgentClient::new(conn);
    c.ping().unwrap();
    // A container sharing the agent's pid namespace leaves an orphan behind: PID 1 reaps it.
    let rootfs = dir.join("rootfs");
    for d in ["bin", "proc", "dev", "sys"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
    for a in ["sh", "sleep", "hostname"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(a)).unwrap();
    }
    let spec = ContainerSpec {
        rootfs: RootfsSpec::Path {
            path: rootfs.display().to_string(),
            read_only: false,
        },
        mounts: vec![],
        hostname: None,
        namespaces: vec![Namespace::Mount],
        process: ProcessSpec::new(["sh", "-c", "sleep 0.2 & hostname"]),
        cgroup_path: None,
        volume: None,
        limits: Default::default(),
        linux: Default::default(),
        share: None,
    };
    c.create_container("orphan", spec).unwrap();
    let stdout = AgentClient::new(client::connect_unix(&sock).unwrap())
        .attach_stdio("orphan", None, StdioStream::Stdout)
        .unwrap();
    c.start_container("orphan").unwrap();
    assert_eq!(c.wait("orphan", None).unwrap().code, 0);
    // No pid namespace and no UTS namespace of its own: it sees the agent's hostname.
    assert_eq!(read_all(stdout), "ember\n");
    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        let kids = children_of(agent_pid);
        let zombies: Vec<u32> = kids.iter().copied().filter(|p| is_zombie(*p)).collect();
        if kids.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "children left: {kids:?}, zombies {zombies:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    c.shutdown().unwrap();
    let status = child.wait().unwrap();
    assert_eq!(
        status.signal(),
        Some(libc::SIGHUP),
        "reboot(2) in a pid namespace ends its init with SIGHUP, got {status:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--no-pivot` (move the rootfs over / and chroot, the path an initramfs guest falls back
/// to) and a container with its own network namespace (loopback brought up).
#[test]
fn no_pivot_root_switch_and_own_network_namespace() {
    if !needs_root("no_pivot_root_switch_and_own_network_namespace") {
        return;
    }
    let mut t = TestAgent::start_with(&["--no-pivot"]);
    let rootfs = t.rootfs("rootfs-nopivot");
    let mut spec = t.spec(
        &rootfs,
        &[
            "sh",
            "-c",
            "cat /etc/marker; echo; cat /sys/class/net/lo/flags; ls /sys/class/net",
        ],
    );
    spec.namespaces.push(Namespace::Net);
    let mut c = t.client();
    c.create_container("np", spec).unwrap();
    let out = t
        .client()
        .attach_stdio("np", None, StdioStream::Stdout)
        .unwrap();
    c.start_container("np").unwrap();
    assert_eq!(c.wait("np", None).unwrap().code, 0);
    // IFF_UP | IFF_LOOPBACK = 0x9 (down it reads 0x8); only lo in a fresh namespace.
    assert_eq!(read_all(out), "rootfs-nopivot\n0x9\nlo\n");
    c.destroy_container("np").unwrap();
    assert!(t.alive());
}

/// A container on a block device (an ext4 image on a loop device, as /dev/vdb in a guest),
/// mounted read-only; and a device that does not exist fails cleanly.
#[test]
fn block_device_rootfs() {
    if !needs_root("block_device_rootfs") {
        return;
    }
    let tool_ok = |cmd: &str| {
        Command::new(cmd)
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
    };
    if !tool_ok("mkfs.ext4") || !tool_ok("losetup") || !Path::new("/dev/loop-control").exists() {
        eprintln!("skipping block_device_rootfs: needs mkfs.ext4, losetup and loop devices");
        return;
    }
    let mut t = TestAgent::start();
    let mut c = t.client();

    let bad = ContainerSpec {
        rootfs: RootfsSpec::BlockDevice {
            path: "/dev/ember-no-such-disk".into(),
            fstype: "ext4".into(),
            read_only: true,
        },
        ..t.spec(Path::new("/"), &["true"])
    };
    assert_eq!(kind(c.create_container("bad", bad)), ErrorKind::Failed);
    assert!(!t.dir.join("state/containers/bad").exists());
    assert!(c.stats().unwrap().containers.is_empty());

    let tree = t.rootfs("rootfs-block");
    let img = t.dir.join("disk.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    let mkfs = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&tree)
        .arg(&img)
        .status()
        .unwrap();
    assert!(mkfs.success());
    let out = Command::new("losetup")
        .args(["-f", "--show"])
        .arg(&img)
        .output()
        .unwrap();
    if !out.status.success() {
        eprintln!("skipping block_device_rootfs: losetup failed");
        return;
    }
    let loopdev = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let mut spec = t.spec(Path::new("/"), &["sh", "-c", "cat /etc/marker; touch /x"]);
    spec.rootfs = RootfsSpec::BlockDevice {
        path: loopdev.clone(),
        fstype: "ext4".into(),
        read_only: true,
    };
    let result = (|| -> Result<(String, i32), ClientError> {
        c.create_container("blk", spec)?;
        let out = t.client().attach_stdio("blk", None, StdioStream::Stdout)?;
        c.start_container("blk")?;
        let code = c.wait("blk", None)?.code;
        let text = read_all(out);
        c.destroy_container("blk")?;
        Ok((text, code))
    })();
    let _ = Command::new("losetup").arg("-d").arg(&loopdev).status();
    let (text, code) = result.unwrap();
    assert_eq!(text, "rootfs-block");
    assert_eq!(code, 1, "touch on a read-only rootfs must fail");
    assert!(t.alive());
}

/// Destroying a paused container kills and removes it.
#[test]
fn destroy_paused_container() {
    if !needs_root("destroy_paused_container") {
        return;
    }
    let mut t = TestAgent::start();
    if t.cgroup_root.is_none() {
        eprintln!("skipping destroy_paused_container: no cgroup v2");
        return;
    }
    let rootfs = t.rootfs("rootfs-paused");
    let mut c = t.client();
    c.create_container("pz", t.spec(&rootfs, &["sleep", "1000"]))
        .unwrap();
    c.start_container("pz").unwrap();
    c.exec("pz", "e", ProcessSpec::new(["sleep", "1000"]))
        .unwrap();
    c.pause("pz").unwrap();
    c.destroy_container("pz").unwrap();
    assert_eq!(kind(c.wait("pz", None)), ErrorKind::NotFound);
    assert!(!t.cgroup_root.as_ref().unwrap().join("ember/pz").exists());
    assert!(t.alive());
}

/// As PID 1 a listener that cannot be bound (in a guest: no vsock) does not stop the agent:
/// it still prints the ready line and starts serving once binding works.
#[test]
fn pid1_reports_ready_without_listener_and_binds_later() {
    if !needs_root("pid1_reports_ready_without_listener_and_binds_later") {
        return;
    }
    let dir = pid1_test_dir("pid1-late");
    let sock_dir = dir.join("later");
    let sock = sock_dir.join("agent.sock");
    let announce = dir.join("announce.sock");
    let listener = UnixListener::bind(&announce).unwrap();
    let mut child = match pid1_agent(&dir, &sock, &announce)
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("skipping: cannot run unshare(1): {e}");
            return;
        }
    };
    let mut out = child.stdout.take().unwrap();
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while line.last() != Some(&b'\n') {
        assert_eq!(out.read(&mut b).unwrap(), 1);
        line.push(b[0]);
    }
    assert_eq!(
        String::from_utf8_lossy(&line).trim_end(),
        protocol::READY_LINE
    );
    assert!(
        matches!(child.try_wait(), Ok(None)),
        "PID 1 must keep running"
    );
    assert!(!sock.exists());
    // Make binding possible: the agent retries, binds, then announces.
    std::fs::create_dir_all(&sock_dir).unwrap();
    let (mut s, _) = accept_within(&listener, IO_TIMEOUT);
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    assert_eq!(client::read_hello(&mut s).unwrap().pid, 1);
    let conn = client::connect_unix(&sock).unwrap();
    conn.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    assert!(AgentClient::new(conn).ping().is_ok());
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A container whose setup fails (a mount of an unknown filesystem) is refused with the cause,
/// leaves nothing behind, and the id can be used again.
#[test]
fn failed_setup_is_reported_and_cleaned_up() {
    let Some((mut t, rootfs)) =
        root_agent("failed_setup_is_reported_and_cleaned_up", "rootfs-fail")
    else {
        return;
    };
    let mut c = t.client();
    // With a terminal the helper fails before it has made the pty: the cause still arrives.
    for terminal in [false, true] {
        let mut spec = t.spec(&rootfs, &["true"]);
        spec.process.terminal = terminal;
        spec.mounts.push(Mount {
            destination: "/data".into(),
            source: "none".into(),
            fstype: Some("no-such-fs".into()),
            options: vec![],
            from_volume: false,
            from_share: false,
        });
        let err = c.create_container("f", spec).unwrap_err();
        assert_eq!(
            err.agent_kind(),
            Some(ErrorKind::Failed),
            "terminal {terminal}"
        );
        let msg = match &err {
            ClientError::Agent(e) => e.message.clone(),
            other => panic!("{other:?}"),
        };
        assert!(msg.contains("/data"), "cause missing in {msg:?}");
        assert!(!t.dir.join("state/containers/f").exists());
        if let Some(root) = &t.cgroup_root {
            assert!(!root.join("ember/f").exists());
        }
    }
    // The id is free again; a bad cwd fails the start, not the agent.
    let mut spec = t.spec(&rootfs, &["true"]);
    spec.process.cwd = "/no/such/dir".into();
    c.create_container("f", spec).unwrap();
    assert_eq!(kind(c.start_container("f")), ErrorKind::Failed);
    assert_eq!(c.wait("f", None).unwrap().code, 127);
    c.destroy_container("f").unwrap();
    assert!(t.alive());
}

// OCI fidelity: each field of config.json the agent applies, as the container sees it.

/// `rootfs` with the extra busybox applets the fidelity tests use.
fn with_applets(rootfs: &Path) {
    for applet in ["grep", "cut", "stat", "tr", "head"] {
        let link = rootfs.join("bin").join(applet);
        if !link.exists() {
            std::os::unix::fs::symlink("busybox", link).unwrap();
        }
    }
}

/// Runs `spec` to its end and returns (exit code, stdout).
fn run_container(t: &TestAgent, id: &str, spec: ContainerSpec) -> (i32, String) {
    let mut c = t.client();
    c.create_container(id, spec).unwrap();
    let stdout = t
        .client()
        .attach_stdio(id, None, StdioStream::Stdout)
        .unwrap();
    let reader = std::thread::spawn(move || read_all(stdout));
    c.start_container(id).unwrap();
    let code = c.wait(id, None).unwrap().code;
    let out = reader.join().unwrap();
    c.destroy_container(id).unwrap();
    (code, out)
}

/// Runs `p` in running container `id` and returns its stdout.
fn run_exec(t: &TestAgent, id: &str, exec_id: &str, p: ProcessSpec) -> String {
    let mut c = t.client();
    c.exec(id, exec_id, p).unwrap();
    let out = read_all(
        t.client()
            .attach_stdio(id, Some(exec_id), StdioStream::Stdout)
            .unwrap(),
    );
    assert_eq!(c.wait(id, Some(exec_id)).unwrap().code, 0, "{out}");
    out
}

fn caps(
    bounding: &[&str],
    eff: &[&str],
    perm: &[&str],
    inh: &[&str],
    amb: &[&str],
) -> Box<Capabilities> {
    let v = |s: &[&str]| s.iter().map(|c| c.to_string()).collect();
    Box::new(Capabilities {
        bounding: v(bounding),
        effective: v(eff),
        permitted: v(perm),
        inheritable: v(inh),
        ambient: v(amb),
    })
}

const CAP_LINES: &str = "grep -E '^(Cap|NoNewPrivs)' /proc/self/status";

#[test]
fn capabilities_are_the_specs() {
    let Some((t, rootfs)) = root_agent("capabilities_are_the_specs", "rootfs-caps") else {
        return;
    };
    with_applets(&rootfs);
    // Root with NET_ADMIN and KILL in its bounding set: after exec, root's permitted and
    // effective sets are the bounding set (the kernel's rule for root, as under runc).
    let mut spec = t.spec(&rootfs, &["sh", "-c", &format!("{CAP_LINES}; sleep 1000")]);
    let net_kill = ["CAP_NET_ADMIN", "CAP_KILL"];
    spec.process.capabilities = Some(caps(
        &net_kill,
        &["CAP_NET_ADMIN"],
        &["CAP_NET_ADMIN"],
        &[],
        &[],
    ));
    let mut c = t.client();
    c.create_container("caps", spec).unwrap();
    let stdout = t
        .client()
        .attach_stdio("caps", None, StdioStream::Stdout)
        .unwrap();
    c.start_container("caps").unwrap();
    let mut init_out = String::new();
    let mut stdout = stdout;
    let mut buf = [0u8; 512];
    while init_out.lines().count() < 6 {
        let n = stdout.read(&mut buf).unwrap();
        assert!(n > 0, "init output ended early: {init_out:?}");
        init_out.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert_eq!(
        init_out,
        "CapInh:\t0000000000000000\nCapPrm:\t0000000000001020\nCapEff:\t0000000000001020\n\
         CapBnd:\t0000000000001020\nCapAmb:\t0000000000000000\nNoNewPrivs:\t0\n"
    );

    // A non-root exec with NET_ADMIN ambient keeps it across exec; no_new_privs is set.
    let mut p = ProcessSpec::new(["sh", "-c", CAP_LINES]);
    p.uid = 1000;
    p.gid = 1000;
    p.no_new_privileges = true;
    let na = ["CAP_NET_ADMIN"];
    p.capabilities = Some(caps(&net_kill, &na, &net_kill, &na, &na));
    assert_eq!(
        run_exec(&t, "caps", "amb", p),
        "CapInh:\t0000000000001000\nCapPrm:\t0000000000001000\nCapEff:\t0000000000001000\n\
         CapBnd:\t0000000000001020\nCapAmb:\t0000000000001000\nNoNewPrivs:\t1\n"
    );
    // An exec without capabilities gets its container's; an empty object means none.
    let out = run_exec(
        &t,
        "caps",
        "inherit",
        ProcessSpec::new(["sh", "-c", CAP_LINES]),
    );
    assert!(out.contains("CapBnd:\t0000000000001020\n"), "{out}");
    let mut p = ProcessSpec::new(["sh", "-c", CAP_LINES]);
    p.capabilities = Some(Box::default());
    let out = run_exec(&t, "caps", "none", p);
    for set in ["CapPrm", "CapEff", "CapBnd"] {
        assert!(
            out.contains(&format!("{set}:\t0000000000000000\n")),
            "{out}"
        );
    }
    // Unknown names are refused, at exec and at create.
    let mut p = ProcessSpec::new(["true"]);
    p.capabilities = Some(caps(&["CAP_NOT_A_CAP"], &[], &[], &[], &[]));
    assert_eq!(kind(c.exec("caps", "bad", p)), ErrorKind::BadRequest);
    c.destroy_container("caps").unwrap();
    let mut spec = t.spec(&rootfs, &["true"]);
    spec.process.capabilities = Some(caps(&[], &["CAP_BOGUS"], &[], &[], &[]));
    let err = c.create_container("bad-caps", spec).unwrap_err();
    assert_eq!(err.agent_kind(), Some(ErrorKind::BadRequest), "{err}");
    assert!(format!("{err:?}").contains("CAP_BOGUS"), "{err:?}");
}

#[test]
fn masked_and_readonly_paths_readonly_root_and_mqueue() {
    let Some((t, rootfs)) = root_agent("masked_and_readonly_paths", "rootfs-paths") else {
        return;
    };
    with_applets(&rootfs);
    std::fs::write(rootfs.join("etc/passwd"), "root:x:0:0::/:/bin/sh\n").unwrap();
    std::fs::create_dir_all(rootfs.join("secret")).unwrap();
    std::fs::write(rootfs.join("secret/key"), "k").unwrap();
    std::fs::create_dir_all(rootfs.join("data")).unwrap();
    let script = "cat /etc/passwd; echo passwd-done; ls /secret; echo secret-done; \
        touch /secret/x 2>/dev/null || echo secret-ro; \
        echo 1 > /proc/sys/kernel/msgmax 2>/dev/null || echo procsys-ro; \
        touch /newfile 2>/dev/null || echo root-ro; \
        touch /data/f 2>/dev/null || echo data-ro; \
        touch /scratch/f && echo scratch-rw; \
        grep ' /dev/mqueue ' /proc/self/mountinfo | grep -c mqueue; \
        grep ' /dev/shm ' /proc/self/mountinfo | grep -o 'size=[0-9]*k'";
    let mut spec = t.spec(&rootfs, &["sh", "-c", script]);
    spec.linux.masked_paths = vec!["/etc/passwd".into(), "/secret".into(), "/no-such".into()];
    spec.linux.readonly_paths = vec!["/proc/sys".into(), "/data".into(), "/no-such-2".into()];
    spec.linux.readonly_root = true;
    let tmpfs = |dest: &str| Mount {
        destination: dest.into(),
        source: "tmpfs".into(),
        fstype: Some("tmpfs".into()),
        options: vec![],
        from_volume: false,
        from_share: false,
    };
    spec.mounts = vec![
        // Made read-only by readonly_paths; /scratch stays writable under a read-only root.
        tmpfs("/data"),
        Mount {
            destination: "/scratch".into(),
            source: "tmpfs".into(),
            fstype: Some("tmpfs".into()),
            options: vec![],
            from_volume: false,
            from_share: false,
        },
        Mount {
            destination: "/dev/mqueue".into(),
            source: "mqueue".into(),
            fstype: Some("mqueue".into()),
            options: vec!["nosuid".into(), "nodev".into(), "noexec".into()],
            from_volume: false,
            from_share: false,
        },
        Mount {
            destination: "/dev/shm".into(),
            source: "shm".into(),
            fstype: Some("tmpfs".into()),
            options: vec!["mode=1777".into(), "size=1024k".into()],
            from_volume: false,
            from_share: false,
        },
    ];
    let (code, out) = run_container(&t, "paths", spec);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        out,
        "passwd-done\nsecret-done\nsecret-ro\nprocsys-ro\nroot-ro\ndata-ro\nscratch-rw\n1\nsize=1024k\n"
    );
}

/// runc's `tmpcopyup` (podman `--read-only` mounts /run, /tmp, /var/tmp so): the tmpfs starts
/// with what its mount point held, owners and modes kept; without it, empty.
#[test]
fn tmpcopyup_tmpfs_starts_with_the_mount_points_content() {
    let Some((t, rootfs)) = root_agent("tmpcopyup", "rootfs-copyup") else {
        return;
    };
    with_applets(&rootfs);
    for d in ["run/lock", "plain"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::fs::write(rootfs.join("run/lock/held"), "kept").unwrap();
    std::os::unix::fs::symlink("lock/held", rootfs.join("run/link")).unwrap();
    std::fs::write(rootfs.join("plain/gone"), "x").unwrap();
    let script = "cat /run/lock/held; echo; readlink /run/link; \
        grep ' /run ' /proc/self/mountinfo | grep -c tmpfs; ls /plain | wc -l; \
        echo new > /run/new && cat /run/new";
    let mut spec = t.spec(&rootfs, &["sh", "-c", script]);
    let tmpfs = |dest: &str, opts: &[&str]| Mount {
        destination: dest.into(),
        source: "tmpfs".into(),
        fstype: Some("tmpfs".into()),
        options: opts.iter().map(|o| o.to_string()).collect(),
        from_volume: false,
        from_share: false,
    };
    spec.mounts = vec![
        tmpfs("/run", &["rw", "rprivate", "nosuid", "nodev", "tmpcopyup"]),
        tmpfs("/plain", &["rw"]),
    ];
    let (code, out) = run_container(&t, "copyup", spec);
    assert_eq!(code, 0, "{out}");
    assert_eq!(out, "kept\nlock/held\n1\n0\nnew\n");
    // The host's rootfs is untouched by the container's writes to the tmpfs.
    assert!(!rootfs.join("run/new").exists());
}

#[test]
fn hostname_sysctl_oom_rlimits_groups_and_devices() {
    let Some((t, rootfs)) = root_agent("hostname_sysctl_oom", "rootfs-misc") else {
        return;
    };
    with_applets(&rootfs);
    let script = "hostname; cat /proc/sys/kernel/domainname; cat /proc/sys/kernel/msgmax; \
        cat /proc/self/oom_score_adj; ulimit -Sn; ulimit -Hn; id -G; \
        stat -c '%F %t:%T %a %u:%g' /dev/mynull /dev/null /dev/sub/fifo";
    let mut spec = t.spec(&rootfs, &["sh", "-c", script]);
    spec.hostname = Some("h1".into());
    spec.linux.domainname = Some("dom1".into());
    spec.linux.sysctl = [("kernel.msgmax".to_string(), "4096".to_string())].into();
    spec.process.oom_score_adj = Some(100);
    spec.process.rlimits = vec![Rlimit {
        kind: "RLIMIT_NOFILE".into(),
        soft: 1000,
        hard: 2000,
    }];
    spec.process.additional_gids = vec![5, 6];
    let dev = |path: &str, kind: &str, major, minor, mode, gid| Device {
        path: path.into(),
        kind: kind.into(),
        major,
        minor,
        file_mode: mode,
        uid: Some(0),
        gid,
    };
    spec.linux.devices = vec![
        dev("/dev/mynull", "c", 1, 3, Some(0o640), Some(5)),
        // Replaces the agent's own /dev/null node.
        dev("/dev/null", "c", 1, 3, Some(0o600), None),
        dev("/dev/sub/fifo", "p", 0, 0, None, None),
    ];
    let (code, out) = run_container(&t, "misc", spec);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        out,
        "h1\ndom1\n4096\n100\n1000\n2000\n0 5 6\n\
         character special file 1:3 640 0:5\ncharacter special file 1:3 600 0:0\nfifo 0:0 666 0:0\n"
    );
    // The sysctl went to the container's IPC namespace, not the agent's.
    assert_ne!(
        std::fs::read_to_string("/proc/sys/kernel/msgmax")
            .unwrap()
            .trim(),
        "4096"
    );

    // An empty hostname leaves the one the UTS namespace copied (runc), here the host's.
    let mut spec = t.spec(&rootfs, &["hostname"]);
    spec.hostname = Some(String::new());
    let (_, out) = run_container(&t, "empty-name", spec);
    let host = nix::unistd::gethostname().unwrap();
    assert_eq!(out.trim(), host.to_string_lossy());

    // Bad sysctl keys are refused at create.
    let mut spec = t.spec(&rootfs, &["true"]);
    spec.linux.sysctl = [("kernel..msgmax".to_string(), "1".to_string())].into();
    assert_eq!(
        kind(t.client().create_container("bad-sysctl", spec)),
        ErrorKind::BadRequest
    );
}

/// `/proc/PID/ns/NAME`'s link text (`ipc:[4026531839]`).
fn ns_link(pid: &str, name: &str) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/{name}"))
        .unwrap()
        .display()
        .to_string()
}

/// The spec of a member of container `sb` running `args`, sharing `shared` with it.
fn member_spec(t: &TestAgent, rootfs: &Path, args: &[&str], shared: &[Namespace]) -> ContainerSpec {
    let mut spec = t.spec(rootfs, args);
    spec.hostname = None;
    spec.namespaces.retain(|n| !shared.contains(n));
    spec.share = Some(SharedNamespaces {
        container: "sb".into(),
        namespaces: shared.to_vec(),
    });
    spec
}

/// A CRI pod's member joins its sandbox's UTS, IPC and PID namespaces (as runc joins them by
/// path): the sandbox's hostname and namespaces, in its init and in its execs; what cannot be
/// shared is refused.
#[test]
fn a_member_shares_the_sandbox_containers_namespaces() {
    let Some((t, rootfs)) = root_agent("share_namespaces", "rootfs-share") else {
        return;
    };
    let mut c = t.client();
    let mut sandbox = t.spec(&rootfs, &["sleep", "1000"]);
    sandbox.hostname = Some("pod-host".into());
    c.create_container("sb", sandbox).unwrap();
    let sb_pid = c.start_container("sb").unwrap();
    let ns = |pid: &str, name: &str| ns_link(pid, name);
    let shared = [Namespace::Uts, Namespace::Ipc, Namespace::Pid];
    let member = |args: &[&str]| member_spec(&t, &rootfs, args, &shared);
    let script = "hostname; readlink /proc/self/ns/uts; readlink /proc/self/ns/ipc; \
        readlink /proc/self/ns/pid; readlink /proc/self/ns/mnt";
    let (code, out) = run_container(&t, "m1", member(&["sh", "-c", script]));
    assert_eq!(code, 0, "{out}");
    let sb = sb_pid.to_string();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 5, "{out}");
    assert_eq!(lines[0], "pod-host");
    assert_eq!(lines[1], ns(&sb, "uts"));
    assert_eq!(lines[2], ns(&sb, "ipc"));
    assert_eq!(lines[3], ns(&sb, "pid"));
    // Its own mount namespace all the same.
    assert_ne!(lines[4], ns(&sb, "mnt"));

    // An exec in the member lands in the same namespaces.
    c.create_container("m2", member(&["sleep", "1000"]))
        .unwrap();
    c.start_container("m2").unwrap();
    let out = run_exec(&t, "m2", "e1", ProcessSpec::new(["sh", "-c", script]));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "pod-host", "{out}");
    assert_eq!(lines[1], ns(&sb, "uts"));
    assert_eq!(lines[3], ns(&sb, "pid"));
    // Sharing the IPC namespace shares /dev/shm (as the engines bind one tmpfs into both).
    let script = "echo from-m2 >/dev/shm/x";
    run_exec(&t, "m2", "e2", ProcessSpec::new(["sh", "-c", script]));
    let out = run_exec(&t, "sb", "e3", ProcessSpec::new(["cat", "/dev/shm/x"]));
    assert_eq!(
        out, "from-m2\n",
        "the sandbox sees the member's /dev/shm file"
    );
    c.destroy_container("m2").unwrap();

    // Refused: a namespace that cannot be shared, one both owned and shared, a sandbox
    // that does not exist or no longer runs.
    let mut spec = member(&["true"]);
    spec.share
        .as_mut()
        .unwrap()
        .namespaces
        .push(Namespace::Mount);
    assert_eq!(
        kind(c.create_container("bad1", spec)),
        ErrorKind::BadRequest
    );
    let mut spec = member(&["true"]);
    spec.namespaces.push(Namespace::Uts);
    assert_eq!(
        kind(c.create_container("bad2", spec)),
        ErrorKind::BadRequest
    );
    let mut spec = member(&["true"]);
    spec.share.as_mut().unwrap().container = "nope".into();
    assert_eq!(kind(c.create_container("bad3", spec)), ErrorKind::NotFound);
    c.signal("sb", None, libc::SIGKILL, false).unwrap();
    c.wait("sb", None).unwrap();
    assert_eq!(
        kind(c.create_container("bad4", member(&["true"]))),
        ErrorKind::InvalidState
    );
    c.destroy_container("sb").unwrap();
    // Nothing of the refused ones was left.
    assert_eq!(kind(c.destroy_container("bad4")), ErrorKind::NotFound);
}

#[test]
fn root_propagation_as_the_spec_says() {
    let Some((t, rootfs)) = root_agent("root_propagation", "rootfs-prop") else {
        return;
    };
    with_applets(&rootfs);
    // The optional fields of the root mount's mountinfo line (`shared:N`, `master:N`).
    let script = "grep -E '^[0-9]+ [0-9]+ [0-9:]+ [^ ]+ / ' /proc/self/mountinfo | cut -d' ' -f7- \
        | grep -oE '^(shared|master)' || echo none";
    for (value, want) in [
        (None, "none"),
        (Some("rshared"), "shared"),
        (Some("private"), "none"),
    ] {
        let mut spec = t.spec(&rootfs, &["sh", "-c", script]);
        spec.linux.root_propagation = value.map(str::to_string);
        let (code, out) = run_container(&t, "prop", spec);
        assert_eq!((code, out.trim()), (0, want), "{value:?}");
    }
    let mut spec = t.spec(&rootfs, &["true"]);
    spec.linux.root_propagation = Some("sideways".into());
    assert_eq!(
        kind(t.client().create_container("bad-prop", spec)),
        ErrorKind::BadRequest
    );
}

/// Gives everything under `root` to `uid`:`uid`, as podman's storage shifts an image's files
/// for `--uidmap 0:uid:N`.
fn chown_tree(root: &Path, uid: u32) {
    std::os::unix::fs::lchown(root, Some(uid), Some(uid)).unwrap();
    for e in std::fs::read_dir(root).unwrap().flatten() {
        let p = e.path();
        if e.file_type().unwrap().is_dir() {
            chown_tree(&p, uid);
        } else {
            std::os::unix::fs::lchown(&p, Some(uid), Some(uid)).unwrap();
        }
    }
}

fn id_map(container_id: u32, host_id: u32, size: u32) -> protocol::IdMapping {
    protocol::IdMapping {
        container_id,
        host_id,
        size,
    }
}

/// A container with a user namespace: its ids are the spec's maps (root inside is uid 100000
/// outside, and its files land so), it is root only there (no device nodes of its own, the
/// agent's are bound; /sys and the cgroup tree bound too), its rlimits are raised from
/// outside, an exec joins the namespace with its own user, and bad maps are refused at create.
#[test]
fn a_user_namespace_maps_the_containers_ids() {
    let Some((t, rootfs)) = root_agent("a_user_namespace_maps_the_containers_ids", "rootfs-userns")
    else {
        return;
    };
    with_applets(&rootfs);
    chown_tree(&rootfs, 100000);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(rootfs.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    let script = "cat /proc/self/uid_map /proc/self/gid_map; id -u; id -g; touch /made-inside; \
                  echo x > /dev/null && echo x > /dev/mynull && echo null-ok; ls /sys/kernel >/dev/null && echo sys-ok; \
                  ulimit -Hn; stat -c '%F %t:%T %a' /dev/nowhere; sleep 1000";
    let mut spec = t.spec(&rootfs, &["sh", "-c", script]);
    spec.namespaces.extend([Namespace::Cgroup, Namespace::User]);
    spec.linux.uid_mappings = vec![id_map(0, 100000, 65536)];
    spec.linux.gid_mappings = vec![id_map(0, 100000, 65536)];
    // A device of the spec at a path the VM does not have: its node found by its numbers.
    spec.linux.devices = vec![
        Device {
            path: "/dev/mynull".into(),
            kind: "c".into(),
            major: 1,
            minor: 3,
            file_mode: Some(0o666),
            uid: Some(0),
            gid: Some(0),
        },
        Device {
            // One this machine has no node for (as `--privileged` lists the host's devices, which
            // a VM need not have): the agent makes it outside for the helper to bind.
            path: "/dev/nowhere".into(),
            kind: "c".into(),
            major: 240,
            minor: 77,
            file_mode: Some(0o620),
            uid: Some(0),
            gid: Some(0),
        },
    ];
    // Above the agent's own hard limit is fine: the agent sets it (a process inside may not).
    // Where this host withholds CAP_SYS_RESOURCE even from root, the agent's own limit.
    let agent_hard: u64 = std::fs::read_to_string(format!("/proc/{}/limits", t.child.id()))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(4).and_then(|v| v.parse().ok()))
        .unwrap();
    let cap_eff = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix("CapEff:")
                .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
        })
        .unwrap();
    const CAP_SYS_RESOURCE: u32 = 24;
    let hard = if cap_eff & (1 << CAP_SYS_RESOURCE) != 0 {
        agent_hard.min(1 << 19) + 1
    } else {
        eprintln!("a_user_namespace_maps_the_containers_ids: no CAP_SYS_RESOURCE here: the rlimit is not raised above the agent's");
        agent_hard
    };
    spec.process.rlimits = vec![Rlimit {
        kind: "RLIMIT_NOFILE".into(),
        soft: 64,
        hard,
    }];
    let mut c = t.client();
    c.create_container("userns", spec).unwrap();
    let mut stdout = t
        .client()
        .attach_stdio("userns", None, StdioStream::Stdout)
        .unwrap();
    c.start_container("userns").unwrap();
    let mut out = String::new();
    let mut buf = [0u8; 512];
    while out.lines().count() < 8 {
        let n = stdout.read(&mut buf).unwrap();
        assert!(n > 0, "init output ended early: {out:?}");
        out.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    let lines: Vec<String> = out
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    assert_eq!(
        lines,
        [
            "0 100000 65536",
            "0 100000 65536",
            "0",
            "0",
            "null-ok",
            "sys-ok",
            &hard.to_string(),
            "character special file f0:4d 620"
        ],
        "{out:?}"
    );
    // (The node the agent made outside, at its fixed place: not this test's to keep.)
    let _ = std::fs::remove_file(Path::new(agent::mounts::OUTSIDE_NODES).join("c240:77"));
    let md = std::fs::metadata(rootfs.join("made-inside")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!((md.uid(), md.gid()), (100000, 100000));
    // An exec joins the namespace and becomes its own user there.
    let mut p = ProcessSpec::new([
        "sh",
        "-c",
        "id -u; touch /tmp/by-exec; cat /proc/self/uid_map",
    ]);
    p.uid = 1000;
    p.gid = 1000;
    let out = run_exec(&t, "userns", "who", p);
    let first = out.lines().next().unwrap_or("");
    assert_eq!(first, "1000", "{out:?}");
    assert!(out.contains("100000"), "{out:?}");
    let md = std::fs::metadata(rootfs.join("tmp/by-exec")).unwrap();
    assert_eq!(md.uid(), 101000);
    // A terminal exec: its pty is made inside the namespace and given to the user.
    let mut p = ProcessSpec::new(["sh", "-c", "tty; stat -c %u /proc/self/fd/0"]);
    p.terminal = true;
    p.uid = 1000;
    p.gid = 1000;
    c.exec("userns", "term", p).unwrap();
    let stdout = t
        .client()
        .attach_stdio("userns", Some("term"), StdioStream::Stdout)
        .unwrap();
    let out = read_all(stdout);
    assert_eq!(c.wait("userns", Some("term")).unwrap().code, 0, "{out}");
    let lines: Vec<&str> = out.lines().map(|l| l.trim_end_matches('\r')).collect();
    assert_eq!(lines, ["/dev/pts/0", "1000"], "{out:?}");
    c.destroy_container("userns").unwrap();

    // Bad maps: refused at create, nothing made.
    let cases: [(&str, Vec<Namespace>, Vec<protocol::IdMapping>); 4] = [
        (
            "no uid 0",
            vec![Namespace::Mount, Namespace::User],
            vec![id_map(1, 100000, 10)],
        ),
        ("no maps", vec![Namespace::Mount, Namespace::User], vec![]),
        (
            "past u32",
            vec![Namespace::Mount, Namespace::User],
            vec![id_map(0, u32::MAX, 2)],
        ),
        (
            "maps without the namespace",
            vec![Namespace::Mount],
            vec![id_map(0, 100000, 10)],
        ),
    ];
    for (what, namespaces, maps) in cases {
        let mut spec = t.spec(&rootfs, &["true"]);
        spec.namespaces = namespaces;
        spec.linux.uid_mappings = maps.clone();
        spec.linux.gid_mappings = maps;
        let err = c.create_container("bad-userns", spec).unwrap_err();
        assert_eq!(
            err.agent_kind(),
            Some(ErrorKind::BadRequest),
            "{what}: {err}"
        );
        assert!(
            format!("{err:?}").contains("user namespace"),
            "{what}: {err:?}"
        );
    }
    assert_eq!(kind(c.process_list("bad-userns")), ErrorKind::NotFound);
    assert!(!t.dir.join("state/containers/bad-userns").exists());
}

/// A pod member joins its sandbox's user namespace (podman's pod members join the infra
/// container's by path): its own mount and PID namespaces are made inside it, so it is the
/// namespace's root, mounts its /proc and writes its files as the mapped uid, as under runc;
/// an exec into it lands there too.
#[test]
fn a_member_joins_the_sandbox_containers_user_namespace() {
    let Some((t, rootfs)) = root_agent(
        "a_member_joins_the_sandbox_containers_user_namespace",
        "rootfs-userns-join",
    ) else {
        return;
    };
    with_applets(&rootfs);
    chown_tree(&rootfs, 100000);
    let mut c = t.client();
    let mut sandbox = t.spec(&rootfs, &["sleep", "1000"]);
    sandbox.namespaces.push(Namespace::User);
    sandbox.linux.uid_mappings = vec![id_map(0, 100000, 65536)];
    sandbox.linux.gid_mappings = vec![id_map(0, 100000, 65536)];
    c.create_container("sb", sandbox).unwrap();
    let sb_pid = c.start_container("sb").unwrap();
    let ns = |name: &str| ns_link(&sb_pid.to_string(), name);
    let shared = [Namespace::User, Namespace::Ipc, Namespace::Uts];
    let member = |args: &[&str]| member_spec(&t, &rootfs, args, &shared);
    let script = "tr -s ' ' </proc/self/uid_map; id -u; readlink /proc/self/ns/user; \
        readlink /proc/self/ns/ipc; echo pid $$; ls /proc/1/status >/dev/null && echo proc-ok; \
        touch /made-by-member";
    let (code, out) = run_container(&t, "m1", member(&["sh", "-c", script]));
    assert_eq!(code, 0, "{out}");
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    assert_eq!(
        lines,
        [
            "0 100000 65536",
            "0",
            &ns("user"),
            &ns("ipc"),
            "pid 1",
            "proc-ok"
        ],
        "{out}"
    );
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::metadata(rootfs.join("made-by-member")).unwrap();
    assert_eq!((md.uid(), md.gid()), (100000, 100000));

    // An exec into a running member: the same user namespace, its root.
    c.create_container("m2", member(&["sleep", "1000"]))
        .unwrap();
    c.start_container("m2").unwrap();
    let out = run_exec(
        &t,
        "m2",
        "e1",
        ProcessSpec::new(["sh", "-c", "id -u; readlink /proc/self/ns/user"]),
    );
    assert_eq!(out, format!("0\n{}\n", ns("user")), "{out}");
    c.destroy_container("m2").unwrap();
    c.destroy_container("sb").unwrap();
}
