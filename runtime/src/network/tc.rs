//! Connecting an interface and a TAP with tc: an ingress qdisc on each and a `u32` match-all
//! filter whose action is `mirred egress redirect` to the other, as
//! `tc filter add dev A parent ffff: protocol all u32 match u8 0 0 action mirred egress
//! redirect dev B` would make it.

use std::io;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::tc::{
    TcAction, TcActionAttribute, TcActionMirrorOption, TcActionOption, TcActionType, TcAttribute,
    TcFilterU32Option, TcHandle, TcMessage, TcMirror, TcMirrorActionType, TcOption, TcU32Key,
    TcU32Selector, TcU32SelectorFlags,
};
use netlink_packet_route::RouteNetlinkMessage;

use super::{tap, Error, Interface};
use agent::netlink::Netlink;

/// The ingress qdisc's handle, `ffff:`, which its filters name as their parent.
const INGRESS_HANDLE: TcHandle = TcHandle {
    major: 0xffff,
    minor: 0,
};
/// The filters' priority (what `tc` picks for the first filter).
const FILTER_PRIORITY: u16 = 49152;
/// `ETH_P_ALL`: the filters see every protocol.
const ETH_P_ALL: u16 = 0x0003;

/// Creates the persistent TAP `tap` (the flags the VMM opens it with, owner root) with
/// `iface`'s MTU, brings it up, and redirects every frame arriving on `iface` to `tap` and
/// every frame arriving on `tap` (sent by the guest) to `iface`. Fails with
/// [`Error::TapExists`] if an interface named `tap` exists; on any failure undoes what it did.
pub fn connect_tap(iface: &Interface, tap: &str) -> Result<(), Error> {
    let mut nl = Netlink::open().map_err(Error::Socket)?;
    check_link(&mut nl, iface)?;
    let tap_index = tap::create_persistent(tap)?;
    let mut iface_qdisc = false;
    let result = (|| {
        set_link(&mut nl, tap_index, tap, Some(iface.mtu), true)?;
        add_ingress_qdisc(&mut nl, tap_index, tap)?;
        add_ingress_qdisc(&mut nl, iface.index, &iface.name)?;
        iface_qdisc = true;
        add_redirect(&mut nl, iface.index, &iface.name, tap_index)?;
        add_redirect(&mut nl, tap_index, tap, iface.index)
    })();
    if result.is_err() {
        // Deleting the TAP takes its qdisc and filters along.
        if iface_qdisc {
            if let Err(e) = del_ingress_qdisc(&mut nl, iface.index, &iface.name) {
                log::warn!("{}", crate::error::report(&e));
            }
        }
        if let Err(e) = del_link(&mut nl, tap_index, tap) {
            log::warn!("{}", crate::error::report(&e));
        }
    }
    result
}

/// Undoes [`connect_tap`]: removes `iface`'s ingress qdisc (and with it the redirect filter)
/// and deletes `tap`. Best effort: each failure is logged and the rest still done.
pub fn disconnect_tap(iface: &str, tap: &str) {
    let mut nl = match Netlink::open() {
        Ok(nl) => nl,
        Err(e) => {
            log::warn!("{}", crate::error::report(&Error::Socket(e)));
            return;
        }
    };
    match tap::index_of(iface) {
        Some(index) => {
            if let Err(e) = del_ingress_qdisc(&mut nl, index, iface) {
                log::warn!("{}", crate::error::report(&e));
            }
        }
        None => log::warn!("Cannot remove the ingress qdisc of {iface}: no such interface"),
    }
    match tap::index_of(tap) {
        Some(index) => {
            if let Err(e) = del_link(&mut nl, index, tap) {
                log::warn!("{}", crate::error::report(&e));
            }
        }
        None => log::warn!("Cannot delete the TAP {tap}: no such interface"),
    }
}

fn netlink_error(op: &'static str, iface: &str) -> impl FnOnce(io::Error) -> Error {
    let iface = iface.to_string();
    move |source| Error::Netlink { op, iface, source }
}

/// Fails unless the namespace has an interface of `iface`'s index and name.
fn check_link(nl: &mut Netlink, iface: &Interface) -> Result<(), Error> {
    let missing = || Error::NoInterface {
        name: iface.name.clone(),
        index: iface.index,
    };
    let mut msg = LinkMessage::default();
    msg.header.index = iface.index;
    let answers = match nl.request(RouteNetlinkMessage::GetLink(msg), 0) {
        Ok(a) => a,
        Err(e) if e.raw_os_error() == Some(libc::ENODEV) => return Err(missing()),
        Err(e) => return Err(netlink_error("RTM_GETLINK", &iface.name)(e)),
    };
    let named = answers.iter().any(|m| match m {
        RouteNetlinkMessage::NewLink(l) => l
            .attributes
            .iter()
            .any(|a| matches!(a, LinkAttribute::IfName(n) if *n == iface.name)),
        _ => false,
    });
    if named {
        Ok(())
    } else {
        Err(missing())
    }
}

/// Sets the MTU of link `index` (when given) and brings it up or down.
pub(super) fn set_link(
    nl: &mut Netlink,
    index: u32,
    name: &str,
    mtu: Option<u32>,
    up: bool,
) -> Result<(), Error> {
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    msg.header.change_mask = LinkFlags::Up;
    if up {
        msg.header.flags = LinkFlags::Up;
    }
    if let Some(mtu) = mtu {
        msg.attributes.push(LinkAttribute::Mtu(mtu));
    }
    nl.request(RouteNetlinkMessage::SetLink(msg), 0)
        .map(drop)
        .map_err(netlink_error("RTM_SETLINK (MTU, up)", name))
}

fn del_link(nl: &mut Netlink, index: u32, name: &str) -> Result<(), Error> {
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    nl.request(RouteNetlinkMessage::DelLink(msg), 0)
        .map(drop)
        .map_err(netlink_error("RTM_DELLINK", name))
}

fn ingress_qdisc(index: u32) -> TcMessage {
    let mut msg = TcMessage::with_index(index as i32);
    msg.header.handle = INGRESS_HANDLE;
    msg.header.parent = TcHandle::INGRESS;
    msg.attributes.push(TcAttribute::Kind("ingress".into()));
    msg
}

fn add_ingress_qdisc(nl: &mut Netlink, index: u32, name: &str) -> Result<(), Error> {
    let mut msg = ingress_qdisc(index);
    msg.attributes.push(TcAttribute::Options(Vec::new()));
    nl.request(
        RouteNetlinkMessage::NewQueueDiscipline(msg),
        NLM_F_CREATE | NLM_F_EXCL,
    )
    .map(drop)
    .map_err(netlink_error("RTM_NEWQDISC (ingress)", name))
}

fn del_ingress_qdisc(nl: &mut Netlink, index: u32, name: &str) -> Result<(), Error> {
    nl.request(
        RouteNetlinkMessage::DelQueueDiscipline(ingress_qdisc(index)),
        0,
    )
    .map(drop)
    .map_err(netlink_error("RTM_DELQDISC (ingress)", name))
}

/// Adds the filter on `from`'s ingress that redirects every frame to `to`'s egress.
fn add_redirect(nl: &mut Netlink, from: u32, from_name: &str, to: u32) -> Result<(), Error> {
    let mut msg = TcMessage::with_index(from as i32);
    msg.header.parent = INGRESS_HANDLE;
    // tcm_info: the priority above, the protocol (network order) below.
    msg.header.info = (u32::from(FILTER_PRIORITY) << 16) | u32::from(ETH_P_ALL.to_be());
    msg.attributes.push(TcAttribute::Kind("u32".into()));

    // One key that matches every frame: mask 0 at offset 0.
    let mut selector = TcU32Selector::default();
    selector.flags = TcU32SelectorFlags::Terminal;
    selector.nkeys = 1;
    selector.keys = vec![TcU32Key::default()];

    let mut mirred = TcMirror::default();
    mirred.generic.action = TcActionType::Stolen;
    mirred.eaction = TcMirrorActionType::EgressRedir;
    mirred.ifindex = to;
    let mut action = TcAction::default();
    action.attributes = vec![
        TcActionAttribute::Kind("mirred".into()),
        TcActionAttribute::Options(vec![TcActionOption::Mirror(TcActionMirrorOption::Parms(
            mirred,
        ))]),
    ];
    msg.attributes.push(TcAttribute::Options(vec![
        TcOption::U32(TcFilterU32Option::Selector(selector)),
        TcOption::U32(TcFilterU32Option::Action(vec![action])),
    ]));
    nl.request(
        RouteNetlinkMessage::NewTrafficFilter(msg),
        NLM_F_CREATE | NLM_F_EXCL,
    )
    .map(drop)
    .map_err(netlink_error(
        "RTM_NEWTFILTER (u32, mirred redirect)",
        from_name,
    ))
}

/// Whether link `index` has an ingress qdisc.
#[cfg(test)]
pub(super) fn has_ingress_qdisc(nl: &mut Netlink, index: u32) -> io::Result<bool> {
    let answers = nl.dump(RouteNetlinkMessage::GetQueueDiscipline(TcMessage::default()))?;
    Ok(answers.iter().any(|m| match m {
        RouteNetlinkMessage::NewQueueDiscipline(q) => {
            q.header.index == index as i32
                && q.header.parent == TcHandle::INGRESS
                && q.attributes
                    .iter()
                    .any(|a| matches!(a, TcAttribute::Kind(k) if k == "ingress"))
        }
        _ => false,
    }))
}

/// The targets (interface indexes) of the `mirred egress redirect` actions of the filters on
/// link `index`'s ingress.
#[cfg(test)]
pub(super) fn ingress_redirects(nl: &mut Netlink, index: u32) -> io::Result<Vec<u32>> {
    let mut req = TcMessage::with_index(index as i32);
    req.header.parent = INGRESS_HANDLE;
    let answers = nl.dump(RouteNetlinkMessage::GetTrafficFilter(req))?;
    let mut targets = Vec::new();
    for m in answers {
        let RouteNetlinkMessage::NewTrafficFilter(f) = m else {
            continue;
        };
        for a in &f.attributes {
            let TcAttribute::Options(opts) = a else {
                continue;
            };
            for o in opts {
                let TcOption::U32(TcFilterU32Option::Action(actions)) = o else {
                    continue;
                };
                for act in actions {
                    for aa in &act.attributes {
                        let TcActionAttribute::Options(aopts) = aa else {
                            continue;
                        };
                        for ao in aopts {
                            if let TcActionOption::Mirror(TcActionMirrorOption::Parms(p)) = ao {
                                if p.eaction == TcMirrorActionType::EgressRedir {
                                    targets.push(p.ifindex);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    Ok(targets)
}
