//! The `ember pod` / `ember container` command line without a VM: errors and exit codes,
//! JSON output, and pod locks across processes (no lost update under parallel calls).

use runtime::state::{LockKind, PodLock};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

fn root(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ember-podcli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn ember(root: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ember"));
    c.arg("--root").arg(root).args(args);
    c
}

fn run(root: &Path, args: &[&str]) -> Output {
    ember(root, args).output().unwrap()
}

fn ok(root: &Path, args: &[&str]) -> String {
    let out = run(root, args);
    assert!(
        out.status.success(),
        "ember {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn fails(root: &Path, args: &[&str]) -> String {
    let out = run(root, args);
    assert_eq!(out.status.code(), Some(1), "ember {args:?} should fail");
    String::from_utf8(out.stderr).unwrap()
}

fn status_json(root: &Path, pod: &str) -> serde_json::Value {
    serde_json::from_str(&ok(root, &["pod", "status", "--json", pod])).unwrap()
}

#[test]
fn parallel_cli_calls_serialise_on_the_pod_lock() {
    let root = root("parallel");
    ok(&root, &["pod", "create", "p"]);
    let n = 12;
    let children: Vec<_> = (0..n)
        .map(|i| {
            ember(
                &root,
                &[
                    "container",
                    "create",
                    "p",
                    &format!("c{i:02}"),
                    "--rootfs-guest-path",
                    "/",
                    "--",
                    "sleep",
                    "1",
                ],
            )
            .spawn()
            .unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    let v = status_json(&root, "p");
    let ids: Vec<&str> = v["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    let want: Vec<String> = (0..n).map(|i| format!("c{i:02}")).collect();
    assert_eq!(ids, want, "every parallel create is in the record");
}

#[test]
fn a_lock_held_by_another_process_is_respected() {
    let root = root("lock");
    ok(&root, &["pod", "create", "p"]);
    let dir = root.join("@pods/p");
    let short = |args: &[&str]| {
        ember(&root, args)
            .env("EMBER_LOCK_TIMEOUT_MS", "300")
            .output()
            .unwrap()
    };
    let create = [
        "container",
        "create",
        "p",
        "c",
        "--rootfs-guest-path",
        "/",
        "--",
        "true",
    ];
    {
        // This test process holds the write lock: readers and writers elsewhere time out.
        let _w = PodLock::acquire_pod(&dir, LockKind::Write, Duration::from_secs(5)).unwrap();
        let out = short(&["pod", "status", "p"]);
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("Timed out") && err.contains("lock"), "{err}");
        assert!(!short(&create).status.success());
    }
    {
        // A shared lock lets readers in and keeps writers out.
        let _r = PodLock::acquire_pod(&dir, LockKind::Read, Duration::from_secs(5)).unwrap();
        assert!(short(&["pod", "status", "p"]).status.success());
        assert!(!short(&create).status.success());
    }
    // Released: the write goes through, and nothing from the refused attempts was recorded.
    assert!(short(&create).status.success());
    assert_eq!(
        status_json(&root, "p")["containers"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn errors_are_one_line_with_exit_code_1() {
    let root = root("errors");
    let err = fails(&root, &["pod", "status", "nope"]);
    assert_eq!(err.trim(), "ember: Pod nope does not exist");
    let err = fails(&root, &["pod", "create", ""]);
    assert_eq!(err.trim(), "ember: Bad id: Empty pod id");
    let err = fails(&root, &["pod", "create", "a/b"]);
    assert!(err.contains("Invalid pod id \"a/b\""), "{err}");
    let bad = root.join("bad.json");
    std::fs::write(&bad, "{\"mem_mib\": \"lots\"}").unwrap();
    let err = fails(
        &root,
        &["pod", "create", "--config", bad.to_str().unwrap(), "p"],
    );
    assert!(err.starts_with("ember: Invalid pod config"), "{err}");
    assert!(!root.join("@pods/p").exists());
    ok(&root, &["pod", "create", "p"]);
    let err = fails(&root, &["pod", "create", "p"]);
    assert_eq!(err.trim(), "ember: Pod p already exists");
    let err = fails(&root, &["container", "create", "p", "c", "--", "true"]);
    assert!(err.contains("Give a rootfs"), "{err}");
    ok(
        &root,
        &[
            "container",
            "create",
            "p",
            "c",
            "--rootfs-guest-path",
            "/",
            "--",
            "true",
        ],
    );
    let err = fails(&root, &["container", "start", "p", "c"]);
    assert_eq!(
        err.trim(),
        "ember: Pod p is ready; it must be running to start a container"
    );
    let err = fails(&root, &["pod", "pause", "p"]);
    assert_eq!(
        err.trim(),
        "ember: Cannot pause pod p: Cannot go from ready to paused"
    );
    let err = fails(&root, &["container", "kill", "p", "c", "SIGNOPE"]);
    assert_eq!(err.trim(), "ember: Unknown signal \"SIGNOPE\"");
    let err = fails(&root, &["container", "status", "p", "zz"]);
    assert_eq!(err.trim(), "ember: Container zz does not exist in pod p");
}

#[test]
fn lifecycle_without_vm_and_json_output() {
    let root = root("life");
    let cfg = root.join("pod.json");
    std::fs::write(&cfg, r#"{"mem_mib": 128, "vcpus": 1}"#).unwrap();
    let v: serde_json::Value = serde_json::from_str(&ok(
        &root,
        &[
            "pod",
            "create",
            "--json",
            "--config",
            cfg.to_str().unwrap(),
            "p",
        ],
    ))
    .unwrap();
    assert_eq!(v["state"], "ready");
    ok(
        &root,
        &[
            "container",
            "create",
            "p",
            "c",
            "--rootfs-guest-path",
            "/",
            "--",
            "sleep",
            "9",
        ],
    );
    let c: serde_json::Value =
        serde_json::from_str(&ok(&root, &["container", "status", "--json", "p", "c"])).unwrap();
    assert_eq!(c["state"], "ready");
    assert_eq!(c["args"], serde_json::json!(["sleep", "9"]));
    let list: serde_json::Value =
        serde_json::from_str(&ok(&root, &["pod", "list", "--json"])).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert!(ok(&root, &["pod", "list"]).contains("p "));
    ok(&root, &["pod", "stop", "p"]);
    assert_eq!(status_json(&root, "p")["state"], "stopped");
    ok(&root, &["pod", "delete", "p"]);
    assert!(!root.join("@pods/p").exists());
}

#[test]
fn future_state_version_is_refused() {
    let root = root("future");
    ok(&root, &["pod", "create", "p"]);
    let path = root.join("@pods/p/state.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    v["format_version"] = serde_json::json!(99);
    std::fs::write(&path, v.to_string()).unwrap();
    let err = fails(&root, &["pod", "status", "p"]);
    assert!(
        err.contains("format version 99, newer than this ember understands"),
        "{err}"
    );
}

#[test]
fn failed_run_leaves_nothing_behind() {
    let root = root("run-fail");
    let cfg = root.join("pod.json");
    let kernel = root.join("no-such-vmlinux");
    std::fs::write(
        &cfg,
        format!("{{\"kernel\": {:?}}}", kernel.to_str().unwrap()),
    )
    .unwrap();
    let err = fails(
        &root,
        &["pod", "run", "--config", cfg.to_str().unwrap(), "p"],
    );
    assert!(
        err.contains("guest kernel") && err.contains("not found"),
        "{err}"
    );
    assert!(
        !root.join("@pods/p").exists(),
        "the half-created pod was removed"
    );
    let list: serde_json::Value =
        serde_json::from_str(&ok(&root, &["pod", "list", "--json"])).unwrap();
    assert_eq!(list, serde_json::json!([]));
}

/// A read-only state root (hardening finding): `pod list` and `pod status` still answer, a
/// change is refused with one clear error.
#[test]
fn reads_work_on_a_read_only_state_root() {
    let rw = root("ro-src");
    ok(&rw, &["pod", "create", "p"]);
    // The lock file a writer leaves must not be needed by readers.
    let _ = std::fs::remove_file(rw.join("@pods/p/lock"));
    let ro = root("ro-mnt");
    let bind = |flags| nix::mount::mount(Some(&rw), &ro, None::<&str>, flags, None::<&str>);
    if let Err(e) = bind(nix::mount::MsFlags::MS_BIND).and_then(|()| {
        nix::mount::mount(
            None::<&str>,
            &ro,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND
                | nix::mount::MsFlags::MS_REMOUNT
                | nix::mount::MsFlags::MS_RDONLY,
            None::<&str>,
        )
    }) {
        let _ = nix::mount::umount(&ro);
        panic!("a read-only bind mount needs root here: {e}");
    }
    let list = run(&ro, &["pod", "list"]);
    let status = run(&ro, &["pod", "status", "--json", "p"]);
    let create = run(&ro, &["pod", "create", "q"]);
    nix::mount::umount(&ro).unwrap();
    assert!(
        list.status.success(),
        "{}",
        String::from_utf8_lossy(&list.stderr)
    );
    assert!(String::from_utf8_lossy(&list.stdout).contains('p'));
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(v["state"], "ready");
    assert_eq!(create.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&create.stderr).starts_with("ember: "));
}
