//! Virtio devices seen from a real guest (scenario 20-devices.sh): one guest in the virtual KVM
//! host with a read-write and a read-only virtio-blk disk, vsock, rng and (where the host allows
//! a TAP) net. Each test checks a section's rc and the evidence in its output.

use crate::passed;

/// The rest of the first line of `output` that contains `marker`, after the marker.
fn after<'a>(output: &'a str, marker: &str) -> Option<&'a str> {
    output
        .lines()
        .find_map(|l| l.find(marker).map(|i| l[i + marker.len()..].trim()))
}

fn assert_has(output: &str, needle: &str) {
    assert!(output.contains(needle), "missing {needle:?} in:\n{output}");
}

/// `(slot, virtio device id, driver)` from the guest's `devtest bound:` lines.
fn bound(output: &str) -> Vec<(String, u32, String)> {
    output
        .lines()
        .filter_map(|l| {
            let rest = &l[l.find("devtest bound: ")? + "devtest bound: ".len()..];
            let mut words = rest.split_whitespace();
            let slot = words.next()?.to_string();
            let id = words.next()?.strip_prefix("id=")?.parse().ok()?;
            let driver = words.next()?.strip_prefix("driver=")?.to_string();
            Some((slot, id, driver))
        })
        .collect()
}

fn assert_bound(output: &str, want: &[(u32, &str)]) {
    let got = bound(output);
    for (id, driver) in want {
        let n = want.iter().filter(|(i, _)| i == id).count();
        let have = got
            .iter()
            .filter(|(_, i, d)| i == id && d == driver)
            .count();
        assert_eq!(
            have, n,
            "virtio id {id}: want {n} bound to {driver}, guest saw {got:?}\n{output}"
        );
    }
}

#[test]
fn guests_boot_with_their_devices_bound_and_exit() {
    let Some(s) = passed("devices-boot") else {
        return;
    };
    assert_has(&s.output, "guest reached /devtest.sh (parts blk,vsock)");
    assert_has(&s.output, "ember exit=0");
    assert_bound(
        &s.output,
        &[
            (2, "virtio_blk"),
            (2, "virtio_blk"),
            (19, "vmw_vsock_virtio_transport"),
        ],
    );
    let Some(s) = passed("devices-boot-rng-net") else {
        return;
    };
    assert_has(&s.output, "guest reached /devtest.sh (parts rng,badq,net)");
    assert_has(&s.output, "ember exit=0");
    assert_bound(&s.output, &[(4, "virtio_rng")]);
}

/// One guest with all five devices (GSIs 5-9): every device must get its driver.
#[test]
fn five_devices_in_one_guest_all_get_drivers() {
    let Some(s) = passed("devices-all-bound") else {
        return;
    };
    let got = bound(&s.output);
    assert!(got.len() >= 4, "too few devices: {got:?}\n{}", s.output);
    assert!(got.iter().all(|(_, _, d)| d != "none"), "unbound: {got:?}");
}

#[test]
fn blk_write_in_guest_is_read_back_by_the_host() {
    let Some(s) = passed("devices-blk") else {
        return;
    };
    let out = &s.output;
    // The guest mounted the ext4 image made on the build machine and read its file.
    assert_has(
        out,
        "devtest blk: image file: ember-devtest: prepared on the build machine",
    );
    assert_has(out, "devtest blk: rc=0");
    // The host found, in the image file after the VM exited, the token the guest wrote.
    let host = after(out, "host found the guest's data in rw.img:").unwrap_or_else(|| {
        panic!("no host read-back line in:\n{out}");
    });
    assert!(
        host.starts_with("ember-devtest-written-") && host.len() > "ember-devtest-written-".len(),
        "bad token {host:?}"
    );
    let guest = after(out, "devtest blk: reread after remount:")
        .unwrap_or_else(|| panic!("no guest reread line in:\n{out}"));
    assert_eq!(guest, host, "guest and host saw different data");
}

#[test]
fn blk_read_only_disk_refuses_writes() {
    let Some(s) = passed("devices-blk-ro") else {
        return;
    };
    let out = &s.output;
    assert_has(out, "devtest blk-ro: vdb ro=1");
    assert_has(out, "devtest blk-ro: raw write refused");
    assert_has(out, "devtest blk-ro: file creation refused");
    assert_has(
        out,
        "devtest blk-ro: read from ro disk: ember-devtest: prepared on the build machine",
    );
    assert_has(out, "ro.img unchanged (md5 ");
}

#[test]
fn vsock_echo_both_ways_with_data_checked() {
    let Some(s) = passed("devices-vsock") else {
        return;
    };
    let out = &s.output;
    let echo_ok: Vec<&str> = out.lines().filter(|l| l.contains("echo ok: ")).collect();
    // Host -> guest: the host's client through <uds> + CONNECT 5001.
    let h2g = echo_ok
        .iter()
        .find(|l| l.contains("CONNECT 5001"))
        .unwrap_or_else(|| panic!("no host->guest echo in:\n{out}"));
    assert!(
        h2g.contains("262144 bytes sent, 262144 bytes back, data matches"),
        "{h2g}"
    );
    assert_has(out, "io-bench: echoed 262144 bytes (vsock port 5001)");
    // Guest -> host: the guest's client to CID 2 port 5002, the host's listener at <uds>_5002.
    let g2h = echo_ok
        .iter()
        .find(|l| l.contains("vsock cid 2 port 5002"))
        .unwrap_or_else(|| panic!("no guest->host echo in:\n{out}"));
    assert!(
        g2h.contains("262144 bytes sent, 262144 bytes back, data matches"),
        "{g2h}"
    );
    assert_has(out, "io-bench: echoed 262144 bytes (unix ");
    assert_has(out, "v.sock_5002");
}

#[test]
fn hwrng_returns_data_that_differs_between_reads() {
    let Some(s) = passed("devices-rng") else {
        return;
    };
    let out = &s.output;
    assert_has(out, "rng_current=virtio_rng");
    let a = after(out, "devtest rng: read 1:").unwrap_or_else(|| panic!("no read 1 in:\n{out}"));
    let b = after(out, "devtest rng: read 2:").unwrap_or_else(|| panic!("no read 2 in:\n{out}"));
    for r in [a, b] {
        assert_eq!(r.len(), 64, "32 bytes as hex expected: {r:?}");
        assert!(r.bytes().all(|c| c.is_ascii_hexdigit()), "{r:?}");
    }
    assert_ne!(a, b, "two hwrng reads returned the same bytes");
}

/// A guest's own driver posts malformed chains to its rng device (io-bench virtq-bad): each
/// gets an answer of 0 bytes and the device's warning in ember's log; an impossible avail
/// index stops the queue with one warning; a good chain between them is still served, and the
/// kernel's driver works again after the device's reset.
#[test]
fn malformed_descriptors_from_a_guest_are_answered_and_logged() {
    let Some(s) = passed("devices-bad-descriptor") else {
        return;
    };
    let out = &s.output;
    for (case, answer) in [
        ("good", "used len 32"),
        ("outside", "used len 0"),
        ("loop", "used len 0"),
        ("bad-next", "used len 0"),
        ("readable", "used len 0"),
        ("good-again", "used len 32"),
        ("avail-jump", "no answer"),
    ] {
        assert_has(out, &format!("devtest badq: virtq {case}: {answer}"));
    }
    assert_has(out, "devtest badq: rng_current=virtio_rng");
    let c = after(out, "devtest badq: hwrng after the driver was bound again:")
        .unwrap_or_else(|| panic!("no read after the rebind in:\n{out}"));
    assert_eq!(c.len(), 64, "{c:?}");
    let count = |w: &str| -> u32 {
        after(out, &format!("warnings \"{w}\":"))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no count of {w:?} in:\n{out}"))
    };
    assert_eq!(count("Descriptor points outside guest memory"), 1);
    // `loop` and `bad-next` (a chain cut off by the queue's end looks the same).
    assert_eq!(
        count("Descriptor chain loops or is longer than the queue"),
        2
    );
    assert_eq!(count("device-readable descriptor in request"), 1);
    assert_eq!(count("unusable avail ring"), 1);
}

#[test]
fn net_traffic_over_the_tap() {
    let Some(s) = passed("devices-net") else {
        return;
    };
    let out = &s.output;
    if let Some(why) = after(out, "devtest net: skipped:") {
        eprintln!("devices-net SKIPPED in the guest: {why}; host: {out}");
        assert_has(out, "skipped: ");
        return;
    }
    assert_has(out, "3 packets transmitted, 3 packets received");
    assert_has(out, "devtest net: rc=0");
    let rx = after(out, "host devtap0 rx_packets=")
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no host tap counters in:\n{out}"));
    assert!(rx >= 3, "host tap received {rx} packets");
}

#[cfg(test)]
mod tests {
    use super::{after, bound};

    #[test]
    fn bound_parses_guest_lines() {
        let out = "devtest bound: virtio0 id=2 driver=virtio_blk\nnoise\ndevtest bound: virtio3 id=19 driver=none\ndevtest bound: rc=1";
        assert_eq!(
            bound(out),
            vec![
                ("virtio0".to_string(), 2, "virtio_blk".to_string()),
                ("virtio3".to_string(), 19, "none".to_string())
            ]
        );
    }

    #[test]
    fn after_finds_the_rest_of_the_line() {
        let out = "a\ndevtest rng: read 1: abcd \nx read 1: no";
        assert_eq!(after(out, "read 1:"), Some("abcd"));
        assert_eq!(after(out, "read 3:"), None);
    }
}
