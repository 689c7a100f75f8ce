//! Shared equipment of the host-agent tests (`pod_host_agent`, `pod_race`, `pod_lifecycle`,
//! `fault_matrix`): a state root of its own, `ember` run in host-agent mode (the pod process
//! runs the guest agent as a host process, see `pod_host_agent.rs`), and leak counts
//! (processes, mounts, sockets, directories) of everything a pod can leave behind.

#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The ember-agent binary beside the ember binary (or `EMBER_AGENT_BIN`).
pub fn agent_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("EMBER_AGENT_BIN") {
        return Some(PathBuf::from(p));
    }
    let ember = PathBuf::from(env!("CARGO_BIN_EXE_ember"));
    let p = ember.parent()?.join("ember-agent");
    p.is_file().then_some(p)
}

/// The agent binary when root, /bin/busybox and the agent are there; else says why not.
pub fn prerequisites(test: &str) -> Option<PathBuf> {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipping {test}: needs root");
        return None;
    }
    if !Path::new("/bin/busybox").exists() {
        eprintln!("skipping {test}: /bin/busybox (busybox-static) missing");
        return None;
    }
    let agent = agent_bin();
    if agent.is_none() {
        eprintln!("skipping {test}: no ember-agent binary (cargo build -p ember-agent)");
    }
    agent
}

/// One state root (removed, with anything mounted under it, on drop).
pub struct Env {
    pub root: PathBuf,
    pub agent: PathBuf,
}

impl Env {
    pub fn new(name: &str, agent: PathBuf) -> Env {
        let root = std::env::temp_dir().join(format!("ember-life-{name}-{}", std::process::id()));
        unmount_under(&root);
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&root).unwrap();
        Env { root, agent }
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        self.cmd_in(&self.root, args)
    }

    /// `ember --root <root> ...`: this env's own root, or a view of it ([`read_only_view`]).
    pub fn cmd_in(&self, root: &Path, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_ember"));
        c.arg("--root")
            .arg(root)
            .args(args)
            .env("EMBER_POD_HOST_AGENT", &self.agent)
            .env("EMBER_LOCK_TIMEOUT_MS", "60000")
            .env_remove("EMBER_TEST_PAUSE_AT");
        c
    }

    /// `ember create --bundle BUNDLE ID`, its stdio detached (the shim it leaves running
    /// keeps none of ours); panics unless it succeeds.
    pub fn create(&self, bundle: &Path, id: &str) {
        let created = self
            .cmd(&["create", "--bundle", bundle.to_str().unwrap(), id])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(created.success(), "create {id}");
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "ember {args:?} failed ({}): {}\nvmm.log: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            fs::read_to_string(self.pod_dir("p").join("vmm.log")).unwrap_or_default()
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Container `cid` of pod `pod`: `sleep 1000` on the busybox rootfs ([`Env::rootfs`]).
    pub fn create_sleeper(&self, pod: &str, cid: &str) {
        self.create_container(pod, cid, &["sleep", "1000"]);
    }

    /// `container create` of `cmd` in [`Env::rootfs`] (a guest path: the host agent's).
    pub fn create_container(&self, pod: &str, cid: &str, cmd: &[&str]) {
        let rootfs = self.rootfs();
        let mut args = vec![
            "container",
            "create",
            pod,
            cid,
            "--rootfs-guest-path",
            rootfs.to_str().unwrap(),
            "--",
        ];
        args.extend(cmd);
        self.ok(&args);
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        serde_json::from_str(&self.ok(args)).unwrap()
    }

    pub fn pod_dir(&self, pod: &str) -> PathBuf {
        self.root.join("@pods").join(pod)
    }

    /// A busybox rootfs directory (outside the state root, so that a full or read-only state
    /// root does not take it along).
    pub fn rootfs(&self) -> PathBuf {
        let r = self.root.with_extension("rootfs");
        if r.join("bin/busybox").exists() {
            return r;
        }
        fs::create_dir_all(r.join("bin")).unwrap();
        for d in ["proc", "dev", "sys", "tmp", "etc"] {
            fs::create_dir_all(r.join(d)).unwrap();
        }
        fs::copy("/bin/busybox", r.join("bin/busybox")).unwrap();
        for a in ["sh", "echo", "sleep", "cat", "true", "wc"] {
            std::os::unix::fs::symlink("busybox", r.join("bin").join(a)).unwrap();
        }
        r
    }

    /// Everything of this root still there: processes, mounts, sockets, pod directories.
    pub fn leaks(&self) -> Leaks {
        leaks_under(&self.root)
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        for p in ["p", "q"] {
            let _ = self.cmd(&["pod", "delete", "--force", p]).output();
        }
        unmount_under(&self.root);
        let _ = fs::remove_dir_all(&self.root);
        let _ = fs::remove_dir_all(self.root.with_extension("rootfs"));
        let view = self.root.with_extension("ro");
        unmount_under(&view);
        let _ = fs::remove_dir(view);
    }
}

/// What a pod left behind under a state root.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Leaks {
    /// Pids of processes whose command line or cwd names the root (pod processes, agents) or
    /// that run in a pod's cgroup.
    pub processes: Vec<i32>,
    /// Mount points under the root.
    pub mounts: Vec<String>,
    /// Unix sockets under the root.
    pub sockets: Vec<PathBuf>,
    /// Whatever is left in `@pods`: pod directories, lock files.
    pub dirs: Vec<PathBuf>,
}

impl Leaks {
    pub fn none(&self) -> bool {
        *self == Leaks::default()
    }
}

/// Processes that name `root` in their command line.
pub fn processes_naming(root: &Path) -> Vec<i32> {
    let needle = root.to_string_lossy().into_owned();
    let me = std::process::id() as i32;
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return out;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(cmd) = fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let zombie = stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z'));
        if !zombie && String::from_utf8_lossy(&cmd).contains(&needle) {
            out.push(pid);
        }
    }
    out.sort();
    out
}

/// Mount points at or under `root` (from /proc/self/mountinfo).
pub fn mounts_under(root: &Path) -> Vec<String> {
    let root = root.to_string_lossy().into_owned();
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .filter(|m| m == &root || m.starts_with(&format!("{root}/")))
        .collect()
}

fn unmount_under(root: &Path) {
    let mut mounts = mounts_under(root);
    mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in mounts {
        let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
    }
}

fn leaks_under(root: &Path) -> Leaks {
    let mut sockets = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                stack.push(e.path());
            } else if std::os::unix::fs::FileTypeExt::is_socket(&ft) {
                sockets.push(e.path());
            }
        }
    }
    let dirs = fs::read_dir(root.join("@pods"))
        .map(|es| es.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    Leaks {
        processes: processes_naming(root),
        mounts: mounts_under(root),
        sockets,
        dirs,
    }
}

/// Wait up to `limit` for `f` to hold.
pub fn wait_for(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    f()
}

/// Whether `pid` is gone (or a zombie).
pub fn gone(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('Z'))
        })
        .unwrap_or(true)
}

/// SIGKILL `pid` and wait until it is gone.
pub fn kill9(pid: i32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
    assert!(
        wait_for(Duration::from_secs(10), || gone(pid)),
        "{pid} survived SIGKILL"
    );
}

/// A tmpfs of `size` (e.g. "4m") mounted on the root (as tests need root anyway).
pub fn mount_small_tmpfs(root: &Path, size: &str) {
    nix::mount::mount(
        Some("tmpfs"),
        root,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some(format!("size={size}").as_str()),
    )
    .unwrap();
}

/// A read-only view of `root`: a bind mount of it at `<root>.ro`, remounted read-only. Verbs
/// run with `--root <view>` meet a read-only state root while the pod process keeps the
/// writable one (a running pod process holds files open for writing there, so the file system
/// itself cannot be remounted read-only: EBUSY). Gone with [`drop_view`] (or the `Env`).
pub fn read_only_view(root: &Path) -> PathBuf {
    use nix::mount::{mount, MsFlags};
    let view = root.with_extension("ro");
    fs::create_dir_all(&view).unwrap();
    mount(
        Some(root),
        &view,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .unwrap();
    mount(
        None::<&str>,
        &view,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
        None::<&str>,
    )
    .unwrap();
    view
}

/// Unmount and remove a [`read_only_view`].
pub fn drop_view(view: &Path) {
    nix::mount::umount(view).unwrap();
    fs::remove_dir(view).unwrap();
}

/// Fill the file system holding `dir` (a file `dir/filler`) until ENOSPC.
pub fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = fs::File::create(&path).unwrap();
    let chunk = vec![0u8; 4096];
    loop {
        if let Err(e) = f.write_all(&chunk) {
            assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
            break;
        }
    }
    let _ = f.sync_all();
    path
}
