//! The device controller of cgroup v2: which device nodes a container may create (`m`), read
//! (`r`) and write (`w`). cgroup v2 has no `devices.allow` file; the rules are an eBPF program
//! of type `BPF_PROG_TYPE_CGROUP_DEVICE` attached to the container's cgroup, as runc does it.
//!
//! The OCI rules (`linux.resources.devices`, applied in order, a later one overriding an
//! earlier) are first reduced to a default and its exceptions ([`Filter::from_rules`]): a
//! rule for all devices (`a`, any major and minor, `rwm`) sets the default and clears the
//! exceptions; a rule that goes against the default adds an exception; one that agrees with it
//! takes its access away from exceptions of the same devices. The program then checks the
//! exceptions and falls back to the default ([`Filter::program`]). Without any rule the
//! default is deny, as runc starts from (its own allowed devices come as rules, from the
//! runtime).

use crate::protocol::DeviceRule;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

/// `bpf_cgroup_dev_ctx.access_type`'s low half: the device's type.
const DEV_BLOCK: i32 = 1;
const DEV_CHAR: i32 = 2;
/// Its high half: what is asked.
const ACC_MKNOD: u8 = 1;
const ACC_READ: u8 = 2;
const ACC_WRITE: u8 = 4;
const ACC_ALL: u8 = ACC_MKNOD | ACC_READ | ACC_WRITE;

/// `enum bpf_cmd`, `enum bpf_prog_type`, `enum bpf_attach_type` (linux/bpf.h).
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
/// Programs of the ancestors' cgroups run too.
const BPF_F_ALLOW_MULTI: u32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Device rule {0:?}: its access {1:?} is not made of r, w and m")]
    Access(DeviceRule, String),
    #[error("Device rule {0:?}: type {1:?} is not a, b or c")]
    Kind(DeviceRule, String),
    #[error("Device rule {0:?}: a major or minor number out of range")]
    Number(DeviceRule),
    #[error("{0} device rules: at most {MAX_RULES}")]
    TooMany(usize),
    #[error("The device filter program is malformed: {0}")]
    Program(String),
    #[error("The kernel refused the device filter program: {source}; verifier: {log}")]
    Load {
        log: String,
        #[source]
        source: io::Error,
    },
    #[error("Cannot attach the device filter to cgroup {path}")]
    Attach {
        path: std::path::PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Rules a container may have: the program stays far below the kernel's 4096 instructions
/// for a program (about 7 per rule).
pub const MAX_RULES: usize = 512;

/// Devices one rule or exception covers, and what it grants or refuses of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Match {
    /// [`DEV_BLOCK`] or [`DEV_CHAR`]; `None`: both.
    kind: Option<i32>,
    major: Option<u32>,
    minor: Option<u32>,
    access: u8,
}

/// The rules as a default and its exceptions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filter {
    default_allow: bool,
    exceptions: Vec<Match>,
}

fn parse(rule: &DeviceRule) -> Result<Match, Error> {
    let mut access = 0;
    let text = rule.access.as_deref().unwrap_or("rwm");
    for c in text.chars() {
        access |= match c {
            'r' => ACC_READ,
            'w' => ACC_WRITE,
            'm' => ACC_MKNOD,
            _ => return Err(Error::Access(rule.clone(), text.to_string())),
        };
    }
    let kind = match rule.kind.as_deref().unwrap_or("a") {
        "a" => None,
        "b" => Some(DEV_BLOCK),
        "c" | "u" => Some(DEV_CHAR),
        other => return Err(Error::Kind(rule.clone(), other.to_string())),
    };
    let number = |n: Option<i64>| match n {
        None | Some(-1) => Ok(None),
        Some(n) => u32::try_from(n)
            .map(Some)
            .map_err(|_| Error::Number(rule.clone())),
    };
    Ok(Match {
        kind,
        major: number(rule.major)?,
        minor: number(rule.minor)?,
        access,
    })
}

impl Filter {
    /// The rules reduced, in their order (see the module documentation).
    pub fn from_rules(rules: &[DeviceRule]) -> Result<Filter, Error> {
        if rules.len() > MAX_RULES {
            return Err(Error::TooMany(rules.len()));
        }
        let mut filter = Filter {
            default_allow: false,
            exceptions: Vec::new(),
        };
        for rule in rules {
            let m = parse(rule)?;
            let everything =
                m.kind.is_none() && m.major.is_none() && m.minor.is_none() && m.access == ACC_ALL;
            if everything {
                filter.default_allow = rule.allow;
                filter.exceptions.clear();
            } else if rule.allow != filter.default_allow {
                filter.exceptions.push(m);
            } else {
                // It agrees with the default: exceptions of the same devices lose its access.
                for e in &mut filter.exceptions {
                    if (e.kind, e.major, e.minor) == (m.kind, m.major, m.minor) {
                        e.access &= !m.access;
                    }
                }
                filter.exceptions.retain(|e| e.access != 0);
            }
        }
        Ok(filter)
    }

    /// Whether a request for `access` ([`ACC_READ`] etc.) to device `kind` `major:minor` is
    /// allowed: what [`Filter::program`] computes in the kernel.
    #[cfg(test)]
    fn allows(&self, kind: i32, major: u32, minor: u32, access: u8) -> bool {
        let hit = |e: &Match| {
            e.kind.is_none_or(|k| k == kind)
                && e.major.is_none_or(|m| m == major)
                && e.minor.is_none_or(|m| m == minor)
        };
        if self.default_allow {
            !self
                .exceptions
                .iter()
                .any(|e| hit(e) && access & e.access != 0)
        } else {
            self.exceptions
                .iter()
                .any(|e| hit(e) && access & !e.access == 0)
        }
    }

    /// The eBPF program: r2 = type, r3 = access, r4 = major, r5 = minor; one block per
    /// exception, each ending in its verdict, then the default.
    pub fn program(&self) -> Vec<Insn> {
        let mut p = vec![
            Insn::ldx_w(2, 1, 0),
            Insn::mov_reg(3, 2),
            Insn::and32(2, 0xffff),
            Insn::rsh32(3, 16),
            Insn::ldx_w(4, 1, 4),
            Insn::ldx_w(5, 1, 8),
        ];
        let verdict = i32::from(!self.default_allow);
        for e in &self.exceptions {
            // Jumps to the end of the block (patched once its length is known).
            let mut block: Vec<Insn> = Vec::new();
            let mut jumps = Vec::new();
            if let Some(k) = e.kind {
                jumps.push(block.len());
                block.push(Insn::jne_imm(2, k, 0));
            }
            block.push(Insn::mov_reg(6, 3));
            if self.default_allow {
                // A refusing exception hits when any asked access is one it refuses.
                block.push(Insn::and32(6, i32::from(e.access)));
                jumps.push(block.len());
                block.push(Insn::jeq_imm(6, 0, 0));
            } else {
                // An allowing one when it grants everything asked.
                block.push(Insn::and32(6, i32::from(!e.access & ACC_ALL)));
                jumps.push(block.len());
                block.push(Insn::jne_imm(6, 0, 0));
            }
            for (reg, n) in [(4, e.major), (5, e.minor)] {
                if let Some(n) = n {
                    jumps.push(block.len());
                    // The kernel compares the 64-bit register with the sign-extended
                    // immediate: numbers past i32::MAX are compared as 32-bit values.
                    block.push(Insn::jne_imm32(reg, n as i32, 0));
                }
            }
            block.push(Insn::mov_imm(0, verdict));
            block.push(Insn::exit());
            let len = block.len();
            for j in jumps {
                block[j].off = i16::try_from(len - j - 1).unwrap_or(i16::MAX);
            }
            p.extend(block);
        }
        p.push(Insn::mov_imm(0, i32::from(self.default_allow)));
        p.push(Insn::exit());
        p
    }
}

/// Checks what [`Filter::program`] made before the kernel sees it: every jump lands inside
/// the program, and it ends with `exit`.
pub fn check(program: &[Insn]) -> Result<(), Error> {
    if program.last() != Some(&Insn::exit()) {
        return Err(Error::Program("it does not end with exit".into()));
    }
    for (i, insn) in program.iter().enumerate() {
        if matches!(insn.code, 0x55 | 0x56 | 0x15) {
            let to = i as i64 + 1 + i64::from(insn.off);
            if insn.off < 0 || to >= program.len() as i64 {
                return Err(Error::Program(format!("the jump at {i} leaves it")));
            }
        }
    }
    Ok(())
}

/// One eBPF instruction (`struct bpf_insn`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Insn {
    code: u8,
    /// dst in the low nibble, src in the high one.
    regs: u8,
    off: i16,
    imm: i32,
}

impl Insn {
    fn new(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
        Insn {
            code,
            regs: (src << 4) | (dst & 0xf),
            off,
            imm,
        }
    }
    /// dst = *(u32 *)(src + off)
    fn ldx_w(dst: u8, src: u8, off: i16) -> Insn {
        Insn::new(0x61, dst, src, off, 0)
    }
    /// dst = src (64 bits)
    fn mov_reg(dst: u8, src: u8) -> Insn {
        Insn::new(0xbf, dst, src, 0, 0)
    }
    /// dst = imm (64 bits)
    fn mov_imm(dst: u8, imm: i32) -> Insn {
        Insn::new(0xb7, dst, 0, 0, imm)
    }
    /// dst &= imm (32 bits, zero-extended)
    fn and32(dst: u8, imm: i32) -> Insn {
        Insn::new(0x54, dst, 0, 0, imm)
    }
    /// dst >>= imm (32 bits)
    fn rsh32(dst: u8, imm: i32) -> Insn {
        Insn::new(0x74, dst, 0, 0, imm)
    }
    /// if dst != imm goto +off
    fn jne_imm(dst: u8, imm: i32, off: i16) -> Insn {
        Insn::new(0x55, dst, 0, off, imm)
    }
    /// if (u32)dst != (u32)imm goto +off (BPF_JMP32)
    fn jne_imm32(dst: u8, imm: i32, off: i16) -> Insn {
        Insn::new(0x56, dst, 0, off, imm)
    }
    /// if dst == imm goto +off
    fn jeq_imm(dst: u8, imm: i32, off: i16) -> Insn {
        Insn::new(0x15, dst, 0, off, imm)
    }
    fn exit() -> Insn {
        Insn::new(0x95, 0, 0, 0, 0)
    }
}

/// `union bpf_attr` as `BPF_PROG_LOAD` reads it (up to `expected_attach_type`).
#[repr(C)]
#[derive(Default)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// `union bpf_attr` as `BPF_PROG_ATTACH` reads it.
#[repr(C)]
#[derive(Default)]
struct ProgAttach {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

/// Loads `program` into the kernel; its file descriptor.
fn load(program: &[Insn]) -> Result<OwnedFd, Error> {
    let license = c"GPL";
    let mut log = vec![0u8; 64 * 1024];
    let mut name = [0u8; 16];
    name[..11].copy_from_slice(b"ember_devcg");
    let attr = ProgLoad {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: u32::try_from(program.len()).unwrap_or(u32::MAX),
        insns: program.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 1,
        log_size: u32::try_from(log.len()).unwrap_or(0),
        log_buf: log.as_mut_ptr() as u64,
        prog_name: name,
        expected_attach_type: BPF_CGROUP_DEVICE,
        ..ProgLoad::default()
    };
    // SAFETY: the instructions, license and log buffer `attr` points to are alive for the
    // call; the kernel writes only into `log` (its size given).
    let fd = unsafe { bpf(BPF_PROG_LOAD, &attr) };
    let fd = match fd {
        Ok(fd) => fd,
        Err(source) => {
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            let log = String::from_utf8_lossy(&log[..end]).trim().to_string();
            return Err(Error::Load { log, source });
        }
    };
    // SAFETY: a new descriptor bpf(2) returned, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// bpf(2) with command `cmd` on `attr` (its size given).
///
/// # Safety
/// Every pointer inside `attr` must be valid for what `cmd` does with it during the call.
unsafe fn bpf<T>(cmd: libc::c_long, attr: &T) -> io::Result<libc::c_long> {
    // SAFETY: the kernel reads `size_of::<T>()` bytes of `attr`; the caller vouches for the
    // pointers in it.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *const T,
            std::mem::size_of::<T>(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r)
}

/// Attaches `filter`'s program to the cgroup at `cgroup` (a cgroup v2 directory). The
/// program stays attached as long as the cgroup lives.
pub fn attach(cgroup: &Path, filter: &Filter) -> Result<(), Error> {
    let program = filter.program();
    check(&program)?;
    let prog = load(&program)?;
    let fail = |source| Error::Attach {
        path: cgroup.to_path_buf(),
        source,
    };
    let dir = std::fs::File::open(cgroup).map_err(fail)?;
    let attr = ProgAttach {
        target_fd: dir.as_raw_fd() as u32,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
        ..ProgAttach::default()
    };
    // SAFETY: `attr` holds descriptors, no pointers; both are open.
    unsafe { bpf(BPF_PROG_ATTACH, &attr) }.map_err(fail)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(
        allow: bool,
        kind: &str,
        major: Option<i64>,
        minor: Option<i64>,
        a: &str,
    ) -> DeviceRule {
        DeviceRule {
            allow,
            kind: Some(kind.to_string()),
            major,
            minor,
            access: Some(a.to_string()),
        }
    }

    /// podman's rules: deny everything, then runc's allowed devices.
    fn podman() -> Vec<DeviceRule> {
        vec![
            rule(false, "a", None, None, "rwm"),
            rule(true, "c", None, None, "m"),
            rule(true, "b", None, None, "m"),
            rule(true, "c", Some(1), Some(3), "rwm"),
            rule(true, "c", Some(136), None, "rwm"),
            rule(true, "c", Some(5), Some(2), "rwm"),
        ]
    }

    #[test]
    fn rules_reduce_as_runc_applies_them() {
        let f = Filter::from_rules(&podman()).unwrap();
        assert!(!f.default_allow);
        assert!(f.allows(DEV_CHAR, 1, 3, ACC_READ | ACC_WRITE));
        assert!(f.allows(DEV_CHAR, 136, 7, ACC_READ));
        assert!(f.allows(DEV_BLOCK, 254, 0, ACC_MKNOD));
        assert!(!f.allows(DEV_BLOCK, 254, 0, ACC_READ));
        assert!(!f.allows(DEV_CHAR, 1, 1, ACC_READ));
        // A later deny of the same device takes its write away.
        let mut rules = podman();
        rules.push(rule(false, "c", Some(1), Some(3), "w"));
        let f = Filter::from_rules(&rules).unwrap();
        assert!(f.allows(DEV_CHAR, 1, 3, ACC_READ));
        assert!(!f.allows(DEV_CHAR, 1, 3, ACC_WRITE));
        // Allow everything, then refuse one: the default flips.
        let f = Filter::from_rules(&[
            rule(true, "a", None, None, "rwm"),
            rule(false, "b", Some(8), None, "rw"),
        ])
        .unwrap();
        assert!(f.allows(DEV_CHAR, 1, 1, ACC_READ));
        assert!(f.allows(DEV_BLOCK, 8, 0, ACC_MKNOD));
        assert!(!f.allows(DEV_BLOCK, 8, 1, ACC_READ | ACC_MKNOD));
        // No rules: nothing.
        assert!(!Filter::from_rules(&[])
            .unwrap()
            .allows(DEV_CHAR, 1, 3, ACC_READ));
    }

    #[test]
    fn bad_rules_are_refused() {
        for bad in [
            rule(true, "c", Some(1), Some(3), "rwx"),
            rule(true, "z", Some(1), Some(3), "r"),
            rule(true, "c", Some(1 << 40), Some(3), "r"),
        ] {
            assert!(
                Filter::from_rules(std::slice::from_ref(&bad)).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn the_program_has_one_block_per_exception_and_jumps_within_it() {
        let f = Filter::from_rules(&podman()).unwrap();
        let p = f.program();
        check(&p).unwrap();
        let mut bad = p.clone();
        bad[6].off = 1000;
        assert!(check(&bad).is_err());
        let too_many = vec![rule(true, "c", Some(1), Some(3), "r"); MAX_RULES + 1];
        assert!(matches!(
            Filter::from_rules(&too_many),
            Err(Error::TooMany(_))
        ));
        assert_eq!(p.last(), Some(&Insn::exit()));
        for (i, insn) in p.iter().enumerate() {
            if matches!(insn.code, 0x55 | 0x56 | 0x15) {
                let to = i + 1 + insn.off as usize;
                assert!(to < p.len(), "jump at {i} past the end");
                // Every jump lands on the start of a block or the final default.
                assert!(
                    to == p.len() - 2 || p[to - 1] == Insn::exit(),
                    "jump at {i} to {to}"
                );
            }
        }
    }

    /// Where this host lets a test load programs (root, a kernel with cgroup BPF), the kernel's
    /// verifier accepts the program.
    #[test]
    fn the_kernel_accepts_the_program() {
        let f = Filter::from_rules(&podman()).unwrap();
        match load(&f.program()) {
            Ok(_) => {}
            Err(Error::Load { source, .. })
                if matches!(
                    source.raw_os_error(),
                    Some(libc::EPERM | libc::ENOSYS | libc::EACCES)
                ) =>
            {
                eprintln!("skipping: this host does not load BPF programs here ({source})");
            }
            Err(e) => panic!("{e}"),
        }
    }

    /// Where this host has a cgroup2 mount and lets a test make a cgroup in it, a shell in a
    /// cgroup with podman's rules opens /dev/null but not /dev/zero, and may make a node
    /// it cannot open.
    #[test]
    fn the_kernel_enforces_the_rules() {
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
        let Some(root) = mounts
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|f| f.len() > 2 && f[2] == "cgroup2")
            .map(|f| std::path::PathBuf::from(f[1]))
        else {
            eprintln!("skipping: no cgroup2 mount");
            return;
        };
        let cg = root.join(format!("ember-devcg-test-{}", std::process::id()));
        if let Err(e) = std::fs::create_dir(&cg) {
            eprintln!("skipping: cannot make a cgroup in {}: {e}", root.display());
            return;
        }
        let filter = Filter::from_rules(&podman()).unwrap();
        let attached = attach(&cg, &filter);
        let out = attached.as_ref().ok().map(|()| {
            let node = std::env::temp_dir().join(format!("ember-devcg-{}", std::process::id()));
            let script = format!(
                "echo $$ > {procs}; cat /dev/null && echo null-ok; \
                 head -c 1 /dev/zero >/dev/null 2>&1 && echo zero-ok || echo zero-refused; \
                 mknod {node} b 7 0 && echo mknod-ok; \
                 head -c 1 {node} >/dev/null 2>&1 && echo block-ok || echo block-refused; \
                 rm -f {node}",
                procs = cg.join("cgroup.procs").display(),
                node = node.display()
            );
            // Read to the end, then wait: another test of this binary may reap the child
            // (the agent's reaper reaps any), so the wait's ECHILD is no failure.
            let mut child = std::process::Command::new("sh")
                .args(["-c", &script])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let mut text = String::new();
            std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut text).unwrap();
            let _ = child.wait();
            text
        });
        // The shell may still be a zombie for a moment; the cgroup goes once it is gone.
        for _ in 0..100 {
            if std::fs::remove_dir(&cg).is_ok() || !cg.exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        match attached {
            Err(Error::Load { source, .. } | Error::Attach { source, .. })
                if matches!(source.raw_os_error(), Some(libc::EPERM | libc::EACCES)) =>
            {
                eprintln!("skipping: this host does not attach BPF programs here ({source})");
                return;
            }
            Err(e) => panic!("{e}"),
            Ok(()) => {}
        }
        let text = out.unwrap();
        assert_eq!(
            text.lines().collect::<Vec<_>>(),
            ["null-ok", "zero-refused", "mknod-ok", "block-refused"],
            "{text}"
        );
    }
}
