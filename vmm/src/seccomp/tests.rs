use super::*;
use std::process::Command;

#[test]
fn builtin_lists_name_real_syscalls_and_compile() {
    let filters = Filters::builtin().unwrap();
    assert_eq!(filters.origin(), "built-in");
    for kind in ThreadKind::ALL {
        let allowed = kind.allowed();
        assert!(allowed.contains(&"exit_group"), "{kind:?}");
        for name in &allowed {
            assert!(syscall_number(name).is_some(), "{name}");
        }
    }
    // What makes each thread dangerous stays out of its list.
    for kind in ThreadKind::ALL {
        for never in [
            "execve",
            "execveat",
            "ptrace",
            "mount",
            "setns",
            "unshare",
            "kexec_load",
        ] {
            assert!(!kind.allowed().contains(&never), "{kind:?} allows {never}");
        }
    }
    assert!(!ThreadKind::Vcpu.allowed().contains(&"openat"));
    assert!(!ThreadKind::Vcpu.allowed().contains(&"socket"));
    assert!(!ThreadKind::Relay.allowed().contains(&"openat"));
    assert!(!ThreadKind::EventLoop.allowed().contains(&"clone3"));
}

#[test]
fn syscall_table_round_trips() {
    assert_eq!(syscall_number("read"), Some(0));
    assert_eq!(syscall_number("socket"), Some(41));
    assert_eq!(syscall_name(59), Some("execve"));
    assert_eq!(syscall_name(100_000), None);
    assert_eq!(syscall_number("no_such_call"), None);
}

#[test]
fn utc_dates() {
    assert_eq!(utc(0), (1970, 1, 1, 0, 0, 0));
    assert_eq!(utc(951_782_400), (2000, 2, 29, 0, 0, 0));
    assert_eq!(utc(1_796_086_861), (2026, 12, 1, 1, 1, 1));
}

#[test]
fn report_lines_name_the_thread_and_the_call_in_both_formats() {
    let line = std::thread::Builder::new()
        .name("vcpu3".into())
        .spawn(|| {
            remember_thread(ThreadKind::Vcpu, "vcpu3");
            let text = report_line(41, 0, false);
            let json = report_line(41, 0, true);
            (
                String::from_utf8(text.buf[..text.len].to_vec()).unwrap(),
                String::from_utf8(json.buf[..json.len].to_vec()).unwrap(),
            )
        })
        .unwrap()
        .join()
        .unwrap();
    let (text, json) = line;
    assert_eq!(
        text,
        "time=\"1970-01-01T00:00:00Z\" level=error msg=\"seccomp: thread vcpu3 (vcpu filter) made the forbidden system call socket (41); the process ends\" thread=vcpu3 module=vmm::seccomp\n"
    );
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["thread"], "vcpu3");
    assert_eq!(v["level"], "error");
    assert!(v["msg"].as_str().unwrap().contains("socket (41)"), "{json}");
}

#[test]
fn a_confined_thread_keeps_working_within_its_list() {
    let filters = Filters::builtin().unwrap();
    let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
    let t = std::thread::Builder::new()
        .name("relay-test".into())
        .spawn(move || {
            filters.install(ThreadKind::Relay).unwrap();
            let mut a = a;
            let mut buf = [0u8; 5];
            std::io::Read::read_exact(&mut a, &mut buf).unwrap();
            std::io::Write::write_all(&mut a, &buf).unwrap();
            let v: Vec<u8> = buf.iter().rev().copied().collect();
            v
        })
        .unwrap();
    let mut b = b;
    std::io::Write::write_all(&mut b, b"hello").unwrap();
    let mut back = [0u8; 5];
    std::io::Read::read_exact(&mut b, &mut back).unwrap();
    assert_eq!(&back, b"hello");
    assert_eq!(t.join().unwrap(), b"olleh");
}

/// Which child scenario the test binary runs when re-executed.
const CHILD_ENV: &str = "EMBER_SECCOMP_TEST_CHILD";

/// Runs `scenario` in a fresh copy of this test binary; returns (exit code, stderr).
fn in_child(scenario: &str) -> (Option<i32>, String) {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "seccomp::tests::child",
            "--ignored",
            "--nocapture",
        ])
        .env(CHILD_ENV, scenario)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
#[ignore = "run by the tests below in a child process"]
fn child() {
    let scenario = std::env::var(CHILD_ENV).unwrap();
    let filters = match scenario.as_str() {
        "builtin" => Filters::builtin().unwrap(),
        file => Filters::from_file(Path::new(file)).unwrap(),
    };
    std::thread::Builder::new()
        .name("vcpu0".into())
        .spawn(move || {
            filters.install(ThreadKind::Vcpu).unwrap();
            // SAFETY: plain syscalls; the first one is outside every vCPU list.
            unsafe {
                libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
                libc::getppid();
            }
            eprintln!("still running");
        })
        .unwrap()
        .join()
        .unwrap();
    std::process::exit(0);
}

#[test]
fn a_forbidden_syscall_ends_the_process_with_a_line_naming_thread_and_call() {
    let (code, stderr) = in_child("builtin");
    assert_eq!(code, Some(EXIT_BAD_SYSCALL), "{stderr}");
    assert!(
        stderr.contains(
            "seccomp: thread vcpu0 (vcpu filter) made the forbidden system call socket (41)"
        ),
        "{stderr}"
    );
    assert!(!stderr.contains("still running"), "{stderr}");
}

#[test]
fn a_filter_file_replaces_the_builtin_lists() {
    let dir = std::env::temp_dir().join(format!("ember-seccomp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // Everything allowed for the vCPU but getppid (110), which its list lacks here.
    let kind = |default: &str, calls: &[&str]| {
        let filter: Vec<serde_json::Value> = calls
            .iter()
            .map(|c| serde_json::json!({ "syscall": c }))
            .collect();
        serde_json::json!({
            "default_action": default, "filter_action": "allow", "filter": filter
        })
    };
    let vcpu_calls: Vec<&str> = ThreadKind::Vcpu
        .allowed()
        .into_iter()
        .chain(["socket"])
        .collect();
    let mut file = serde_json::json!({
        "vcpu": kind("trap", &vcpu_calls),
        "event_loop": kind("trap", &ThreadKind::EventLoop.allowed()),
        "control": kind("trap", &ThreadKind::Control.allowed()),
        "relay": kind("trap", &ThreadKind::Relay.allowed()),
    });
    let path = dir.join("filters.json");
    std::fs::write(&path, file.to_string()).unwrap();
    let (code, stderr) = in_child(path.to_str().unwrap());
    assert_eq!(code, Some(EXIT_BAD_SYSCALL), "{stderr}");
    assert!(
        stderr.contains("forbidden system call getppid (110)"),
        "{stderr}"
    );

    // A file without a kind, with an unknown kind, or not JSON: refused with why.
    file.as_object_mut().unwrap().remove("relay");
    std::fs::write(&path, file.to_string()).unwrap();
    let err = Filters::from_file(&path).unwrap_err().to_string();
    assert!(err.contains("no filter for the \"relay\" threads"), "{err}");
    file["relay"] = kind("trap", &["read"]);
    file["vcpus"] = kind("trap", &["read"]);
    std::fs::write(&path, file.to_string()).unwrap();
    let err = Filters::from_file(&path).unwrap_err().to_string();
    assert!(err.contains("unknown thread kind \"vcpus\""), "{err}");
    std::fs::write(&path, "{ not json").unwrap();
    assert!(matches!(Filters::from_file(&path), Err(Error::Json(..))));
    assert!(matches!(
        Filters::from_file(&dir.join("missing.json")),
        Err(Error::Read(..))
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_builtin_json_compiles_to_the_builtin_filters() {
    let dir = std::env::temp_dir().join(format!("ember-seccomp-json-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("builtin.json");
    std::fs::write(&path, Filters::builtin_json()).unwrap();
    let from_file = Filters::from_file(&path).unwrap();
    let builtin = Filters::builtin().unwrap();
    for kind in ThreadKind::ALL {
        assert_eq!(
            from_file.programs[&kind], builtin.programs[&kind],
            "{kind:?}"
        );
    }
    // One syscall per line: a line deleted is a syscall taken out.
    let text = Filters::builtin_json();
    assert!(
        text.contains("\n      { \"syscall\": \"ioctl\" },\n"),
        "{text}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
