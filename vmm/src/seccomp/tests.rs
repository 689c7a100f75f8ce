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
            let text = |l: Line| String::from_utf8(l.buf[..l.len].to_vec()).unwrap();
            [
                text(report_line(41, None, 0, false)),
                text(report_line(41, None, 0, true)),
                // A request is named for an ioctl only.
                text(report_line(41, Some(0x5401), 0, false)),
                text(report_line(16, Some(0xc008_ae88), 0, false)),
                text(report_line(16, Some(0xae80), 0, true)),
            ]
        })
        .unwrap()
        .join()
        .unwrap();
    let [text, json, socket_with_request, ioctl, ioctl_json] = line;
    assert_eq!(
        text,
        "time=\"1970-01-01T00:00:00Z\" level=error msg=\"seccomp: thread vcpu3 (vcpu filter) made the forbidden system call socket (41); the process ends\" thread=vcpu3 module=vmm::seccomp\n"
    );
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["thread"], "vcpu3");
    assert_eq!(v["level"], "error");
    assert!(v["msg"].as_str().unwrap().contains("socket (41)"), "{json}");
    assert_eq!(socket_with_request, text);
    assert_eq!(
        ioctl,
        "time=\"1970-01-01T00:00:00Z\" level=error msg=\"seccomp: thread vcpu3 (vcpu filter) made the forbidden system call ioctl (16) request 0xc008ae88; the process ends\" thread=vcpu3 module=vmm::seccomp\n"
    );
    let v: serde_json::Value = serde_json::from_str(&ioctl_json).unwrap();
    assert_eq!(
        v["msg"],
        "seccomp: thread vcpu3 (vcpu filter) made the forbidden system call ioctl (16) request 0xae80; the process ends"
    );
    // The kernel reads the request as an unsigned int: musl's sign extension is dropped.
    assert_eq!(ioctl_request(0xffff_ffff_c008_ae88), 0xc008_ae88);
    assert_eq!(ioctl_request(0xae80), 0xae80);
}

/// The vCPU's ioctl requests as `/usr/include/linux/kvm.h` defines them (Linux 6.1 headers).
const KVM_H: [(&str, u64); 15] = [
    ("KVM_RUN", 0xae80),
    ("KVM_GET_REGS", 0x8090_ae81),
    ("KVM_SET_REGS", 0x4090_ae82),
    ("KVM_GET_SREGS", 0x8138_ae83),
    ("KVM_GET_MSRS", 0xc008_ae88),
    ("KVM_GET_LAPIC", 0x8400_ae8e),
    ("KVM_GET_CPUID2", 0xc008_ae91),
    ("KVM_GET_MP_STATE", 0x8004_ae98),
    ("KVM_GET_VCPU_EVENTS", 0x8040_ae9f),
    ("KVM_SET_VCPU_EVENTS", 0x4040_aea0),
    ("KVM_GET_DEBUGREGS", 0x8080_aea1),
    ("KVM_GET_TSC_KHZ", 0xaea3),
    ("KVM_GET_XSAVE", 0x9000_aea4),
    ("KVM_GET_XCRS", 0x8188_aea6),
    ("KVM_GET_STATS_FD", 0xaece),
];

#[test]
fn vcpu_ioctl_requests_are_the_kernel_headers() {
    assert_eq!(vcpu_ioctls(), KVM_H.to_vec());
    assert_eq!(ThreadKind::Vcpu.ioctls(), Some(KVM_H.to_vec()));
    for kind in [
        ThreadKind::EventLoop,
        ThreadKind::Control,
        ThreadKind::Relay,
    ] {
        assert_eq!(kind.ioctls(), None, "{kind:?}");
    }
    // What the vCPU thread never asks: the state writes of a restore (the thread that owns
    // the VM restores before the vCPUs run), KVM_GET_XSAVE2 (kvm-ioctls' get_xsave is
    // KVM_GET_XSAVE), interrupts, VM ioctls.
    for (name, nr) in [
        ("KVM_SET_SREGS", 0x4138_ae84u64),
        ("KVM_SET_MSRS", 0x4008_ae89),
        ("KVM_SET_CPUID2", 0x4008_ae90),
        ("KVM_GET_XSAVE2", 0x9000_aecf),
        ("KVM_SET_XSAVE", 0x5000_aea5),
        ("KVM_NMI", 0xae9a),
        ("KVM_IRQFD", 0x4020_ae76),
        ("KVM_CREATE_VCPU", 0xae41),
    ] {
        assert!(
            !vcpu_ioctls().iter().any(|(_, r)| *r == nr),
            "{name} {nr:#x}"
        );
    }
    // The stats module's own number is the one allowed.
    assert!(vcpu_ioctls().contains(&("KVM_GET_STATS_FD", 0xaece)));

    // Against the header itself, where a C compiler and the header are here.
    let header = Path::new("/usr/include/linux/kvm.h");
    let cc = Command::new("cc").arg("--version").output();
    if !header.exists() || !cc.is_ok_and(|o| o.status.success()) {
        eprintln!("skipped the check against linux/kvm.h: no cc or no linux-libc-dev");
        return;
    }
    let dir = std::env::temp_dir().join(format!("ember-kvm-h-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut c = String::from("#include <stdio.h>\n#include <linux/kvm.h>\nint main(void) {\n");
    for (name, _) in KVM_H {
        c.push_str(&format!(
            "    printf(\"{name} %lu\\n\", (unsigned long)({name}));\n"
        ));
    }
    c.push_str("    return 0;\n}\n");
    std::fs::write(dir.join("kvm.c"), c).unwrap();
    let built = Command::new("cc")
        .arg("-o")
        .arg(dir.join("kvm"))
        .arg(dir.join("kvm.c"))
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let out = Command::new(dir.join("kvm")).output().unwrap();
    let from_header: Vec<(String, u64)> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let (name, nr) = l.split_once(' ').unwrap();
            (name.to_string(), nr.parse().unwrap())
        })
        .collect();
    let ours: Vec<(String, u64)> = vcpu_ioctls()
        .into_iter()
        .map(|(n, r)| (n.to_string(), r))
        .collect();
    assert_eq!(ours, from_header);
    std::fs::remove_dir_all(&dir).unwrap();
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
    if scenario == "shim" {
        // A thread that runs before the deny-list is installed, and one started after.
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let early = std::thread::spawn(move || {
            rx.recv().unwrap();
            // SAFETY: ptrace(PTRACE_TRACEME) changes nothing but this process's tracer.
            let rc = unsafe { libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0) };
            (rc, io::Error::last_os_error().raw_os_error())
        });
        deny_for_process().unwrap();
        tx.send(()).unwrap();
        let (rc, errno) = early.join().unwrap();
        eprintln!("early thread ptrace: {rc} {errno:?}");
        let late = std::thread::spawn(|| {
            // SAFETY: acct(NULL) would only turn process accounting off.
            let rc = unsafe { libc::acct(std::ptr::null()) };
            (rc, io::Error::last_os_error().raw_os_error())
        });
        let (rc, errno) = late.join().unwrap();
        eprintln!("late thread acct: {rc} {errno:?}");
        eprintln!("getpid works: {}", std::process::id() > 0);
        std::process::exit(0);
    }
    if scenario == "inherited" {
        // A thread under the control filter starts one that installs nothing of its own.
        let filters = Filters::builtin().unwrap();
        std::thread::Builder::new()
            .name("vm".into())
            .spawn(move || {
                filters.install(ThreadKind::Control).unwrap();
                std::thread::Builder::new()
                    .name("vcpu1".into())
                    .spawn(|| {
                        // SAFETY: a plain syscall outside the control list.
                        unsafe { libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0) };
                        eprintln!("still running");
                    })
                    .unwrap()
                    .join()
                    .unwrap();
            })
            .unwrap()
            .join()
            .unwrap();
        std::process::exit(0);
    }
    let filters = match scenario.as_str() {
        "builtin" | "ioctl" => Filters::builtin().unwrap(),
        file => Filters::from_file(Path::new(file)).unwrap(),
    };
    std::thread::Builder::new()
        .name("vcpu0".into())
        .spawn(move || {
            filters.install(ThreadKind::Vcpu).unwrap();
            if scenario == "ioctl" {
                // SAFETY: ioctls on a descriptor that is not open: they fail with EBADF,
                // where the filter lets them through.
                unsafe {
                    for (_, request) in vcpu_ioctls() {
                        if libc::ioctl(-1, request as _, 0) != -1
                            || io::Error::last_os_error().raw_os_error() != Some(libc::EBADF)
                        {
                            eprintln!("ioctl {request:#x} did not fail with EBADF");
                        }
                    }
                    eprintln!("the vCPU's requests pass");
                    // KVM_GET_FPU: a vCPU ioctl, but not one the vCPU thread makes.
                    libc::ioctl(-1, 0x81a0_ae8c_u64 as _, 0);
                }
                eprintln!("still running");
                return;
            }
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
fn the_shim_deny_list_refuses_its_calls_on_every_thread_with_eperm() {
    let (code, err) = in_child("shim");
    assert_eq!(code, Some(0), "{err}");
    let eperm = Some(libc::EPERM);
    assert!(
        err.contains(&format!("early thread ptrace: -1 {eperm:?}")),
        "{err}"
    );
    assert!(
        err.contains(&format!("late thread acct: -1 {eperm:?}")),
        "{err}"
    );
    assert!(err.contains("getpid works: true"), "{err}");
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
fn a_vcpu_ioctl_outside_its_requests_ends_the_process_with_a_line_naming_the_request() {
    let (code, stderr) = in_child("ioctl");
    assert_eq!(code, Some(EXIT_BAD_SYSCALL), "{stderr}");
    assert!(stderr.contains("the vCPU's requests pass"), "{stderr}");
    assert!(!stderr.contains("did not fail"), "{stderr}");
    assert!(
        stderr.contains(
            "seccomp: thread vcpu0 (vcpu filter) made the forbidden system call ioctl (16) request 0x81a0ae8c; the process ends"
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
    // The vCPU's ioctl rules, one per request, all on one line.
    let vcpu_ioctl: Vec<&str> = text.lines().filter(|l| l.contains("\"args\"")).collect();
    assert_eq!(vcpu_ioctl.len(), 1, "{text}");
    assert!(
        vcpu_ioctl[0].starts_with(
            "      { \"syscall\": \"ioctl\", \"args\": [{ \"index\": 1, \"type\": \"dword\", \"op\": \"eq\", \"val\": 44672, \"comment\": \"KVM_RUN\" }] }, "
        ),
        "{text}"
    );
    assert_eq!(
        vcpu_ioctl[0].matches("\"syscall\": \"ioctl\"").count(),
        vcpu_ioctls().len()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// What the rig's seccomp-forbidden section does to the printed filters: `sed` deletes the
/// vcpu section's ioctl lines (from the `"vcpu"` line to the first line with a `]`).
#[test]
fn deleting_the_vcpu_ioctl_line_takes_ioctl_out_of_the_vcpu_filter_only() {
    let dir = std::env::temp_dir().join(format!("ember-seccomp-sed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("filters.json");
    let text = Filters::builtin_json();
    std::fs::write(&path, &text).unwrap();
    let sed = Command::new("sed")
        .arg("/\"vcpu\"/,/]/{/\"syscall\": \"ioctl\"/d}")
        .arg(&path)
        .output();
    let Ok(sed) = sed else {
        eprintln!("skipped: no sed");
        return;
    };
    assert!(sed.status.success());
    let edited = String::from_utf8(sed.stdout).unwrap();
    assert_eq!(text.lines().count() - edited.lines().count(), 1, "{edited}");
    serde_json::from_str::<serde_json::Value>(&edited).unwrap();
    let no_ioctl = dir.join("no-ioctl.json");
    std::fs::write(&no_ioctl, &edited).unwrap();
    let from_file = Filters::from_file(&no_ioctl).unwrap();
    let builtin = Filters::builtin().unwrap();
    let mut vcpu = ThreadKind::Vcpu.rules().unwrap();
    assert!(vcpu.remove(&SYS_IOCTL).is_some());
    assert_eq!(
        from_file.programs[&ThreadKind::Vcpu],
        ThreadKind::Vcpu.compile(vcpu).unwrap()
    );
    for kind in [
        ThreadKind::EventLoop,
        ThreadKind::Control,
        ThreadKind::Relay,
    ] {
        assert_eq!(
            from_file.programs[&kind], builtin.programs[&kind],
            "{kind:?}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_thread_under_its_creators_filter_is_named_too() {
    let (code, stderr) = in_child("inherited");
    assert_eq!(code, Some(EXIT_BAD_SYSCALL), "{stderr}");
    assert!(
        stderr.contains(
            "seccomp: thread vcpu1 (inherited filter) made the forbidden system call ptrace (101)"
        ),
        "{stderr}"
    );
    assert!(!stderr.contains("still running"), "{stderr}");
}
