//! The DNS query path with arbitrary bytes: over UDP and TCP, from a client
//! on a segment. Nothing may panic; replies must be at least a header and fit
//! the UDP limit.
#![no_main]

use std::{net::IpAddr, sync::LazyLock};

use coresvc::{
    config::Config,
    dns::handler::{Resolver, Step, Transport},
};
use libfuzzer_sys::fuzz_target;

static RESOLVER: LazyLock<Resolver> = LazyLock::new(|| {
    let cfg = Config::load(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/coresvc.toml"))
        .expect("the example configuration");
    Resolver::offline(&cfg).expect("the example zones")
});

const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 20, 0, 50));

fuzz_target!(|data: &[u8]| {
    for t in [Transport::Udp, Transport::Tcp] {
        if let Step::Reply(out) = RESOLVER.handle(data, CLIENT, t) {
            assert!(out.len() >= 12);
            if t == Transport::Udp {
                assert!(out.len() <= 1232);
            }
        }
    }
});
