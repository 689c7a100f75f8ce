//! Reading the interfaces, addresses and routes of the current network namespace.

use std::collections::BTreeMap;
use std::net::IpAddr;

use netlink_packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::{Error, Interface, IpNet, Route, Scan};
use agent::netlink::Netlink;

/// What the current network namespace has: its interfaces (without loopback) with their
/// addresses, and the main table's routes.
pub fn scan() -> Result<Scan, Error> {
    let mut nl = Netlink::open().map_err(Error::Socket)?;
    let fail = |op: &'static str| {
        move |source| Error::Netlink {
            op,
            iface: "all interfaces".into(),
            source,
        }
    };
    let links = nl
        .dump(RouteNetlinkMessage::GetLink(LinkMessage::default()))
        .map_err(fail("RTM_GETLINK dump"))?;
    let addrs = nl
        .dump(RouteNetlinkMessage::GetAddress(AddressMessage::default()))
        .map_err(fail("RTM_GETADDR dump"))?;
    let mut routes = Vec::new();
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        let mut req = RouteMessage::default();
        req.header.address_family = family;
        routes.extend(
            nl.dump(RouteNetlinkMessage::GetRoute(req))
                .map_err(fail("RTM_GETROUTE dump"))?,
        );
    }

    // Every link's name by index (loopback too: routes on it are skipped by name).
    let mut names = BTreeMap::new();
    let mut loopbacks = Vec::new();
    let mut interfaces = Vec::new();
    for msg in links {
        let RouteNetlinkMessage::NewLink(link) = msg else {
            continue;
        };
        let Some(name) = link.attributes.iter().find_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n.clone()),
            _ => None,
        }) else {
            continue;
        };
        names.insert(link.header.index, name.clone());
        if link.header.flags.contains(LinkFlags::Loopback) {
            loopbacks.push(link.header.index);
            continue;
        }
        let mac = link.attributes.iter().find_map(|a| match a {
            LinkAttribute::Address(m) => <[u8; 6]>::try_from(m.as_slice()).ok(),
            _ => None,
        });
        let Some(mac) = mac else {
            log::debug!("Ignoring interface {name}: no Ethernet address");
            continue;
        };
        let mtu = link
            .attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::Mtu(m) => Some(*m),
                _ => None,
            })
            .unwrap_or(1500);
        interfaces.push(Interface {
            name,
            index: link.header.index,
            mac,
            mtu,
            addresses: Vec::new(),
        });
    }

    for msg in addrs {
        let RouteNetlinkMessage::NewAddress(addr) = msg else {
            continue;
        };
        if matches!(addr.header.scope, AddressScope::Link | AddressScope::Host) {
            continue;
        }
        let Some(iface) = interfaces.iter_mut().find(|i| i.index == addr.header.index) else {
            continue;
        };
        // IFA_LOCAL is the interface's own address; IFA_ADDRESS the peer's on point-to-point
        // links, and the same as IFA_LOCAL elsewhere (IPv6 sends only IFA_ADDRESS).
        let local = addr.attributes.iter().find_map(|a| match a {
            AddressAttribute::Local(ip) => Some(*ip),
            _ => None,
        });
        let address = addr.attributes.iter().find_map(|a| match a {
            AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        });
        if let Some(ip) = local.or(address) {
            iface.addresses.push(IpNet {
                addr: ip,
                prefix_len: addr.header.prefix_len,
            });
        }
    }

    let routes = routes
        .into_iter()
        .filter_map(|msg| match msg {
            RouteNetlinkMessage::NewRoute(r) => route_of(&r, &names, &loopbacks),
            _ => None,
        })
        .collect();
    Ok(Scan { interfaces, routes })
}

/// The route `r` in our terms, if it is one the guest needs.
fn route_of(r: &RouteMessage, names: &BTreeMap<u32, String>, loopbacks: &[u32]) -> Option<Route> {
    let table = r
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(r.header.table));
    if table != u32::from(RouteHeader::RT_TABLE_MAIN) || r.header.kind != RouteType::Unicast {
        return None;
    }
    // Subnet routes of addresses and fe80::/64: the guest's kernel adds its own when the agent
    // adds the addresses.
    if r.header.protocol == RouteProtocol::Kernel {
        return None;
    }
    let addr = |a: &RouteAddress| match a {
        RouteAddress::Inet(ip) => Some(IpAddr::V4(*ip)),
        RouteAddress::Inet6(ip) => Some(IpAddr::V6(*ip)),
        _ => None,
    };
    let mut destination = None;
    let mut gateway = None;
    let mut source = None;
    let mut oif = None;
    let mut multipath = false;
    for a in &r.attributes {
        match a {
            RouteAttribute::Destination(d) => destination = addr(d),
            RouteAttribute::Gateway(g) => gateway = addr(g),
            RouteAttribute::PrefSource(s) => source = addr(s),
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::MultiPath(_) => multipath = true,
            _ => {}
        }
    }
    let destination = match destination {
        Some(ip) if ip.is_multicast() => return None,
        Some(ip) => Some(IpNet {
            addr: ip,
            prefix_len: r.header.destination_prefix_length,
        }),
        None if r.header.destination_prefix_length == 0 => None,
        None => return None,
    };
    let Some(oif) = oif else {
        if multipath {
            log::warn!(
                "Ignoring the multipath route to {}: not supported",
                destination.map_or("default".to_string(), |d| d.to_string())
            );
        }
        return None;
    };
    if loopbacks.contains(&oif) {
        return None;
    }
    Some(Route {
        destination,
        gateway,
        device: names.get(&oif)?.clone(),
        source,
    })
}
