//! The maps, declared with the types and sizes of `coresvc-maps-schema`.
//! The symbol names are the map names the schema lists; a test in the agent
//! checks the built object against the schema.

use aya_ebpf::{
    btf_maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, lpm_trie::Key},
    macros::btf_map,
};
use coresvc_maps_schema::{
    self as schema, CtEntry, CtKey, DnsAnswer, DnsRrlBucket, DnsRrlConfig, DnsScratch, DnsStats, FragKey, FragVerdict,
    IfaceInfo, NatBind, NatKey, PacketCount, PktScratch, PrefixData, Rule, Settings, SrcUse,
};

#[btf_map]
pub static SETTINGS: Array<Settings, { schema::SETTINGS.max_entries as usize }> = Array::new();

#[btf_map]
pub static IFACES: HashMap<u32, IfaceInfo, { schema::IFACES.max_entries as usize }> = HashMap::new();

#[btf_map]
pub static IFACES_LOW: Array<IfaceInfo, { schema::IFACES_LOW.max_entries as usize }> = Array::new();

#[btf_map]
pub static IF_STATS: PerCpuArray<PacketCount, { schema::IF_STATS.max_entries as usize }> = PerCpuArray::new();

#[btf_map]
pub static DROP_STATS: PerCpuArray<PacketCount, { schema::DROP_STATS.max_entries as usize }> = PerCpuArray::new();

#[btf_map]
pub static LOCAL_ADDRS: HashMap<[u8; 4], u32, { schema::LOCAL_ADDRS.max_entries as usize }> = HashMap::new();

#[btf_map]
pub static RULES: Array<Rule, { schema::RULES.max_entries as usize }> = Array::new();

#[btf_map]
pub static RULE_STATS: PerCpuArray<PacketCount, { schema::RULE_STATS.max_entries as usize }> = PerCpuArray::new();

#[btf_map]
pub static RULE_PREFIXES: LpmTrie<PrefixData, u32, { schema::RULE_PREFIXES.max_entries as usize }> = LpmTrie::new();

#[btf_map]
pub static CONNTRACK: LruHashMap<CtKey, CtEntry, { schema::CONNTRACK.max_entries as usize }> = LruHashMap::new();

#[btf_map]
pub static NAT_BIND: HashMap<NatKey, NatBind, { schema::NAT_BIND.max_entries as usize }> = HashMap::new();

#[btf_map]
pub static NAT_FWD: HashMap<NatKey, NatBind, { schema::NAT_FWD.max_entries as usize }> = HashMap::new();

#[btf_map]
pub static DNS_CACHE: LruHashMap<u64, DnsAnswer, { schema::DNS_CACHE.max_entries as usize }> = LruHashMap::new();

#[btf_map]
pub static DNS_EPOCHS: Array<u64, { schema::DNS_EPOCHS.max_entries as usize }> = Array::new();

#[btf_map]
pub static DNS_STATS: PerCpuArray<DnsStats, { schema::DNS_STATS.max_entries as usize }> = PerCpuArray::new();

#[btf_map]
pub static DNS_SCRATCH: PerCpuArray<DnsScratch, { schema::DNS_SCRATCH.max_entries as usize }> = PerCpuArray::new();

#[btf_map]
pub static SRC_QUOTA: LruHashMap<[u8; 4], SrcUse, { schema::SRC_QUOTA.max_entries as usize }> = LruHashMap::new();

#[btf_map]
pub static SRC_GUARD: LpmTrie<PrefixData, u32, { schema::SRC_GUARD.max_entries as usize }> = LpmTrie::new();

#[btf_map]
pub static FRAGS: LruHashMap<FragKey, FragVerdict, { schema::FRAGS.max_entries as usize }> = LruHashMap::new();

#[btf_map]
pub static PKT_SCRATCH: PerCpuArray<PktScratch, { schema::PKT_SCRATCH.max_entries as usize }> = PerCpuArray::new();

#[btf_map]
pub static DNS_RRL_CFG: Array<DnsRrlConfig, { schema::DNS_RRL_CFG.max_entries as usize }> = Array::new();

#[btf_map]
pub static DNS_RRL: PerCpuArray<DnsRrlBucket, { schema::DNS_RRL.max_entries as usize }> = PerCpuArray::new();

#[inline(always)]
pub fn settings() -> Option<&'static Settings> {
    SETTINGS.get(0)
}

/// The entry of interface `ifindex`, if coresvc configured it: by index
/// below IFACES_LOW's size (an array lookup the verifier inlines), hashed
/// above.
#[inline(always)]
pub fn iface(ifindex: u32) -> Option<IfaceInfo> {
    if ifindex < schema::IFACES_LOW.max_entries {
        return IFACES_LOW.get(ifindex).filter(|i| i.role != 0).copied();
    }
    // SAFETY: the value is copied out at once.
    unsafe { IFACES.get(ifindex).copied() }
}

#[inline(always)]
pub fn is_local(addr: [u8; 4]) -> bool {
    // SAFETY: only the presence is used.
    unsafe { LOCAL_ADDRS.get(addr).is_some() }
}

/// True when `addr` is in prefix set `set`.
#[inline(always)]
pub fn in_prefix_set(set: u32, addr: [u8; 4]) -> bool {
    let key = Key::new(64, PrefixData { set: set.to_be_bytes(), addr });
    RULE_PREFIXES.get(&key).is_some()
}

/// True when `addr` is in [`SRC_GUARD`]'s set `set`.
#[inline(always)]
pub fn in_src_guard(set: u32, addr: [u8; 4]) -> bool {
    let key = Key::new(64, PrefixData { set: set.to_be_bytes(), addr });
    SRC_GUARD.get(&key).is_some()
}
