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

#[test]
fn guest_with_all_devices_runs_and_exits() {
    let Some(s) = passed("devices-boot") else {
        return;
    };
    assert_has(&s.output, "guest reached /devtest.sh");
    let Some(s) = passed("devices-exit") else {
        return;
    };
    assert_has(&s.output, "ember exit=0");
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
    use super::after;

    #[test]
    fn after_finds_the_rest_of_the_line() {
        let out = "a\ndevtest rng: read 1: abcd \nx read 1: no";
        assert_eq!(after(out, "read 1:"), Some("abcd"));
        assert_eq!(after(out, "read 3:"), None);
    }
}
