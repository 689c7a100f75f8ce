//! API tests without a VM: state machine through the API, ids, records, liveness, hooks.

use super::*;
use crate::state::{test_dir, DiskOwner, VmmProcess};
use std::fs;

fn rt(name: &str) -> Runtime {
    Runtime::new(test_dir(name))
}

fn busybox_like(rt: &Runtime) -> PathBuf {
    let dir = rt.root().join("rootfs-src");
    fs::create_dir_all(dir.join("bin")).unwrap();
    dir
}

fn cfg(rootfs: RootfsConfig) -> ContainerConfig {
    ContainerConfig::new(rootfs, ["sleep", "100"])
}

/// Force a pod into `state` with `vmm` as its VMM process, as a crashed run would leave it.
fn force_state(rt: &Runtime, pod: &str, state: State, vmm: Option<VmmProcess>) {
    let dir = rt.pod_dir(pod);
    let mut rec = PodRecord::load(&dir).unwrap();
    rec.state = state;
    rec.vmm = vmm;
    for c in rec.containers.values_mut() {
        c.state = state;
        c.in_agent = true;
    }
    rec.store(&dir).unwrap();
}

fn dead_process() -> VmmProcess {
    let mut child = std::process::Command::new("/bin/sh")
        .args(["-c", "exit 0"])
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    child.wait().unwrap();
    VmmProcess {
        pid,
        start_time: 1,
        hosted: false,
    }
}

#[test]
fn create_status_delete() {
    let rt = rt("api-basic");
    let info = rt.create_pod("p1", PodConfig::default()).unwrap();
    assert_eq!(info.state, State::Ready);
    assert!(matches!(
        rt.create_pod("p1", PodConfig::default()),
        Err(Error::PodExists(_))
    ));
    assert_eq!(rt.pod_status("p1").unwrap().state, State::Ready);
    let ids: Vec<String> = rt.list_pods().unwrap().into_iter().map(|p| p.id).collect();
    assert_eq!(ids, vec!["p1".to_string()]);
    rt.delete_pod("p1", false).unwrap();
    assert!(!rt.pod_dir("p1").exists());
    assert!(matches!(rt.pod_status("p1"), Err(Error::PodNotFound(_))));
    assert!(rt.list_pods().unwrap().is_empty());
}

#[test]
fn bad_ids_are_refused_everywhere() {
    let rt = rt("api-ids");
    for bad in ["", "../ember-escape-probe", "a/b", ".."] {
        assert!(matches!(
            rt.create_pod(bad, PodConfig::default()),
            Err(Error::Id(_))
        ));
        assert!(matches!(rt.pod_status(bad), Err(Error::Id(_))));
        assert!(matches!(rt.delete_pod(bad, true), Err(Error::Id(_))));
    }
    rt.create_pod("p", PodConfig::default()).unwrap();
    let err = rt
        .create_container("p", "", cfg(RootfsConfig::default()))
        .unwrap_err();
    assert_eq!(crate::error::report(&err), "Bad id: Empty container id");
    assert!(matches!(rt.start_container("p", "../c"), Err(Error::Id(_))));
    // Nothing escaped the root.
    assert!(!rt
        .root()
        .parent()
        .unwrap()
        .join("ember-escape-probe")
        .exists());
    assert!(!rt.root().join("ember-escape-probe").exists());
}

#[test]
fn bad_pod_configs_are_refused() {
    let rt = rt("api-badcfg");
    let c = PodConfig {
        disks: vec![
            DiskConfig {
                id: "d".into(),
                path: "/x".into(),
                read_only: false,
                rate_limit: None,
            },
            DiskConfig {
                id: "d".into(),
                path: "/y".into(),
                read_only: false,
                rate_limit: None,
            },
        ],
        ..PodConfig::default()
    };
    assert!(matches!(rt.create_pod("p", c), Err(Error::Config(_))));
    let c = PodConfig {
        mem_mib: 0,
        ..PodConfig::default()
    };
    assert!(matches!(rt.create_pod("p", c), Err(Error::Config(_))));
    // A start timeout that would overflow the start's deadline (it panicked the starter).
    for secs in [0, u64::MAX] {
        let c = PodConfig {
            start_timeout_secs: secs,
            ..PodConfig::default()
        };
        let err = rt.create_pod("p", c).unwrap_err();
        assert!(
            crate::error::report(&err).contains("start_timeout_secs"),
            "{err}"
        );
    }
    assert!(!rt.pod_dir("p").exists(), "nothing half-created remains");
}

#[test]
fn containers_on_a_ready_pod_are_recorded() {
    let rt = rt("api-ctr");
    let src = busybox_like(&rt);
    rt.create_pod("p", PodConfig::default()).unwrap();
    let c = rt
        .create_container("p", "c1", cfg(RootfsConfig::Dir { path: src.clone() }))
        .unwrap();
    assert_eq!(c.state, State::Ready);
    assert!(matches!(
        rt.create_container("p", "c1", cfg(RootfsConfig::Dir { path: src.clone() })),
        Err(Error::ContainerExists { .. })
    ));
    // Missing rootfs and undeclared disk are refused up front.
    assert!(matches!(
        rt.create_container(
            "p",
            "c2",
            cfg(RootfsConfig::Dir {
                path: "/nonexistent/rootfs".into()
            })
        ),
        Err(Error::Config(_))
    ));
    assert!(matches!(
        rt.create_container("p", "c3", cfg(RootfsConfig::Disk { id: "nope".into() })),
        Err(Error::Config(_))
    ));
    // A file given as a rootfs directory (it would block the pod's start later), a
    // directory given as an image: refused at create (hardening findings).
    let file = rt.root().join("not-a-dir");
    fs::write(&file, b"x").unwrap();
    for bad in [
        RootfsConfig::Dir { path: file },
        RootfsConfig::Image {
            path: src.clone(),
            read_only: false,
        },
    ] {
        let err = rt.create_container("p", "c5", cfg(bad)).unwrap_err();
        assert!(matches!(err, Error::Config(_)), "{err}");
    }
    // No args: refused.
    let mut empty = cfg(RootfsConfig::default());
    empty.process.args.clear();
    assert!(matches!(
        rt.create_container("p", "c4", empty),
        Err(Error::Config(_))
    ));
    let pod = rt.pod_status("p").unwrap();
    assert_eq!(pod.containers.len(), 1);
    assert_eq!(rt.container_status("p", "c1").unwrap().state, State::Ready);
    assert!(matches!(
        rt.container_status("p", "zz"),
        Err(Error::ContainerNotFound { .. })
    ));
}

#[test]
fn invalid_transitions_are_refused_with_clear_errors() {
    let rt = rt("api-trans");
    rt.create_pod("p", PodConfig::default()).unwrap();
    rt.create_container("p", "c", cfg(RootfsConfig::default()))
        .unwrap();
    // Container operations that need a running pod.
    let err = rt.start_container("p", "c").unwrap_err();
    assert_eq!(
        crate::error::report(&err),
        "Pod p is ready; it must be running to start a container"
    );
    assert!(matches!(
        rt.exec("p", "c", ProcessSpec::new(["true"])),
        Err(Error::PodNotRunning { .. })
    ));
    assert!(matches!(
        rt.kill_container("p", "c", 15, false),
        Err(Error::PodNotRunning { .. })
    ));
    // Pod pause/resume from ready.
    let err = rt.pause_pod("p").unwrap_err();
    assert_eq!(
        crate::error::report(&err),
        "Cannot pause pod p: Cannot go from ready to paused"
    );
    assert!(matches!(rt.resume_pod("p"), Err(Error::PodState { .. })));
    // ready -> stopped is allowed for both; stopped -> stopped is not.
    assert_eq!(rt.stop_container("p", "c").unwrap().state, State::Stopped);
    let err = rt.stop_container("p", "c").unwrap_err();
    assert_eq!(
        crate::error::report(&err),
        "Cannot stop container c: Cannot go from stopped to stopped"
    );
    assert_eq!(rt.stop_pod("p").unwrap().state, State::Stopped);
    assert!(matches!(rt.stop_pod("p"), Err(Error::PodState { .. })));
    // Deleting stopped things works.
    rt.delete_container("p", "c", false).unwrap();
    rt.delete_pod("p", false).unwrap();
}

#[test]
fn pod_whose_vmm_died_is_reported_stopped() {
    let rt = rt("api-dead");
    rt.create_pod("p", PodConfig::default()).unwrap();
    rt.create_container("p", "c", cfg(RootfsConfig::default()))
        .unwrap();
    let dead = dead_process();
    force_state(&rt, "p", State::Running, Some(dead.clone()));
    let info = rt.pod_status("p").unwrap();
    assert_eq!(info.state, State::Stopped);
    assert_eq!(info.vmm_pid, None);
    let reason = info.stop_reason.unwrap();
    assert!(
        reason.contains(&format!("VMM process {} died", dead.pid)),
        "{reason}"
    );
    assert_eq!(info.containers[0].state, State::Stopped);
    // It was stored, and the pod can be deleted without force now.
    assert_eq!(
        PodRecord::load(&rt.pod_dir("p")).unwrap().state,
        State::Stopped
    );
    rt.delete_pod("p", false).unwrap();
}

#[test]
fn live_pid_without_control_socket_is_stopped_and_with_it_running() {
    let rt = rt("api-ctl");
    rt.create_pod("p", PodConfig::default()).unwrap();
    let me = crate::pod_vmm::proc::this_process().unwrap();
    // Our own process as the "VMM", with a control socket answering pings.
    let sock = rt.pod_dir("p").join(crate::pod_vmm::CONTROL_SOCKET);
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    std::thread::spawn(move || {
        crate::pod_vmm::control::serve(listener, std::sync::Arc::new(SlotRecorder::default()))
    });
    rt.create_container("p", "c1", cfg(RootfsConfig::GuestPath { path: "/".into() }))
        .unwrap();
    force_state(&rt, "p", State::Running, Some(me.clone()));
    assert_eq!(rt.pod_status("p").unwrap().state, State::Running);
    // Running pods are not deleted without force.
    assert!(matches!(
        rt.delete_pod("p", false),
        Err(Error::PodRunning(_))
    ));
    // pause/resume go through the control socket and move the state, the running
    // containers' with the pod's (exec in a paused container is refused).
    let paused = rt.pause_pod("p").unwrap();
    assert_eq!(paused.state, State::Paused);
    assert_eq!(paused.containers[0].state, State::Paused);
    assert_eq!(rt.container_status("p", "c1").unwrap().state, State::Paused);
    assert!(matches!(
        rt.exec_start("p", "c1", None, ProcessSpec::new(["true"])),
        Err(Error::PodNotRunning { .. } | Error::ContainerNotRunning { .. })
    ));
    assert!(matches!(rt.pause_pod("p"), Err(Error::PodState { .. })));
    let resumed = rt.resume_pod("p").unwrap();
    assert_eq!(resumed.state, State::Running);
    assert_eq!(resumed.containers[0].state, State::Running);
    // The control socket goes away: the VMM is considered gone.
    fs::remove_file(&sock).unwrap();
    let info = rt.pod_status("p").unwrap();
    assert_eq!(info.state, State::Stopped);
    assert!(info
        .stop_reason
        .unwrap()
        .contains("no longer serves its control socket"));
}

#[test]
fn poststop_hooks_run_in_order_when_a_dead_pod_is_noticed() {
    let rt = rt("api-hooks");
    let log = rt.root().join("hooks.log");
    let hook = |tag: &str| Hook {
        path: "/bin/sh".into(),
        args: vec![
            "sh".into(),
            "-c".into(),
            format!("echo {tag} $(cat) >> {}", log.display()),
        ],
        env: vec![],
        timeout: Some(10),
    };
    let mut c = PodConfig::default();
    c.hooks.poststop = vec![hook("first"), hook("second")];
    rt.create_pod("p", c).unwrap();
    force_state(&rt, "p", State::Running, Some(dead_process()));
    rt.pod_status("p").unwrap();
    let text = fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[0].starts_with("first {"), "{text}");
    assert!(lines[1].starts_with("second {"), "{text}");
    let state: serde_json::Value =
        serde_json::from_str(lines[0].trim_start_matches("first ")).unwrap();
    assert_eq!(state["id"], "p");
    assert_eq!(state["status"], "stopped");
}

#[test]
fn failing_prestart_hook_aborts_start_and_keeps_the_pod_ready() {
    let rt = rt("api-prestart");
    let log = rt.root().join("pre.log");
    let mut c = PodConfig {
        // Any existing files pass the pre-flight check; the hook fails before the VM starts.
        kernel: Some("/bin/sh".into()),
        initrd: Some("/bin/sh".into()),
        ..PodConfig::default()
    };
    c.hooks.prestart = vec![
        Hook {
            path: "/bin/sh".into(),
            args: vec![
                "sh".into(),
                "-c".into(),
                format!("echo ran >> {}", log.display()),
            ],
            env: vec![],
            timeout: None,
        },
        Hook {
            path: "/bin/false".into(),
            args: vec![],
            env: vec![],
            timeout: None,
        },
    ];
    rt.create_pod("p", c).unwrap();
    let err = rt.start_pod("p").unwrap_err();
    assert!(matches!(err, Error::Hook(_)), "{err}");
    assert_eq!(fs::read_to_string(&log).unwrap(), "ran\n");
    let info = rt.pod_status("p").unwrap();
    assert_eq!(info.state, State::Ready);
    assert_eq!(info.vmm_pid, None);
}

#[test]
fn start_without_kernel_fails_clearly() {
    let rt = rt("api-nokernel");
    let c = PodConfig {
        kernel: Some(rt.root().join("no-vmlinux")),
        ..PodConfig::default()
    };
    rt.create_pod("p", c).unwrap();
    let msg = crate::error::report(&rt.start_pod("p").unwrap_err());
    assert!(
        msg.contains("guest kernel") && msg.contains("not found"),
        "{msg}"
    );
    assert_eq!(rt.pod_status("p").unwrap().state, State::Ready);
}

#[test]
fn running_pod_without_a_free_slot_refuses_new_rootfs_disks() {
    let rt = rt("api-live");
    let src = busybox_like(&rt);
    rt.create_pod("p", PodConfig::default()).unwrap();
    force_state(
        &rt,
        "p",
        State::Running,
        Some(crate::pod_vmm::proc::this_process().unwrap()),
    );
    // No disk slots (the default): a new rootfs disk has nowhere to go, and nothing stays.
    let err = rt
        .create_container("p", "c", cfg(RootfsConfig::Dir { path: src }))
        .unwrap_err();
    assert!(
        crate::error::report(&err).contains("no free disk slot"),
        "{err}"
    );
    let info = rt.pod_status("p").unwrap();
    assert!(info.containers.is_empty());
}

#[test]
fn parallel_container_creates_lose_no_update() {
    let rt = rt("api-par");
    rt.create_pod("p", PodConfig::default()).unwrap();
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let rt = rt.clone();
            std::thread::spawn(move || {
                rt.create_container("p", &format!("c{i}"), cfg(RootfsConfig::default()))
                    .unwrap();
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let ids: Vec<String> = rt
        .pod_status("p")
        .unwrap()
        .containers
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(ids, (0..8).map(|i| format!("c{i}")).collect::<Vec<_>>());
}

#[test]
fn disks_plan_in_order_with_guest_names() {
    use crate::state::DiskOwner;
    let rt = rt("api-disks");
    let img = rt.root().join("c2.img");
    fs::write(&img, b"").unwrap();
    let mut c = PodConfig::default();
    c.disks.push(DiskConfig {
        id: "shared".into(),
        path: "/images/shared.ext4".into(),
        read_only: true,
        rate_limit: None,
    });
    rt.create_pod("p", c).unwrap();
    rt.create_container(
        "p",
        "a",
        cfg(RootfsConfig::Disk {
            id: "shared".into(),
        }),
    )
    .unwrap();
    rt.create_container(
        "p",
        "b",
        cfg(RootfsConfig::Image {
            path: img.clone(),
            read_only: false,
        }),
    )
    .unwrap();
    let (_l, dir, rec) = rt.open("p", crate::state::LockKind::Read).unwrap();
    let disks = rt.plan_disks(&dir, &rec).unwrap();
    assert_eq!(disks.len(), 2);
    assert_eq!(disks[0].guest_device, "/dev/vda");
    assert_eq!(disks[0].owner, DiskOwner::Pod("shared".into()));
    assert!(disks[0].read_only);
    assert_eq!(disks[1].guest_device, "/dev/vdb");
    assert_eq!(disks[1].path, img);
    assert_eq!(
        placement::resolve_device(&disks, "a", &rec.containers["a"].config.rootfs).as_deref(),
        Some("/dev/vda")
    );
    assert_eq!(
        placement::resolve_device(&disks, "b", &rec.containers["b"].config.rootfs).as_deref(),
        Some("/dev/vdb")
    );
}

#[test]
fn list_skips_directories_that_are_not_pods() {
    let rt = rt("api-list-foreign");
    rt.create_pod("p", PodConfig::default()).unwrap();
    // Another tool's state under the same root.
    let foreign = rt.root().join("other");
    fs::create_dir_all(&foreign).unwrap();
    fs::write(
        foreign.join(crate::state::STATE_FILE),
        "{\"ociVersion\":\"1.0\"}",
    )
    .unwrap();
    fs::create_dir_all(rt.root().join("empty-dir")).unwrap();
    let ids: Vec<String> = rt.list_pods().unwrap().into_iter().map(|p| p.id).collect();
    assert_eq!(ids, vec!["p".to_string()]);
}

#[test]
fn list_does_not_wait_behind_a_busy_pod() {
    let rt = rt("api-list-busy");
    rt.create_pod("a", PodConfig::default()).unwrap();
    rt.create_pod("b", PodConfig::default()).unwrap();
    // Someone holds b's write lock (a start waiting for its guest would).
    let _held =
        PodLock::acquire_pod(&rt.pod_dir("b"), LockKind::Write, std::time::Duration::ZERO).unwrap();
    let pods = rt.list_pods().unwrap();
    assert_eq!(pods.len(), 2);
    assert!(pods[0].warnings.is_empty());
    assert_eq!(pods[1].id, "b");
    assert_eq!(pods[1].state, State::Ready);
    assert!(
        pods[1].warnings[0].contains("busy"),
        "{:?}",
        pods[1].warnings
    );
}

/// A control socket in pod directory `dir` served by a new [`SlotRecorder`] (as the pod
/// process would serve it); the recorder.
fn serve_control(dir: &Path) -> std::sync::Arc<SlotRecorder> {
    let listener =
        std::os::unix::net::UnixListener::bind(dir.join(crate::pod_vmm::CONTROL_SOCKET)).unwrap();
    let target = std::sync::Arc::new(SlotRecorder::default());
    let t = target.clone();
    std::thread::spawn(move || crate::pod_vmm::control::serve(listener, t));
    target
}

/// A pod's control socket target that answers everything and records disk requests.
#[derive(Default)]
struct SlotRecorder(std::sync::Mutex<Vec<String>>);

impl crate::pod_vmm::control::ControlTarget for SlotRecorder {
    fn pause(&self) -> Result<(), String> {
        Ok(())
    }
    fn resume(&self) -> Result<(), String> {
        Ok(())
    }
    fn stop(&self) -> Option<String> {
        None
    }
    fn insert_disk(&self, slot: usize, path: &Path, read_only: bool) -> Result<(), String> {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        self.0
            .lock()
            .unwrap()
            .push(format!("insert {slot} {name} ro={read_only}"));
        Ok(())
    }
    fn eject_disk(&self, slot: usize) -> Result<(), String> {
        self.0.lock().unwrap().push(format!("eject {slot}"));
        Ok(())
    }
    fn add_share(&self, name: &str, path: &Path, read_only: bool) -> Result<(), String> {
        let base = path.file_name().unwrap().to_string_lossy().into_owned();
        self.0
            .lock()
            .unwrap()
            .push(format!("share {name} {base} ro={read_only}"));
        Ok(())
    }
    fn remove_share(&self, name: &str) -> Result<(), String> {
        self.0.lock().unwrap().push(format!("unshare {name}"));
        Ok(())
    }
    fn snapshot(&self, dir: &Path) -> Result<vmm::SnapshotInfo, String> {
        self.0
            .lock()
            .unwrap()
            .push(format!("snapshot {}", dir.display()));
        Ok(vmm::SnapshotInfo {
            dir: dir.to_path_buf(),
            state_bytes: 1,
            memory_bytes: 2,
            memory_written: 3,
            paused_ms: 0.5,
        })
    }
}

#[test]
fn a_running_pod_is_snapshotted_by_its_pod_process_and_a_stopped_one_refused() {
    let rt = rt("api-snapshot");
    rt.create_pod("p", PodConfig::default()).unwrap();
    let err = rt.snapshot_pod("p", Path::new("/tmp/x")).unwrap_err();
    assert!(matches!(err, Error::PodNotRunning { .. }), "{err}");
    force_state(
        &rt,
        "p",
        State::Running,
        Some(crate::pod_vmm::proc::this_process().unwrap()),
    );
    let dir = rt.pod_dir("p");
    let target = serve_control(&dir);
    // A relative path is made absolute here, before the pod process sees it.
    let info = rt.snapshot_pod("p", Path::new("snap-rel")).unwrap();
    assert!(
        info.dir.is_absolute() && info.dir.ends_with("snap-rel"),
        "{info:?}"
    );
    assert_eq!(info.memory_written, 3);
    assert_eq!(
        *target.0.lock().unwrap(),
        vec![format!("snapshot {}", info.dir.display())]
    );
    assert!(matches!(
        rt.snapshot_pod("nope", Path::new("/tmp/x")),
        Err(Error::PodNotFound(_))
    ));
}

#[test]
fn running_pod_shares_a_rootfs_and_host_mounts_and_withdraws_them() {
    let rt = rt("api-shares");
    let src = busybox_like(&rt);
    let vol = rt.root().join("vol");
    fs::create_dir_all(&vol).unwrap();
    fs::write(rt.root().join("hosts"), "10.0.0.1 a\n").unwrap();
    rt.create_pod("p", PodConfig::default()).unwrap();
    force_state(
        &rt,
        "p",
        State::Running,
        Some(crate::pod_vmm::proc::this_process().unwrap()),
    );
    let dir = rt.pod_dir("p");
    let target = serve_control(&dir);

    let shared = |path: &Path| RootfsConfig::Share {
        path: path.to_path_buf(),
        read_only: false,
    };
    let mount = |source: PathBuf, dest: &str, opts: &[&str]| crate::config::HostMount {
        source,
        destination: dest.into(),
        options: opts.iter().map(|o| o.to_string()).collect(),
    };
    // Bad sources are refused before anything is shared.
    for bad in [
        cfg(shared(Path::new("relative/dir"))),
        cfg(shared(&rt.root().join("hosts"))),
        cfg(shared(&rt.root().join("missing"))),
    ] {
        let err = rt.create_container("p", "c", bad).unwrap_err();
        assert!(matches!(err, Error::Config(_)), "{err}");
    }
    let mut c = cfg(shared(&src));
    c.host_mounts = vec![mount(rt.root().join("missing"), "/data", &[])];
    assert!(matches!(
        rt.create_container("p", "c", c.clone()),
        Err(Error::Config(_))
    ));
    c.host_mounts = vec![mount(vol.clone(), "data", &[])];
    assert!(matches!(
        rt.create_container("p", "c", c.clone()),
        Err(Error::Config(_))
    ));
    assert!(target.0.lock().unwrap().is_empty());

    // The agent is not there: the create fails after sharing, and the shares are withdrawn.
    c.host_mounts = vec![
        mount(vol, "/data", &["rbind", "ro"]),
        mount(rt.root().join("hosts"), "/etc/hosts", &["bind", "ro", "rw"]),
    ];
    let err = rt.create_container("p", "c", c).unwrap_err();
    assert!(matches!(err, Error::Agent { .. }), "{err}");
    assert_eq!(
        *target.0.lock().unwrap(),
        [
            format!(
                "share c.rootfs {} ro=false",
                src.file_name().unwrap().to_string_lossy()
            ),
            "share c.m0 vol ro=true".to_string(),
            "share c.m1 hosts ro=false".to_string(),
            "unshare c.rootfs".to_string(),
            "unshare c.m0".to_string(),
            "unshare c.m1".to_string(),
        ]
    );
    assert!(rt.pod_status("p").unwrap().containers.is_empty());
}

#[test]
fn running_pod_takes_disks_into_free_slots() {
    let rt = rt("api-slots");
    let src = busybox_like(&rt);
    let conf = PodConfig {
        disks: vec![DiskConfig {
            id: "data".into(),
            path: rt.root().join("data.img"),
            read_only: false,
            rate_limit: None,
        }],
        disk_slots: 2,
        ..PodConfig::default()
    };
    fs::write(rt.root().join("data.img"), b"").unwrap();
    rt.create_pod("p", conf).unwrap();
    force_state(
        &rt,
        "p",
        State::Running,
        Some(crate::pod_vmm::proc::this_process().unwrap()),
    );
    // As start_pod leaves it: one disk, two empty slots after it.
    let dir = rt.pod_dir("p");
    let mut rec = PodRecord::load(&dir).unwrap();
    rec.slots = ["/dev/vdb", "/dev/vdc"]
        .iter()
        .map(|d| crate::state::DiskSlot {
            guest_device: d.to_string(),
            disk: None,
        })
        .collect();
    rec.store(&dir).unwrap();
    let target = serve_control(&dir);

    // insert NAME RO: an empty image NAME.img inserted for owner NAME; its device and owner.
    let insert = |name: &str, read_only: bool| {
        let img = rt.root().join(format!("{name}.img"));
        fs::write(&img, b"").unwrap();
        let owner = DiskOwner::Pod(name.into());
        let dev = rt.insert_disk("p", &img, read_only, owner.clone()).unwrap();
        (dev, owner)
    };
    let (dev, owner) = insert("extra", true);
    assert_eq!(dev, "/dev/vdb");
    // A container made from a directory: packed, then into the next slot; the agent is not
    // there, so the create fails and its slot is emptied again.
    let err = rt
        .create_container("p", "c", cfg(RootfsConfig::Dir { path: src.clone() }))
        .unwrap_err();
    assert!(matches!(err, Error::Agent { .. }), "{err}");
    let (dev2, owner2) = insert("extra2", false);
    assert_eq!(dev2, "/dev/vdc");
    // Full now.
    let err = rt
        .create_container("p", "c", cfg(RootfsConfig::Dir { path: src }))
        .unwrap_err();
    assert!(
        crate::error::report(&err).contains("no free disk slot"),
        "{err}"
    );
    rt.eject_disk("p", &owner).unwrap();
    let info = rt.pod_status("p").unwrap();
    assert_eq!(info.slots[0].disk, None);
    assert_eq!(info.slots[1].disk.as_ref().unwrap().owner, owner2);
    assert_eq!(
        *target.0.lock().unwrap(),
        [
            "insert 0 extra.img ro=true",
            "insert 1 c.ext4 ro=false",
            "eject 1",
            "insert 1 extra2.img ro=false",
            "eject 0",
        ]
    );
}

/// A corrupt record (hardening finding): `list` reports the pod with a warning instead of
/// hiding it, `delete` refuses it, `delete --force` removes it.
#[test]
fn a_corrupt_record_is_listed_and_force_deleted() {
    let rt = rt("api-corrupt");
    rt.create_pod("good", PodConfig::default()).unwrap();
    rt.create_pod("bad", PodConfig::default()).unwrap();
    fs::write(
        rt.pod_dir("bad").join(crate::state::STATE_FILE),
        b"{\"format_version\": 1, \"id\": ",
    )
    .unwrap();
    let pods = rt.list_pods().unwrap();
    let ids: Vec<&str> = pods.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(ids, ["bad", "good"]);
    assert!(
        pods[0].warnings[0].contains("unreadable record"),
        "{:?}",
        pods[0].warnings
    );
    assert!(pods[1].warnings.is_empty());
    assert!(matches!(rt.delete_pod("bad", false), Err(Error::State(_))));
    rt.delete_pod("bad", true).unwrap();
    assert!(!rt.pod_dir("bad").exists());
    assert_eq!(rt.list_pods().unwrap().len(), 1);
}

/// Every numeric bound of a pod config is checked at create (hardening finding), and nothing
/// is left of a refused pod.
#[test]
fn a_bad_seccomp_filter_file_is_refused_at_create() {
    let rt = rt("api-seccomp-file");
    let files = rt.root().join("filters");
    fs::create_dir_all(&files).unwrap();
    let bad_json = files.join("bad.json");
    fs::write(&bad_json, "{ \"vcpu\": ").unwrap();
    let unknown_kind = files.join("unknown-kind.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&vmm::seccomp::Filters::builtin_json()).unwrap();
    json["vcpus"] = json["vcpu"].clone();
    fs::write(&unknown_kind, json.to_string()).unwrap();
    for (file, want) in [
        (
            files.join("missing.json"),
            "Cannot read the seccomp filter file",
        ),
        (bad_json, "Bad seccomp filter file"),
        (unknown_kind, "unknown thread kind \"vcpus\""),
        (files.clone(), "Bad seccomp filter file"),
    ] {
        let config = PodConfig {
            seccomp: crate::config::Seccomp::File(file.clone()),
            ..PodConfig::default()
        };
        let err = rt.create_pod("p", config).unwrap_err();
        assert!(matches!(err, Error::Config(_)), "{err}");
        let msg = err.to_string();
        assert!(msg.starts_with("Invalid config: seccomp: "), "{msg}");
        assert!(msg.contains(&file.display().to_string()), "{msg}");
        assert!(msg.contains(want), "{msg}");
        assert!(!rt.pod_dir("p").exists(), "{msg}: left a pod behind");
    }
    let good = files.join("good.json");
    fs::write(&good, vmm::seccomp::Filters::builtin_json()).unwrap();
    rt.create_pod(
        "p",
        PodConfig {
            seccomp: crate::config::Seccomp::File(good),
            ..PodConfig::default()
        },
    )
    .unwrap();
}

#[test]
fn numeric_pod_config_bounds_are_checked_at_create() {
    let rt = rt("api-bounds");
    let base = PodConfig::default;
    for (what, bad) in [
        (
            "mem_mib 0",
            PodConfig {
                mem_mib: 0,
                ..base()
            },
        ),
        (
            "mem_mib 31",
            PodConfig {
                mem_mib: 31,
                ..base()
            },
        ),
        (
            "mem_mib huge",
            PodConfig {
                mem_mib: u32::MAX,
                ..base()
            },
        ),
        ("vcpus 0", PodConfig { vcpus: 0, ..base() }),
        (
            "console_limit_kib 0",
            PodConfig {
                console_limit_kib: 0,
                ..base()
            },
        ),
        (
            "agent_timeout_secs 5",
            PodConfig {
                agent_timeout_secs: 5,
                ..base()
            },
        ),
        (
            "agent_timeout_secs huge",
            PodConfig {
                agent_timeout_secs: u64::MAX,
                ..base()
            },
        ),
        (
            "console_limit_kib huge",
            PodConfig {
                console_limit_kib: u32::MAX,
                ..base()
            },
        ),
        (
            "vcpus 33",
            PodConfig {
                vcpus: 33,
                ..base()
            },
        ),
        (
            "cid 2",
            PodConfig {
                guest_cid: 2,
                ..base()
            },
        ),
        (
            "cid any",
            PodConfig {
                guest_cid: u32::MAX,
                ..base()
            },
        ),
        (
            "slots",
            PodConfig {
                disk_slots: 27,
                ..base()
            },
        ),
        (
            "timeout",
            PodConfig {
                start_timeout_secs: u64::MAX,
                ..base()
            },
        ),
        (
            "disk rate limit of size 0",
            PodConfig {
                disks: vec![DiskConfig {
                    id: "d".into(),
                    path: "/x".into(),
                    read_only: false,
                    rate_limit: crate::config::from_json(
                        r#"{"bandwidth": {"size": 0, "refill_time_ms": 1000}}"#,
                    )
                    .unwrap(),
                }],
                ..base()
            },
        ),
        (
            "network rate limit refilled over no time",
            PodConfig {
                network: Some(crate::config::NetworkConfig {
                    tx_rate_limit: crate::config::from_json(
                        r#"{"ops": {"size": 10, "refill_time_ms": 0}}"#,
                    )
                    .unwrap(),
                    ..crate::config::NetworkConfig::new("/run/netns/x".into())
                }),
                ..base()
            },
        ),
    ] {
        let err = rt.create_pod("p", bad).unwrap_err();
        assert!(matches!(err, Error::Config(_)), "{what}: {err}");
        assert!(!rt.pod_dir("p").exists(), "{what}: left a pod behind");
    }
    rt.create_pod(
        "p",
        PodConfig {
            mem_mib: 32,
            vcpus: 32,
            disk_slots: 26,
            ..base()
        },
    )
    .unwrap();
}

#[test]
fn a_dead_pod_process_is_explained_by_its_cgroup_or_its_log() {
    let dir = std::env::temp_dir().join(format!("ember-death-{}", std::process::id()));
    let cg = dir.join("cgroup");
    std::fs::create_dir_all(&cg).unwrap();
    // Nothing to go by: no note.
    assert_eq!(super::pod::death_note(&dir, Some(&cg)), "");
    std::fs::write(
        dir.join(crate::pod_vmm::LOG_FILE),
        "time=\"t\" level=info msg=\"starting\"\ntime=\"t\" level=error msg=\"seccomp: thread vcpu0 (vcpu filter) made the forbidden system call open (2); the process ends\" thread=vcpu0\n",
    )
    .unwrap();
    let note = super::pod::death_note(&dir, Some(&cg));
    assert!(note.contains("forbidden system call open (2)"), "{note}");
    // The OOM killer's count in the pod's cgroup wins.
    std::fs::write(
        cg.join("memory.events"),
        "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n",
    )
    .unwrap();
    std::fs::write(cg.join("memory.max"), "536870912\n").unwrap();
    assert_eq!(
        super::pod::death_note(&dir, Some(&cg)),
        ": killed by the OOM killer in its cgroup (memory.max 536870912)"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
