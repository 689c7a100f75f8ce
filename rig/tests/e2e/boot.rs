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
