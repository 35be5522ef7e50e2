//! The eBPF dataplane: loads the programs, creates or adopts the pinned maps,
//! attaches XDP to every configured interface (pinning the links so traffic
//! keeps flowing while the agent restarts), writes configuration into maps
//! and reads counters back.

pub mod pins;
mod sys;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, PerCpuHashMap},
    programs::{
        Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
    },
};
use coresvc_maps_schema::{
    self as schema, ATTACH_GENERIC, ATTACH_NATIVE, IfVerdict, IfaceInfo, PacketCount, ROLE_SEGMENT, ROLE_UPLINK,
    Settings,
};
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use crate::config::{self, Config};

/// The eBPF object built by `build.rs`.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/coresvc-ebpf"));

/// Loads the object. With `pin_dir`, every map of the schema is created
/// pinned there, or the pinned one is reused (check compatibility first with
/// [`pins::check_existing`]). `log_level` is aya-log's in-kernel filter.
pub fn load(pin_dir: Option<&Path>, log_level: aya_log::Level) -> Result<Ebpf> {
    raise_memlock();
    let mut loader = EbpfLoader::new();
    let level = log_level as u8;
    loader.override_global(aya_log::LEVEL, &level, false);
    let paths: Vec<(&str, PathBuf)> = match pin_dir {
        Some(dir) => schema::ALL_MAPS.iter().map(|m| (m.name, pins::map_pin(dir, m))).collect(),
        None => Vec::new(),
    };
    for (name, path) in &paths {
        loader.map_pin_path(name, path.as_path());
    }
    loader.load(EBPF_OBJECT).context("loading the eBPF object")
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
    /// The interface's configured IPv4 address and prefix, if any.
    pub address: Option<ipnet::Ipv4Net>,
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

/// The interfaces of a configuration, segments first.
pub fn interfaces(cfg: &Config) -> Vec<IfaceSpec> {
    let mut v: Vec<IfaceSpec> = cfg
        .segments
        .iter()
        .enumerate()
        .map(|(i, s)| IfaceSpec {
            name: s.interface.clone(),
            role: Role::Segment,
            segment: Some(s.name.clone()),
            segment_index: i as u32,
            address: ipnet::Ipv4Net::new(s.gateway, s.cidr.prefix_len()).ok(),
        })
        .collect();
    if let Some(up) = &cfg.uplink {
        v.push(IfaceSpec {
            name: up.interface.clone(),
            role: Role::Uplink,
            segment: None,
            segment_index: 0,
            address: up.address,
        });
    }
    v
}

/// One attached interface.
#[derive(Debug)]
struct Attached {
    spec: IfaceSpec,
    ifindex: u32,
    mode: AttachMode,
    adopted: bool,
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

/// The running dataplane: the loaded object and what it is attached to.
pub struct Dataplane {
    ebpf: Ebpf,
    pin_dir: PathBuf,
    attached: Vec<Attached>,
    /// Kept alive for the programs' log map; polled by the agent.
    pub logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    pub adopted_maps: bool,
}

impl Dataplane {
    /// Loads, adopts or creates the pinned maps, writes settings and
    /// interfaces, and attaches the programs. Nothing is attached if any
    /// step before attaching fails.
    pub fn start(cfg: &Config, pin_dir: &Path, log_level: aya_log::Level) -> Result<Self> {
        pins::prepare_dir(pin_dir)?;
        let existing = pins::check_existing(pin_dir)?;
        // Resolve every interface before touching anything.
        let specs = interfaces(cfg);
        let mut resolved = Vec::new();
        for s in &specs {
            let ifindex = ifindex(&s.name).ok_or_else(|| {
                anyhow!(
                    "interface {:?} ({}) does not exist in this network namespace",
                    s.name,
                    match &s.segment {
                        Some(seg) => format!("segment {seg:?}"),
                        None => "the uplink".to_string(),
                    }
                )
            })?;
            resolved.push((s.clone(), ifindex));
        }

        let mut ebpf = load(Some(pin_dir), log_level)?;
        let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(l) => Some(l),
            Err(e) => {
                warn!("eBPF logging unavailable: {e}");
                None
            }
        };
        for name in [schema::programs::SEGMENT_INGRESS, schema::programs::UPLINK_INGRESS] {
            let prog: &mut Xdp = ebpf
                .program_mut(name)
                .ok_or_else(|| anyhow!("program {name} missing from the eBPF object"))?
                .try_into()?;
            prog.load().with_context(|| format!("loading program {name} (verifier)"))?;
        }
        let mut dp = Dataplane {
            ebpf,
            pin_dir: pin_dir.to_path_buf(),
            attached: Vec::new(),
            logger,
            adopted_maps: existing == pins::Existing::Compatible,
        };
        dp.write_settings(cfg)?;
        // Previous interface entries (a restart with another config) are
        // replaced by this configuration's.
        let previous_modes = dp.clear_ifaces()?;
        for (spec, ifindex) in resolved {
            dp.attach(cfg, spec, ifindex, &previous_modes)?;
        }
        info!(
            pin_dir = %pin_dir.display(),
            adopted = dp.adopted_maps,
            "dataplane ready on {} interface(s)",
            dp.attached.len()
        );
        Ok(dp)
    }

    fn write_settings(&mut self, cfg: &Config) -> Result<()> {
        let mut flags = 0;
        if cfg.dataplane.drop_invalid_ipv4 {
            flags |= schema::SETTINGS_F_DROP_INVALID_IPV4;
        }
        let mut settings: Array<&mut MapData, Settings> = Array::try_from(self.map_mut(&schema::SETTINGS)?)?;
        settings.set(0, Settings { schema_version: schema::SCHEMA_VERSION, flags }, 0)?;
        Ok(())
    }

    fn map_mut(&mut self, spec: &schema::MapSpec) -> Result<&mut aya::maps::Map> {
        self.ebpf.map_mut(spec.name).ok_or_else(|| anyhow!("map {} missing from the eBPF object", spec.name))
    }

    fn map(&self, spec: &schema::MapSpec) -> Result<&aya::maps::Map> {
        self.ebpf.map(spec.name).ok_or_else(|| anyhow!("map {} missing from the eBPF object", spec.name))
    }

    /// Empties IFACES, returning the attach modes it recorded by ifindex.
    fn clear_ifaces(&mut self) -> Result<BTreeMap<u32, u8>> {
        let mut ifaces: BpfHashMap<&mut MapData, u32, IfaceInfo> =
            BpfHashMap::try_from(self.map_mut(&schema::IFACES)?)?;
        let old: Vec<(u32, IfaceInfo)> = ifaces.iter().filter_map(|r| r.ok()).collect();
        for (k, _) in &old {
            let _ = ifaces.remove(k);
        }
        Ok(old.into_iter().map(|(k, v)| (k, v.attach_mode)).collect())
    }

    fn attach(&mut self, cfg: &Config, spec: IfaceSpec, ifindex: u32, previous: &BTreeMap<u32, u8>) -> Result<()> {
        let link_path = pins::link_pin(&self.pin_dir, &spec.name);
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(spec.role.program())
            .ok_or_else(|| anyhow!("program {} missing", spec.role.program()))?
            .try_into()?;
        let (mode, adopted) = match adopt_link(&link_path, ifindex)? {
            Some(link) => {
                // Atomically swap the running program for ours: no packet
                // goes unprocessed during a restart.
                let id =
                    prog.attach_to_link(link).with_context(|| format!("replacing the program on {}", spec.name))?;
                let link = prog.take_link(id)?;
                pin_link(link, &link_path)?;
                let mode =
                    previous.get(&ifindex).and_then(|c| AttachMode::from_code(*c)).unwrap_or(AttachMode::Generic);
                (mode, true)
            }
            None => {
                let (id, mode) = attach_new(prog, ifindex, cfg.dataplane.xdp_mode, &spec.name)?;
                let link = prog.take_link(id)?;
                pin_link(link, &link_path)?;
                (mode, false)
            }
        };
        let info = IfaceInfo {
            role: spec.role.code(),
            segment: spec.segment_index,
            ipv4: spec.address.map(|a| a.addr().octets()).unwrap_or_default(),
            prefix_len: spec.address.map(|a| a.prefix_len()).unwrap_or(0),
            attach_mode: mode.code(),
            _pad: [0; 2],
        };
        let mut ifaces: BpfHashMap<&mut MapData, u32, IfaceInfo> =
            BpfHashMap::try_from(self.map_mut(&schema::IFACES)?)?;
        ifaces.insert(ifindex, info, 0)?;
        // The pass counter exists from the start (bpftool shows it, the
        // program's common path is a lookup); the program creates the others
        // on first use and logs that once.
        let ncpu = aya::util::nr_cpus().map_err(|(_, e)| e)?;
        let mut stats: PerCpuHashMap<&mut MapData, IfVerdict, PacketCount> =
            PerCpuHashMap::try_from(self.map_mut(&schema::IF_STATS)?)?;
        for verdict in [schema::VERDICT_PASS] {
            let key = IfVerdict { ifindex, verdict };
            if stats.get(&key, 0).is_err() {
                let zeros = aya::maps::PerCpuValues::try_from(vec![PacketCount::default(); ncpu])?;
                stats.insert(key, zeros, u64::from(schema_noexist()))?;
            }
        }
        info!(
            interface = %spec.name,
            ifindex,
            role = ?spec.role,
            mode = ?mode,
            "{} XDP program {}",
            if adopted { "adopted pinned link, replaced" } else { "attached" },
            spec.role.program()
        );
        self.attached.push(Attached { spec, ifindex, mode, adopted });
        Ok(())
    }

    /// Counters for `coresvc status`.
    pub fn status(&self) -> Result<DataplaneStatus> {
        let stats: PerCpuHashMap<&MapData, IfVerdict, PacketCount> =
            PerCpuHashMap::try_from(self.map(&schema::IF_STATS)?)?;
        let mut by_key: BTreeMap<(u32, u32), PacketCount> = BTreeMap::new();
        for entry in stats.iter() {
            let (k, per_cpu) = entry?;
            let mut sum = PacketCount::default();
            for c in per_cpu.iter() {
                sum.add(c);
            }
            by_key.insert((k.ifindex, k.verdict), sum);
        }
        let interfaces = self
            .attached
            .iter()
            .map(|a| {
                let mut verdicts = BTreeMap::new();
                for (v, name) in schema::VERDICT_NAMES.iter().enumerate() {
                    let c = by_key.get(&(a.ifindex, v as u32)).copied().unwrap_or_default();
                    verdicts.insert(name.to_string(), Counter { packets: c.packets, bytes: c.bytes });
                }
                IfaceStatus {
                    name: a.spec.name.clone(),
                    ifindex: a.ifindex,
                    role: a.spec.role,
                    segment: a.spec.segment.clone(),
                    mode: a.mode,
                    adopted: a.adopted,
                    verdicts,
                }
            })
            .collect();
        let drops: PerCpuArray<&MapData, PacketCount> = PerCpuArray::try_from(self.map(&schema::DROP_STATS)?)?;
        let mut drop_reasons = Vec::new();
        for (n, name) in schema::DROP_REASON_NAMES {
            let per_cpu = drops.get(n, 0)?;
            let mut sum = PacketCount::default();
            for c in per_cpu.iter() {
                sum.add(c);
            }
            drop_reasons.push(DropReason {
                reason: *n,
                name: name.to_string(),
                packets: sum.packets,
                bytes: sum.bytes,
            });
        }
        Ok(DataplaneStatus {
            pin_dir: self.pin_dir.clone(),
            schema_version: schema::SCHEMA_VERSION,
            adopted_maps: self.adopted_maps,
            interfaces,
            drop_reasons,
        })
    }

    /// Detaches every program (removing the link pins). Maps stay pinned so
    /// the next start adopts counters and state.
    pub fn detach(mut self) {
        for a in self.attached.drain(..) {
            let path = pins::link_pin(&self.pin_dir, &a.spec.name);
            match PinnedLink::from_pin(&path) {
                Ok(pinned) => match pinned.unpin() {
                    Ok(fd_link) => {
                        drop(fd_link);
                        info!(interface = %a.spec.name, "detached XDP program");
                    }
                    Err(e) => warn!(interface = %a.spec.name, "cannot unpin {}: {e}", path.display()),
                },
                Err(e) => warn!(interface = %a.spec.name, "no pinned link at {}: {e}", path.display()),
            }
        }
    }
}

const fn schema_noexist() -> u32 {
    // BPF_NOEXIST
    1
}

fn ifindex(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: valid C string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

/// A link pinned by a previous agent for this interface, if it is still
/// attached to it; a stale pin (interface gone or replaced) is removed.
fn adopt_link(path: &Path, ifindex: u32) -> Result<Option<XdpLink>> {
    if !path.exists() {
        return Ok(None);
    }
    let attached_to =
        sys::pinned_xdp_link_ifindex(path).with_context(|| format!("reading pinned link {}", path.display()))?;
    let pinned = PinnedLink::from_pin(path).with_context(|| format!("opening pinned link {}", path.display()))?;
    let fd_link: FdLink = pinned.unpin().with_context(|| format!("unpinning {}", path.display()))?;
    if attached_to != Some(ifindex) {
        warn!("stale link pin {} (its interface is gone or changed); attaching afresh", path.display());
        drop(fd_link);
        return Ok(None);
    }
    Ok(Some(XdpLink::try_from(fd_link)?))
}

fn attach_new(
    prog: &mut Xdp,
    ifindex: u32,
    mode: config::XdpMode,
    name: &str,
) -> Result<(aya::programs::xdp::XdpLinkId, AttachMode)> {
    let try_mode = |prog: &mut Xdp, m: XdpMode| prog.attach_to_if_index(ifindex, m);
    match mode {
        config::XdpMode::Native => Ok((
            try_mode(prog, XdpMode::Driver).with_context(|| format!("attaching native XDP to {name}"))?,
            AttachMode::Native,
        )),
        config::XdpMode::Generic => Ok((
            try_mode(prog, XdpMode::Skb).with_context(|| format!("attaching generic XDP to {name}"))?,
            AttachMode::Generic,
        )),
        config::XdpMode::Auto => match try_mode(prog, XdpMode::Driver) {
            Ok(id) => Ok((id, AttachMode::Native)),
            Err(e) => {
                debug!(interface = name, "native XDP not available ({e}); using generic");
                Ok((
                    try_mode(prog, XdpMode::Skb).with_context(|| format!("attaching generic XDP to {name}"))?,
                    AttachMode::Generic,
                ))
            }
        },
    }
}

fn pin_link(link: XdpLink, path: &Path) -> Result<()> {
    let fd_link: FdLink = FdLink::try_from(link).map_err(|e| {
        anyhow!("the kernel attached XDP without a bpf_link ({e}); coresvc needs bpf_link (Linux >= 5.9) to survive restarts")
    })?;
    let _ = std::fs::remove_file(path);
    // The pin keeps the link (and the program) attached after the fd closes.
    fd_link.pin(path).with_context(|| format!("pinning link at {}", path.display()))?;
    Ok(())
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DataplaneStatus {
    pub pin_dir: PathBuf,
    pub schema_version: u32,
    pub adopted_maps: bool,
    pub interfaces: Vec<IfaceStatus>,
    pub drop_reasons: Vec<DropReason>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IfaceStatus {
    pub name: String,
    pub ifindex: u32,
    pub role: Role,
    pub segment: Option<String>,
    pub mode: AttachMode,
    pub adopted: bool,
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

/// Refuses to run twice on the same pins: a pinned link whose program is not
/// ours means another agent may be running. (Checked via the control socket
/// by the caller; this is the dataplane's part.)
pub fn ensure_supported() -> Result<()> {
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        bail!("this kernel has no BTF (/sys/kernel/btf/vmlinux); coresvc's maps need BTF support");
    }
    Ok(())
}
