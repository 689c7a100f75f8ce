//! Template pods (scenario 40-templates.sh): pods start from a snapshot of a booted pod.

use crate::passed;

#[test]
fn a_template_is_made_and_its_pod_removed() {
    let Some(s) = passed("template-create") else {
        return;
    };
    assert!(s.output.contains("base"), "{}", s.output);
    assert!(s.output.contains("no pod left"), "{}", s.output);
}

#[test]
fn pods_restored_from_one_template_are_not_clones() {
    let Some(s) = passed("template-pods") else {
        return;
    };
    for p in ["t1", "t2"] {
        assert!(s.output.contains(&format!("{p}: restored")), "{}", s.output);
    }
    for i in 1..=3 {
        assert!(
            s.output.contains(&format!("field {i} differs")),
            "{}",
            s.output
        );
    }
}

#[test]
fn a_restored_pod_writes_a_disk_slot_the_host_reads() {
    let Some(s) = passed("template-disk") else {
        return;
    };
    assert!(s.output.contains("disk container exit=0"), "{}", s.output);
}

#[test]
fn a_restored_pod_shares_a_host_directory_live() {
    let Some(s) = passed("template-share") else {
        return;
    };
    assert!(s.output.contains("host sees: from-guest"), "{}", s.output);
}

#[test]
fn bad_templates_are_one_error_and_start_nothing() {
    let Some(s) = passed("template-bad") else {
        return;
    };
    assert!(s.output.contains("MiB of memory"), "{}", s.output);
    assert!(
        s.output.contains("Template nothere does not exist"),
        "{}",
        s.output
    );
    assert!(s.output.contains("checksum"), "{}", s.output);
}

#[test]
fn a_running_pod_is_snapshotted_unless_its_shared_filesystem_is_mounted() {
    let Some(s) = passed("template-snapshot") else {
        return;
    };
    assert!(
        s.output.contains("snapshot /tmp/t1snap: state"),
        "{}",
        s.output
    );
    assert!(
        s.output.contains("t1 after its snapshot: after-snapshot"),
        "{}",
        s.output
    );
    assert!(
        s.output.contains("virtio-fs is mounted in the guest"),
        "{}",
        s.output
    );
}

#[test]
fn pods_outlive_their_template() {
    let Some(s) = passed("template-delete") else {
        return;
    };
    assert!(
        s.output
            .contains("after the template's deletion: still-here"),
        "{}",
        s.output
    );
}
