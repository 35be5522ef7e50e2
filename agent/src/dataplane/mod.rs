//! The eBPF dataplane: loads the programs, creates or adopts the pinned maps,
//! attaches XDP (ingress) and TC (egress) to every configured interface
//! through pinned links (traffic keeps flowing while the agent restarts),
//! writes configuration into maps (settings, interfaces, local addresses,
//! firewall rules) and reads counters and connections back.

mod attach;
pub mod flows;
pub mod pins;
pub mod rules;
mod sys;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, PerCpuValues},
    programs::{SchedClassifier, Xdp},
};
use coresvc_maps_schema::{
    self as schema, ATTACH_GENERIC, ATTACH_NATIVE, DnsStats, IfaceInfo, PacketCount, ROLE_SEGMENT, ROLE_UPLINK,
    RULES_PER_BANK, Settings,
};
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use crate::config::Config;

/// The eBPF object built by `build.rs`.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/coresvc-ebpf"));

/// Loads the object. With `pin_dir`, every map of the schema is created
/// pinned there, or the pinned one is reused (check compatibility first with
/// [`pins::check_existing`]). `log_level` is aya-log's in-kernel filter;
/// `conntrack_max` sizes the connection table.
pub fn load(pin_dir: Option<&Path>, log_level: aya_log::Level, conntrack_max: u32) -> Result<Ebpf> {
    raise_memlock();
    let mut loader = EbpfLoader::new();
    // A developer's switch: the verifier's full trace in load errors.
    if std::env::var_os("CORESVC_VERIFIER_LOG").is_some() {
        loader.verifier_log_level(aya::VerifierLogLevel::VERBOSE | aya::VerifierLogLevel::STATS);
    }
    let level = log_level as u8;
    loader.override_global(aya_log::LEVEL, &level, false);
    loader.map_max_entries(schema::CONNTRACK.name, conntrack_max);
    let paths: Vec<(&str, PathBuf)> = match pin_dir {
        Some(dir) => schema::ALL_MAPS.iter().map(|m| (m.name, pins::map_pin(dir, m))).collect(),
        None => Vec::new(),
    };
    for (name, path) in &paths {
        loader.map_pin_path(name, path.as_path());
    }
    let mut ebpf = loader.load(EBPF_OBJECT).context("loading the eBPF object")?;
    for name in [schema::programs::SEGMENT_INGRESS, schema::programs::UPLINK_INGRESS] {
        let prog: &mut Xdp =
            ebpf.program_mut(name).ok_or_else(|| anyhow!("program {name} missing from the eBPF object"))?.try_into()?;
        retry_eagain(|| prog.load()).with_context(|| format!("loading program {name} (verifier)"))?;
    }
    let egress: &mut SchedClassifier = ebpf
        .program_mut(schema::programs::EGRESS)
        .ok_or_else(|| anyhow!("program egress missing from the eBPF object"))?
        .try_into()?;
    retry_eagain(|| egress.load()).context("loading program egress (verifier)")?;
    Ok(ebpf)
}

/// The verifier gives up with EAGAIN when the loading thread has a signal
/// pending (on a busy machine); trying again is all it takes.
fn retry_eagain(
    mut load: impl FnMut() -> Result<(), aya::programs::ProgramError>,
) -> Result<(), aya::programs::ProgramError> {
    let mut tries = 0;
    loop {
        match load() {
            Err(aya::programs::ProgramError::LoadError { io_error, .. })
                if io_error.raw_os_error() == Some(libc::EAGAIN) && tries < 5 =>
            {
                tries += 1;
                warn!("the verifier was interrupted (EAGAIN); loading again ({tries})");
            }
            other => return other,
        }
    }
}

fn raise_memlock() {
    // Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK.
    let rlim = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: setrlimit with a valid struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) } != 0 {
        debug!("could not raise RLIMIT_MEMLOCK (fine on kernels >= 5.11)");
    }
}

/// The role an interface plays, as configured.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct IfaceSpec {
    pub name: String,
    pub role: Role,
    /// Segment name (for segments).
    pub segment: Option<String>,
    /// Index of the segment in the configuration.
    pub segment_index: u32,
    /// The interface's own IPv4 address and prefix, if any.
    pub address: Option<ipnet::Ipv4Net>,
    /// Masquerade this segment's connections to the uplink.
    pub nat: bool,
    /// A segment's network: the sources its frames may have (BCP 38).
    pub cidr: Option<ipnet::Ipv4Net>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Segment,
    Uplink,
}

impl Role {
    fn program(self) -> &'static str {
        match self {
            Role::Segment => schema::programs::SEGMENT_INGRESS,
            Role::Uplink => schema::programs::UPLINK_INGRESS,
        }
    }
    fn code(self) -> u32 {
        match self {
            Role::Segment => ROLE_SEGMENT,
            Role::Uplink => ROLE_UPLINK,
        }
    }
}

/// The interfaces of a configuration, segments first; `plan` gives their
/// addresses, `uplink_found` the uplink's when the host configures it.
pub fn interfaces(cfg: &Config, plan: &crate::routing::Plan, uplink_found: Option<ipnet::Ipv4Net>) -> Vec<IfaceSpec> {
    let addr_of = |ifname: &str| plan.addresses.iter().find(|a| a.ifname == ifname).map(|a| a.addr);
    let mut v: Vec<IfaceSpec> = cfg
        .segments
        .iter()
        .enumerate()
        .map(|(i, s)| IfaceSpec {
            name: s.interface.clone(),
            role: Role::Segment,
            segment: Some(s.name.clone()),
            segment_index: i as u32,
            address: addr_of(&s.interface),
            nat: s.nat && cfg.uplink.is_some(),
            cidr: Some(s.cidr.trunc()),
        })
        .collect();
    if let Some(up) = &cfg.uplink {
        v.push(IfaceSpec {
            name: up.interface.clone(),
            role: Role::Uplink,
            segment: None,
            segment_index: 0,
            address: addr_of(&up.interface).or(uplink_found),
            nat: false,
            cidr: None,
        });
    }
    v
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    Native,
    Generic,
}

impl AttachMode {
    fn code(self) -> u8 {
        match self {
            AttachMode::Native => ATTACH_NATIVE,
            AttachMode::Generic => ATTACH_GENERIC,
        }
    }
    fn from_code(c: u8) -> Option<Self> {
        match c {
            ATTACH_NATIVE => Some(AttachMode::Native),
            ATTACH_GENERIC => Some(AttachMode::Generic),
            _ => None,
        }
    }
}

/// One attached interface.
#[derive(Debug)]
struct Attached {
    spec: IfaceSpec,
    ifindex: u32,
    mode: AttachMode,
    adopted: bool,
    /// Its counters in IF_STATS (`IfaceInfo::stats_slot`).
    slot: u8,
}

/// The running dataplane: the loaded object and what it is attached to.
pub struct Dataplane {
    ebpf: Ebpf,
    pin_dir: PathBuf,
    xdp_mode: crate::config::XdpMode,
    specs: Vec<IfaceSpec>,
    attached: BTreeMap<String, Attached>,
    /// The compiled rules of the active bank, for `coresvc rules`.
    rules: Vec<rules::Compiled>,
    /// Kept alive for the programs' log map; polled by the agent.
    pub logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    pub adopted_maps: bool,
    /// The DNS service runs and fills the XDP answer cache: the programs
    /// may answer from it (with `dataplane.dns_cache`).
    dns_serving: bool,
}

impl Dataplane {
    /// Loads, adopts or creates the pinned maps, writes settings, interfaces,
    /// local addresses and rules, and attaches the programs to every
    /// interface that exists (the others when they appear, see
    /// [`Dataplane::attach_iface`]). Nothing is attached if a step before
    /// attaching fails.
    pub fn start(
        cfg: &Config,
        pin_dir: &Path,
        log_level: aya_log::Level,
        plan: &crate::routing::Plan,
        uplink_found: Option<ipnet::Ipv4Net>,
    ) -> Result<Self> {
        pins::prepare_dir(pin_dir)?;
        let existing = pins::check_existing(pin_dir, cfg.dataplane.conntrack_max)?;
        let compiled = rules::compile(cfg)?;
        let mut ebpf = load(Some(pin_dir), log_level, cfg.dataplane.conntrack_max)?;
        let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(l) => Some(l),
            Err(e) => {
                warn!("eBPF logging unavailable: {e}");
                None
            }
        };
        let mut dp = Dataplane {
            ebpf,
            pin_dir: pin_dir.to_path_buf(),
            xdp_mode: cfg.dataplane.xdp_mode,
            specs: interfaces(cfg, plan, uplink_found),
            attached: BTreeMap::new(),
            rules: Vec::new(),
            logger,
            adopted_maps: existing == pins::Existing::Compatible,
            dns_serving: false,
        };
        dp.write_settings(cfg)?;
        dp.write_src_guard(cfg, plan)?;
        dp.set_local_addrs(
            plan.addresses.iter().map(|a| a.addr.addr()).chain(uplink_found.map(|a| a.addr())).collect(),
        )?;
        dp.apply_rules(compiled)?;
        // Interface entries of a previous run are overwritten in place as
        // each interface is adopted (never emptied first: an adopted program
        // keeps judging with the old entry until the new one is written),
        // then the ones no interface has any more are removed.
        let previous = iface_entries(&dp.ebpf)?;
        for spec in dp.specs.clone() {
            match ifindex(&spec.name) {
                Some(idx) => dp.attach(spec, idx, &previous)?,
                None => warn!(interface = %spec.name, "interface does not exist (yet); attached when it appears"),
            }
        }
        for idx in previous.keys() {
            if !dp.attached.values().any(|a| a.ifindex == *idx) {
                remove_iface(&mut dp.ebpf, *idx)?;
            }
        }
        info!(
            pin_dir = %pin_dir.display(),
            adopted = dp.adopted_maps,
            "dataplane ready on {} of {} interface(s)",
            dp.attached.len(),
            dp.specs.len()
        );
        Ok(dp)
    }

    /// The masquerade address: the uplink's (configured, or found on the
    /// interface), when any segment masquerades.
    fn nat_addr(&self, cfg: &Config) -> Option<Ipv4Addr> {
        if !cfg.segments.iter().any(|s| s.nat) {
            return None;
        }
        self.specs.iter().find(|s| s.role == Role::Uplink).and_then(|s| s.address).map(|a| a.addr())
    }

    fn write_settings(&mut self, cfg: &Config) -> Result<()> {
        let mut flags = 0;
        if cfg.dataplane.drop_invalid_ipv4 {
            flags |= schema::SETTINGS_F_DROP_INVALID_IPV4;
        }
        if cfg.firewall.enabled {
            flags |= schema::SETTINGS_F_FIREWALL;
        }
        if cfg.dataplane.fast_forward {
            flags |= schema::SETTINGS_F_FAST_FORWARD;
        }
        if self.dns_serving && cfg.dns_cache_on() {
            flags |= schema::SETTINGS_F_DNS_CACHE;
        }
        if cfg.firewall.ipv6 == crate::config::Ipv6Policy::Stack {
            flags |= schema::SETTINGS_F_IPV6_STACK;
        }
        let mut settings: Array<&mut MapData, Settings> = Array::try_from(self.map_mut(&schema::SETTINGS)?)?;
        // Adopted maps keep their rule banks and generation.
        let mut s = settings.get(&0, 0).unwrap_or_default();
        s.schema_version = schema::SCHEMA_VERSION;
        s.flags = flags;
        // Running: the answer cache has no end (an earlier clean stop's goes).
        s.dns_cache_until_ns = 0;
        settings.set(0, s, 0)?;
        let nat_addr = self.nat_addr(cfg);
        let mut settings: Array<&mut MapData, Settings> = Array::try_from(self.map_mut(&schema::SETTINGS)?)?;
        let mut s = settings.get(&0, 0)?;
        s.nat_addr = nat_addr.map(|a| a.octets()).unwrap_or_default();
        s.nat_port_min = cfg.nat.port_min;
        s.nat_port_max = cfg.nat.port_max;
        s.flow_quota = cfg.dataplane.flow_quota();
        s.nat_port_quota = cfg.nat.port_quota();
        settings.set(0, s, 0)?;
        self.write_forwards(cfg, nat_addr)
    }

    /// The port forwards of `[[nat.forward]]`, replacing the previous ones.
    fn write_forwards(&mut self, cfg: &Config, nat_addr: Option<Ipv4Addr>) -> Result<()> {
        use schema::{NAT_DIR_IN, NatBind, NatKey};
        let mut m: BpfHashMap<&mut MapData, NatKey, NatBind> = BpfHashMap::try_from(self.map_mut(&schema::NAT_FWD)?)?;
        let mut want = Vec::new();
        if let Some(a) = nat_addr {
            for f in &cfg.nat.forwards {
                let protos: &[u8] = match f.proto {
                    crate::config::Proto::Tcp => &[6],
                    crate::config::Proto::Udp => &[17],
                    _ => &[6, 17],
                };
                for p in protos {
                    let k = NatKey { addr: a.octets(), port: f.port, proto: *p, dir: NAT_DIR_IN };
                    let v = NatBind { addr: f.to.ip().octets(), port: f.to.port(), _pad: 0, last_ns: 0 };
                    want.push((k, v));
                }
            }
        }
        let old: Vec<NatKey> = m.keys().filter_map(|k| k.ok()).collect();
        for k in old {
            if !want.iter().any(|(w, _)| *w == k) {
                let _ = m.remove(&k);
            }
        }
        for (k, v) in want {
            m.insert(k, v, 0)?;
        }
        Ok(())
    }

    fn settings(&self) -> Result<Settings> {
        let settings: Array<&MapData, Settings> = Array::try_from(self.map(&schema::SETTINGS)?)?;
        Ok(settings.get(&0, 0)?)
    }

    fn map_mut(&mut self, spec: &schema::MapSpec) -> Result<&mut aya::maps::Map> {
        ebpf_map_mut(&mut self.ebpf, spec)
    }

    fn map(&self, spec: &schema::MapSpec) -> Result<&aya::maps::Map> {
        ebpf_map(&self.ebpf, spec)
    }

    /// Replaces the gateway's own addresses (traffic to them is "to gateway").
    pub fn set_local_addrs(&mut self, addrs: Vec<Ipv4Addr>) -> Result<()> {
        let mut m: BpfHashMap<&mut MapData, [u8; 4], u32> = BpfHashMap::try_from(self.map_mut(&schema::LOCAL_ADDRS)?)?;
        let old: Vec<[u8; 4]> = m.keys().filter_map(|k| k.ok()).collect();
        for a in &addrs {
            m.insert(a.octets(), 1, 0)?;
        }
        for k in old {
            if !addrs.iter().any(|a| a.octets() == k) {
                let _ = m.remove(&k);
            }
        }
        Ok(())
    }

    /// The segments' addresses changed (an authority switch): the
    /// interfaces' entries and the gateway's local addresses follow.
    pub fn set_addresses(&mut self, cfg: &Config, plan: &crate::routing::Plan) -> Result<()> {
        let uplink_found = self.specs.iter().find(|s| s.role == Role::Uplink).and_then(|s| s.address);
        let uplink_planned = cfg.uplink.as_ref().is_some_and(|u| u.address.is_some());
        let found = if uplink_planned { None } else { uplink_found };
        self.specs = interfaces(cfg, plan, found);
        for a in self.attached.values_mut() {
            if let Some(spec) = self.specs.iter().find(|s| s.name == a.spec.name) {
                a.spec = spec.clone();
                if let Some(mut info) = iface_entry(&self.ebpf, a.ifindex)? {
                    info.ipv4 = spec.address.map(|x| x.addr().octets()).unwrap_or_default();
                    info.prefix_len = spec.address.map(|x| x.prefix_len()).unwrap_or(0);
                    set_iface(&mut self.ebpf, a.ifindex, info)?;
                }
            }
        }
        self.set_local_addrs(plan.addresses.iter().map(|a| a.addr.addr()).chain(found.map(|a| a.addr())).collect())
    }

    /// A clean stop that keeps the programs: the answer cache ends `grace`
    /// from now, unless a start takes over before.
    pub fn end_dns_cache_after(&mut self, grace: std::time::Duration) -> Result<()> {
        let mut settings: Array<&mut MapData, Settings> = Array::try_from(self.map_mut(&schema::SETTINGS)?)?;
        let mut s = settings.get(&0, 0)?;
        s.dns_cache_until_ns = crate::dns::cache::now_ns().saturating_add(grace.as_nanos() as u64).max(1);
        settings.set(0, s, 0)?;
        Ok(())
    }

    /// Tells the programs whether the DNS service runs (and fills the answer
    /// cache): they answer from it only then, and when `cfg` wants it.
    pub fn set_dns_serving(&mut self, on: bool, cfg: &Config) -> Result<()> {
        self.dns_serving = on;
        self.write_settings(cfg)
    }

    /// Applies a changed configuration's settings and firewall rules.
    pub fn reconfigure(
        &mut self,
        cfg: &Config,
        plan: &crate::routing::Plan,
        compiled: Vec<rules::Compiled>,
    ) -> Result<()> {
        self.write_settings(cfg)?;
        self.write_src_guard(cfg, plan)?;
        self.apply_rules(compiled)
    }

    /// Source validation (BCP 38): every inside network (the segments'
    /// and the routes behind them) in the inside set, which never arrives
    /// from the uplink, and each segment's routes in its own set (sources
    /// beyond its own network that may arrive on it). New entries first,
    /// then the stale ones go.
    fn write_src_guard(&mut self, cfg: &Config, plan: &crate::routing::Plan) -> Result<()> {
        let addrs: Vec<Ipv4Addr> = plan.addresses.iter().map(|a| a.addr.addr()).collect();
        write_src_guard(&mut self.ebpf, cfg, &addrs)
    }
}

/// [`Dataplane::write_src_guard`], for any loaded object (the tests' too):
/// `addrs` are the gateway's own addresses.
pub fn write_src_guard(ebpf: &mut Ebpf, cfg: &Config, addrs: &[Ipv4Addr]) -> Result<()> {
    use aya::maps::lpm_trie::{Key, LpmTrie};
    use schema::{PrefixData, SRC_GUARD_INSIDE};
    let mut want: BTreeSet<(u32, [u8; 4], u8)> = BTreeSet::new();
    for (i, seg) in cfg.segments.iter().enumerate() {
        let n = seg.cidr.trunc();
        want.insert((SRC_GUARD_INSIDE, n.network().octets(), n.prefix_len()));
        for r in &cfg.routes {
            let behind = match (&r.via, &r.dev) {
                (Some(via), _) => n.contains(via),
                (None, Some(dev)) => *dev == seg.interface,
                _ => false,
            };
            if behind {
                let p = r.prefix.trunc();
                want.insert((SRC_GUARD_INSIDE, p.network().octets(), p.prefix_len()));
                want.insert((1 + i as u32, p.network().octets(), p.prefix_len()));
            }
        }
    }
    for a in addrs {
        want.insert((SRC_GUARD_INSIDE, a.octets(), 32));
    }
    let mut m: LpmTrie<&mut MapData, PrefixData, u32> = LpmTrie::try_from(ebpf_map_mut(ebpf, &schema::SRC_GUARD)?)?;
    let key = |(set, addr, len): (u32, [u8; 4], u8)| {
        Key::new(32 + u32::from(len), PrefixData { set: set.to_be_bytes(), addr })
    };
    for w in &want {
        m.insert(&key(*w), 1, 0)?;
    }
    let old: Vec<Key<PrefixData>> = m.keys().filter_map(|k| k.ok()).collect();
    for k in old {
        let d = k.data();
        let w = (u32::from_be_bytes(d.set), d.addr, (k.prefix_len() - 32) as u8);
        if !want.contains(&w) {
            let _ = m.remove(&k);
        }
    }
    Ok(())
}

impl Dataplane {
    pub fn rules_count(&self) -> usize {
        self.rules.len()
    }

    /// Installs a rule set atomically (see [`rules::install`]).
    pub fn apply_rules(&mut self, compiled: Vec<rules::Compiled>) -> Result<()> {
        let (bank, generation) = rules::install(&mut self.ebpf, &compiled)?;
        info!("firewall: {} rules active (bank {bank}, generation {generation})", compiled.len());
        self.rules = compiled;
        Ok(())
    }

    /// Attaches the programs to a configured interface that (re)appeared.
    pub fn attach_iface(&mut self, name: &str) -> Result<bool> {
        let Some(spec) = self.specs.iter().find(|s| s.name == name).cloned() else { return Ok(false) };
        let Some(idx) = ifindex(name) else { return Ok(false) };
        if self.attached.get(name).is_some_and(|a| a.ifindex == idx) {
            return Ok(false);
        }
        self.attach(spec, idx, &BTreeMap::new())?;
        Ok(true)
    }

    /// Forgets an interface that disappeared (its links died with it).
    pub fn forget_iface(&mut self, name: &str) {
        if let Some(a) = self.attached.remove(name) {
            let _ = remove_iface(&mut self.ebpf, a.ifindex);
            warn!(interface = %name, "interface is gone; its programs will be attached again when it returns");
        }
    }

    /// Names of the configured interfaces not attached right now.
    pub fn waiting(&self) -> Vec<String> {
        self.specs.iter().filter(|s| !self.attached.contains_key(&s.name)).map(|s| s.name.clone()).collect()
    }

    fn attach(&mut self, spec: IfaceSpec, ifindex: u32, previous: &BTreeMap<u32, IfaceInfo>) -> Result<()> {
        let prev_mode = previous.get(&ifindex).and_then(|i| AttachMode::from_code(i.attach_mode));
        // The interface came back under another ifindex: its old entry goes
        // (unless another attached interface has that ifindex now).
        if let Some(old) = self.attached.get(&spec.name).map(|a| a.ifindex).filter(|i| *i != ifindex)
            && !self.attached.iter().any(|(n, a)| *n != spec.name && a.ifindex == old)
        {
            remove_iface(&mut self.ebpf, old)?;
        }
        // The entry first: a program that starts judging this interface
        // (a new attach) finds its configuration from the first frame.
        let mut info = IfaceInfo {
            role: spec.role.code(),
            segment: spec.segment_index,
            ipv4: spec.address.map(|a| a.addr().octets()).unwrap_or_default(),
            prefix_len: spec.address.map(|a| a.prefix_len()).unwrap_or(0),
            cidr: spec.cidr.map(|c| c.network().octets()).unwrap_or_default(),
            cidr_len: spec.cidr.map(|c| c.prefix_len()).unwrap_or(0),
            _pad: [0; 3],
            attach_mode: prev_mode.map(AttachMode::code).unwrap_or(0),
            flags: if spec.nat { schema::IFACE_F_NAT } else { 0 },
            stats_slot: self.stats_slot(
                &spec.name,
                previous.get(&ifindex).map(|i| i.stats_slot),
                previous.iter().filter(|(i, _)| **i != ifindex).map(|(_, p)| p.stats_slot),
            )?,
        };
        set_iface(&mut self.ebpf, ifindex, info)?;
        let xdp: &mut Xdp = self
            .ebpf
            .program_mut(spec.role.program())
            .ok_or_else(|| anyhow!("program {} missing", spec.role.program()))?
            .try_into()?;
        let (mode, adopted) = attach::xdp(xdp, &self.pin_dir, &spec.name, ifindex, self.xdp_mode, prev_mode)?;
        let tc: &mut SchedClassifier = self
            .ebpf
            .program_mut(schema::programs::EGRESS)
            .ok_or_else(|| anyhow!("program egress missing"))?
            .try_into()?;
        attach::egress(tc, &self.pin_dir, &spec.name, ifindex)?;
        if info.attach_mode != mode.code() {
            info.attach_mode = mode.code();
            set_iface(&mut self.ebpf, ifindex, info)?;
        }
        // Only now, with the programs attached and the entry written, does
        // the kernel forward what arrives here.
        crate::routing::set_forwarding(&spec.name, true)?;
        info!(
            interface = %spec.name,
            ifindex,
            role = ?spec.role,
            mode = ?mode,
            "{} XDP program {} and TC egress",
            if adopted { "adopted pinned links, replaced" } else { "attached" },
            spec.role.program()
        );
        self.attached.insert(spec.name.clone(), Attached { spec, ifindex, mode, adopted, slot: info.stats_slot });
        Ok(())
    }

    /// The IF_STATS slot for interface `name`: the one its pinned entry had
    /// (an adopted interface keeps counting where it did), else the lowest
    /// free one, its counters zeroed. `reserved`: the slots other pinned
    /// entries had (at start, for the interfaces attached after this one).
    fn stats_slot(&mut self, name: &str, previous: Option<u8>, reserved: impl Iterator<Item = u8>) -> Result<u8> {
        let taken: BTreeSet<u8> =
            self.attached.iter().filter(|(n, _)| n.as_str() != name).map(|(_, a)| a.slot).collect();
        if let Some(s) = previous.filter(|s| *s != 0 && u32::from(*s) <= schema::MAX_IFACES && !taken.contains(s)) {
            return Ok(s);
        }
        let reserved: BTreeSet<u8> = reserved.collect();
        let slot = (1..=schema::MAX_IFACES as u8)
            .find(|s| !taken.contains(s) && !reserved.contains(s))
            .or_else(|| (1..=schema::MAX_IFACES as u8).find(|s| !taken.contains(s)))
            .ok_or_else(|| anyhow!("more than {} interfaces", schema::MAX_IFACES))?;
        let ncpu = aya::util::nr_cpus().map_err(|(_, e)| e)?;
        let mut stats: PerCpuArray<&mut MapData, PacketCount> =
            PerCpuArray::try_from(self.map_mut(&schema::IF_STATS)?)?;
        for v in 0..schema::IF_STATS_PER_SLOT {
            let zero = PerCpuValues::try_from(vec![PacketCount::default(); ncpu])?;
            stats.set(schema::if_stats_index(slot, v), zero, 0)?;
        }
        Ok(slot)
    }

    /// Counters for `coresvc status`.
    pub fn status(&self) -> Result<DataplaneStatus> {
        let stats: PerCpuArray<&MapData, PacketCount> = PerCpuArray::try_from(self.map(&schema::IF_STATS)?)?;
        // In configuration order.
        let interfaces = self
            .specs
            .iter()
            .filter_map(|s| self.attached.get(&s.name))
            .map(|a| {
                let mut verdicts = BTreeMap::new();
                for (v, name) in schema::VERDICT_NAMES.iter().enumerate() {
                    let c =
                        stats.get(&schema::if_stats_index(a.slot, v as u32), 0).map(|p| sum(&p)).unwrap_or_default();
                    verdicts.insert(name.to_string(), Counter { packets: c.packets, bytes: c.bytes });
                }
                IfaceStatus {
                    name: a.spec.name.clone(),
                    ifindex: a.ifindex,
                    role: a.spec.role,
                    segment: a.spec.segment.clone(),
                    mode: a.mode,
                    adopted: a.adopted,
                    stats_slot: a.slot,
                    verdicts,
                }
            })
            .collect();
        let drops: PerCpuArray<&MapData, PacketCount> = PerCpuArray::try_from(self.map(&schema::DROP_STATS)?)?;
        let mut drop_reasons = Vec::new();
        for (n, name) in schema::DROP_REASON_NAMES {
            let c = sum(&drops.get(n, 0)?);
            drop_reasons.push(DropReason { reason: *n, name: name.to_string(), packets: c.packets, bytes: c.bytes });
        }
        let s = self.settings()?;
        let dns_stats: PerCpuArray<&MapData, DnsStats> = PerCpuArray::try_from(self.map(&schema::DNS_STATS)?)?;
        let mut dns_segments = Vec::new();
        for a in self.specs.iter().filter_map(|s| self.attached.get(&s.name)).filter(|a| a.spec.role == Role::Segment) {
            let mut total = DnsStats::default();
            for c in dns_stats.get(&a.spec.segment_index, 0)?.iter() {
                total.add(c);
            }
            dns_segments.push(DnsSegmentCounters::new(a.spec.segment.clone().unwrap_or_default(), &total));
        }
        Ok(DataplaneStatus {
            pin_dir: self.pin_dir.clone(),
            schema_version: schema::SCHEMA_VERSION,
            adopted_maps: self.adopted_maps,
            interfaces,
            waiting: self.waiting(),
            drop_reasons,
            firewall: FirewallStatus {
                enabled: s.flags & schema::SETTINGS_F_FIREWALL != 0,
                fast_forward: s.flags & schema::SETTINGS_F_FAST_FORWARD != 0,
                active_bank: s.active_bank,
                generation: s.generation,
                rules: self.rules.len(),
                connections: self.connection_count()?,
            },
            nat: NatStatus {
                address: (s.nat_addr != [0; 4]).then(|| Ipv4Addr::from(s.nat_addr)),
                port_min: s.nat_port_min,
                port_max: s.nat_port_max,
                bindings: self.binding_count()?,
            },
            dns_cache: DnsCacheStatus {
                answering: s.flags & schema::SETTINGS_F_DNS_CACHE != 0,
                segments: dns_segments,
            },
        })
    }

    /// The active rules with their counters.
    pub fn rules_status(&self, cfg: &Config) -> Result<Vec<rules::RuleStatus>> {
        let s = self.settings()?;
        let base = (s.active_bank & 1) * RULES_PER_BANK;
        let stats: PerCpuArray<&MapData, PacketCount> = PerCpuArray::try_from(self.map(&schema::RULE_STATS)?)?;
        self.rules
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let n = sum(&stats.get(&(base + i as u32), 0)?);
                Ok(rules::describe(cfg, i as u32, c, n.packets, n.bytes))
            })
            .collect()
    }

    /// Detaches every program (removing the link pins). Maps stay pinned so
    /// the next start adopts counters and connections.
    pub fn detach(mut self) {
        for (name, _) in std::mem::take(&mut self.attached) {
            // Nothing judges it from here: the kernel stops forwarding first.
            if let Err(e) = crate::routing::set_forwarding(&name, false) {
                warn!(interface = %name, "{e:#}");
            }
            let n = attach::detach(&self.pin_dir, &name);
            info!(interface = %name, "detached {n} program link(s)");
        }
    }
}

/// `coresvc unpin`: takes the programs away and removes every pin under
/// `dir`. First, the kernel stops forwarding on each interface whose pinned
/// XDP link is attached to the interface of that name in this network
/// namespace (the same ifindex), so nothing is forwarded unjudged
/// afterwards; interfaces of other namespaces are never touched. Returns
/// the interfaces whose forwarding was turned off. An attached link whose
/// interface is not here (another namespace's) is refused, nothing
/// changed, unless `force`: forwarding would stay on with nothing judging.
pub fn unpin(dir: &Path, force: bool) -> Result<Vec<String>> {
    let parent = dir.parent().unwrap_or(dir);
    if !dir.exists() && !pins::is_bpffs(parent) {
        bail!(
            "{} is not on a bpffs here, so no pin can be seen (`ip netns exec` mounts a /sys of its own): \
             use `coresvc unpin --netns NAME`, which keeps this mount namespace",
            parent.display()
        );
    }
    let mut here = Vec::new();
    let mut elsewhere = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir.join("links").join("xdp")) {
        for e in entries.flatten() {
            let ifname = e.file_name().to_string_lossy().replace(':', ".");
            match sys::pinned_link_ifindex(&e.path(), sys::BPF_LINK_TYPE_XDP).ok().flatten() {
                Some(idx) if Some(idx) == ifindex(&ifname) => here.push(ifname),
                Some(_) => elsewhere.push(ifname),
                None => {}
            }
        }
    }
    if !elsewhere.is_empty() && !force {
        elsewhere.sort();
        bail!(
            "nothing was changed: the programs on {} are attached in another network namespace than this \
             command's, where it cannot turn IPv4 forwarding off before they go (forwarding would go on with \
             nothing judging); run it there with `coresvc unpin --netns NAME`, or add --force",
            elsewhere.join(", ")
        );
    }
    for ifname in &here {
        crate::routing::set_forwarding(ifname, false)?;
    }
    pins::remove_all(dir).with_context(|| format!("removing pins under {}", dir.display()))?;
    Ok(here)
}

/// Writes interface `ifindex`'s entry where the programs look it up:
/// IFACES_LOW by index for a low ifindex, else IFACES.
pub fn set_iface(ebpf: &mut Ebpf, ifindex: u32, info: IfaceInfo) -> Result<()> {
    if ifindex < schema::IFACES_LOW.max_entries {
        let mut low: Array<&mut MapData, IfaceInfo> = Array::try_from(ebpf_map_mut(ebpf, &schema::IFACES_LOW)?)?;
        low.set(ifindex, info, 0)?;
    } else {
        let mut ifaces: BpfHashMap<&mut MapData, u32, IfaceInfo> =
            BpfHashMap::try_from(ebpf_map_mut(ebpf, &schema::IFACES)?)?;
        ifaces.insert(ifindex, info, 0)?;
    }
    Ok(())
}

/// Removes interface `ifindex`'s entry (role 0 in IFACES_LOW).
pub fn remove_iface(ebpf: &mut Ebpf, ifindex: u32) -> Result<()> {
    if ifindex < schema::IFACES_LOW.max_entries {
        return set_iface(ebpf, ifindex, IfaceInfo::default());
    }
    let mut ifaces: BpfHashMap<&mut MapData, u32, IfaceInfo> =
        BpfHashMap::try_from(ebpf_map_mut(ebpf, &schema::IFACES)?)?;
    match ifaces.remove(&ifindex) {
        Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Interface `ifindex`'s entry, if any.
pub fn iface_entry(ebpf: &Ebpf, ifindex: u32) -> Result<Option<IfaceInfo>> {
    if ifindex < schema::IFACES_LOW.max_entries {
        let low: Array<&MapData, IfaceInfo> = Array::try_from(ebpf_map(ebpf, &schema::IFACES_LOW)?)?;
        return Ok(Some(low.get(&ifindex, 0)?).filter(|i| i.role != 0));
    }
    let ifaces: BpfHashMap<&MapData, u32, IfaceInfo> = BpfHashMap::try_from(ebpf_map(ebpf, &schema::IFACES)?)?;
    Ok(ifaces.get(&ifindex, 0).ok())
}

/// Every interface entry, by ifindex.
pub fn iface_entries(ebpf: &Ebpf) -> Result<BTreeMap<u32, IfaceInfo>> {
    let low: Array<&MapData, IfaceInfo> = Array::try_from(ebpf_map(ebpf, &schema::IFACES_LOW)?)?;
    let mut out: BTreeMap<u32, IfaceInfo> =
        (0..low.len()).filter_map(|i| low.get(&i, 0).ok().filter(|v| v.role != 0).map(|v| (i, v))).collect();
    let ifaces: BpfHashMap<&MapData, u32, IfaceInfo> = BpfHashMap::try_from(ebpf_map(ebpf, &schema::IFACES)?)?;
    out.extend(ifaces.iter().filter_map(|r| r.ok()));
    Ok(out)
}

fn ebpf_map_mut<'e>(ebpf: &'e mut Ebpf, spec: &schema::MapSpec) -> Result<&'e mut aya::maps::Map> {
    ebpf.map_mut(spec.name).ok_or_else(|| anyhow!("map {} missing from the eBPF object", spec.name))
}

fn ebpf_map<'e>(ebpf: &'e Ebpf, spec: &schema::MapSpec) -> Result<&'e aya::maps::Map> {
    ebpf.map(spec.name).ok_or_else(|| anyhow!("map {} missing from the eBPF object", spec.name))
}

pub fn sum(per_cpu: &PerCpuValues<PacketCount>) -> PacketCount {
    let mut s = PacketCount::default();
    for c in per_cpu.iter() {
        s.add(c);
    }
    s
}

pub fn ifindex(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: valid C string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DataplaneStatus {
    pub pin_dir: PathBuf,
    pub schema_version: u32,
    pub adopted_maps: bool,
    pub interfaces: Vec<IfaceStatus>,
    /// Configured interfaces that do not exist right now.
    pub waiting: Vec<String>,
    pub drop_reasons: Vec<DropReason>,
    pub firewall: FirewallStatus,
    pub nat: NatStatus,
    #[serde(default)]
    pub dns_cache: DnsCacheStatus,
}

/// The XDP DNS answer cache as the programs see it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DnsCacheStatus {
    /// The segment programs answer from the cache.
    pub answering: bool,
    pub segments: Vec<DnsSegmentCounters>,
}

/// One segment's cache counters (summed over CPUs).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DnsSegmentCounters {
    pub segment: String,
    pub hits: u64,
    pub misses: u64,
    pub expired: u64,
    pub invalidated: u64,
    /// Queries passed to the DNS service, by reason (`schema::DNS_COUNTER_NAMES`).
    pub passes: BTreeMap<String, u64>,
    /// Answers dropped, and sent truncated, over `dns.rate_limit`.
    #[serde(default)]
    pub rate_limited: u64,
    #[serde(default)]
    pub slipped: u64,
}

impl DnsSegmentCounters {
    pub fn new(segment: String, s: &DnsStats) -> Self {
        use schema::dns_counter as c;
        let passes = schema::DNS_COUNTER_NAMES
            .iter()
            .filter(|(n, _)| (c::NOT_QUERY..c::RATE_LIMITED).contains(n))
            .map(|(n, name)| (name.to_string(), s.get(*n)))
            .collect();
        DnsSegmentCounters {
            segment,
            hits: s.get(c::HITS),
            misses: s.get(c::MISSES),
            expired: s.get(c::EXPIRED),
            invalidated: s.get(c::INVALIDATED),
            passes,
            rate_limited: s.get(c::RATE_LIMITED),
            slipped: s.get(c::SLIPPED),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NatStatus {
    /// The masquerade address; none without NAT.
    pub address: Option<Ipv4Addr>,
    pub port_min: u16,
    pub port_max: u16,
    /// Inside endpoints bound to an outside port.
    pub bindings: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FirewallStatus {
    pub enabled: bool,
    pub fast_forward: bool,
    pub active_bank: u32,
    pub generation: u32,
    pub rules: usize,
    pub connections: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IfaceStatus {
    pub name: String,
    pub ifindex: u32,
    pub role: Role,
    pub segment: Option<String>,
    pub mode: AttachMode,
    pub adopted: bool,
    /// Its counters in the pinned `if_stats` (bpftool): keys
    /// `stats_slot * 8 + verdict`.
    pub stats_slot: u8,
    /// Verdict name → counter.
    pub verdicts: BTreeMap<String, Counter>,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DropReason {
    pub reason: u32,
    pub name: String,
    pub packets: u64,
    pub bytes: u64,
}

/// Maps a tracing-style level word to aya-log's in-kernel filter.
pub fn aya_level(filter: &str) -> aya_log::Level {
    let f = filter.to_ascii_lowercase();
    if f.contains("trace") {
        aya_log::Level::Trace
    } else if f.contains("debug") {
        aya_log::Level::Debug
    } else if f.contains("info") {
        aya_log::Level::Info
    } else if f.contains("warn") {
        aya_log::Level::Warn
    } else {
        aya_log::Level::Error
    }
}

pub fn ensure_supported() -> Result<()> {
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        bail!("this kernel has no BTF (/sys/kernel/btf/vmlinux); coresvc's maps need BTF support");
    }
    Ok(())
}
