//! The maps, declared with the types and sizes of `coresvc-maps-schema`.
//! The symbol names are the map names the schema lists; a test in the agent
//! checks the built object against the schema.

use aya_ebpf::{
    btf_maps::{Array, HashMap, PerCpuArray, PerCpuHashMap},
    macros::btf_map,
    programs::XdpContext,
};
use coresvc_maps_schema::{self as schema, IfVerdict, IfaceInfo, PacketCount, Settings};

#[btf_map]
pub static SETTINGS: Array<Settings, { schema::SETTINGS.max_entries as usize }> = Array::new();

#[btf_map]
pub static IFACES: HashMap<u32, IfaceInfo, { schema::IFACES.max_entries as usize }> = HashMap::new();

#[btf_map]
pub static IF_STATS: PerCpuHashMap<IfVerdict, PacketCount, { schema::IF_STATS.max_entries as usize }> =
    PerCpuHashMap::new();

#[btf_map]
pub static DROP_STATS: PerCpuArray<PacketCount, { schema::DROP_STATS.max_entries as usize }> = PerCpuArray::new();

#[inline(always)]
pub fn settings() -> Option<&'static Settings> {
    SETTINGS.get(0)
}

#[inline(always)]
pub fn iface(ctx: &XdpContext) -> Option<IfaceInfo> {
    let ifindex = ctx.ingress_ifindex() as u32;
    // SAFETY: the value is copied out at once; the agent may replace it at
    // any time, which is fine for a plain copy.
    unsafe { IFACES.get(ifindex).copied() }
}
