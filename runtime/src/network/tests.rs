//! Tests in fresh network namespaces: each test body runs on its own thread after
//! `unshare(CLONE_NEWNET)`, which moves only that thread; the namespace (and every interface in
//! it) goes away when the thread's sockets close. The setup uses `ip`; the checks use netlink
//! and real frames.

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::time::{Duration, Instant};

use devices::virtio::net::NetBackend;
use netlink_packet_core::Nla;
use netlink_packet_route::link::{
    InfoData, InfoTun, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::RouteNetlinkMessage;

use super::*;
use agent::netlink::Netlink;

const ETH0_MAC: [u8; 6] = [0x02, 0x00, 0x0a, 0x58, 0x00, 0x02];
const PEER_MAC: [u8; 6] = [0x02, 0x00, 0x0a, 0x58, 0x00, 0x99];
/// IEEE "local experimental" ethertype: nothing in the kernel answers or sends it.
const TEST_ETHERTYPE: u16 = 0x88b5;

/// Why namespace tests cannot run here, if they cannot.
fn cannot_run() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not root".into());
    }
    if !Path::new("/dev/net/tun").exists() {
        return Some("no /dev/net/tun".into());
    }
    if Command::new("ip").arg("-V").output().is_err() {
        return Some("no `ip` command for the test setup".into());
    }
    None
}

/// Runs `body` on a new thread in a new network namespace; prints `SKIPPED` where it cannot.
fn in_new_netns(test: &str, body: impl FnOnce() + Send + 'static) {
    if let Some(why) = cannot_run() {
        println!("SKIPPED: {test}: {why}");
        return;
    }
    let thread = std::thread::Builder::new()
        .name(format!("netns-{test}"))
        .spawn(move || {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                .expect("unshare(CLONE_NEWNET)");
            body();
        })
        .unwrap();
    if let Err(panic) = thread.join() {
        std::panic::resume_unwind(panic);
    }
}

/// Runs `ip ARGS` (in the calling thread's namespace: the child inherits it).
fn ip(args: &str) {
    let out = Command::new("ip")
        .args(args.split_whitespace())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ip {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn mac(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The namespace of the engines: veth `eth0` (10.88.0.2/16, fd00:88::2/64, MTU 1400) with
/// its peer `peer0` up, and a few routes.
fn engine_like_netns() {
    ip(&format!(
        "link add name eth0 address {} mtu 1400 type veth peer name peer0 address {} mtu 1400",
        mac(ETH0_MAC),
        mac(PEER_MAC)
    ));
    ip("addr add 10.88.0.2/16 dev eth0");
    ip("addr add fd00:88::2/64 dev eth0 nodad");
    ip("link set lo up");
    ip("link set eth0 up");
    ip("link set peer0 up");
    ip("route add default via 10.88.0.1");
    ip("route add 192.168.100.0/24 via 10.88.0.254 src 10.88.0.2");
    ip("-6 route add default via fd00:88::1 dev eth0");
}

fn net(s: &str) -> IpNet {
    let (a, p) = s.split_once('/').unwrap();
    IpNet {
        addr: a.parse().unwrap(),
        prefix_len: p.parse().unwrap(),
    }
}

fn ipa(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn eth0() -> Interface {
    scan().unwrap().interface("eth0").unwrap().clone()
}

/// The link named `name`, by a dump.
fn link(name: &str) -> Option<LinkMessage> {
    let mut nl = Netlink::open().unwrap();
    nl.dump(RouteNetlinkMessage::GetLink(LinkMessage::default()))
        .unwrap()
        .into_iter()
        .find_map(|m| match m {
            RouteNetlinkMessage::NewLink(l)
                if l.attributes
                    .iter()
                    .any(|a| matches!(a, LinkAttribute::IfName(n) if n == name)) =>
            {
                Some(l)
            }
            _ => None,
        })
}

/// The `IFLA_TUN_*` attributes of a tun/tap link, as (kind, value bytes).
fn tun_info(l: &LinkMessage) -> Vec<(u16, Vec<u8>)> {
    let mut out = Vec::new();
    for a in &l.attributes {
        let LinkAttribute::LinkInfo(infos) = a else {
            continue;
        };
        for i in infos {
            if let LinkInfo::Data(InfoData::Tun(tun)) = i {
                for t in tun {
                    if let InfoTun::Other(nla) = t {
                        let mut v = vec![0; nla.value_len()];
                        nla.emit_value(&mut v);
                        out.push((nla.kind(), v));
                    }
                }
            }
        }
    }
    out
}

#[test]
fn enter_netns_refuses_what_is_not_a_netns() {
    let file = std::env::temp_dir().join(format!("ember-not-a-netns-{}", std::process::id()));
    std::fs::write(&file, b"").unwrap();
    let err = enter_netns(&file).unwrap_err();
    std::fs::remove_file(&file).unwrap();
    assert!(matches!(err, Error::NotNetns { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("{} is not a network namespace", file.display())
    );

    let err = enter_netns(Path::new("/nonexistent/netns")).unwrap_err();
    assert!(matches!(err, Error::OpenNetns { .. }), "{err:?}");
    assert!(err.to_string().contains("/nonexistent/netns"), "{err}");

    // A namespace, but of another kind.
    if nix::unistd::geteuid().is_root() {
        let err = enter_netns(Path::new("/proc/self/ns/uts")).unwrap_err();
        assert!(matches!(err, Error::NotNetns { .. }), "{err:?}");
    }
}

#[test]
fn enter_netns_moves_the_calling_thread_only() {
    if let Some(why) = cannot_run() {
        println!("SKIPPED: enter_netns_moves_the_calling_thread_only: {why}");
        return;
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    // The owner of a fresh namespace, alive until the check is done.
    let owner = std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let path = format!(
            "/proc/{}/task/{}/ns/net",
            std::process::id(),
            nix::unistd::gettid()
        );
        let ino = std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino();
        tx.send((path, ino)).unwrap();
        let _ = done_rx.recv();
    });
    let (path, ino) = rx.recv().unwrap();
    let own = std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino();
    assert_ne!(own, ino);
    let entered = std::thread::spawn(move || {
        enter_netns(Path::new(&path)).unwrap();
        std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino()
    })
    .join()
    .unwrap();
    done_tx.send(()).unwrap();
    owner.join().unwrap();
    assert_eq!(entered, ino, "the thread is in the namespace it entered");
    let after = std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino();
    assert_eq!(after, own, "other threads keep theirs");
}

#[test]
fn scan_reads_interfaces_addresses_and_routes() {
    in_new_netns("scan_reads_interfaces_addresses_and_routes", || {
        engine_like_netns();
        let s = scan().unwrap();
        let mut names: Vec<&str> = s.interfaces.iter().map(|i| i.name.as_str()).collect();
        names.sort();
        assert_eq!(names, ["eth0", "peer0"], "no loopback");

        let eth0 = s.interface("eth0").unwrap();
        assert_eq!(eth0.mac, ETH0_MAC);
        assert_eq!(eth0.mac_string(), "02:00:0a:58:00:02");
        assert_eq!(eth0.mtu, 1400);
        assert_eq!(Some(eth0.index), tap::index_of("eth0"));
        let mut addrs = eth0.addresses.clone();
        addrs.sort_by_key(|a| a.to_string());
        assert_eq!(addrs, [net("10.88.0.2/16"), net("fd00:88::2/64")]);

        let mut routes = s.routes.clone();
        routes.sort_by_key(|r| format!("{r:?}"));
        let want = |destination: Option<&str>, gateway: &str, source: Option<&str>| Route {
            destination: destination.map(net),
            gateway: Some(ipa(gateway)),
            device: "eth0".into(),
            source: source.map(ipa),
        };
        let mut expected = vec![
            want(None, "10.88.0.1", None),
            want(None, "fd00:88::1", None),
            want(Some("192.168.100.0/24"), "10.88.0.254", Some("10.88.0.2")),
        ];
        expected.sort_by_key(|r| format!("{r:?}"));
        assert_eq!(
            routes, expected,
            "no subnet, link-local or multicast routes"
        );

        let guest = eth0.to_guest();
        assert_eq!(guest.mac, "02:00:0a:58:00:02");
        assert_eq!(guest.name, "eth0");
        assert_eq!(guest.mtu, 1400);
        assert!(guest.addresses.contains(&"10.88.0.2/16".to_string()));
        let r = expected[2].to_guest();
        assert_eq!(r.destination.as_deref(), Some("192.168.100.0/24"));
        assert_eq!(r.gateway.as_deref(), Some("10.88.0.254"));
        assert_eq!(r.source.as_deref(), Some("10.88.0.2"));
        assert_eq!(expected[0].to_guest().destination, None);
    });
}

#[test]
fn connect_tap_makes_the_tap_and_both_redirects() {
    in_new_netns("connect_tap_makes_the_tap_and_both_redirects", || {
        engine_like_netns();
        let eth0 = eth0();
        connect_tap(&eth0, "tap0").unwrap();

        let tap = link("tap0").expect("tap0 exists");
        assert!(tap.header.flags.contains(LinkFlags::Up));
        assert!(tap.attributes.contains(&LinkAttribute::Mtu(eth0.mtu)));
        let info = tun_info(&tap);
        // IFLA_TUN_TYPE (3) = IFF_TAP, _PI (4) off, _VNET_HDR (5) on, _PERSIST (6) on, _OWNER (1) root.
        for (kind, value) in [
            (3, vec![libc::IFF_TAP as u8]),
            (4, vec![0]),
            (5, vec![1]),
            (6, vec![1]),
            (1, 0u32.to_ne_bytes().to_vec()),
        ] {
            assert!(
                info.contains(&(kind, value.clone())),
                "IFLA_TUN {kind} = {value:?} in {info:?}"
            );
        }

        let tap_index = tap.header.index;
        let mut nl = Netlink::open().unwrap();
        assert!(tc::has_ingress_qdisc(&mut nl, eth0.index).unwrap());
        assert!(tc::has_ingress_qdisc(&mut nl, tap_index).unwrap());
        assert_eq!(
            tc::ingress_redirects(&mut nl, eth0.index).unwrap(),
            [tap_index]
        );
        assert_eq!(
            tc::ingress_redirects(&mut nl, tap_index).unwrap(),
            [eth0.index]
        );

        // A second connect fails clearly and leaves the first one alone.
        let err = connect_tap(&eth0, "tap0").unwrap_err();
        assert!(
            matches!(err, Error::TapExists(ref n) if n == "tap0"),
            "{err:?}"
        );
        // eth0 has its qdisc already: tap1 fails, and is not left behind.
        let err = connect_tap(&eth0, "tap1").unwrap_err();
        assert!(
            err.to_string()
                .contains("Netlink RTM_NEWQDISC (ingress) on eth0 failed"),
            "{}",
            crate::error::report(&err)
        );
        assert_eq!(tap::index_of("tap1"), None);
        assert!(tc::has_ingress_qdisc(&mut nl, eth0.index).unwrap());
        assert_eq!(
            tc::ingress_redirects(&mut nl, eth0.index).unwrap(),
            [tap_index]
        );
    });
}

/// A raw AF_PACKET socket bound to interface `index`, non-blocking.
fn packet_socket(index: u32) -> OwnedFd {
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let raw = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            i32::from(proto),
        )
    };
    assert!(raw >= 0, "AF_PACKET socket: {}", io::Error::last_os_error());
    // SAFETY: a fresh fd nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: sockaddr_ll is plain data; all-zero is valid.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto;
    sll.sll_ifindex = index as i32;
    // SAFETY: bind reads `sll` of the length given, which outlives the call.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    assert_eq!(rc, 0, "bind AF_PACKET: {}", io::Error::last_os_error());
    fd
}

fn frame(dst: [u8; 6], src: [u8; 6], payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&TEST_ETHERTYPE.to_be_bytes());
    f.extend_from_slice(payload);
    f.resize(f.len().max(60), 0);
    f
}

/// Reads from `fd` for up to 3 s until a frame (after `skip` header bytes) of the test
/// ethertype carrying `payload` arrives; other traffic (IPv6 ND, ...) is ignored.
fn wait_for(fd: libc::c_int, skip: usize, payload: &[u8]) -> Option<Vec<u8>> {
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut buf = vec![0u8; 65536];
    while Instant::now() < deadline {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll reads and writes one pollfd, which outlives the call.
        unsafe { libc::poll(&mut pfd, 1, 100) };
        // SAFETY: read writes at most buf.len() bytes into buf.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            continue;
        }
        let got = &buf[..n as usize];
        if got.len() < skip + 14 {
            continue;
        }
        let f = &got[skip..];
        if f[12..14] == TEST_ETHERTYPE.to_be_bytes() && f[14..].starts_with(payload) {
            return Some(f.to_vec());
        }
    }
    None
}

#[test]
fn frames_flow_between_the_engine_side_and_the_tap() {
    in_new_netns("frames_flow_between_the_engine_side_and_the_tap", || {
        engine_like_netns();
        let eth0 = eth0();
        connect_tap(&eth0, "tap0").unwrap();
        // Attached the way the VMM's virtio-net attaches (by name, its flags and header size).
        let mut tap = devices::virtio::net::Tap::open("tap0").unwrap();
        let peer = packet_socket(tap::index_of("peer0").unwrap());

        // The bridge side sends to the container's MAC: the frame leaves on the TAP.
        let to_guest = frame(ETH0_MAC, PEER_MAC, b"ember: to the guest");
        // SAFETY: send reads the buffer, which outlives the call.
        let n = unsafe {
            libc::send(
                peer.as_raw_fd(),
                to_guest.as_ptr().cast(),
                to_guest.len(),
                0,
            )
        };
        assert_eq!(n, to_guest.len() as isize, "{}", io::Error::last_os_error());
        let hdr = devices::virtio::net::VNET_HDR_LEN;
        let got = wait_for(tap.as_raw_fd(), hdr, b"ember: to the guest")
            .expect("the frame sent to eth0 arrives on the TAP");
        assert_eq!(got, to_guest);

        // The guest sends: the frame leaves on eth0 and reaches the bridge side.
        let from_guest = frame(PEER_MAC, ETH0_MAC, b"ember: from the guest");
        let mut out = vec![0u8; devices::virtio::net::VNET_HDR_LEN]; // No offloads.
        out.extend_from_slice(&from_guest);
        let n = tap.write_frame(&out).unwrap();
        assert_eq!(n, out.len());
        let got = wait_for(peer.as_raw_fd(), 0, b"ember: from the guest")
            .expect("the frame the guest wrote leaves on eth0");
        assert_eq!(got, from_guest);
    });
}

#[test]
fn disconnect_tap_removes_it_all() {
    in_new_netns("disconnect_tap_removes_it_all", || {
        engine_like_netns();
        let eth0 = eth0();
        connect_tap(&eth0, "tap0").unwrap();
        disconnect_tap("eth0", "tap0");
        assert_eq!(tap::index_of("tap0"), None, "the TAP is gone");
        let mut nl = Netlink::open().unwrap();
        assert!(!tc::has_ingress_qdisc(&mut nl, eth0.index).unwrap());
        assert!(tc::ingress_redirects(&mut nl, eth0.index)
            .unwrap()
            .is_empty());
        assert!(link("eth0").is_some(), "eth0 stays");
        // Clean again: connecting works as the first time.
        connect_tap(&eth0, "tap0").unwrap();
        assert_eq!(
            tc::ingress_redirects(&mut nl, eth0.index).unwrap(),
            [tap::index_of("tap0").unwrap()]
        );
        // Undoing what is not there only logs.
        disconnect_tap("eth0", "tap0");
        disconnect_tap("eth0", "tap0");
    });
}

#[test]
fn connect_tap_refuses_bad_input_clearly() {
    in_new_netns("connect_tap_refuses_bad_input_clearly", || {
        engine_like_netns();
        let eth0 = eth0();
        let missing = Interface {
            name: "nope0".into(),
            index: 4242,
            ..eth0.clone()
        };
        let err = connect_tap(&missing, "tap0").unwrap_err();
        assert_eq!(err.to_string(), "No network interface nope0 (index 4242)");
        assert_eq!(tap::index_of("tap0"), None, "nothing left behind");
        // The right index under another name is not the interface either.
        let renamed = Interface {
            name: "eth9".into(),
            ..eth0.clone()
        };
        assert!(matches!(
            connect_tap(&renamed, "tap0"),
            Err(Error::NoInterface { .. })
        ));

        let err = connect_tap(&eth0, "peer0").unwrap_err();
        assert_eq!(err.to_string(), "An interface named peer0 exists already");
        for bad in ["", "a/b", "way-too-long-name", "sp ace"] {
            let err = connect_tap(&eth0, bad).unwrap_err();
            assert!(matches!(err, Error::TapName(_)), "{bad:?}: {err:?}");
        }
        let mut nl = Netlink::open().unwrap();
        assert!(!tc::has_ingress_qdisc(&mut nl, eth0.index).unwrap());
    });
}
