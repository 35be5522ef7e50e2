//! The DHCP packet path with arbitrary bytes: one server, its state kept
//! across inputs (so sequences build up leases). Nothing may panic; every
//! reply must parse as DHCP and every journal record must read back.
#![no_main]

use std::{
    net::Ipv4Addr,
    path::Path,
    sync::{LazyLock, Mutex},
};

use coresvc::{
    config::Config,
    dhcp::{journal, server::Server},
};
use libfuzzer_sys::fuzz_target;

static SERVER: LazyLock<Mutex<(Server, u64)>> = LazyLock::new(|| {
    let cfg = Config::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/coresvc.toml"))
        .expect("the example configuration");
    Mutex::new((Server::new(&cfg, Vec::new()), 1_800_000_000))
});

fuzz_target!(|data: &[u8]| {
    let Some((&seg, packet)) = data.split_first() else { return };
    let mut guard = SERVER.lock().expect("lock");
    let (server, now) = &mut *guard;
    *now += 1;
    let segment = (seg < 3).then_some(usize::from(seg));
    // From the relay a request names (so relayed paths are reached), else
    // from a client without an address.
    let source = packet.get(24..28).map_or(Ipv4Addr::UNSPECIFIED, |g| Ipv4Addr::new(g[0], g[1], g[2], g[3]));
    let out = server.handle(segment, source, packet, *now);
    if let Some(r) = &out.reply {
        assert!(r.bytes.len() >= 300);
        assert_eq!(r.bytes[0], 2, "a BOOTREPLY");
    }
    let mut file = b"CSVCLEAS\x01\0\0\0\0\0\0\0".to_vec();
    for r in &out.records {
        journal::encode(r, &mut file);
    }
    let back = journal::replay(&file, Path::new("fuzz")).expect("records read back");
    assert_eq!(back.records, out.records);
    if *now % 1000 == 0 {
        server.expire(*now);
    }
});
