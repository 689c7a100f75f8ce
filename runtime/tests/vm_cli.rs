//! `ember vm run` on bad input: each case is a one-line `ember: ...` error and exit code 1,
//! reported before any KVM work (so these run on any machine).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn ember(args: &[&str], guest_dir: Option<&Path>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ember"));
    cmd.args(["vm", "run"]).args(args);
    cmd.env_remove("EMBER_FORCE_KVM");
    match guest_dir {
        Some(d) => cmd.env("EMBER_GUEST_DIR", d),
        None => cmd.env("EMBER_GUEST_DIR", "/nonexistent-ember-guest-dir"),
    };
    cmd.output().expect("run ember")
}

/// Exit code 1 and exactly one stderr line starting `ember: ` containing `needle`.
fn assert_one_line_error(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line expected: {stderr}");
    assert!(lines[0].starts_with("ember: "), "{stderr}");
    assert!(
        lines[0].contains(needle),
        "expected '{needle}' in: {stderr}"
    );
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!("ember-vm-cli-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A minimal x86_64 ELF "kernel": one PT_LOAD of `payload` at 16 MiB, `memsz` bytes in
/// memory.
fn fake_vmlinux(payload: &[u8], memsz: u64) -> Vec<u8> {
    let paddr: u64 = 0x100_0000;
    let data_off: u64 = 0x100;
    let mut v = vec![0u8; data_off as usize];
    v[0..4].copy_from_slice(b"\x7fELF");
    v[4] = 2;
    v[5] = 1;
    v[6] = 1;
    v[16..18].copy_from_slice(&2u16.to_le_bytes());
    v[18..20].copy_from_slice(&62u16.to_le_bytes());
    v[20..24].copy_from_slice(&1u32.to_le_bytes());
    v[24..32].copy_from_slice(&paddr.to_le_bytes());
    v[32..40].copy_from_slice(&64u64.to_le_bytes());
    v[52..54].copy_from_slice(&64u16.to_le_bytes());
    v[54..56].copy_from_slice(&56u16.to_le_bytes());
    v[56..58].copy_from_slice(&1u16.to_le_bytes());
    v[64..68].copy_from_slice(&1u32.to_le_bytes());
    v[72..80].copy_from_slice(&data_off.to_le_bytes());
    v[80..88].copy_from_slice(&paddr.to_le_bytes());
    v[88..96].copy_from_slice(&paddr.to_le_bytes());
    v[96..104].copy_from_slice(&(payload.len() as u64).to_le_bytes());
    v[104..112].copy_from_slice(&memsz.to_le_bytes());
    v.extend_from_slice(payload);
    v
}

#[test]
fn missing_kernel() {
    let out = ember(&["--kernel", "/nonexistent/vmlinux"], None);
    assert_one_line_error(&out, "Cannot open kernel /nonexistent/vmlinux");
}

#[test]
fn no_kernel_installed() {
    let dir = TempDir::new("empty");
    let out = ember(&[], Some(&dir.0));
    assert_one_line_error(&out, "No kernel given and none installed");
}

#[test]
fn truncated_kernel() {
    let dir = TempDir::new("trunc");
    let mut image = fake_vmlinux(&[0x90; 8192], 8192);
    image.truncate(image.len() - 4096);
    let k = dir.file("vmlinux", &image);
    let out = ember(&["--kernel", k.to_str().unwrap()], None);
    assert_one_line_error(&out, "truncated");
    let k2 = dir.file("tiny", &image[..10]);
    let out = ember(&["--kernel", k2.to_str().unwrap()], None);
    assert_one_line_error(&out, "truncated");
}

#[test]
fn truncated_real_kernel_if_installed() {
    let real = Path::new("/var/lib/ember/guest/bzImage");
    let Ok(bytes) = std::fs::read(real) else {
        eprintln!("skipping: no {}", real.display());
        return;
    };
    let dir = TempDir::new("trunc-real");
    let k = dir.file("bzImage", &bytes[..bytes.len() / 2]);
    let out = ember(&["--kernel", k.to_str().unwrap()], None);
    assert_one_line_error(&out, "truncated");
}

#[test]
fn non_kernel_file() {
    let dir = TempDir::new("text");
    let k = dir.file("notes.txt", &b"this is not a kernel\n".repeat(200));
    let out = ember(&["--kernel", k.to_str().unwrap()], None);
    assert_one_line_error(&out, "Not a Linux kernel image");
}

#[test]
fn too_little_memory() {
    let dir = TempDir::new("mem");
    let k = dir.file("vmlinux", &fake_vmlinux(&[0xf4], 0x1000));
    let out = ember(&["--kernel", k.to_str().unwrap(), "--mem-mib", "16"], None);
    assert_one_line_error(&out, "Guest memory too small: 16 MiB");
    // A kernel that needs more than the VM has.
    let big = dir.file("big", &fake_vmlinux(&[0xf4], 40 << 20));
    let out = ember(
        &["--kernel", big.to_str().unwrap(), "--mem-mib", "32"],
        None,
    );
    assert_one_line_error(&out, "it needs 56 MiB, the VM has 32 MiB");
}

#[test]
fn unreadable_initrd() {
    let dir = TempDir::new("initrd");
    let k = dir.file("vmlinux", &fake_vmlinux(&[0xf4], 0x1000));
    let out = ember(
        &[
            "--kernel",
            k.to_str().unwrap(),
            "--initrd",
            "/nonexistent/initrd.cpio",
        ],
        None,
    );
    assert_one_line_error(&out, "Cannot read initrd /nonexistent/initrd.cpio");
    let out = ember(
        &[
            "--kernel",
            k.to_str().unwrap(),
            "--initrd",
            dir.0.to_str().unwrap(),
        ],
        None,
    );
    assert_one_line_error(&out, "not a regular file");
}

#[test]
fn initrd_too_big_for_memory() {
    let dir = TempDir::new("initrd-big");
    let k = dir.file("vmlinux", &fake_vmlinux(&[0xf4], 0x1000));
    let rd = dir.0.join("big.cpio");
    let f = std::fs::File::create(&rd).unwrap();
    f.set_len(40 << 20).unwrap();
    let out = ember(
        &[
            "--kernel",
            k.to_str().unwrap(),
            "--initrd",
            rd.to_str().unwrap(),
            "--mem-mib",
            "32",
        ],
        None,
    );
    assert_one_line_error(&out, "does not fit in guest memory");
}

#[test]
fn refuses_a_pvm_kvm_unless_forced() {
    if !Path::new("/sys/module/kvm_pvm").exists() {
        eprintln!("skipping: this /dev/kvm is not PVM");
        return;
    }
    let dir = TempDir::new("pvm");
    let k = dir.file("vmlinux", &fake_vmlinux(&[0xf4], 0x1000));
    let out = ember(&["--kernel", k.to_str().unwrap()], None);
    assert_one_line_error(&out, "kvm_pvm");
    assert_one_line_error(&out, "scripts/run-demo.sh");
}

#[test]
fn vm_check_tells_whether_this_kvm_runs_guests() {
    let out = Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(["vm", "check"])
        .output()
        .expect("run ember");
    if Path::new("/sys/module/kvm_pvm").exists() {
        assert_one_line_error(&out, "kvm_pvm");
    } else if !Path::new("/dev/kvm").exists() {
        assert_one_line_error(&out, "/dev/kvm");
    } else {
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("can run guests"));
    }
}

#[test]
fn missing_dev_kvm_is_one_line() {
    if Path::new("/dev/kvm").exists() {
        eprintln!("skipping: /dev/kvm exists here");
        return;
    }
    let dir = TempDir::new("nokvm");
    let k = dir.file("vmlinux", &fake_vmlinux(&[0xf4], 0x1000));
    let out = ember(&["--kernel", k.to_str().unwrap(), "--force"], None);
    assert_one_line_error(&out, "/dev/kvm");
}

/// A "kernel" whose 64-bit entry prints `ok` on COM1, reports init (1) and ready (123) on the
/// boot timer and spins; or, with `reset`, asks the i8042 for a reset. A handful of CPL0
/// instructions: quick even where guest kernel code is emulated (PVM).
fn payload_kernel(reset: bool) -> Vec<u8> {
    let mut code = vec![
        0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xb0, b'o', 0xee, // out 'o'
        0xb0, b'k', 0xee, // out 'k'
        0xb0, b'\n', 0xee, // out '\n'
    ];
    if reset {
        code.extend_from_slice(&[0xb0, 0xfe, 0xe6, 0x64]); // mov al, 0xfe; out 0x64, al
    } else {
        code.extend_from_slice(&[
            0xbb, 0x00, 0x00, 0x00, 0xd0, // mov ebx, 0xd0000000
            0xc6, 0x03, 0x01, // mov byte [rbx], 1
            0xc6, 0x03, 0x7b, // mov byte [rbx], 123
        ]);
    }
    code.extend_from_slice(&[0xeb, 0xfe]); // jmp $
    fake_vmlinux(&code, 0x1000)
}

fn kvm_present() -> bool {
    if Path::new("/dev/kvm").exists() {
        true
    } else {
        eprintln!("skipping: no /dev/kvm");
        false
    }
}

#[test]
fn guest_reset_exits_zero_with_console_and_timings() {
    if !kvm_present() {
        return;
    }
    let dir = TempDir::new("reset");
    let k = dir.file("vmlinux", &payload_kernel(true));
    let out = ember(
        &[
            "--kernel",
            k.to_str().unwrap(),
            "--force",
            "--timings",
            "--mem-mib",
            "64",
        ],
        None,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "stderr: {stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n");
    assert!(stderr.contains("first KVM_RUN"), "{stderr}");
    assert!(stderr.contains("VM exited"), "{stderr}");
}

#[test]
fn exit_on_ready_stops_at_boot_timer_123() {
    if !kvm_present() {
        return;
    }
    let dir = TempDir::new("ready");
    let k = dir.file("vmlinux", &payload_kernel(false));
    let console = dir.0.join("console.log");
    let out = ember(
        &[
            "--kernel",
            k.to_str().unwrap(),
            "--force",
            "--timings",
            "--exit-on-ready",
            "--console-file",
            console.to_str().unwrap(),
        ],
        None,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "stderr: {stderr}");
    assert_eq!(std::fs::read_to_string(&console).unwrap(), "ok\n");
    let ready = stderr
        .lines()
        .find(|l| l.starts_with("agent ready"))
        .unwrap_or_default();
    assert!(ready.contains(" ms"), "agent ready has a time: {stderr}");
    assert!(out.stdout.is_empty());
}

#[test]
fn timeout_stops_a_spinning_guest_and_fails() {
    if !kvm_present() {
        return;
    }
    let dir = TempDir::new("timeout");
    let k = dir.file("vmlinux", &payload_kernel(false));
    let out = ember(
        &[
            "--kernel",
            k.to_str().unwrap(),
            "--force",
            "--timeout-s",
            "1",
            "--console-file",
            "/dev/null",
        ],
        None,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(stderr.contains("vCPU 0 at RIP 0x"), "{stderr}");
    assert!(
        stderr
            .lines()
            .last()
            .unwrap_or_default()
            .starts_with("ember: The VM did not finish within 1 s"),
        "{stderr}"
    );
}
