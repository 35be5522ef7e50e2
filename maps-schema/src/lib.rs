//! The ABI between the coresvc eBPF programs and the agent.
//!
//! For every map: its name (the symbol in the eBPF object, at most 15 bytes),
//! its kind and size, the file it is pinned as under the pin directory, and
//! its `#[repr(C)]` key and value types. Keys and values derive bytemuck
//! `Pod`, which refuses hidden padding at compile time; every padding byte is
//! an explicit `_pad` field and every size is asserted. Byte order is part of
//! each field's doc: `_be` fields and `[u8; N]` addresses are network order.
//!
//! **Changing any layout, name, kind or size here changes the ABI: bump
//! [`SCHEMA_VERSION`].** The agent refuses pinned maps of another version
//! (see `agent/src/dataplane/pins.rs`), and a test compares this file with the
//! eBPF object so the two cannot drift.
#![no_std]

use bytemuck::{Pod, Zeroable};

/// The version of this ABI. Stored in [`SETTINGS`] entry 0 and checked by an
/// agent that finds pinned maps.
pub const SCHEMA_VERSION: u32 = 8;

/// The default bpffs directory holding the pins of one coresvc instance.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/coresvc";

/// Kinds of map used (the kernel's `bpf_map_type` numbers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum MapKind {
    Hash = 1,
    Array = 2,
    PerCpuHash = 5,
    PerCpuArray = 6,
    LruHash = 9,
    LpmTrie = 11,
}

/// Everything the agent needs to know about one map to create, pin, adopt
/// and verify it.
#[derive(Clone, Copy, Debug)]
pub struct MapSpec {
    /// The map's symbol in the eBPF object, which is also its kernel name.
    pub name: &'static str,
    /// The file name under the pin directory.
    pub pin: &'static str,
    pub kind: MapKind,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    /// What it holds, for `coresvc status --maps` and the docs.
    pub doc: &'static str,
}

macro_rules! pod {
    ($($t:ty),* $(,)?) => {
        $(
            #[cfg(feature = "user")]
            // SAFETY: the type is `#[repr(C)]` and bytemuck `Pod`: no padding,
            // no invalid bit patterns.
            unsafe impl aya::Pod for $t {}
        )*
    };
}

// ---------------------------------------------------------------- SETTINGS

/// Global settings, one entry (index 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct Settings {
    /// [`SCHEMA_VERSION`] of the agent that created the maps.
    pub schema_version: u32,
    /// `SETTINGS_F_*` bits.
    pub flags: u32,
    /// The rule bank in force (0 or 1); the agent fills the other one and
    /// then flips this, so a packet sees one whole rule set.
    pub active_bank: u32,
    /// Rules in each bank.
    pub rule_count: [u32; 2],
    /// Bumped with every rule set; a connection admitted under an older
    /// one is checked again against the new rules on its next packet.
    pub generation: u32,
    /// The masquerade address (the uplink's; network order), 0 without NAT.
    pub nat_addr: [u8; 4],
    /// Outside ports for masqueraded connections, inclusive (host order).
    pub nat_port_min: u16,
    pub nat_port_max: u16,
    /// The firewall's decision for DNS queries (UDP port 53) from segment
    /// `i` to the gateway under bank `b`: `dns_verdict[b][i]`, written with
    /// the bank, so the answer cache need not scan the rules per query. A
    /// [`dns_verdict`] encoding.
    pub dns_verdict: [[u16; 64]; 2],
    /// CLOCK_MONOTONIC ns after which the DNS answer cache passes every
    /// query (0: no limit): a clean stop that keeps the programs sets it,
    /// so cached answers outlive the agent for a restart, not for good.
    pub dns_cache_until_ns: u64,
    /// Live forwarded connections one source address may have at most (0:
    /// no limit). Counted in [`SRC_QUOTA`]; the gateway's own are exempt.
    pub flow_quota: u32,
    /// Masquerade bindings (outside ports) one inside address may hold at
    /// most (0: no limit).
    pub nat_port_quota: u32,
}
const _: () = assert!(size_of::<Settings>() == 32 + 256 + 8 + 8);

impl Default for Settings {
    fn default() -> Self {
        Zeroable::zeroed()
    }
}

/// The encoding of [`Settings::dns_verdict`].
pub mod dns_verdict {
    /// Not known without the scan (a rule with prefixes could decide).
    pub const SCAN: u16 = 0;
    /// Set when the deciding rule allows.
    pub const ALLOW: u16 = 0x8000;

    /// The deciding rule's absolute index (or `NO_RULE`: none matches, which
    /// denies) and whether it allows.
    pub const fn encode(slot: u32, allow: bool) -> u16 {
        let s = if slot < NONE { slot as u16 } else { NONE as u16 };
        (s + 1) | if allow { ALLOW } else { 0 }
    }

    /// `(slot, allow)`, or `None` for [`SCAN`].
    pub const fn decode(v: u16) -> Option<(u32, bool)> {
        // SCAN, and values `encode` never writes (no rule that allows),
        // leave it to the scan.
        let s = (v & !ALLOW) as u32;
        let allow = v & ALLOW != 0;
        if s == 0 || s > NONE + 1 || (s == NONE + 1 && allow) {
            return None;
        }
        let s = s - 1;
        Some((if s < NONE { s } else { super::NO_RULE }, allow))
    }

    /// Encoded as no rule (rule indices are far below it).
    const NONE: u32 = 0x7ffe;
}

/// Drop IPv4 packets whose header the kernel's `ip_rcv` would drop anyway
/// (bad version or length, bad checksum), counting the reason.
pub const SETTINGS_F_DROP_INVALID_IPV4: u32 = 1 << 0;
/// Apply the firewall rules and track connections.
pub const SETTINGS_F_FIREWALL: u32 = 1 << 1;
/// Forward packets of established connections from XDP.
pub const SETTINGS_F_FAST_FORWARD: u32 = 1 << 2;
/// Answer DNS queries on the segments from [`DNS_CACHE`] (XDP_TX).
pub const SETTINGS_F_DNS_CACHE: u32 = 1 << 3;
/// Hand IPv6 frames to the stack unjudged (`firewall.ipv6 = "stack"`);
/// without it they are dropped, counted as [`reason::IPV6_POLICY`].
pub const SETTINGS_F_IPV6_STACK: u32 = 1 << 4;

pub const SETTINGS: MapSpec = MapSpec {
    name: "SETTINGS",
    pin: "settings",
    kind: MapKind::Array,
    key_size: 4,
    value_size: size_of::<Settings>() as u32,
    max_entries: 1,
    doc: "global settings and the schema version (index 0)",
};

// ---------------------------------------------------------------- IFACES

/// The role of an interface coresvc attached to.
pub const ROLE_SEGMENT: u32 = 1;
pub const ROLE_UPLINK: u32 = 2;

/// Per-interface configuration, keyed by ifindex (`u32`) in [`IFACES_LOW`]
/// or [`IFACES`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct IfaceInfo {
    /// `ROLE_*`.
    pub role: u32,
    /// The segment's index in the configuration (0 for the uplink).
    pub segment: u32,
    /// The interface's own IPv4 address (network order).
    pub ipv4: [u8; 4],
    /// Its prefix length.
    pub prefix_len: u8,
    /// How the agent attached XDP here (`ATTACH_*`); the programs ignore it.
    pub attach_mode: u8,
    /// `IFACE_F_*`.
    pub flags: u8,
    /// The interface's counters in [`IF_STATS`]: 1 to [`MAX_IFACES`]
    /// (0 counts frames on interfaces without an entry here).
    pub stats_slot: u8,
    /// A segment's network (network order) and prefix length: sources a
    /// frame arriving here may have (besides [`SRC_GUARD`]'s routes behind
    /// it). Unused for the uplink.
    pub cidr: [u8; 4],
    pub cidr_len: u8,
    pub _pad: [u8; 3],
}

/// Connections from this segment to the uplink are masqueraded.
pub const IFACE_F_NAT: u8 = 1 << 0;

/// Interfaces coresvc attaches to at most.
pub const MAX_IFACES: u32 = 64;

pub const ATTACH_NATIVE: u8 = 1;
pub const ATTACH_GENERIC: u8 = 2;
const _: () = assert!(size_of::<IfaceInfo>() == 24);

pub const IFACES: MapSpec = MapSpec {
    name: "IFACES",
    pin: "ifaces",
    kind: MapKind::Hash,
    key_size: 4,
    value_size: size_of::<IfaceInfo>() as u32,
    max_entries: MAX_IFACES,
    doc: "ifindex -> role, segment and address of attached interfaces (ifindex 4096 and up)",
};

/// The [`IFACES`] entries of interfaces whose ifindex is below its size,
/// indexed by ifindex: the programs read every frame's entry without
/// hashing. Role 0 where there is none. Such an interface has its entry
/// here only; [`IFACES`] holds the others.
pub const IFACES_LOW: MapSpec = MapSpec {
    name: "IFACES_LOW",
    pin: "ifaces_low",
    kind: MapKind::Array,
    key_size: 4,
    value_size: size_of::<IfaceInfo>() as u32,
    max_entries: 4096,
    doc: "ifindex (below 4096) -> role, segment and address of attached interfaces; role 0: none",
};

// ---------------------------------------------------------------- IF_STATS

/// XDP verdicts as counted (the kernel's `xdp_action` numbers).
pub const VERDICT_ABORTED: u32 = 0;
pub const VERDICT_DROP: u32 = 1;
pub const VERDICT_PASS: u32 = 2;
pub const VERDICT_TX: u32 = 3;
pub const VERDICT_REDIRECT: u32 = 4;
pub const VERDICT_NAMES: [&str; 5] = ["aborted", "drop", "pass", "tx", "redirect"];

/// Counters per interface slot in [`IF_STATS`] (one per verdict, room to
/// spare).
pub const IF_STATS_PER_SLOT: u32 = 8;

/// The index in [`IF_STATS`] of verdict `verdict` on the interface with
/// `IfaceInfo::stats_slot` `slot`.
pub const fn if_stats_index(slot: u8, verdict: u32) -> u32 {
    (slot as u32 % (MAX_IFACES + 1)) * IF_STATS_PER_SLOT + verdict % IF_STATS_PER_SLOT
}

/// A packet and byte counter (per CPU in per-CPU maps; the agent sums).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct PacketCount {
    pub packets: u64,
    pub bytes: u64,
}
const _: () = assert!(size_of::<PacketCount>() == 16);

impl PacketCount {
    pub fn add(&mut self, other: &Self) {
        self.packets = self.packets.wrapping_add(other.packets);
        self.bytes = self.bytes.wrapping_add(other.bytes);
    }
}

pub const IF_STATS: MapSpec = MapSpec {
    name: "IF_STATS",
    pin: "if_stats",
    kind: MapKind::PerCpuArray,
    key_size: 4,
    value_size: size_of::<PacketCount>() as u32,
    max_entries: (MAX_IFACES + 1) * IF_STATS_PER_SLOT,
    doc: "packets and bytes per interface slot and XDP verdict (slot * 8 + verdict), per CPU",
};

// ---------------------------------------------------------------- DROP_STATS

/// Why a packet was dropped. Numbers are never reused: a retired reason keeps
/// its slot. `DROP_REASON_NAMES[n]` names reason `n` for the CLI.
pub mod reason {
    /// The frame ends inside the IPv4 header, or before the length it claims.
    pub const IPV4_TRUNCATED: u32 = 1;
    /// The IPv4 header's version or header length is invalid.
    pub const IPV4_BAD_HEADER: u32 = 2;
    /// The IPv4 header checksum is wrong.
    pub const IPV4_BAD_CHECKSUM: u32 = 3;
    /// A firewall rule (user's or a default) denied the flow; the rule's
    /// counters say which.
    pub const FW_DENY: u32 = 4;
    /// A new flow that the rules allow could not be tracked: the conntrack
    /// table is full. Never allowed untracked.
    pub const CT_FULL: u32 = 5;
    /// A tracked connection that the current rules no longer allow.
    pub const FW_REVOKED: u32 = 6;
    /// A forwarded TCP packet that is not a SYN and belongs to no tracked
    /// connection (`ct state invalid`).
    pub const CT_INVALID: u32 = 7;
    /// No outside port was free for a new masqueraded connection.
    pub const NAT_EXHAUSTED: u32 = 8;
    /// The NAT bindings table is full.
    pub const NAT_FULL: u32 = 9;
    /// A frame on an interface the programs have no entry for (being
    /// configured, or not coresvc's): never passed unjudged.
    pub const IFACE_UNKNOWN: u32 = 10;
    /// The settings are not (yet) this schema's: nothing is configured.
    pub const NOT_CONFIGURED: u32 = 11;
    /// Neither IPv4, ARP nor IPv6: VLAN-tagged frames and every other
    /// ethertype (coresvc serves none of them).
    pub const L2_UNSERVED: u32 = 12;
    /// IPv6, dropped by `firewall.ipv6 = "drop"` (the default).
    pub const IPV6_POLICY: u32 = 13;
    /// An IPv4 packet whose transport header is cut short (a tiny first
    /// fragment, a truncated segment): it cannot be judged.
    pub const L4_TRUNCATED: u32 = 14;
    /// The source address cannot be on the interface it arrived on (not
    /// the segment's network or a route behind it; an inside or the
    /// gateway's own address from the uplink; a martian), or a tracked
    /// connection's packet on another interface than its side's (BCP 38).
    pub const SPOOFED: u32 = 15;
    /// A routing outcome the program cannot judge (a route with
    /// lightweight-tunnel encapsulation, an unknown FIB result).
    pub const ROUTE_UNSUPPORTED: u32 = 16;
    /// The source address has `dataplane.max_flows_per_host` connections.
    pub const FLOW_QUOTA: u32 = 17;
    /// The inside address holds `nat.max_ports_per_host` outside ports.
    pub const NAT_QUOTA: u32 = 18;
    /// A TCP RST or FIN outside the connection's sequence window.
    pub const TCP_WINDOW: u32 = 19;
    /// A later fragment whose first fragment was not seen and judged.
    pub const FRAG_UNTRACKED: u32 = 20;
    /// A fragment that could rewrite a judged header (TCP at offset 8,
    /// RFC 1858).
    pub const FRAG_INVALID: u32 = 21;
    /// TC egress: a forwarded packet of no tracked connection (something
    /// reached the stack unjudged; the last line of defence).
    pub const EGRESS_UNTRACKED: u32 = 22;
    pub const COUNT: u32 = 64;
}

pub const DROP_REASON_NAMES: &[(u32, &str)] = &[
    (reason::IPV4_TRUNCATED, "ipv4-truncated"),
    (reason::IPV4_BAD_HEADER, "ipv4-bad-header"),
    (reason::IPV4_BAD_CHECKSUM, "ipv4-bad-checksum"),
    (reason::FW_DENY, "firewall-deny"),
    (reason::CT_FULL, "conntrack-full"),
    (reason::FW_REVOKED, "firewall-revoked"),
    (reason::CT_INVALID, "conntrack-invalid"),
    (reason::NAT_EXHAUSTED, "nat-ports-exhausted"),
    (reason::NAT_FULL, "nat-table-full"),
    (reason::IFACE_UNKNOWN, "unknown-interface"),
    (reason::NOT_CONFIGURED, "not-configured"),
    (reason::L2_UNSERVED, "ethertype-unserved"),
    (reason::IPV6_POLICY, "ipv6-policy"),
    (reason::L4_TRUNCATED, "l4-truncated"),
    (reason::SPOOFED, "source-spoofed"),
    (reason::ROUTE_UNSUPPORTED, "route-unsupported"),
    (reason::FLOW_QUOTA, "flow-quota"),
    (reason::NAT_QUOTA, "nat-port-quota"),
    (reason::TCP_WINDOW, "tcp-out-of-window"),
    (reason::FRAG_UNTRACKED, "fragment-untracked"),
    (reason::FRAG_INVALID, "fragment-invalid"),
    (reason::EGRESS_UNTRACKED, "egress-untracked"),
];

pub fn drop_reason_name(n: u32) -> &'static str {
    DROP_REASON_NAMES.iter().find(|(r, _)| *r == n).map(|(_, name)| *name).unwrap_or("unknown")
}

pub const DROP_STATS: MapSpec = MapSpec {
    name: "DROP_STATS",
    pin: "drop_stats",
    kind: MapKind::PerCpuArray,
    key_size: 4,
    value_size: size_of::<PacketCount>() as u32,
    max_entries: reason::COUNT,
    doc: "packets and bytes dropped per reason (index = reason number), per CPU",
};

// ---------------------------------------------------------------- LOCAL_ADDRS

/// The gateway's own IPv4 addresses (network order): traffic to them is for
/// the zone "gateway", and traffic from them was opened by the gateway.
pub const LOCAL_ADDRS: MapSpec = MapSpec {
    name: "LOCAL_ADDRS",
    pin: "local_addrs",
    kind: MapKind::Hash,
    key_size: 4,
    value_size: 4,
    max_entries: 256,
    doc: "the gateway's own IPv4 addresses -> ifindex",
};

// ---------------------------------------------------------------- RULES

/// Rules per bank. Bank `b` occupies indices `b * RULES_PER_BANK ..`.
pub const RULES_PER_BANK: u32 = 1024;

/// A compiled firewall rule (see `coresvc_common::firewall`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Rule {
    /// Zones (`coresvc_common::firewall::ZONE_*`).
    pub from: u16,
    pub to: u16,
    /// IANA protocol number, 0 for any.
    pub proto: u8,
    /// `ACTION_ALLOW` or `ACTION_DENY`.
    pub action: u8,
    /// `RULE_F_*`.
    pub flags: u8,
    pub _pad: u8,
    /// Destination port range, inclusive (host order).
    pub port_lo: u16,
    pub port_hi: u16,
    /// The destination prefix set, when `RULE_F_PREFIXES` is set.
    pub prefix_set: u32,
}
const _: () = assert!(size_of::<Rule>() == 16);

/// The parts of a rule the matcher reads.
impl From<&Rule> for coresvc_common::firewall::RuleMatch {
    #[inline(always)]
    fn from(r: &Rule) -> Self {
        Self { from: r.from, to: r.to, proto: r.proto, flags: r.flags, port_lo: r.port_lo, port_hi: r.port_hi }
    }
}

/// `CtEntry::rule` when no rule decided: the last resort deny.
pub const NO_RULE: u32 = 0xffff;
/// `CtEntry::rule` of connections the gateway opened itself.
pub const CT_SELF_RULE: u32 = 0xfffe;

pub const RULES: MapSpec = MapSpec {
    name: "RULES",
    pin: "rules",
    kind: MapKind::Array,
    key_size: 4,
    value_size: size_of::<Rule>() as u32,
    max_entries: 2 * RULES_PER_BANK,
    doc: "two banks of compiled firewall rules (the active one in settings)",
};

pub const RULE_STATS: MapSpec = MapSpec {
    name: "RULE_STATS",
    pin: "rule_stats",
    kind: MapKind::PerCpuArray,
    key_size: 4,
    value_size: size_of::<PacketCount>() as u32,
    max_entries: 2 * RULES_PER_BANK,
    doc: "packets and bytes of the flows each rule decided, per CPU",
};

/// The data of a [`RULE_PREFIXES`] key (an LPM trie key is `prefix_len: u32`
/// followed by this): the prefix set (big-endian) and the IPv4 address. The
/// prefix length is 32 + the address prefix's, so a lookup only matches
/// within its set.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct PrefixData {
    pub set: [u8; 4],
    pub addr: [u8; 4],
}
const _: () = assert!(size_of::<PrefixData>() == 8);

pub const RULE_PREFIXES: MapSpec = MapSpec {
    name: "RULE_PREFIXES",
    pin: "rule_prefixes",
    kind: MapKind::LpmTrie,
    key_size: 4 + size_of::<PrefixData>() as u32,
    value_size: 4,
    max_entries: 4096,
    doc: "destination prefixes of the rules, by prefix set",
};

// ---------------------------------------------------------------- CONNTRACK

/// Key of [`CONNTRACK`]: one entry per connection, both directions. The
/// (address, port) that sorts lower is `a` (`coresvc_common::conntrack::normalise`).
/// For ICMP echo both ports are the identifier.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct CtKey {
    /// Network order.
    pub addr_a: [u8; 4],
    pub addr_b: [u8; 4],
    /// Host order.
    pub port_a: u16,
    pub port_b: u16,
    /// IANA protocol number.
    pub proto: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(size_of::<CtKey>() == 16);

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct CtEntry {
    /// CLOCK_MONOTONIC nanoseconds (bpf_ktime_get_ns).
    pub created_ns: u64,
    pub last_ns: u64,
    /// Originator to replier, and back.
    pub packets_orig: u64,
    pub bytes_orig: u64,
    pub packets_reply: u64,
    pub bytes_reply: u64,
    /// `Settings::generation` of the rules that admitted it.
    pub generation: u32,
    /// The rule index (in its bank) that admitted it.
    pub rule: u16,
    /// `coresvc_common::conntrack::CT_*`.
    pub state: u8,
    /// `coresvc_common::conntrack::CT_F_*`.
    pub flags: u8,
    /// Interfaces the two directions arrived on.
    pub ifindex_orig: u32,
    pub ifindex_reply: u32,
    /// NAT (`NAT_*` kinds): the outside address, the outside port the inside
    /// host is seen as (masquerade), and the port the originator addressed
    /// (port forwards). Network order address, host order ports.
    pub nat_addr: [u8; 4],
    pub snat_port: u16,
    pub dnat_port: u16,
    pub nat_kind: u8,
    /// TCP window scale of each side (originator, replier) from its SYN;
    /// [`TCP_NO_WSCALE`] when it sent none.
    pub wscale: [u8; 2],
    pub _pad: u8,
    /// TCP: the highest sequence number each side sent (seq + length), and
    /// the largest window each side advertised (scaled): an RST or FIN is
    /// accepted only within the receiver's window (loosely, as Linux does).
    pub seq_end: [u32; 2],
    pub max_win: [u32; 2],
    pub _pad2: [u8; 4],
}
const _: () = assert!(size_of::<CtEntry>() == 96);

/// `CtEntry::wscale` of a side whose SYN had no window-scale option.
pub const TCP_NO_WSCALE: u8 = 0xff;

/// No translation.
pub const NAT_NONE: u8 = 0;
/// Masquerade: the originator (inside, key side) is seen as
/// `nat_addr:snat_port` outside.
pub const NAT_SNAT: u8 = 1;
/// Port forward: the originator (outside) addressed `nat_addr:dnat_port`;
/// the key holds the inside host it reaches.
pub const NAT_DNAT: u8 = 2;
/// Hairpin: an inside originator addressed `nat_addr:dnat_port` (a port
/// forward to another inside host) and is seen there as `nat_addr:snat_port`.
pub const NAT_HAIRPIN: u8 = 3;

/// The default size; `dataplane.conntrack_max` overrides it. An LRU map, as
/// Cilium's: when full, a new connection replaces the least recently used
/// one in the kernel itself (also with the agent dead); per-source quotas
/// ([`SRC_QUOTA`]) keep one host from pushing everyone else out.
pub const CONNTRACK: MapSpec = MapSpec {
    name: "CONNTRACK",
    pin: "conntrack",
    kind: MapKind::LruHash,
    key_size: size_of::<CtKey>() as u32,
    value_size: size_of::<CtEntry>() as u32,
    max_entries: 65536,
    doc: "connection tracking: one entry per connection, both directions",
};

// ---------------------------------------------------------------- NAT

/// Key of [`NAT_BIND`] and [`NAT_FWD`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct NatKey {
    /// Network order.
    pub addr: [u8; 4],
    /// Host order (the ICMP echo identifier for ICMP).
    pub port: u16,
    pub proto: u8,
    /// `NAT_DIR_*`.
    pub dir: u8,
}
const _: () = assert!(size_of::<NatKey>() == 8);

/// Inside address and port -> the outside port (endpoint-independent mapping).
pub const NAT_DIR_OUT: u8 = 0;
/// Outside address and port -> the inside address and port.
pub const NAT_DIR_IN: u8 = 1;

/// Value of [`NAT_BIND`] and [`NAT_FWD`]: the other side of the mapping.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct NatBind {
    pub addr: [u8; 4],
    pub port: u16,
    pub _pad: u16,
    /// Last use (CLOCK_MONOTONIC ns); the agent removes idle unused pairs.
    pub last_ns: u64,
}
const _: () = assert!(size_of::<NatBind>() == 16);

/// Endpoint-independent bindings, always in pairs (OUT and IN). The programs
/// create them together and mend a pair they find half-made; only the agent
/// removes them, when no connection uses them.
pub const NAT_BIND: MapSpec = MapSpec {
    name: "NAT_BIND",
    pin: "nat_bind",
    kind: MapKind::Hash,
    key_size: size_of::<NatKey>() as u32,
    value_size: size_of::<NatBind>() as u32,
    max_entries: 131072,
    doc: "masquerade bindings: inside addr:port <-> outside port, both ways",
};

/// Port forwards from the configuration: (uplink address, port, proto) ->
/// the inside host and port.
pub const NAT_FWD: MapSpec = MapSpec {
    name: "NAT_FWD",
    pin: "nat_fwd",
    kind: MapKind::Hash,
    key_size: size_of::<NatKey>() as u32,
    value_size: size_of::<NatBind>() as u32,
    max_entries: 1024,
    doc: "port forwards: outside port -> inside host and port",
};

// ---------------------------------------------------------------- DNS cache

/// Bytes of cached sections (everything after the question) at most.
pub const DNS_MAX_SECTIONS: usize = 496;
/// TTL fields of one answer that age (records from upstream) at most.
pub const DNS_MAX_AGING: usize = 16;
/// Epochs an answer depends on at most (the catalog's and its zones').
pub const DNS_MAX_ZONES: usize = 4;
/// Whole answers (DNS message) the agent caches at most: never truncated
/// for any client (RFC 1035 §4.2.1).
pub const DNS_MAX_ANSWER: usize = 512;

/// The question a [`DNS_CACHE`] entry answers, as
/// `coresvc_common::dns::parse_query` computes it on both sides. The map's
/// key is its [`DnsKey::hash`] (a short key hashes and compares in a
/// fraction of the time); the entry holds the whole question, and the
/// program answers only when it is equal. Aligned to 8 so the name is
/// filled in words.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct DnsKey {
    /// The question name in wire format, ASCII lower-cased, zero after
    /// `name_len` bytes.
    pub name: [u8; coresvc_common::dns::MAX_NAME],
    /// Host order.
    pub qtype: u16,
    pub qclass: u16,
    /// `coresvc_common::dns::KEY_F_*` (EDNS present, DO).
    pub flags: u8,
    pub name_len: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<DnsKey>() == 72);

impl Default for DnsKey {
    fn default() -> Self {
        Zeroable::zeroed()
    }
}

impl DnsKey {
    /// The name as the little-endian words `coresvc_common::dns` works in.
    pub fn name_words(&mut self) -> &mut [u64; coresvc_common::dns::NAME_WORDS] {
        // SAFETY: `name` is the first field of an 8-aligned struct and holds
        // exactly NAME_WORDS words; every bit pattern is a valid u64.
        unsafe { &mut *(self.name.as_mut_ptr() as *mut [u64; coresvc_common::dns::NAME_WORDS]) }
    }

    /// The whole question as words, as the program reads it.
    pub fn words(&self) -> &[u64; DNS_KEY_WORDS] {
        bytemuck::cast_ref(self)
    }

    /// The key of [`DNS_CACHE`].
    pub fn hash(&self) -> u64 {
        coresvc_common::dns::question_hash(self.words())
    }
}

/// Words of a [`DnsKey`].
pub const DNS_KEY_WORDS: usize = size_of::<DnsKey>() / 8;
const _: () = assert!(DNS_KEY_WORDS == coresvc_common::dns::NAME_WORDS + 1);

/// Value of [`DNS_CACHE`]: the agent's answer to the key's question, minus
/// what the program takes from the query (ID, RD, CD and the question as
/// received).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct DnsAnswer {
    /// CLOCK_MONOTONIC ns: never served at or after this.
    pub expires_ns: u64,
    /// CLOCK_MONOTONIC ns the aging TTLs were stored at; served TTLs are
    /// the stored ones minus the whole seconds since (never below 0).
    pub stored_ns: u64,
    /// The question answered (the map's key is only its hash).
    pub question: DnsKey,
    /// Valid while `epochs[i] == DNS_EPOCHS[slots[i]]` for `i < zones`
    /// (slot 0, the catalog's epoch, always first).
    pub epochs: [u64; DNS_MAX_ZONES],
    pub slots: [u8; DNS_MAX_ZONES],
    pub zones: u8,
    /// How many entries of `ttl_at` are used.
    pub aging: u8,
    /// DNS header bytes 2 and 3 (QR, opcode, AA, RA, rcode) without RD and
    /// CD, which come from the query. RD set here: the answer is for
    /// queries with RD set only.
    pub flags: [u8; 2],
    /// ANCOUNT, NSCOUNT, ARCOUNT (network order).
    pub counts: [u8; 6],
    pub sections_len: u16,
    /// RFC 1071 sum of `sections[..sections_len]` (as stored, laid out from
    /// an even offset).
    pub sections_sum: u16,
    pub _pad: [u8; 6],
    /// Offsets in `sections` of the TTL fields that age.
    pub ttl_at: [u16; DNS_MAX_AGING],
    /// The answer, authority and additional sections, compressed against a
    /// question at message offset 12.
    pub sections: [u8; DNS_MAX_SECTIONS],
}
const _: () = assert!(size_of::<DnsAnswer>() == 672);

/// Slots of [`DNS_EPOCHS`]: 0 is the catalog's, `1 + i` zone `i`'s.
pub const DNS_EPOCH_SLOTS: u32 = 256;

/// Per-segment counters of the cache (per CPU). Field `n` is counter `n` of
/// [`dns_counter`]; numbers are never reused.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct DnsStats {
    /// Answered from the cache (XDP_TX).
    pub hits: u64,
    /// Cacheable queries without an entry.
    pub misses: u64,
    /// Entries found past their expiry.
    pub expired: u64,
    /// Entries found whose data changed since (an epoch moved on).
    pub invalidated: u64,
    pub pass_not_query: u64,
    pub pass_counts: u64,
    pub pass_malformed: u64,
    pub pass_too_long: u64,
    pub pass_edns: u64,
    pub pass_ip: u64,
    pub pass_checksum: u64,
    pub pass_source: u64,
    pub pass_tcp: u64,
    pub pass_firewall: u64,
    pub pass_no_room: u64,
    /// Answers dropped because the entry changed while it was copied (a
    /// preallocated map reuses an entry at once); the client asks again.
    pub dropped_changed: u64,
    /// Answers not sent: the client's prefix was over its rate
    /// ([`DNS_RRL_CFG`]); the query is dropped.
    pub rate_limited: u64,
    /// Answers over the rate sent truncated instead (TC set, no records):
    /// a real client retries over TCP.
    pub slipped: u64,
}
const _: () = assert!(size_of::<DnsStats>() == 8 * dns_counter::COUNT as usize);

impl DnsStats {
    pub fn add(&mut self, o: &Self) {
        let a: &mut [u64; dns_counter::COUNT as usize] = bytemuck::cast_mut(self);
        let b: &[u64; dns_counter::COUNT as usize] = bytemuck::cast_ref(o);
        for (x, y) in a.iter_mut().zip(b) {
            *x = x.wrapping_add(*y);
        }
    }

    /// Counter `n` of [`dns_counter`].
    pub fn get(&self, n: u32) -> u64 {
        let a: &[u64; dns_counter::COUNT as usize] = bytemuck::cast_ref(self);
        a.get(n as usize).copied().unwrap_or(0)
    }
}

/// Counter numbers of [`DnsStats`] (its field order). Passes go to the agent.
pub mod dns_counter {
    pub const HITS: u32 = 0;
    pub const MISSES: u32 = 1;
    pub const EXPIRED: u32 = 2;
    pub const INVALIDATED: u32 = 3;
    /// A response, another opcode than QUERY, or TC set.
    pub const NOT_QUERY: u32 = 4;
    /// Not exactly one question and nothing but an OPT besides.
    pub const COUNTS: u32 = 5;
    /// Truncated, bad label, compression pointer in the question, bad lengths.
    pub const MALFORMED: u32 = 6;
    /// A name or query longer than the program handles.
    pub const TOO_LONG: u32 = 7;
    /// EDNS the cache does not answer (version, Client Subnet, ...).
    pub const EDNS: u32 = 8;
    /// IP options or a fragment.
    pub const IP: u32 = 9;
    /// A bad IPv4 header or UDP checksum (the stack drops it).
    pub const CHECKSUM: u32 = 10;
    /// From outside the segment, or not unicast to the gateway.
    pub const SOURCE: u32 = 11;
    /// DNS over TCP.
    pub const TCP: u32 = 12;
    /// The firewall does not allow it (the normal path drops it).
    pub const FIREWALL: u32 = 13;
    /// The answer did not fit the frame.
    pub const NO_ROOM: u32 = 14;
    /// The entry changed while it was copied: the frame is dropped.
    pub const CHANGED: u32 = 15;
    /// Over the rate limit: dropped.
    pub const RATE_LIMITED: u32 = 16;
    /// Over the rate limit: answered truncated (TC=1).
    pub const SLIPPED: u32 = 17;
    pub const COUNT: u32 = 18;
}

/// Names of the counters of [`DnsStats`], by number.
pub const DNS_COUNTER_NAMES: &[(u32, &str)] = &[
    (dns_counter::HITS, "hits"),
    (dns_counter::MISSES, "misses"),
    (dns_counter::EXPIRED, "expired"),
    (dns_counter::INVALIDATED, "invalidated"),
    (dns_counter::NOT_QUERY, "not-query"),
    (dns_counter::COUNTS, "counts"),
    (dns_counter::MALFORMED, "malformed"),
    (dns_counter::TOO_LONG, "too-long"),
    (dns_counter::EDNS, "edns"),
    (dns_counter::IP, "ip-options-or-fragment"),
    (dns_counter::CHECKSUM, "bad-checksum"),
    (dns_counter::SOURCE, "not-from-segment"),
    (dns_counter::TCP, "tcp"),
    (dns_counter::FIREWALL, "firewall"),
    (dns_counter::NO_ROOM, "no-room"),
    (dns_counter::CHANGED, "entry-changed"),
    (dns_counter::RATE_LIMITED, "rate-limited"),
    (dns_counter::SLIPPED, "slipped"),
];

/// The answer cache: questions the agent answered (local data and
/// forwarded answers), answered again by XDP on the segments. The agent
/// writes; the programs only read (LRU order aside).
pub const DNS_CACHE: MapSpec = MapSpec {
    name: "DNS_CACHE",
    pin: "dns_cache",
    kind: MapKind::LruHash,
    key_size: 8,
    value_size: size_of::<DnsAnswer>() as u32,
    max_entries: 4096,
    doc: "DNS answer cache: hash of the question -> the question, the agent's answer, its expiry and epochs",
};

/// Epochs of the DNS data: a change to a zone gives it a new epoch (a
/// reload gives the catalog one), which invalidates every cached answer
/// that depended on it in one write. Values are never reused.
pub const DNS_EPOCHS: MapSpec = MapSpec {
    name: "DNS_EPOCHS",
    pin: "dns_epochs",
    kind: MapKind::Array,
    key_size: 4,
    value_size: 8,
    max_entries: DNS_EPOCH_SLOTS,
    doc: "DNS data epochs: slot 0 the catalog's, 1 + i zone i's",
};

/// Counters of the answer cache per segment (index = segment index).
pub const DNS_STATS: MapSpec = MapSpec {
    name: "DNS_STATS",
    pin: "dns_stats",
    kind: MapKind::PerCpuArray,
    key_size: 4,
    value_size: size_of::<DnsStats>() as u32,
    max_entries: 64,
    doc: "DNS cache hits, misses and passes by reason, per segment, per CPU",
};

/// The program's working memory for one query (too big for the BPF stack):
/// the key, and the query frame as loaded (`coresvc_common::dns::FrameBuf`'s
/// layout), which becomes the answer's headers.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct DnsScratch {
    pub key: DnsKey,
    pub frame: [u8; coresvc_common::dns::FRAME_BUF_LEN],
}
const _: () = assert!(size_of::<DnsScratch>() == 72 + coresvc_common::dns::FRAME_BUF_LEN);
const _: () = assert!(core::mem::offset_of!(DnsScratch, frame) % 8 == 0);

impl DnsScratch {
    /// The key and the frame buffer in the type that reads it.
    pub fn split(&mut self) -> (&mut DnsKey, &mut coresvc_common::dns::FrameBuf) {
        // SAFETY: FrameBuf is a repr(C, align(8)) wrapper of
        // [u8; FRAME_BUF_LEN]; `frame` is 8-aligned (asserted above) and of
        // that size.
        let f = unsafe { &mut *(self.frame.as_mut_ptr() as *mut coresvc_common::dns::FrameBuf) };
        (&mut self.key, f)
    }
}

/// Per-CPU working memory of the DNS cache (nothing is kept in it).
pub const DNS_SCRATCH: MapSpec = MapSpec {
    name: "DNS_SCRATCH",
    pin: "dns_scratch",
    kind: MapKind::PerCpuArray,
    key_size: 4,
    value_size: size_of::<DnsScratch>() as u32,
    max_entries: 1,
    doc: "per-CPU working memory of the DNS cache (one query at a time)",
};

// ---------------------------------------------------------------- hardening

/// What one source address uses, for the per-source quotas (value of
/// [`SRC_QUOTA`]). The programs count up as they create; the agent's
/// collection counts again from the tables and writes the exact figures
/// (`reconciled_ns`). Without the agent for a minute, a source at its quota
/// has its counts halved once a minute, so no host is locked out for good.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct SrcUse {
    /// Forwarded connections it originated.
    pub flows: u32,
    /// Masquerade bindings of this inside address.
    pub nat_ports: u32,
    /// CLOCK_MONOTONIC ns of the last recount (agent) or halving (program).
    pub reconciled_ns: u64,
}
const _: () = assert!(size_of::<SrcUse>() == 16);

/// After this long without a recount, a source at its quota is halved.
pub const SRC_QUOTA_STALE_NS: u64 = 60_000_000_000;

pub const SRC_QUOTA: MapSpec = MapSpec {
    name: "SRC_QUOTA",
    pin: "src_quota",
    kind: MapKind::LruHash,
    key_size: 4,
    value_size: size_of::<SrcUse>() as u32,
    max_entries: 16384,
    doc: "per-source address: forwarded connections and NAT ports in use (quotas)",
};

/// Prefix set of [`SRC_GUARD`] holding every inside network (segments and
/// routes behind them) and the gateway's addresses: sources that never
/// arrive from the uplink. Set `1 + i`: routes behind segment `i`.
pub const SRC_GUARD_INSIDE: u32 = 0;

/// Source validation (BCP 38): keys are [`PrefixData`] like
/// [`RULE_PREFIXES`]'.
pub const SRC_GUARD: MapSpec = MapSpec {
    name: "SRC_GUARD",
    pin: "src_guard",
    kind: MapKind::LpmTrie,
    key_size: 4 + size_of::<PrefixData>() as u32,
    value_size: 4,
    max_entries: 1024,
    doc: "source validation: inside prefixes (set 0) and routes behind each segment (set 1 + segment)",
};

/// Key of [`FRAGS`]: one IPv4 datagram's fragments, as they arrive
/// (`stage` 0, XDP) or leave (`stage` 1, TC egress).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct FragKey {
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
    /// The IP identification (network order bytes).
    pub id: [u8; 2],
    pub proto: u8,
    pub stage: u8,
}
const _: () = assert!(size_of::<FragKey>() == 12);

/// Value of [`FRAGS`]: the verdict of the datagram's first fragment, which
/// its later fragments (no ports to judge by) follow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct FragVerdict {
    /// CLOCK_MONOTONIC ns of the first fragment; followed for
    /// [`FRAG_TIMEOUT_NS`] (the kernel's reassembly timeout).
    pub first_ns: u64,
    /// The address the later fragments get: destination at XDP (DNAT),
    /// source at TC egress (SNAT); 0: unchanged.
    pub addr: [u8; 4],
    pub _pad: [u8; 4],
}
const _: () = assert!(size_of::<FragVerdict>() == 16);

pub const FRAG_TIMEOUT_NS: u64 = 30_000_000_000;

pub const FRAGS: MapSpec = MapSpec {
    name: "FRAGS",
    pin: "frags",
    kind: MapKind::LruHash,
    key_size: size_of::<FragKey>() as u32,
    value_size: size_of::<FragVerdict>() as u32,
    max_entries: 8192,
    doc: "fragmented datagrams: the first fragment's verdict and translation, for the later ones",
};

/// Per-CPU working memory of the XDP programs for the frame being judged
/// (its parsed headers, shared by the stages of the pipeline; too big for
/// the BPF stack). Nothing is kept in it between frames.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct PktScratch {
    pub bytes: [u8; 256],
}
const _: () = assert!(size_of::<PktScratch>() == 256);

pub const PKT_SCRATCH: MapSpec = MapSpec {
    name: "PKT_SCRATCH",
    pin: "pkt_scratch",
    kind: MapKind::PerCpuArray,
    key_size: 4,
    value_size: size_of::<PktScratch>() as u32,
    max_entries: 1,
    doc: "per-CPU working memory of the XDP programs (the frame being judged)",
};

// ---------------------------------------------------------------- DNS RRL

/// Response rate limiting of the XDP answer cache (as Knot's and BIND's
/// RRL): answers to one client prefix are limited to a rate with a burst
/// (GCRA, `coresvc_common::dns::rate_limit`); over it, every `slip`-th
/// answer goes out truncated (TC=1) and the others are dropped. Written by
/// the agent from `[dns.rate_limit]`; `interval_ns` 0 is off.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct DnsRrlConfig {
    /// Nanoseconds per answer at the sustained rate (1e9 / rate); 0: off.
    pub interval_ns: u64,
    /// How far ahead of the present a prefix's schedule may run: the burst
    /// beyond the first answer, (burst - 1) * interval.
    pub burst_ns: u64,
    /// Every `slip`-th limited answer is sent truncated; 0: none.
    pub slip: u32,
    /// The IPv4 prefix mask (host order), e.g. 0xffffff00 for /24.
    pub prefix_mask: u32,
}
const _: () = assert!(size_of::<DnsRrlConfig>() == 24);

pub const DNS_RRL_CFG: MapSpec = MapSpec {
    name: "DNS_RRL_CFG",
    pin: "dns_rrl_cfg",
    kind: MapKind::Array,
    key_size: 4,
    value_size: size_of::<DnsRrlConfig>() as u32,
    max_entries: 1,
    doc: "DNS response rate limiting of the XDP cache: rate, burst, slip, prefix (index 0)",
};

/// A client prefix's state (per CPU): a direct-mapped table, so a prefix
/// takes over a slot another one held (sources are the segment's hosts,
/// so few prefixes meet).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct DnsRrlBucket {
    /// The theoretical arrival time of the next answer (CLOCK_MONOTONIC ns).
    pub tat_ns: u64,
    /// The prefix (host order) the slot holds.
    pub prefix: u32,
    /// Limited answers since the last slip.
    pub limited: u32,
}
const _: () = assert!(size_of::<DnsRrlBucket>() == 16);

/// Slots of [`DNS_RRL`] (a power of two).
pub const DNS_RRL_SLOTS: u32 = 1024;

pub const DNS_RRL: MapSpec = MapSpec {
    name: "DNS_RRL",
    pin: "dns_rrl",
    kind: MapKind::PerCpuArray,
    key_size: 4,
    value_size: size_of::<DnsRrlBucket>() as u32,
    max_entries: DNS_RRL_SLOTS,
    doc: "DNS response rate limiting state per client prefix (hashed slot), per CPU",
};

/// Every map of the schema, in creation order.
pub const ALL_MAPS: &[MapSpec] = &[
    SETTINGS,
    IFACES,
    IFACES_LOW,
    IF_STATS,
    DROP_STATS,
    LOCAL_ADDRS,
    RULES,
    RULE_STATS,
    RULE_PREFIXES,
    CONNTRACK,
    NAT_BIND,
    NAT_FWD,
    DNS_CACHE,
    DNS_EPOCHS,
    DNS_STATS,
    DNS_SCRATCH,
    SRC_QUOTA,
    SRC_GUARD,
    FRAGS,
    PKT_SCRATCH,
    DNS_RRL_CFG,
    DNS_RRL,
];

/// Maps whose size comes from the configuration (checked against it, not
/// against `max_entries` here).
pub const SIZED_BY_CONFIG: &[&str] = &["CONNTRACK"];

/// Names of the programs in the eBPF object.
pub mod programs {
    /// XDP on every segment interface.
    pub const SEGMENT_INGRESS: &str = "segment_ingress";
    /// XDP on the uplink.
    pub const UPLINK_INGRESS: &str = "uplink_ingress";
    /// TC egress on every interface: tracks connections the gateway opens.
    pub const EGRESS: &str = "egress";
}

pod!(
    Settings,
    IfaceInfo,
    PacketCount,
    Rule,
    PrefixData,
    CtKey,
    CtEntry,
    NatKey,
    NatBind,
    DnsKey,
    DnsAnswer,
    DnsStats,
    DnsScratch,
    SrcUse,
    FragKey,
    FragVerdict,
    PktScratch,
    DnsRrlConfig,
    DnsRrlBucket
);

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    #[test]
    fn map_names_fit_the_kernel_limit() {
        for m in ALL_MAPS {
            assert!(m.name.len() <= 15, "{} is longer than 15 bytes", m.name);
            assert!(!m.pin.contains('/'), "{} pin must be a plain file name", m.name);
        }
    }

    #[test]
    fn names_and_pins_are_unique() {
        for (i, a) in ALL_MAPS.iter().enumerate() {
            for b in &ALL_MAPS[i + 1..] {
                assert_ne!(a.name, b.name);
                assert_ne!(a.pin, b.pin);
            }
        }
    }

    #[test]
    fn dns_counters_are_the_fields_in_order() {
        let s = DnsStats { pass_no_room: 7, hits: 1, ..Default::default() };
        assert_eq!(s.get(dns_counter::NO_ROOM), 7);
        assert_eq!(s.get(dns_counter::HITS), 1);
        assert_eq!(core::mem::offset_of!(DnsStats, pass_tcp), 8 * dns_counter::TCP as usize);
        assert_eq!(core::mem::offset_of!(DnsStats, pass_source), 8 * dns_counter::SOURCE as usize);
        for (i, (n, _)) in DNS_COUNTER_NAMES.iter().enumerate() {
            assert_eq!(*n, i as u32);
        }
    }

    #[test]
    fn dns_verdicts_round_trip() {
        for slot in [0, 1, 127, 2 * RULES_PER_BANK - 1] {
            for allow in [false, true] {
                let v = dns_verdict::encode(slot, allow);
                assert_ne!(v, dns_verdict::SCAN);
                assert_eq!(dns_verdict::decode(v), Some((slot, allow)));
            }
        }
        assert_eq!(dns_verdict::decode(dns_verdict::encode(NO_RULE, false)), Some((NO_RULE, false)));
        assert_eq!(dns_verdict::decode(dns_verdict::SCAN), None);
        for never_written in [dns_verdict::ALLOW, 0xffff] {
            assert_eq!(dns_verdict::decode(never_written), None, "{never_written:#x}: left to the scan");
        }
    }

    #[test]
    fn every_interface_slot_has_its_own_counters() {
        assert_eq!(if_stats_index(0, VERDICT_PASS), VERDICT_PASS);
        assert_eq!(if_stats_index(MAX_IFACES as u8, VERDICT_REDIRECT), IF_STATS.max_entries - IF_STATS_PER_SLOT + 4);
        assert!(VERDICT_NAMES.len() as u32 <= IF_STATS_PER_SLOT);
    }

    #[test]
    fn reasons_are_unique_and_in_range() {
        for (i, (a, _)) in DROP_REASON_NAMES.iter().enumerate() {
            assert!(*a > 0 && *a < reason::COUNT);
            for (b, _) in &DROP_REASON_NAMES[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }
}
