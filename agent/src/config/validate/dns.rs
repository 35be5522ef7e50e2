//! `[dns]`: limits, forwards, rate limiting, TSIG keys and secondaries.

use super::Validator;
use crate::{cfg_path, names::valid_name};

impl Validator<'_> {
    pub(super) fn dns(&mut self) {
        let c = self.c;
        for (i, f) in c.dns.forwards.iter().enumerate() {
            if !valid_name(f.domain.trim_end_matches('.')) {
                self.err(
                    cfg_path!("dns", "forward", i, "domain"),
                    format!("{:?} is not a valid domain name", f.domain),
                );
            }
            if f.upstreams.is_empty() {
                self.err(cfg_path!("dns", "forward", i, "upstreams"), "give at least one upstream server");
            }
        }
        if c.dns.tcp_max_connections == 0 {
            self.err(cfg_path!("dns", "tcp_max_connections"), "allow at least one TCP connection; use e.g. 256");
        }
        if c.dns.tcp_idle_timeout.secs() == 0 {
            self.err(cfg_path!("dns", "tcp_idle_timeout"), "use at least 1 second");
        }
        if c.dns.tcp_max_per_client == 0 {
            self.err(
                cfg_path!("dns", "tcp_max_per_client"),
                "allow at least one TCP connection per client; use e.g. 16",
            );
        }
        if c.dns.tcp_write_timeout.secs() == 0 {
            self.err(cfg_path!("dns", "tcp_write_timeout"), "use at least 1 second, e.g. \"2s\"");
        }
        if c.dns.cache_size == 0 {
            self.err(cfg_path!("dns", "cache_size"), "the cache needs at least one entry; use e.g. 10000");
        }
        if !(1..=10_000).contains(&c.dns.forward_max) {
            self.err(
                cfg_path!("dns", "forward_max"),
                format!(
                    "{} is not a usable cap on questions outstanding upstream; use 1 to 10000, e.g. 150",
                    c.dns.forward_max
                ),
            );
        }
        if !(1..=1024).contains(&c.dns.upstream_sockets) {
            self.err(
                cfg_path!("dns", "upstream_sockets"),
                format!("{} is not a usable pool of upstream sockets; use 1 to 1024, e.g. 32", c.dns.upstream_sockets),
            );
        }
        let rl = &c.dns.rate_limit;
        if rl.responses_per_second > 1_000_000 {
            self.err(
                cfg_path!("dns", "rate_limit", "responses_per_second"),
                format!(
                    "{} is beyond what rate limiting measures; use 1 to 1000000 (or 0: off)",
                    rl.responses_per_second
                ),
            );
        }
        if rl.burst > 1_000_000 {
            self.err(
                cfg_path!("dns", "rate_limit", "burst"),
                format!("{} is too large; use up to 1000000 (0: the rate)", rl.burst),
            );
        }
        if rl.slip > 10 {
            self.err(
                cfg_path!("dns", "rate_limit", "slip"),
                format!("{} is not a slip; use 0 (drop every limited answer) to 10, e.g. 2", rl.slip),
            );
        }
        if !(8..=32).contains(&rl.ipv4_prefix_length) {
            self.err(cfg_path!("dns", "rate_limit", "ipv4_prefix_length"), "use a prefix length of 8 to 32, e.g. 24");
        }
        if !(16..=128).contains(&rl.ipv6_prefix_length) {
            self.err(cfg_path!("dns", "rate_limit", "ipv6_prefix_length"), "use a prefix length of 16 to 128, e.g. 56");
        }
        if c.dns.cache_bytes.0 < 64 * 1024 {
            self.err(
                cfg_path!("dns", "cache_bytes"),
                format!(
                    "{} bytes is too small for a cache of answers; use at least \"64KiB\", e.g. \"16MiB\"",
                    c.dns.cache_bytes.0
                ),
            );
        }
        self.transfers();
        if c.dataplane.dns_cache == Some(true) && !c.dns.enabled {
            self.err(
                cfg_path!("dataplane", "dns_cache"),
                "the XDP answer cache answers with the DNS service's data, and dns.enabled is false; \
                 set dataplane.dns_cache = false (or remove it), or enable DNS",
            );
        }
    }

    /// `[[dns.tsig_key]]` and `[[dns.secondary]]` (the keys' secrets are
    /// read and decoded by `crate::dns::check`).
    fn transfers(&mut self) {
        let c = self.c;
        let mut names: Vec<String> = Vec::new();
        for (i, k) in c.dns.tsig_keys.iter().enumerate() {
            let n = k.name.trim_end_matches('.').to_ascii_lowercase();
            if !valid_name(&n) {
                self.err(
                    cfg_path!("dns", "tsig_key", i, "name"),
                    format!("{:?} is not a valid key name (a domain name, e.g. \"xfr-knot\")", k.name),
                );
            } else if names.contains(&n) {
                self.err(cfg_path!("dns", "tsig_key", i, "name"), format!("key {n} is defined twice"));
            }
            names.push(n);
            if !k.algorithm.eq_ignore_ascii_case("hmac-sha256") {
                self.err(
                    cfg_path!("dns", "tsig_key", i, "algorithm"),
                    format!("{:?} is not offered; use \"hmac-sha256\"", k.algorithm),
                );
            }
        }
        if c.dns.transfer_max == 0 || c.dns.transfer_max > 1024 {
            self.err(
                cfg_path!("dns", "transfer_max"),
                format!(
                    "{} is not a usable cap on concurrent zone transfers; use 1 to 1024, e.g. 8",
                    c.dns.transfer_max
                ),
            );
        }
        let zones: Vec<String> = c.zones.iter().map(|z| z.name.trim_end_matches('.').to_ascii_lowercase()).collect();
        for (i, s) in c.dns.secondaries.iter().enumerate() {
            if !c.segments.iter().any(|g| g.cidr.trunc().contains(&s.address)) {
                self.err(
                    cfg_path!("dns", "secondary", i, "address"),
                    format!("{} is on no segment; DNS (and so zone transfers) is served on the segments only: use an address inside a segment's cidr", s.address),
                );
            }
            if let Some(k) = &s.key {
                let k = k.trim_end_matches('.').to_ascii_lowercase();
                if !names.contains(&k) {
                    self.err(
                        cfg_path!("dns", "secondary", i, "key"),
                        format!(
                            "no [[dns.tsig_key]] is named {k:?}; define it or name one of: {}",
                            if names.is_empty() { "(none defined)".to_string() } else { names.join(", ") }
                        ),
                    );
                }
            }
            for (j, z) in s.zones.iter().enumerate() {
                let z = z.trim_end_matches('.').to_ascii_lowercase();
                if !zones.contains(&z) && !z.ends_with(".in-addr.arpa") {
                    self.err(
                        cfg_path!("dns", "secondary", i, "zones", j),
                        format!("{z:?} is not a local zone; use one of: {}", zones.join(", ")),
                    );
                }
            }
            if s.port == 0 {
                self.err(cfg_path!("dns", "secondary", i, "port"), "use the port the secondary listens on, e.g. 53");
            }
        }
    }
}
