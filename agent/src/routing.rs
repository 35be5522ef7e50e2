//! Addresses, routes and forwarding (rtnetlink). Everything coresvc adds is
//! tagged with its own protocol number ([`PROTO`], shown by `ip` as
//! `proto 197`), so coresvc finds and removes exactly what it added and
//! never touches routes or addresses it did not create.

use std::{collections::BTreeSet, net::Ipv4Addr};

use anyhow::{Context as _, Result, bail};
use futures::TryStreamExt as _;
use ipnet::Ipv4Net;
use rtnetlink::{
    Handle, RouteMessageBuilder,
    packet_route::{
        AddressFamily,
        address::{AddressAttribute, AddressMessage, AddressProtocol},
        link::LinkAttribute,
        route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol},
    },
};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::config::{AuthorityMode, Config};

/// The protocol number on every address and route coresvc adds.
pub const PROTO: u8 = 197;

/// An address coresvc wants on an interface.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct WantAddr {
    pub ifname: String,
    pub addr: Ipv4Net,
}

/// A route coresvc wants.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct WantRoute {
    pub prefix: Ipv4Net,
    pub via: Option<Ipv4Addr>,
    pub dev: Option<String>,
}

/// The desired state of a configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub addresses: Vec<WantAddr>,
    pub routes: Vec<WantRoute>,
}

/// The segment address coresvc holds in `mode`: the gateway address in
/// bootstrap mode, the reserved address in production mode (seed §3).
pub fn active_address(seg: &crate::config::Segment, mode: AuthorityMode) -> Ipv4Addr {
    match (mode, seg.reserved) {
        (AuthorityMode::Production, Some(r)) => r,
        _ => seg.gateway,
    }
}

pub fn plan(cfg: &Config, mode: AuthorityMode) -> Plan {
    let mut p = Plan::default();
    for s in &cfg.segments {
        let a = Ipv4Net::new(active_address(s, mode), s.cidr.prefix_len()).expect("validated prefix");
        p.addresses.push(WantAddr { ifname: s.interface.clone(), addr: a });
    }
    if let Some(up) = &cfg.uplink {
        if let Some(a) = up.address {
            p.addresses.push(WantAddr { ifname: up.interface.clone(), addr: a });
        }
        if let Some(gw) = up.gateway {
            p.routes.push(WantRoute { prefix: "0.0.0.0/0".parse().expect("literal"), via: Some(gw), dev: None });
        }
    }
    for r in &cfg.routes {
        p.routes.push(WantRoute { prefix: r.prefix.trunc(), via: r.via, dev: r.dev.clone() });
    }
    p
}

/// What [`apply`] did, for the log and status.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Applied {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Interfaces that do not exist (yet); applied when they appear.
    pub missing: Vec<String>,
}

pub struct Routing {
    handle: Handle,
}

impl Routing {
    /// A netlink connection in the current network namespace.
    pub fn new() -> Result<Self> {
        let (conn, handle, _) = rtnetlink::new_connection().context("opening a netlink socket")?;
        tokio::spawn(conn);
        Ok(Routing { handle })
    }

    pub async fn ifindex(&self, name: &str) -> Result<Option<u32>> {
        let mut links = self.handle.link().get().match_name(name.to_string()).execute();
        match links.try_next().await {
            Ok(Some(l)) => Ok(Some(l.header.index)),
            Ok(None) => Ok(None),
            // ENODEV: no such interface.
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
            Err(e) => Err(e).with_context(|| format!("looking up interface {name}")),
        }
    }

    /// The first IPv4 address (with prefix) of `ifname`, if any.
    pub async fn ipv4_of(&self, ifname: &str) -> Result<Option<Ipv4Net>> {
        let Some(idx) = self.ifindex(ifname).await? else { return Ok(None) };
        Ok(self.addresses(Some(idx)).await?.into_iter().find_map(|(_, a, l, _)| Ipv4Net::new(a, l).ok()))
    }

    /// Brings the system to `plan`: adds missing
    /// addresses and routes (tagged), removes tagged ones the plan no longer
    /// has. Addresses and routes without the tag are never changed.
    pub async fn apply(&self, plan: &Plan) -> Result<Applied> {
        let mut out = Applied::default();
        // Addresses: the ones no longer wanted go first (an authority switch
        // replaces a segment's address with another in the same network;
        // removing a primary address would take the secondaries with it).
        let mut ours_wanted: BTreeSet<(u32, Ipv4Addr, u8)> = BTreeSet::new();
        let mut to_add = Vec::new();
        for w in &plan.addresses {
            let Some(idx) = self.ifindex(&w.ifname).await? else {
                out.missing.push(w.ifname.clone());
                continue;
            };
            promote_secondaries(&w.ifname);
            ours_wanted.insert((idx, w.addr.addr(), w.addr.prefix_len()));
            to_add.push((idx, w));
        }
        for (idx, addr, len, msg) in self.addresses(None).await? {
            if is_ours_addr(&msg) && !ours_wanted.contains(&(idx, addr, len)) {
                self.handle.address().del(msg).execute().await.with_context(|| format!("removing {addr}/{len}"))?;
                out.removed.push(format!("address {addr}/{len} (ifindex {idx})"));
            }
        }
        for (idx, w) in to_add {
            let present = self.addresses(Some(idx)).await?;
            if present.iter().any(|(_, a, l, _)| *a == w.addr.addr() && *l == w.addr.prefix_len()) {
                continue;
            }
            let mut req = self.handle.address().add(idx, w.addr.addr().into(), w.addr.prefix_len());
            req.message_mut().attributes.push(AddressAttribute::Protocol(AddressProtocol::Other(PROTO)));
            req.execute().await.with_context(|| format!("adding {} to {}", w.addr, w.ifname))?;
            let _ = self.handle.link().set(rtnetlink::LinkUnspec::new_with_index(idx).up().build()).execute().await;
            out.added.push(format!("address {} dev {}", w.addr, w.ifname));
        }
        // Routes.
        let present = self.our_routes().await?;
        let mut wanted_msgs = Vec::new();
        for r in &plan.routes {
            let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(r.prefix.addr(), r.prefix.prefix_len())
                .protocol(RouteProtocol::Other(PROTO));
            if let Some(via) = r.via {
                b = b.gateway(via);
            }
            if let Some(dev) = &r.dev {
                let Some(idx) = self.ifindex(dev).await? else {
                    out.missing.push(dev.clone());
                    continue;
                };
                b = b.output_interface(idx);
            }
            wanted_msgs.push((r.clone(), b.build()));
        }
        for (want, msg) in &wanted_msgs {
            let exists = present.iter().any(|m| same_route(m, msg));
            if !exists {
                match self.handle.route().add(msg.clone()).replace().execute().await {
                    Ok(()) => out.added.push(format!("route {} via {:?} dev {:?}", want.prefix, want.via, want.dev)),
                    // The next hop is not reachable yet (its interface is
                    // missing or down): added when it appears.
                    Err(e) => {
                        warn!("route {}: {e}", want.prefix);
                        out.missing.push(format!("route {}", want.prefix));
                    }
                }
            }
        }
        for m in present {
            if !wanted_msgs.iter().any(|(_, w)| same_route(&m, w)) {
                let desc = route_desc(&m);
                self.handle.route().del(m).execute().await.with_context(|| format!("removing route {desc}"))?;
                out.removed.push(format!("route {desc}"));
            }
        }
        for a in &out.added {
            info!("routing: added {a}");
        }
        for r in &out.removed {
            info!("routing: removed {r}");
        }
        Ok(out)
    }

    /// Removes every address and route coresvc added.
    pub async fn remove_all(&self) -> Result<Applied> {
        self.apply_removal().await
    }

    async fn apply_removal(&self) -> Result<Applied> {
        let mut out = Applied::default();
        for m in self.our_routes().await? {
            let d = route_desc(&m);
            self.handle.route().del(m).execute().await?;
            out.removed.push(format!("route {d}"));
        }
        for (idx, addr, len, msg) in self.addresses(None).await? {
            if is_ours_addr(&msg) {
                self.handle.address().del(msg).execute().await?;
                out.removed.push(format!("address {addr}/{len} (ifindex {idx})"));
            }
        }
        Ok(out)
    }

    /// IPv4 addresses: (ifindex, address, prefix length, message).
    async fn addresses(&self, ifindex: Option<u32>) -> Result<Vec<(u32, Ipv4Addr, u8, AddressMessage)>> {
        let mut req = self.handle.address().get();
        if let Some(i) = ifindex {
            req = req.set_link_index_filter(i);
        }
        let msgs: Vec<AddressMessage> = req.execute().try_collect().await.context("listing addresses")?;
        Ok(msgs
            .into_iter()
            .filter(|m| m.header.family == AddressFamily::Inet)
            .filter_map(|m| {
                let a = m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Local(std::net::IpAddr::V4(v4))
                    | AddressAttribute::Address(std::net::IpAddr::V4(v4)) => Some(*v4),
                    _ => None,
                })?;
                Some((m.header.index, a, m.header.prefix_len, m))
            })
            .collect())
    }

    async fn our_routes(&self) -> Result<Vec<RouteMessage>> {
        let msgs: Vec<RouteMessage> = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute()
            .try_collect()
            .await
            .context("listing routes")?;
        Ok(msgs.into_iter().filter(|m| m.header.protocol == RouteProtocol::Other(PROTO)).collect())
    }

    /// Names of the links that exist now.
    pub async fn link_names(&self) -> Result<Vec<(u32, String)>> {
        let links: Vec<_> = self.handle.link().get().execute().try_collect().await.context("listing links")?;
        Ok(links
            .into_iter()
            .filter_map(|l| {
                let name = l.attributes.iter().find_map(|a| match a {
                    LinkAttribute::IfName(n) => Some(n.clone()),
                    _ => None,
                })?;
                Some((l.header.index, name))
            })
            .collect())
    }
}

fn is_ours_addr(m: &AddressMessage) -> bool {
    m.attributes.iter().any(|a| matches!(a, AddressAttribute::Protocol(AddressProtocol::Other(PROTO))))
}

fn route_dst(m: &RouteMessage) -> (Option<Ipv4Addr>, u8) {
    let dst = m.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(v4)) => Some(*v4),
        _ => None,
    });
    (dst, m.header.destination_prefix_length)
}

fn route_gw(m: &RouteMessage) -> Option<Ipv4Addr> {
    m.attributes.iter().find_map(|a| match a {
        RouteAttribute::Gateway(RouteAddress::Inet(v4)) => Some(*v4),
        _ => None,
    })
}

fn route_oif(m: &RouteMessage) -> Option<u32> {
    m.attributes.iter().find_map(|a| match a {
        RouteAttribute::Oif(i) => Some(*i),
        _ => None,
    })
}

fn same_route(a: &RouteMessage, b: &RouteMessage) -> bool {
    let norm = |m: &RouteMessage| {
        let (d, l) = route_dst(m);
        (d.unwrap_or(Ipv4Addr::UNSPECIFIED), l, route_gw(m))
    };
    norm(a) == norm(b) && (route_oif(b).is_none() || route_oif(a) == route_oif(b))
}

fn route_desc(m: &RouteMessage) -> String {
    let (d, l) = route_dst(m);
    format!(
        "{}/{l}{}",
        d.unwrap_or(Ipv4Addr::UNSPECIFIED),
        route_gw(m).map(|g| format!(" via {g}")).unwrap_or_default()
    )
}

/// A configured interface appeared, came up, or went away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    Present(String),
    Gone(String),
}

/// Watches link changes (RTNLGRP_LINK) and reports those of `names`.
pub fn watch_links(names: Vec<String>) -> Result<tokio::sync::mpsc::Receiver<LinkEvent>> {
    use futures::StreamExt as _;
    use rtnetlink::{
        MulticastGroup,
        packet_core::NetlinkPayload,
        packet_route::{RouteNetlinkMessage, link::LinkMessage},
    };
    let (conn, _handle, mut messages) =
        rtnetlink::new_multicast_connection(&[MulticastGroup::Link]).context("subscribing to link changes")?;
    tokio::spawn(conn);
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let name_of = |l: &LinkMessage| {
        l.attributes.iter().find_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n.clone()),
            _ => None,
        })
    };
    tokio::spawn(async move {
        while let Some((msg, _)) = messages.next().await {
            let ev = match msg.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)) => name_of(&l).map(LinkEvent::Present),
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(l)) => name_of(&l).map(LinkEvent::Gone),
                _ => None,
            };
            if let Some(ev) = ev {
                let name = match &ev {
                    LinkEvent::Present(n) | LinkEvent::Gone(n) => n,
                };
                if names.contains(name) && tx.send(ev).await.is_err() {
                    break;
                }
            }
        }
    });
    Ok(rx)
}

/// Removing an interface's primary address keeps its other addresses
/// (someone else's included) instead of deleting them with it.
fn promote_secondaries(ifname: &str) {
    let path = format!("/proc/sys/net/ipv4/conf/{ifname}/promote_secondaries");
    if std::fs::read_to_string(&path).is_ok_and(|v| v.trim() != "1")
        && let Err(e) = std::fs::write(&path, "1")
    {
        warn!("routing: cannot set {path}: {e}");
    }
}

/// IPv4 forwarding of what arrives on interface `ifname` (the kernel
/// forwards by the receiving interface's `forwarding`). coresvc turns it on
/// for an interface only once its programs judge it, and off before they
/// go (never the namespace-wide `ip_forward`, which would open every
/// interface, coresvc's or not).
pub fn set_forwarding(ifname: &str, on: bool) -> Result<()> {
    let path = format!("/proc/sys/net/ipv4/conf/{ifname}/forwarding");
    let want = if on { "1" } else { "0" };
    let now = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    if now.trim() != want {
        std::fs::write(&path, want).with_context(|| format!("setting {path} to {want}"))?;
        info!("routing: IPv4 forwarding {} on {ifname}", if on { "enabled" } else { "disabled" });
    }
    Ok(())
}

/// Refuses an address plan whose addresses another host already answers
/// ARP for (checked by the authority issue); placeholder for the check.
pub fn check_plan(plan: &Plan) -> Result<()> {
    let mut seen = BTreeSet::new();
    for a in &plan.addresses {
        if !seen.insert(a.addr.addr()) {
            bail!("address {} is planned twice", a.addr.addr());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_of_the_example() {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/coresvc.toml");
        let cfg = Config::load(&p).unwrap();
        let plan = plan(&cfg, AuthorityMode::Bootstrap);
        let addrs: Vec<String> = plan.addresses.iter().map(|a| format!("{} {}", a.ifname, a.addr)).collect();
        assert_eq!(addrs, ["mgmt0 10.10.0.1/24", "dvnt0 10.20.0.1/24", "dvntm0 10.30.0.1/24", "up0 192.0.2.2/24"]);
        assert_eq!(plan.routes.len(), 1);
        assert_eq!(plan.routes[0].via, Some("192.0.2.1".parse().unwrap()));
        let prod = super::plan(&cfg, AuthorityMode::Production);
        assert_eq!(prod.addresses[0].addr.to_string(), "10.10.0.2/24", "the reserved address in production mode");
        check_plan(&plan).unwrap();
    }
}
