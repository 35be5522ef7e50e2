//! One offline dataplane: the programs loaded and configured as the agent
//! configures them (settings, interfaces, local addresses, the rule bank,
//! NAT, the DNS answer cache filled by the real DNS service), nothing
//! attached, frames fed with BPF_PROG_TEST_RUN. `coresvc-devtool prog-cost`
//! measures with it and the progtest suites (`tests/tests/support`) test
//! with it: one setup, so what is measured is what is tested.
//!
//! The fast path looks routes and neighbours up in the kernel's FIB, so the
//! programs run in a network namespace with stand-ins for the example
//! configuration's interfaces ([`FIB`], made by [`fib_commands`]).

use std::{net::Ipv4Addr, sync::Arc};

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf,
    maps::{Array, HashMap as BpfHashMap, MapData},
    programs::{SchedClassifier, TestRun, TestRunOptions, Xdp},
};
use coresvc_maps_schema::{self as schema, IfaceInfo, NatBind, NatKey, Settings};

use coresvc::{
    config::Config,
    dataplane::{self, iface_entry, rules, set_iface},
    dns::{Dns, xdp::XdpCache},
};

/// XDP verdicts (`enum xdp_action`).
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

/// A stand-in for one of the gateway's interfaces: its name, address and
/// prefix, and one neighbour (address, MAC) with a permanent entry.
pub struct StandIn {
    pub name: &'static str,
    pub addr: [u8; 4],
    pub prefix_len: u8,
    pub neighbour: [u8; 4],
    pub neighbour_mac: [u8; 6],
}

/// The example configuration's interfaces (examples/coresvc.toml, the lab's
/// topology): mgmt, dvnt and the uplink, with the lab's hosts as neighbours.
pub const FIB: [StandIn; 3] = [
    StandIn {
        name: "d_mgmt",
        addr: [10, 10, 0, 1],
        prefix_len: 24,
        neighbour: [10, 10, 0, 10],
        neighbour_mac: [0x02, 0, 0, 0x0a, 0, 0x0a],
    },
    StandIn {
        name: "d_dvnt",
        addr: [10, 20, 0, 1],
        prefix_len: 24,
        neighbour: [10, 20, 0, 50],
        neighbour_mac: [0x02, 0, 0, 0x14, 0, 0x32],
    },
    StandIn {
        name: "d_up",
        addr: [192, 0, 2, 2],
        prefix_len: 24,
        neighbour: [192, 0, 2, 1],
        neighbour_mac: [0x02, 0, 0, 0xc0, 0, 0x01],
    },
];

/// `ip` argument lists that make [`FIB`] in the namespace they run in: a
/// veth pair per stand-in (both ends there; this kernel has no dummy
/// interfaces), the addresses, the neighbours, a default route via the
/// uplink's neighbour. Forwarding (`net.ipv4.ip_forward`) is the caller's.
pub fn fib_commands() -> Vec<Vec<String>> {
    let ip = |a: [u8; 4]| Ipv4Addr::from(a).to_string();
    let mac = |m: [u8; 6]| m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
    let mut out: Vec<Vec<String>> = Vec::new();
    let mut cmd = |args: &[&str]| out.push(args.iter().map(|s| s.to_string()).collect());
    for s in &FIB {
        let peer = s.name.replace("d_", "p_");
        cmd(&["link", "add", s.name, "type", "veth", "peer", "name", &peer]);
        cmd(&["addr", "add", &format!("{}/{}", ip(s.addr), s.prefix_len), "dev", s.name]);
        cmd(&["link", "set", s.name, "up"]);
        cmd(&["link", "set", &peer, "up"]);
    }
    for s in &FIB {
        let (n, m) = (ip(s.neighbour), mac(s.neighbour_mac));
        cmd(&["neigh", "add", &n, "lladdr", &m, "dev", s.name, "nud", "permanent"]);
    }
    cmd(&["route", "add", "default", "via", &ip(FIB[2].neighbour)]);
    out
}

/// The flags the agent sets for the example configuration (the DNS cache
/// is the caller's: [`set_flag`]).
pub const FLAGS: u32 =
    schema::SETTINGS_F_DROP_INVALID_IPV4 | schema::SETTINGS_F_FIREWALL | schema::SETTINGS_F_FAST_FORWARD;

/// Loads the programs (maps unpinned) and configures them as the agent
/// would: the settings (schema version, `flags`), each interface's entry
/// (`(ifindex, entry)`; its address is a local address), `cfg`'s rules and
/// source guard ([`install`]).
pub fn configure(cfg: &Config, conntrack_max: u32, flags: u32, ifaces: &[(u32, IfaceInfo)]) -> Result<Ebpf> {
    let mut ebpf = dataplane::load(None, aya_log::Level::Error, conntrack_max)?;
    let mut s: Array<&mut MapData, Settings> = Array::try_from(map_mut(&mut ebpf, &schema::SETTINGS)?)?;
    s.set(0, Settings { schema_version: schema::SCHEMA_VERSION, flags, ..Default::default() }, 0)?;
    for &(ifindex, info) in ifaces {
        set_iface(&mut ebpf, ifindex, info)?;
        let mut local: BpfHashMap<&mut MapData, [u8; 4], u32> =
            BpfHashMap::try_from(map_mut(&mut ebpf, &schema::LOCAL_ADDRS)?)?;
        local.insert(info.ipv4, ifindex, 0)?;
    }
    let local: Vec<Ipv4Addr> = ifaces.iter().map(|(_, i)| Ipv4Addr::from(i.ipv4)).collect();
    install(&mut ebpf, cfg, &local)?;
    Ok(ebpf)
}

/// Installs `cfg`'s rules (a new bank) and its source guard (the segments,
/// the routes behind them, the gateway's addresses `local`), as a reload does.
pub fn install(ebpf: &mut Ebpf, cfg: &Config, local: &[Ipv4Addr]) -> Result<()> {
    rules::install(ebpf, &rules::compile(cfg)?)?;
    dataplane::write_src_guard(ebpf, cfg, local)
}

/// The entry the agent writes for a stand-in of [`FIB`]: `role`, segment
/// index `segment`, counter slot `slot` (a segment's own prefix too).
pub fn stand_in_entry(s: &StandIn, role: u32, segment: u32, slot: u8) -> IfaceInfo {
    let segment_net = role == schema::ROLE_SEGMENT;
    let net = |a: [u8; 4]| {
        let mask = u32::MAX.checked_shl(32 - u32::from(s.prefix_len)).unwrap_or(0);
        (u32::from_be_bytes(a) & mask).to_be_bytes()
    };
    IfaceInfo {
        role,
        segment,
        ipv4: s.addr,
        prefix_len: s.prefix_len,
        stats_slot: slot,
        cidr: if segment_net { net(s.addr) } else { [0; 4] },
        cidr_len: if segment_net { s.prefix_len } else { 0 },
        ..Default::default()
    }
}

pub fn map_mut<'e>(ebpf: &'e mut Ebpf, m: &schema::MapSpec) -> Result<&'e mut aya::maps::Map> {
    ebpf.map_mut(m.name).ok_or_else(|| anyhow!("no map {}", m.name))
}

/// Changes the settings entry with `f`.
pub fn update_settings(ebpf: &mut Ebpf, f: impl FnOnce(&mut Settings)) -> Result<()> {
    let mut s: Array<&mut MapData, Settings> = Array::try_from(map_mut(ebpf, &schema::SETTINGS)?)?;
    let mut v = s.get(&0, 0)?;
    f(&mut v);
    s.set(0, v, 0)?;
    Ok(())
}

/// Sets or clears `SETTINGS_F_*` bits.
pub fn set_flag(ebpf: &mut Ebpf, flag: u32, on: bool) -> Result<()> {
    update_settings(ebpf, |v| if on { v.flags |= flag } else { v.flags &= !flag })
}

/// Masquerade behind `addr` with outside ports `min..=max` for the
/// interfaces `inside`, and port forwards (outside port, protocol, inside
/// address, inside port), as the agent writes them.
pub fn enable_nat(
    ebpf: &mut Ebpf,
    addr: [u8; 4],
    (min, max): (u16, u16),
    inside: &[u32],
    forwards: &[(u16, u8, [u8; 4], u16)],
) -> Result<()> {
    update_settings(ebpf, |v| {
        v.nat_addr = addr;
        v.nat_port_min = min;
        v.nat_port_max = max;
    })?;
    for &i in inside {
        let mut info = iface_entry(ebpf, i)?.with_context(|| format!("no interface entry for {i}"))?;
        info.flags |= schema::IFACE_F_NAT;
        set_iface(ebpf, i, info)?;
    }
    let mut m: BpfHashMap<&mut MapData, NatKey, NatBind> = BpfHashMap::try_from(map_mut(ebpf, &schema::NAT_FWD)?)?;
    for &(port, proto, to, to_port) in forwards {
        let k = NatKey { addr, port, proto, dir: schema::NAT_DIR_IN };
        m.insert(k, NatBind { addr: to, port: to_port, ..Default::default() }, 0)?;
    }
    Ok(())
}

/// The DNS service of `cfg` filling the programs' answer cache (the cache
/// maps are taken out of `ebpf` and handed to it).
pub fn dns_service(ebpf: &mut Ebpf, cfg: &Config) -> Result<Dns> {
    let mut take = |m: &schema::MapSpec| ebpf.take_map(m.name).ok_or_else(|| anyhow!("no map {}", m.name));
    let xdp = XdpCache::from_maps(take(&schema::DNS_CACHE)?, take(&schema::DNS_EPOCHS)?, true)?
        .with_rate_limit_map(take(&schema::DNS_RRL_CFG)?)?;
    let dns = Dns::new(cfg)?;
    dns.attach_xdp(Arc::new(xdp))?;
    Ok(dns)
}

/// The `struct xdp_md` of a frame of `len` bytes arriving on `ifindex`.
pub fn xdp_md(len: usize, ifindex: u32) -> Vec<u8> {
    // data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex.
    [0u32, len as u32, 0, ifindex, 0, 0].iter().flat_map(|v| v.to_ne_bytes()).collect()
}

/// The XDP program `prog`.
pub fn xdp_prog<'e>(ebpf: &'e Ebpf, prog: &str) -> Result<&'e Xdp> {
    Ok(ebpf.program(prog).ok_or_else(|| anyhow!("no program {prog}"))?.try_into()?)
}

/// Runs XDP program `prog` once on `frame` arriving on `ifindex`: the
/// verdict, the frame as it left (room for growth: DNS answers), and the
/// run's duration in ns.
pub fn run_xdp(prog: &Xdp, ifindex: u32, frame: &[u8]) -> Result<(u32, Vec<u8>, u64)> {
    let ctx = xdp_md(frame.len(), ifindex);
    let mut out = vec![0u8; frame.len() + 2048];
    let mut o = TestRunOptions::new();
    o.data_in = Some(frame);
    o.data_out = Some(&mut out);
    o.ctx_in = Some(&ctx);
    let r = prog.test_run(o).context("BPF_PROG_TEST_RUN")?;
    out.truncate(r.data_size_out as usize);
    Ok((r.return_value, out, r.duration.as_nanos() as u64))
}

/// Runs the TC egress program on `frame` as the stack forwards it,
/// received on `ingress_ifindex` (0: sent by the gateway itself): the
/// verdict and the frame as sent.
pub fn run_egress(ebpf: &Ebpf, ingress_ifindex: u32, frame: &[u8]) -> Result<(u32, Vec<u8>)> {
    let prog: &SchedClassifier =
        ebpf.program(schema::programs::EGRESS).ok_or_else(|| anyhow!("no egress program"))?.try_into()?;
    // struct __sk_buff (192 bytes): ingress_ifindex at offset 36.
    let mut ctx = vec![0u8; 192];
    ctx[36..40].copy_from_slice(&ingress_ifindex.to_ne_bytes());
    let mut out = vec![0u8; frame.len() + 256];
    let mut o = TestRunOptions::new();
    o.data_in = Some(frame);
    o.data_out = Some(&mut out);
    o.ctx_in = Some(&ctx);
    let r = prog.test_run(o).context("BPF_PROG_TEST_RUN")?;
    out.truncate(r.data_size_out as usize);
    Ok((r.return_value, out))
}
