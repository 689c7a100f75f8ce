//! The runc command-line contract of the `ember` binary, without a VM: bad bundles, unknown
//! ids, state/list/kill/delete over recorded containers, spec, features, global flags.

use runtime::oci::state::{process_start_time, Record, Status, Store};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};

struct Tmp(PathBuf);

impl Tmp {
    fn new(name: &str) -> Tmp {
        let p = std::env::temp_dir().join(format!("ember-oci-cli-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        Tmp(p)
    }
    fn root(&self) -> PathBuf {
        self.0.join("root")
    }
}

impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn ember(root: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ember"))
        .arg("--root")
        .arg(root)
        .args(args)
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Entries left in the state root (none: nothing half-created).
fn leftovers(root: &Path) -> Vec<String> {
    fs::read_dir(root)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

const CONFIG: &str = r#"{"ociVersion":"1.0.2","process":{"user":{"uid":0,"gid":0},
  "args":["sh","-c","echo hello"],"env":["PATH=/bin"],"cwd":"/"},"root":{"path":"rootfs"}}"#;

fn bundle(t: &Tmp, name: &str, config: Option<&str>, rootfs: bool) -> PathBuf {
    let b = t.0.join(name);
    fs::create_dir_all(&b).unwrap();
    if let Some(c) = config {
        fs::write(b.join("config.json"), c).unwrap();
    }
    if rootfs {
        fs::create_dir_all(b.join("rootfs")).unwrap();
    }
    b
}

/// Record a container whose process is `child` (or none), as `create` would have.
fn record(root: &Path, id: &str, bundle: &Path, status: Status, child: Option<&Child>) {
    let store = Store::new(Some(root));
    let _lock = store.create(id).unwrap();
    let mut rec = Record::new(id, bundle, &bundle.join("rootfs"));
    rec.status = status;
    if let Some(c) = child {
        let pid = c.id() as i32;
        rec.pid = Some(pid);
        rec.pid_start = process_start_time(pid);
    }
    rec.annotations.insert("org.example".into(), "yes".into());
    store.save(&rec).unwrap();
}

#[test]
fn version_and_features() {
    let t = Tmp::new("version");
    let o = ember(&t.root(), &["--version"]);
    assert!(o.status.success());
    assert!(stdout(&o).starts_with("ember "), "{}", stdout(&o));
    let o = ember(&t.root(), &["features"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["ociVersionMin"], "1.0.0");
    assert!(v["mountOptions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m == "ro"));
}

#[test]
fn unknown_container_is_runc_error_with_exit_1() {
    let t = Tmp::new("unknown");
    for args in [
        vec!["state", "nope"],
        vec!["start", "nope"],
        vec!["kill", "nope", "KILL"],
        vec!["delete", "nope"],
        vec!["ps", "nope"],
        vec!["pause", "nope"],
        vec!["resume", "nope"],
        vec!["update", "--memory", "64m", "nope"],
        vec!["exec", "nope", "true"],
    ] {
        let o = ember(&t.root(), &args);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        assert!(
            stderr(&o).contains("container does not exist"),
            "{args:?}: {}",
            stderr(&o)
        );
    }
    // runc: delete --force of a missing container succeeds.
    let o = ember(&t.root(), &["delete", "--force", "nope"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

#[test]
fn update_refuses_bad_sizes_and_resources() {
    let t = Tmp::new("update");
    let bad = t.0.join("bad.json");
    std::fs::write(&bad, "[1, 2]").unwrap();
    let bad = bad.to_str().unwrap();
    for (args, want) in [
        (vec!["update", "--memory", "12x", "c1"], "invalid size"),
        (vec!["update", "--resources", bad, "c1"], "Bad resources"),
        (
            vec!["update", "--resources", "/no/such/file", "c1"],
            "Cannot read /no/such/file",
        ),
    ] {
        let o = ember(&t.root(), &args);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        assert!(stderr(&o).contains(want), "{args:?}: {}", stderr(&o));
    }
}

#[test]
fn json_log_gets_the_error() {
    let t = Tmp::new("log");
    let log = t.0.join("log.json");
    let o = Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(["--root"])
        .arg(t.root())
        .arg("--log")
        .arg(&log)
        .args([
            "--log-format",
            "json",
            "--debug",
            "--systemd-cgroup",
            "state",
            "nope",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stderr(&o).trim(), "container does not exist");
    let text = fs::read_to_string(&log).unwrap();
    let last = text.lines().last().unwrap();
    let v: serde_json::Value = serde_json::from_str(last).unwrap();
    assert_eq!(v["level"], "error");
    assert_eq!(v["msg"], "container does not exist");
}

#[test]
fn bad_bundles_leave_nothing_behind() {
    let t = Tmp::new("bad");
    let v2 = CONFIG.replace("1.0.2", "2.0.0");
    let cases: Vec<(&str, Option<&str>, bool, &str)> = vec![
        ("noconfig", None, true, "config.json not found"),
        ("badjson", Some("{not json"), true, "Bad config.json"),
        ("norootfs", Some(CONFIG), false, "invalid rootfs"),
        ("version", Some(&v2), true, "unsupported spec version 2.0.0"),
        (
            "noprocess",
            Some(r#"{"ociVersion":"1.0.0","root":{"path":"rootfs"}}"#),
            true,
            "process property must not be empty",
        ),
    ];
    for (name, config, rootfs, want) in cases {
        let b = bundle(&t, name, config, rootfs);
        let pid_file = t.0.join(format!("{name}.pid"));
        let o = ember(
            &t.root(),
            &[
                "create",
                "--bundle",
                b.to_str().unwrap(),
                "--pid-file",
                pid_file.to_str().unwrap(),
                "c1",
            ],
        );
        assert_eq!(o.status.code(), Some(1), "{name}");
        assert!(stderr(&o).contains(want), "{name}: {}", stderr(&o));
        assert!(
            leftovers(&t.root()).is_empty(),
            "{name}: {:?}",
            leftovers(&t.root())
        );
        assert!(!pid_file.exists(), "{name}");
    }
    let b = bundle(&t, "good", Some(CONFIG), true);
    let o = ember(
        &t.root(),
        &["create", "--bundle", b.to_str().unwrap(), "a/b"],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("invalid id format"), "{}", stderr(&o));
}

#[test]
fn create_failure_in_the_vm_leaves_nothing_behind() {
    // Point ember at a guest directory with no kernel: creating the pod must fail cleanly.
    let t = Tmp::new("vmfail");
    let b = bundle(&t, "b", Some(CONFIG), true);
    // The command is there (create looks it up first): the VM is what fails.
    fs::create_dir_all(b.join("rootfs/bin")).unwrap();
    fs::write(b.join("rootfs/bin/sh"), b"").unwrap();
    fs::set_permissions(
        b.join("rootfs/bin/sh"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_ember"))
        .env("EMBER_GUEST_DIR", t.0.join("no-guest"))
        .arg("--root")
        .arg(t.root())
        .args(["create", "--bundle", b.to_str().unwrap(), "c1"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("ember create failed"), "{}", stderr(&o));
    assert!(!stderr(&o).contains("unable to start container process"));
    assert!(
        leftovers(&t.root()).is_empty(),
        "{:?}",
        leftovers(&t.root())
    );
}

#[test]
fn existing_id_is_refused() {
    let t = Tmp::new("exists");
    let b = bundle(&t, "b", Some(CONFIG), true);
    record(&t.root(), "c1", &b, Status::Stopped, None);
    let o = ember(
        &t.root(),
        &["create", "--bundle", b.to_str().unwrap(), "c1"],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("container with id exists: c1"),
        "{}",
        stderr(&o)
    );
    // The existing container is untouched.
    assert_eq!(leftovers(&t.root()), vec!["c1".to_string()]);
}

#[test]
fn state_list_kill_delete_follow_the_process() {
    let t = Tmp::new("lifecycle");
    let b = bundle(&t, "b", Some(CONFIG), true);
    let mut child = Command::new("sleep").arg("60").spawn().unwrap();
    record(&t.root(), "run1", &b, Status::Running, Some(&child));
    record(&t.root(), "done1", &b, Status::Stopped, None);

    let o = ember(&t.root(), &["state", "run1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["ociVersion"], "1.0.2");
    assert_eq!(v["id"], "run1");
    assert_eq!(v["status"], "running");
    assert_eq!(v["pid"], child.id());
    assert_eq!(v["bundle"], b.to_str().unwrap());
    assert_eq!(v["annotations"]["org.example"], "yes");

    let o = ember(&t.root(), &["list", "-q"]);
    assert_eq!(stdout(&o), "done1\nrun1\n");
    let o = ember(&t.root(), &["list", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2);
    let o = ember(&t.root(), &["list"]);
    assert!(stdout(&o).starts_with("ID"), "{}", stdout(&o));
    assert!(stdout(&o).contains("running"));

    // A running container is not deleted without --force.
    let o = ember(&t.root(), &["delete", "run1"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("cannot delete container run1 that is not stopped: running"),
        "{}",
        stderr(&o)
    );
    // Starting a running or stopped container is refused the runc way.
    let o = ember(&t.root(), &["start", "run1"]);
    assert!(
        stderr(&o).contains("cannot start an already running container"),
        "{}",
        stderr(&o)
    );
    let o = ember(&t.root(), &["start", "done1"]);
    assert!(
        stderr(&o).contains("cannot start a container that has stopped"),
        "{}",
        stderr(&o)
    );
    // Bad signals are refused before anything is sent.
    let o = ember(&t.root(), &["kill", "run1", "NOSUCH"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("Invalid signal"), "{}", stderr(&o));

    // Once the process is gone the container is stopped with pid 0.
    child.kill().unwrap();
    child.wait().unwrap();
    let o = ember(&t.root(), &["state", "run1"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["status"], "stopped");
    assert_eq!(v["pid"], 0);
    let o = ember(&t.root(), &["kill", "run1", "TERM"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("container not running"),
        "{}",
        stderr(&o)
    );
    let o = ember(&t.root(), &["exec", "done1", "true"]);
    assert!(
        stderr(&o).contains("cannot exec in a stopped container"),
        "{}",
        stderr(&o)
    );

    for id in ["run1", "done1"] {
        let o = ember(&t.root(), &["delete", id]);
        assert!(o.status.success(), "{id}: {}", stderr(&o));
    }
    assert!(leftovers(&t.root()).is_empty());
    let o = ember(&t.root(), &["list", "--format", "json"]);
    assert_eq!(stdout(&o).trim(), "null");
}

#[test]
fn spec_writes_a_loadable_config_once() {
    let t = Tmp::new("spec");
    let b = t.0.join("b");
    fs::create_dir_all(b.join("rootfs")).unwrap();
    let o = ember(&t.root(), &["spec", "--bundle", b.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let bundle = runtime::oci::bundle::Bundle::load(&b).unwrap();
    let c = bundle.container_config("x").unwrap();
    assert_eq!(c.process.args, ["sh"]);
    let o = ember(&t.root(), &["spec", "--bundle", b.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("File config.json exists"),
        "{}",
        stderr(&o)
    );
}

/// `ember state ID | grep -q …`: a reader that goes away must not make ember panic.
#[test]
fn closed_stdout_is_not_a_panic() {
    let t = Tmp::new("epipe");
    for args in [&["features"][..], &["list"], &["spec", "--help"]] {
        let (r, w) = nix::unistd::pipe().unwrap();
        drop(r);
        let out = Command::new(env!("CARGO_BIN_EXE_ember"))
            .arg("--root")
            .arg(t.root())
            .args(args)
            .stdout(std::process::Stdio::from(w))
            .output()
            .unwrap();
        let err = stderr(&out);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(out.status.code().is_some(), "{args:?}: killed by a signal");
    }
}

#[test]
fn an_unknown_log_format_is_refused() {
    let t = Tmp::new("logfmt");
    let o = ember(&t.root(), &["--log-format", "xml", "list"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("xml"), "{}", stderr(&o));
    let o = ember(&t.root(), &["--log-format", "json", "list", "-q"]);
    assert!(o.status.success(), "{}", stderr(&o));
}

/// `EMBER_ROOT` is the runc-style commands' state root too, as the README says (hardening
/// finding: they ignored it).
#[test]
fn ember_root_is_the_state_root_of_the_runc_commands() {
    let t = Tmp::new("ember-root");
    let b = bundle(&t, "b", Some(CONFIG), true);
    record(&t.root(), "from-env", &b, Status::Stopped, None);
    let out = Command::new(env!("CARGO_BIN_EXE_ember"))
        .env("EMBER_ROOT", t.root())
        .args(["list", "--format", "json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("from-env"), "{}", stdout(&out));
    // --root still wins over the environment.
    let other = Tmp::new("ember-root-flag");
    fs::create_dir_all(other.root()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ember"))
        .env("EMBER_ROOT", t.root())
        .arg("--root")
        .arg(other.root())
        .args(["list", "--format", "json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stdout(&out).contains("from-env"), "{}", stdout(&out));
}
