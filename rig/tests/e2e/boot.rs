//! Boot checks (scenario 10-boot.sh): ember boots the default guest in the virtual KVM host.

use crate::{passed, section};

#[test]
fn virtual_host_has_real_kvm() {
    let Some(s) = passed("kvm-real") else { return };
    assert!(s.output.contains("/dev/kvm"), "output: {}", s.output);
}

#[test]
fn guest_agent_gets_ready() {
    let Some(s) = passed("boot") else { return };
    assert!(
        s.output.lines().any(|l| l.contains("ember-agent: ready")),
        "no readiness line in:\n{}",
        s.output
    );
    assert!(
        s.output.contains("ember exit=0"),
        "ember did not exit 0:\n{}",
        s.output
    );
}

#[test]
fn no_pvm_refusal_inside_the_virtual_host() {
    let Some(s) = passed("no-pvm-refusal") else {
        return;
    };
    let Some(boot) = section("boot") else { return };
    assert!(
        !boot.output.contains("kvm_pvm"),
        "boot output: {}",
        boot.output
    );
    assert!(s.output.contains("no refusal"), "output: {}", s.output);
}

#[test]
fn a_guest_snapshot_at_agent_ready_is_written() {
    let Some(s) = passed("snapshot") else { return };
    assert!(s.output.contains("snapshot exit=0"), "{}", s.output);
    assert!(
        s.output.contains("ember: snapshot /tmp/snap: state "),
        "{}",
        s.output
    );
    assert!(
        s.output.contains("memory") && s.output.contains("state"),
        "{}",
        s.output
    );
}

#[test]
fn a_snapshot_restores_twice_and_each_agent_answers() {
    let Some(s) = passed("restore") else { return };
    for i in 1..=2 {
        assert!(
            s.output.contains(&format!("restore {i} exit=0")),
            "{}",
            s.output
        );
    }
    // The restore's own phase table: the agent answered after the vCPUs first ran.
    assert!(s.output.contains("agent answered"), "{}", s.output);
}

#[test]
fn a_corrupted_snapshot_is_one_error_and_exit_1() {
    let Some(s) = passed("restore-bad") else {
        return;
    };
    assert!(s.output.contains("corrupt exit=1 lines=1"), "{}", s.output);
    assert!(s.output.contains("checksum"), "{}", s.output);
}

#[test]
fn a_vcpu_thread_making_a_forbidden_syscall_ends_the_vmm_with_a_line_naming_it() {
    let Some(s) = passed("seccomp-forbidden") else {
        return;
    };
    assert!(
        s.output.contains("vcpu filter lines removed: 1"),
        "{}",
        s.output
    );
    assert!(
        s.output.contains(
            "seccomp: thread vcpu0 (vcpu filter) made the forbidden system call ioctl (16) request 0xae80; the process ends"
        ),
        "{}",
        s.output
    );
    assert!(s.output.contains("forbidden exit=159"), "{}", s.output);
}
