//! Configuring the guest's network ([`Request::ConfigureNetwork`]): the runtime tells the
//! agent what the container's interfaces on the host have (MAC, name, MTU, addresses) and its
//! routes; the VMM gave each virtio-net device that MAC already. The agent finds each link by
//! its MAC, gives it its new MAC if the request has one (a guest restored from a template
//! has the template's NIC; the link is then found by either MAC), renames it (both while
//! down), sets its MTU, adds its addresses, brings it up, and adds the routes once every
//! interface is up — routes without a gateway first, so the gateways of the others are
//! reachable. Addresses and routes already there are no error: a retried request succeeds.
//!
//! Synchronous rtnetlink on the agent's own socket (PID 1 has no async runtime).
//!
//! [`Request::ConfigureNetwork`]: crate::protocol::Request::ConfigureNetwork

use std::io;
use std::net::{IpAddr, Ipv4Addr};

use crate::netlink::Netlink;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::protocol::{ErrorKind, NetInterface, NetRoute};

/// Errors of network configuration.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Invalid MAC address {0:?}")]
    Mac(String),
    #[error("Invalid interface name {0:?}")]
    Name(String),
    #[error("Invalid address {0:?}: expected ADDRESS/PREFIX")]
    Address(String),
    #[error("Invalid route {route}: {why}")]
    Route { route: String, why: &'static str },
    #[error("No guest interface has the MAC {0}")]
    NoLink(String),
    #[error("Cannot name the interface with MAC {mac} {name}: another interface has that name")]
    NameTaken { mac: String, name: String },
    #[error("Route {route}: no interface {device}")]
    NoDevice { route: String, device: String },
    #[error("Cannot open a netlink socket")]
    Socket(#[source] io::Error),
    /// A netlink request failed: `op` names the message, `target` what it was for.
    #[error("Netlink {op} for {target} failed")]
    Netlink {
        op: &'static str,
        target: String,
        #[source]
        source: io::Error,
    },
}

impl Error {
    /// How the failure is reported to the host.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Mac(_)
            | Error::Name(_)
            | Error::Address(_)
            | Error::Route { .. }
            | Error::NoDevice { .. } => ErrorKind::BadRequest,
            Error::NoLink(_) => ErrorKind::NotFound,
            Error::NameTaken { .. } | Error::Socket(_) | Error::Netlink { .. } => ErrorKind::Failed,
        }
    }
}

/// `aa:bb:cc:dd:ee:ff` (either case) as bytes.
pub fn parse_mac(s: &str) -> Result<[u8; 6], Error> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for byte in &mut mac {
        let part = parts.next().ok_or_else(|| Error::Mac(s.to_string()))?;
        if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::Mac(s.to_string()));
        }
        *byte = u8::from_str_radix(part, 16).map_err(|_| Error::Mac(s.to_string()))?;
    }
    if parts.next().is_some() {
        return Err(Error::Mac(s.to_string()));
    }
    Ok(mac)
}

/// `10.88.0.2/16`, `fd00::2/64` as (address, prefix length); the prefix is required.
pub fn parse_net(s: &str) -> Result<(IpAddr, u8), Error> {
    let bad = || Error::Address(s.to_string());
    let (addr, prefix) = s.split_once('/').ok_or_else(bad)?;
    let addr: IpAddr = addr.parse().map_err(|_| bad())?;
    if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let prefix: u8 = prefix.parse().map_err(|_| bad())?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if prefix > max {
        return Err(bad());
    }
    Ok((addr, prefix))
}

use crate::netlink::valid_ifname as valid_name;

/// An interface request, checked.
#[derive(Debug)]
struct Iface<'a> {
    req: &'a NetInterface,
    mac: [u8; 6],
    new_mac: Option<[u8; 6]>,
    addresses: Vec<(IpAddr, u8)>,
}

impl Iface<'_> {
    /// The MAC the link has once configured.
    fn final_mac(&self) -> [u8; 6] {
        self.new_mac.unwrap_or(self.mac)
    }

    /// Whether a link with MAC `m` is this one's (before or after its MAC changes).
    fn owns(&self, m: [u8; 6]) -> bool {
        self.mac == m || self.new_mac == Some(m)
    }
}

/// A MAC a link can take: unicast and not all zeros (what the kernel accepts).
fn parse_link_mac(s: &str) -> Result<[u8; 6], Error> {
    let mac = parse_mac(s)?;
    if mac[0] & 1 != 0 || mac == [0; 6] {
        return Err(Error::Mac(s.to_string()));
    }
    Ok(mac)
}

/// A route request, checked.
#[derive(Debug)]
struct Rt<'a> {
    req: &'a NetRoute,
    family: AddressFamily,
    destination: Option<(IpAddr, u8)>,
    gateway: Option<IpAddr>,
    source: Option<IpAddr>,
}

impl Rt<'_> {
    fn describe(r: &NetRoute) -> String {
        let mut s = r.destination.clone().unwrap_or_else(|| "default".into());
        if let Some(g) = &r.gateway {
            s.push_str(" via ");
            s.push_str(g);
        }
        s.push_str(" dev ");
        s.push_str(&r.device);
        if let Some(src) = &r.source {
            s.push_str(" src ");
            s.push_str(src);
        }
        s
    }
}

fn check_route(r: &NetRoute) -> Result<Rt<'_>, Error> {
    let bad = |why| Error::Route {
        route: Rt::describe(r),
        why,
    };
    let ip = |s: &Option<String>| -> Result<Option<IpAddr>, Error> {
        s.as_deref()
            .map(|s| s.parse().map_err(|_| bad("not an IP address")))
            .transpose()
    };
    let destination = r.destination.as_deref().map(parse_net).transpose()?;
    let gateway = ip(&r.gateway)?;
    let source = ip(&r.source)?;
    let mut families = [
        destination.map(|d| d.0.is_ipv4()),
        gateway.map(|g| g.is_ipv4()),
        source.map(|s| s.is_ipv4()),
    ]
    .into_iter()
    .flatten();
    let Some(v4) = families.next() else {
        return Err(bad("a default route needs a gateway"));
    };
    if families.any(|f| f != v4) {
        return Err(bad("mixes IPv4 and IPv6"));
    }
    if !valid_name(&r.device) {
        return Err(Error::Name(r.device.clone()));
    }
    Ok(Rt {
        req: r,
        family: if v4 {
            AddressFamily::Inet
        } else {
            AddressFamily::Inet6
        },
        destination,
        gateway,
        source,
    })
}

/// A guest link as the dump shows it (and as we change it).
struct Link {
    index: u32,
    name: String,
    mac: Option<[u8; 6]>,
    up: bool,
}

/// Configures the interfaces and then the routes; everything is checked before anything
/// changes. See the module docs.
pub fn configure(interfaces: &[NetInterface], routes: &[NetRoute]) -> Result<(), Error> {
    let mut ifaces = Vec::new();
    for req in interfaces {
        if !valid_name(&req.name) {
            return Err(Error::Name(req.name.clone()));
        }
        let addresses = req
            .addresses
            .iter()
            .map(|a| parse_net(a))
            .collect::<Result<_, _>>()?;
        ifaces.push(Iface {
            req,
            mac: parse_mac(&req.mac)?,
            new_mac: req.new_mac.as_deref().map(parse_link_mac).transpose()?,
            addresses,
        });
    }
    let mut rts = routes
        .iter()
        .map(check_route)
        .collect::<Result<Vec<_>, _>>()?;

    let mut nl = Netlink::open().map_err(Error::Socket)?;
    let mut links = dump_links(&mut nl)?;
    for iface in &ifaces {
        configure_interface(&mut nl, &mut links, iface, &ifaces)?;
    }
    // Directly connected routes first: they make the gateways of the others reachable.
    rts.sort_by_key(|r| r.gateway.is_some());
    for rt in &rts {
        add_route(&mut nl, &links, rt)?;
    }
    Ok(())
}

fn mac_string(m: &[u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

fn netlink_error(op: &'static str, target: &str) -> impl FnOnce(io::Error) -> Error {
    let target = target.to_string();
    move |source| Error::Netlink { op, target, source }
}

fn dump_links(nl: &mut Netlink) -> Result<Vec<Link>, Error> {
    let msgs = nl
        .dump(RouteNetlinkMessage::GetLink(LinkMessage::default()))
        .map_err(netlink_error("RTM_GETLINK dump", "all interfaces"))?;
    Ok(msgs
        .into_iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => Some(l),
            _ => None,
        })
        .map(|l| Link {
            index: l.header.index,
            name: l
                .attributes
                .iter()
                .find_map(|a| match a {
                    LinkAttribute::IfName(n) => Some(n.clone()),
                    _ => None,
                })
                .unwrap_or_default(),
            mac: l.attributes.iter().find_map(|a| match a {
                LinkAttribute::Address(m) => <[u8; 6]>::try_from(m.as_slice()).ok(),
                _ => None,
            }),
            up: l.header.flags.contains(LinkFlags::Up),
        })
        .collect())
}

fn set_link(
    nl: &mut Netlink,
    index: u32,
    target: &str,
    op: &'static str,
    edit: impl FnOnce(&mut LinkMessage),
) -> Result<(), Error> {
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    edit(&mut msg);
    nl.request(RouteNetlinkMessage::SetLink(msg), 0)
        .map(drop)
        .map_err(netlink_error(op, target))
}

fn set_up(nl: &mut Netlink, link: &mut Link, up: bool) -> Result<(), Error> {
    if link.up == up {
        return Ok(());
    }
    let op = if up {
        "RTM_SETLINK (up)"
    } else {
        "RTM_SETLINK (down)"
    };
    set_link(nl, link.index, &link.name, op, |m| {
        m.header.change_mask = LinkFlags::Up;
        if up {
            m.header.flags = LinkFlags::Up;
        }
    })?;
    link.up = up;
    Ok(())
}

fn set_mac(nl: &mut Netlink, link: &mut Link, mac: [u8; 6]) -> Result<(), Error> {
    set_up(nl, link, false)?;
    set_link(nl, link.index, &link.name, "RTM_SETLINK (MAC)", |m| {
        m.attributes.push(LinkAttribute::Address(mac.to_vec()))
    })?;
    link.mac = Some(mac);
    Ok(())
}

fn rename(nl: &mut Netlink, link: &mut Link, name: &str) -> Result<(), Error> {
    set_up(nl, link, false)?;
    set_link(nl, link.index, &link.name, "RTM_SETLINK (rename)", |m| {
        m.attributes.push(LinkAttribute::IfName(name.to_string()))
    })?;
    link.name = name.to_string();
    Ok(())
}

fn configure_interface(
    nl: &mut Netlink,
    links: &mut [Link],
    iface: &Iface,
    all: &[Iface],
) -> Result<(), Error> {
    let name = &iface.req.name;
    // By `mac`, or (a repeated request) by the new MAC it already got.
    let pos = links
        .iter()
        .position(|l| l.mac == Some(iface.mac))
        .or_else(|| {
            let new = iface.new_mac?;
            links.iter().position(|l| l.mac == Some(new))
        })
        .ok_or_else(|| {
            Error::NoLink(match iface.new_mac {
                Some(new) => format!("{} or {}", mac_string(&iface.mac), mac_string(&new)),
                None => mac_string(&iface.mac),
            })
        })?;
    if let Some(new) = iface.new_mac {
        if links[pos].mac != Some(new) {
            set_mac(nl, &mut links[pos], new)?;
        }
    }
    let mac = mac_string(&iface.final_mac());
    if links[pos].name != *name {
        if let Some(other) = links.iter().position(|l| l.name == *name) {
            // Taken by a link that gets another name in this request: move it aside first.
            let moves = links[other]
                .mac
                .is_some_and(|m| all.iter().any(|i| i.owns(m) && i.req.name != *name));
            if !moves {
                return Err(Error::NameTaken {
                    mac,
                    name: name.clone(),
                });
            }
            let aside = format!("embtmp{}", links[other].index);
            rename(nl, &mut links[other], &aside)?;
        }
        rename(nl, &mut links[pos], name)?;
    }
    let link = &mut links[pos];
    set_link(nl, link.index, name, "RTM_SETLINK (MTU)", |m| {
        m.attributes.push(LinkAttribute::Mtu(iface.req.mtu))
    })?;
    for &(addr, prefix) in &iface.addresses {
        add_address(nl, link.index, name, addr, prefix)?;
    }
    set_up(nl, link, true)
}

fn add_address(
    nl: &mut Netlink,
    index: u32,
    name: &str,
    addr: IpAddr,
    prefix: u8,
) -> Result<(), Error> {
    let mut msg = AddressMessage::default();
    msg.header.index = index;
    msg.header.prefix_len = prefix;
    match addr {
        IpAddr::V4(v4) => {
            msg.header.family = AddressFamily::Inet;
            msg.attributes.push(AddressAttribute::Local(addr));
            msg.attributes.push(AddressAttribute::Address(addr));
            if prefix < 31 {
                let host_bits = u32::MAX >> prefix;
                let brd = Ipv4Addr::from(u32::from(v4) | host_bits);
                msg.attributes.push(AddressAttribute::Broadcast(brd));
            }
        }
        IpAddr::V6(_) => {
            msg.header.family = AddressFamily::Inet6;
            msg.attributes.push(AddressAttribute::Address(addr));
            // The engine assigned it (and the host side ran DAD): usable at once.
            msg.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
    }
    match nl.request(
        RouteNetlinkMessage::NewAddress(msg),
        NLM_F_CREATE | NLM_F_EXCL,
    ) {
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        r => r.map(drop).map_err(netlink_error(
            "RTM_NEWADDR",
            &format!("{addr}/{prefix} on {name}"),
        )),
    }
}

fn add_route(nl: &mut Netlink, links: &[Link], rt: &Rt) -> Result<(), Error> {
    let route = Rt::describe(rt.req);
    let oif = links
        .iter()
        .find(|l| l.name == rt.req.device)
        .map(|l| l.index)
        .ok_or_else(|| Error::NoDevice {
            route: route.clone(),
            device: rt.req.device.clone(),
        })?;
    let mut msg = RouteMessage::default();
    msg.header.address_family = rt.family;
    msg.header.table = RouteHeader::RT_TABLE_MAIN;
    msg.header.protocol = RouteProtocol::Boot;
    msg.header.kind = RouteType::Unicast;
    msg.header.scope = if rt.gateway.is_some() {
        RouteScope::Universe
    } else {
        RouteScope::Link
    };
    if let Some((dst, prefix)) = rt.destination {
        msg.header.destination_prefix_length = prefix;
        if prefix > 0 {
            msg.attributes
                .push(RouteAttribute::Destination(RouteAddress::from(dst)));
        }
    }
    if let Some(gw) = rt.gateway {
        msg.attributes
            .push(RouteAttribute::Gateway(RouteAddress::from(gw)));
    }
    if let Some(src) = rt.source {
        msg.attributes
            .push(RouteAttribute::PrefSource(RouteAddress::from(src)));
    }
    msg.attributes.push(RouteAttribute::Oif(oif));
    match nl.request(
        RouteNetlinkMessage::NewRoute(msg),
        NLM_F_CREATE | NLM_F_EXCL,
    ) {
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        r => r.map(drop).map_err(netlink_error("RTM_NEWROUTE", &route)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_route::address::AddressScope;
    use netlink_packet_route::link::{InfoData, InfoKind, InfoVeth, LinkInfo};

    #[test]
    fn macs_parse_and_bad_ones_are_refused() {
        assert_eq!(
            parse_mac("02:00:0A:58:00:ff").unwrap(),
            [0x02, 0x00, 0x0a, 0x58, 0x00, 0xff]
        );
        for bad in [
            "",
            "02:00:0a:58:00",
            "02:00:0a:58:00:02:03",
            "0g:00:0a:58:00:02",
            "2:0:a:58:0:2",
            "02-00-0a-58-00-02",
            "02:00:0a:58:00:+2",
        ] {
            let err = parse_mac(bad).unwrap_err();
            assert_eq!(err.to_string(), format!("Invalid MAC address {bad:?}"));
            assert_eq!(err.kind(), ErrorKind::BadRequest);
        }
    }

    #[test]
    fn addresses_need_a_prefix_in_range() {
        assert_eq!(
            parse_net("10.88.0.2/16").unwrap(),
            ("10.88.0.2".parse().unwrap(), 16)
        );
        assert_eq!(
            parse_net("fd00::2/64").unwrap(),
            ("fd00::2".parse().unwrap(), 64)
        );
        assert_eq!(parse_net("0.0.0.0/0").unwrap().1, 0);
        assert_eq!(parse_net("::/0").unwrap().1, 0);
        for bad in [
            "10.88.0.2",
            "10.88.0.2/",
            "10.88.0.2/33",
            "fd00::2/129",
            "10.0.0.1/+8",
            "10.0.0.1/ 8",
            "x/8",
            "10.0.0/8",
            "/8",
        ] {
            let err = parse_net(bad).unwrap_err();
            assert!(matches!(err, Error::Address(_)), "{bad:?}: {err:?}");
        }
    }

    fn route(dst: Option<&str>, gw: Option<&str>, src: Option<&str>) -> NetRoute {
        NetRoute {
            destination: dst.map(str::to_string),
            gateway: gw.map(str::to_string),
            device: "eth0".into(),
            source: src.map(str::to_string),
        }
    }

    #[test]
    fn routes_are_checked_before_anything_changes() {
        let r = route(None, Some("10.0.0.1"), None);
        assert_eq!(check_route(&r).unwrap().family, AddressFamily::Inet);
        let r = route(None, Some("fe80::1"), None);
        assert_eq!(check_route(&r).unwrap().family, AddressFamily::Inet6);
        let r = route(Some("10.1.0.0/16"), None, Some("10.0.0.2"));
        let ok = check_route(&r).unwrap();
        assert_eq!(ok.destination, Some(("10.1.0.0".parse().unwrap(), 16)));
        assert_eq!(ok.source, Some("10.0.0.2".parse().unwrap()));

        let err = check_route(&route(None, None, None)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Invalid route default dev eth0: a default route needs a gateway"
        );
        let err = check_route(&route(Some("10.1.0.0/16"), Some("fd00::1"), None)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Invalid route 10.1.0.0/16 via fd00::1 dev eth0: mixes IPv4 and IPv6"
        );
        let err = check_route(&route(None, Some("10.0.0.300"), None)).unwrap_err();
        assert!(err.to_string().ends_with("not an IP address"), "{err}");
        assert!(matches!(
            check_route(&route(Some("10.1.0.0"), Some("10.0.0.1"), None)),
            Err(Error::Address(_))
        ));
        let mut r = route(None, Some("10.0.0.1"), None);
        r.device = "a/b".into();
        assert!(matches!(check_route(&r), Err(Error::Name(_))));

        // Nothing is touched when one piece is bad: the error comes before any netlink.
        let iface = NetInterface {
            mac: "02:00:00:00:00:01".into(),
            name: "eth0".into(),
            mtu: 1500,
            addresses: vec!["10.0.0.2".into()],
            new_mac: None,
        };
        assert!(matches!(configure(&[iface], &[]), Err(Error::Address(_))));
        // A new MAC must parse and be one a link can take (unicast, not zero).
        for bad in [
            "02:00:00:00:00",
            "02-00-00-00-00-02",
            "01:00:5e:00:00:01",
            "00:00:00:00:00:00",
        ] {
            let mut i = self::tests::iface("02:00:00:00:00:01", "eth0", 1500, &[]);
            i.new_mac = Some(bad.into());
            let err = configure(&[i], &[]).unwrap_err();
            assert_eq!(err.to_string(), format!("Invalid MAC address {bad:?}"));
            assert_eq!(err.kind(), ErrorKind::BadRequest);
        }
    }

    #[test]
    fn the_request_travels_as_json_with_defaults() {
        use crate::protocol::Request;
        let json = r#"{"ConfigureNetwork":{"interfaces":[{"mac":"02:00:0a:58:00:02","name":"eth0","mtu":1500}]}}"#;
        let req: Request = serde_json::from_str(json).unwrap();
        let Request::ConfigureNetwork { interfaces, routes } = &req else {
            panic!("{req:?}");
        };
        assert!(routes.is_empty());
        assert!(interfaces[0].addresses.is_empty());
        assert_eq!(interfaces[0].new_mac, None);
        let mut with_new_mac = iface("02:00:0a:58:00:02", "eth0", 1400, &["10.88.0.2/16"]);
        with_new_mac.new_mac = Some("02:00:0a:58:00:09".into());
        let full = Request::ConfigureNetwork {
            interfaces: vec![
                iface("02:00:0a:58:00:02", "eth0", 1400, &["10.88.0.2/16"]),
                with_new_mac,
            ],
            routes: vec![route(None, Some("10.88.0.1"), None)],
        };
        let back: Request = serde_json::from_str(&serde_json::to_string(&full).unwrap()).unwrap();
        assert_eq!(back, full);
        let r: NetRoute =
            serde_json::from_str(r#"{"device":"eth0","gateway":"10.0.0.1"}"#).unwrap();
        assert_eq!(r, route(None, Some("10.0.0.1"), None));
    }

    /// Runs `body` on a new thread in a new network namespace; prints `SKIPPED` where it
    /// cannot (not root). Setup and checks use netlink, not `ip`: the reaper's test collects
    /// every child of the test process, so these start none.
    fn in_new_netns(test: &str, body: impl FnOnce() + Send + 'static) {
        if !nix::unistd::geteuid().is_root() {
            println!("SKIPPED: {test}: not root");
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

    /// A veth whose guest end is named `name` with MAC `mac`; the other end is up.
    fn veth(name: &str, mac: &str, peer: &str) {
        let mut nl = Netlink::open().unwrap();
        let mut peer_msg = LinkMessage::default();
        peer_msg
            .attributes
            .push(LinkAttribute::IfName(peer.to_string()));
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        msg.attributes
            .push(LinkAttribute::Address(parse_mac(mac).unwrap().to_vec()));
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer_msg))),
        ]));
        nl.request(RouteNetlinkMessage::NewLink(msg), NLM_F_CREATE | NLM_F_EXCL)
            .unwrap();
        let mut links = dump_links(&mut nl).unwrap();
        let peer = links.iter_mut().find(|l| l.name == peer).unwrap();
        set_up(&mut nl, peer, true).unwrap();
    }

    fn iface(mac: &str, name: &str, mtu: u32, addresses: &[&str]) -> NetInterface {
        NetInterface {
            mac: mac.into(),
            name: name.into(),
            mtu,
            addresses: addresses.iter().map(|a| a.to_string()).collect(),
            new_mac: None,
        }
    }

    /// What a link dump says of `name`: (index, MAC, MTU, up).
    fn link(name: &str) -> Option<(u32, String, u32, bool)> {
        let mut nl = Netlink::open().unwrap();
        let msgs = nl
            .dump(RouteNetlinkMessage::GetLink(LinkMessage::default()))
            .unwrap();
        msgs.into_iter().find_map(|m| {
            let RouteNetlinkMessage::NewLink(l) = m else {
                return None;
            };
            let mut found = (l.header.index, String::new(), 0, false);
            let mut named = false;
            for a in &l.attributes {
                match a {
                    LinkAttribute::IfName(n) => named = n == name,
                    LinkAttribute::Address(m) => {
                        found.1 = mac_string(&<[u8; 6]>::try_from(m.as_slice()).ok()?)
                    }
                    LinkAttribute::Mtu(m) => found.2 = *m,
                    _ => {}
                }
            }
            found.3 = l.header.flags.contains(LinkFlags::Up);
            named.then_some(found)
        })
    }

    /// The global addresses of link `index` as `ADDR/PREFIX`, with the IPv4 broadcast.
    fn addresses(index: u32) -> Vec<(String, Option<Ipv4Addr>)> {
        let mut nl = Netlink::open().unwrap();
        let msgs = nl
            .dump(RouteNetlinkMessage::GetAddress(AddressMessage::default()))
            .unwrap();
        let mut out = Vec::new();
        for m in msgs {
            let RouteNetlinkMessage::NewAddress(a) = m else {
                continue;
            };
            if a.header.index != index || a.header.scope != AddressScope::Universe {
                continue;
            }
            let mut addr = None;
            let mut brd = None;
            for attr in &a.attributes {
                match attr {
                    AddressAttribute::Address(ip) => addr = Some(*ip),
                    AddressAttribute::Broadcast(b) => brd = Some(*b),
                    _ => {}
                }
            }
            out.push((format!("{}/{}", addr.unwrap(), a.header.prefix_len), brd));
        }
        out.sort();
        out
    }

    /// The main table's non-kernel routes: `DEST [via GW] dev INDEX [src SRC] scope SCOPE`.
    fn routes() -> Vec<String> {
        let mut nl = Netlink::open().unwrap();
        let mut out = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut req = RouteMessage::default();
            req.header.address_family = family;
            for m in nl.dump(RouteNetlinkMessage::GetRoute(req)).unwrap() {
                let RouteNetlinkMessage::NewRoute(r) = m else {
                    continue;
                };
                if r.header.table != RouteHeader::RT_TABLE_MAIN
                    || r.header.protocol == RouteProtocol::Kernel
                    || r.header.kind != RouteType::Unicast
                {
                    continue;
                }
                let ip = |a: &RouteAddress| match a {
                    RouteAddress::Inet(v4) => IpAddr::V4(*v4).to_string(),
                    RouteAddress::Inet6(v6) => IpAddr::V6(*v6).to_string(),
                    other => format!("{other:?}"),
                };
                let mut dst = "default".to_string();
                let mut rest = String::new();
                for a in &r.attributes {
                    match a {
                        RouteAttribute::Destination(d) => {
                            dst = format!("{}/{}", ip(d), r.header.destination_prefix_length)
                        }
                        RouteAttribute::Gateway(g) => rest.push_str(&format!(" via {}", ip(g))),
                        _ => {}
                    }
                }
                for a in &r.attributes {
                    if let RouteAttribute::Oif(i) = a {
                        rest.push_str(&format!(" dev {i}"));
                    }
                }
                for a in &r.attributes {
                    if let RouteAttribute::PrefSource(s) = a {
                        rest.push_str(&format!(" src {}", ip(s)));
                    }
                }
                out.push(format!("{dst}{rest} scope {:?}", r.header.scope));
            }
        }
        out.sort();
        out
    }

    #[test]
    fn configure_renames_sets_mtu_addresses_up_and_routes() {
        in_new_netns("configure_renames_sets_mtu_addresses_up_and_routes", || {
            veth("enp0s1", "02:00:00:aa:bb:01", "hostside0");
            let interfaces = [iface(
                "02:00:00:AA:BB:01",
                "eth0",
                1400,
                &["10.99.0.2/24", "fd00:99::2/64"],
            )];
            let routes_req = [
                route(None, Some("10.99.0.1"), None),
                route(
                    Some("192.168.77.0/24"),
                    Some("10.99.0.254"),
                    Some("10.99.0.2"),
                ),
                route(None, Some("fd00:99::1"), None),
                route(Some("10.100.0.0/16"), None, None),
            ];
            configure(&interfaces, &routes_req).unwrap();

            assert!(link("enp0s1").is_none(), "the old name is gone");
            let (index, mac, mtu, up) = link("eth0").expect("renamed to eth0");
            assert_eq!(mac, "02:00:00:aa:bb:01");
            assert_eq!(mtu, 1400);
            assert!(up);
            let want_addrs = vec![
                (
                    "10.99.0.2/24".to_string(),
                    Some(Ipv4Addr::new(10, 99, 0, 255)),
                ),
                ("fd00:99::2/64".to_string(), None),
            ];
            assert_eq!(addresses(index), want_addrs);
            let mut want_routes = vec![
                format!("default via 10.99.0.1 dev {index} scope Universe"),
                format!("192.168.77.0/24 via 10.99.0.254 dev {index} src 10.99.0.2 scope Universe"),
                format!("default via fd00:99::1 dev {index} scope Universe"),
                format!("10.100.0.0/16 dev {index} scope Link"),
            ];
            want_routes.sort();
            assert_eq!(routes(), want_routes);

            // A retried request succeeds and changes nothing.
            configure(&interfaces, &routes_req).unwrap();
            assert_eq!(addresses(index), want_addrs);
            assert_eq!(routes(), want_routes);

            // Unknown MAC, unknown route device: clear errors.
            let err = configure(&[iface("02:00:00:00:00:09", "eth1", 1500, &[])], &[]).unwrap_err();
            assert_eq!(
                err.to_string(),
                "No guest interface has the MAC 02:00:00:00:00:09"
            );
            assert_eq!(err.kind(), ErrorKind::NotFound);
            let mut r = route(None, Some("10.99.0.1"), None);
            r.device = "eth5".into();
            let err = configure(&[], &[r]).unwrap_err();
            assert_eq!(
                err.to_string(),
                "Route default via 10.99.0.1 dev eth5: no interface eth5"
            );
            // A gateway nothing reaches: the kernel's refusal, named.
            let err = configure(&[], &[route(Some("10.7.0.0/16"), Some("172.31.0.1"), None)])
                .unwrap_err();
            assert!(
                err.to_string().starts_with(
                    "Netlink RTM_NEWROUTE for 10.7.0.0/16 via 172.31.0.1 dev eth0 failed"
                ),
                "{}",
                crate::error_chain(&err)
            );
        });
    }

    #[test]
    fn configure_swaps_names_between_requested_links() {
        in_new_netns("configure_swaps_names_between_requested_links", || {
            veth("eth0", "02:00:00:00:00:0b", "peer-b");
            veth("eth1", "02:00:00:00:00:0a", "peer-a");
            let interfaces = [
                iface("02:00:00:00:00:0a", "eth0", 1500, &["10.1.0.2/24"]),
                iface("02:00:00:00:00:0b", "eth1", 1500, &["10.2.0.2/24"]),
            ];
            configure(&interfaces, &[]).unwrap();
            let eth0 = link("eth0").unwrap();
            let eth1 = link("eth1").unwrap();
            assert_eq!(eth0.1, "02:00:00:00:00:0a");
            assert_eq!(eth1.1, "02:00:00:00:00:0b");
            assert!(eth0.3 && eth1.3, "both up");
            assert_eq!(addresses(eth0.0)[0].0, "10.1.0.2/24");
            assert_eq!(addresses(eth1.0)[0].0, "10.2.0.2/24");
        });
    }

    #[test]
    fn configure_does_not_take_the_name_of_an_unrelated_link() {
        in_new_netns(
            "configure_does_not_take_the_name_of_an_unrelated_link",
            || {
                veth("eth0", "02:00:00:00:00:0b", "peer-b");
                veth("enp1", "02:00:00:00:00:0a", "peer-a");
                let err =
                    configure(&[iface("02:00:00:00:00:0a", "eth0", 1500, &[])], &[]).unwrap_err();
                assert_eq!(
                err.to_string(),
                "Cannot name the interface with MAC 02:00:00:00:00:0a eth0: another interface has that name"
            );
                assert_eq!(link("eth0").unwrap().1, "02:00:00:00:00:0b");
                assert_eq!(link("enp1").unwrap().1, "02:00:00:00:00:0a");
            },
        );
    }

    #[test]
    fn configure_gives_a_new_mac_and_finds_the_link_by_it_again() {
        in_new_netns(
            "configure_gives_a_new_mac_and_finds_the_link_by_it_again",
            || {
                // The template's NIC, with the template's MAC.
                veth("enp0s1", "02:00:00:00:0a:01", "hostside0");
                let mut req = iface("02:00:00:00:0a:01", "eth0", 1400, &["10.99.0.2/24"]);
                req.new_mac = Some("02:00:0A:58:00:07".into());
                let routes_req = [route(None, Some("10.99.0.1"), None)];
                configure(std::slice::from_ref(&req), &routes_req).unwrap();
                assert!(link("enp0s1").is_none(), "the old name is gone");
                let (index, mac, mtu, up) = link("eth0").expect("renamed to eth0");
                assert_eq!(mac, "02:00:0a:58:00:07");
                assert_eq!(mtu, 1400);
                assert!(up);
                assert_eq!(addresses(index)[0].0, "10.99.0.2/24");
                assert_eq!(
                    routes(),
                    vec![format!("default via 10.99.0.1 dev {index} scope Universe")]
                );

                // The same request again: the link is found by its new MAC, nothing changes.
                configure(std::slice::from_ref(&req), &routes_req).unwrap();
                assert_eq!(link("eth0"), Some((index, mac.clone(), 1400, true)));
                assert_eq!(addresses(index).len(), 1);

                // Neither MAC: both named.
                let mut gone = iface("02:00:00:00:0a:02", "eth1", 1500, &[]);
                gone.new_mac = Some("02:00:00:00:0a:03".into());
                let err = configure(&[gone], &[]).unwrap_err();
                assert_eq!(
                    err.to_string(),
                    "No guest interface has the MAC 02:00:00:00:0a:02 or 02:00:00:00:0a:03"
                );

                // A name conflict names the link by its new MAC.
                veth("eth2", "02:00:00:00:0b:01", "hostside1");
                veth("enp0s2", "02:00:00:00:0c:01", "hostside2");
                let mut clash = iface("02:00:00:00:0c:01", "eth2", 1500, &[]);
                clash.new_mac = Some("02:00:00:00:0c:02".into());
                let err = configure(&[clash], &[]).unwrap_err();
                assert_eq!(
                    err.to_string(),
                    "Cannot name the interface with MAC 02:00:00:00:0c:02 eth2: another interface has that name"
                );
            },
        );
    }

    #[test]
    fn configure_swaps_names_with_a_link_that_changes_its_mac() {
        in_new_netns(
            "configure_swaps_names_with_a_link_that_changes_its_mac",
            || {
                // eth0 already has the new MAC of the link to be named eth1 (an earlier try
                // got that far): it is that link, so it moves aside for the other.
                veth("eth0", "02:00:00:00:01:0b", "peer-b");
                veth("eth1", "02:00:00:00:00:0a", "peer-a");
                let mut b = iface("02:00:00:00:00:0b", "eth1", 1500, &[]);
                b.new_mac = Some("02:00:00:00:01:0b".into());
                let interfaces = [iface("02:00:00:00:00:0a", "eth0", 1500, &[]), b];
                configure(&interfaces, &[]).unwrap();
                assert_eq!(link("eth0").unwrap().1, "02:00:00:00:00:0a");
                assert_eq!(link("eth1").unwrap().1, "02:00:00:00:01:0b");
                // Again, now that eth1 has its new MAC.
                configure(&interfaces, &[]).unwrap();
                assert_eq!(link("eth0").unwrap().1, "02:00:00:00:00:0a");
                assert_eq!(link("eth1").unwrap().1, "02:00:00:00:01:0b");
            },
        );
    }
}
