//! Response rate limiting of the agent's UDP answers, as Knot's and BIND's
//! RRL (`[dns.rate_limit]`): per client prefix (/24, /56), a rate and a
//! burst (`coresvc_common::dns::rate_limit`, the schedule the XDP cache's
//! program keeps too); over it every `slip`-th answer goes out truncated
//! and the others are dropped, counted. Answers are limited by prefix alone
//! (BIND also tells identical answers, errors and NXDOMAINs apart). The
//! table holds [`TABLE`] prefixes, least recently seen out first.
//!
//! The XDP cache limits what it answers itself with the same settings
//! ([`XdpConfig`]); the two keep their own counts, so a prefix gets the
//! rate from each.

use std::{net::IpAddr, sync::Mutex};

pub use coresvc_common::dns::Limit;
use coresvc_maps_schema::DnsRrlConfig;

use crate::config::RateLimit;

/// Prefixes tracked at most.
pub const TABLE: usize = 16_384;

/// The schedule in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Schedule {
    interval_ns: u64,
    burst_ns: u64,
    slip: u32,
}

fn schedule(c: &RateLimit) -> Option<Schedule> {
    if c.responses_per_second == 0 {
        return None;
    }
    let interval_ns = 1_000_000_000 / u64::from(c.responses_per_second);
    let burst = if c.burst == 0 { c.responses_per_second } else { c.burst };
    Some(Schedule { interval_ns, burst_ns: interval_ns * u64::from(burst - 1), slip: c.slip })
}

/// The XDP program's settings for `c` (`DNS_RRL_CFG`; all zero: off).
pub fn xdp_config(c: &RateLimit) -> DnsRrlConfig {
    match schedule(c) {
        Some(s) => DnsRrlConfig {
            interval_ns: s.interval_ns,
            burst_ns: s.burst_ns,
            slip: s.slip,
            prefix_mask: prefix_mask_v4(c.ipv4_prefix_length),
        },
        None => DnsRrlConfig::default(),
    }
}

fn prefix_mask_v4(len: u8) -> u32 {
    if len == 0 { 0 } else { u32::MAX << (32 - u32::from(len.min(32))) }
}

pub struct RateLimiter {
    schedule: Option<Schedule>,
    v4: u8,
    v6: u8,
    /// Prefix -> (due, limited since the last slip).
    table: Mutex<lru::LruCache<u128, (u64, u32)>>,
}

impl RateLimiter {
    pub fn new(c: &RateLimit) -> Self {
        RateLimiter {
            schedule: schedule(c),
            v4: c.ipv4_prefix_length,
            v6: c.ipv6_prefix_length,
            table: Mutex::new(lru::LruCache::new(std::num::NonZeroUsize::new(TABLE).expect("non-zero"))),
        }
    }

    /// Off: nothing is limited.
    pub fn off() -> Self {
        RateLimiter::new(&RateLimit::default())
    }

    pub fn enabled(&self) -> bool {
        self.schedule.is_some()
    }

    /// The prefix `ip` is counted under (IPv4 and IPv6 apart).
    fn prefix(&self, ip: IpAddr) -> u128 {
        match ip {
            IpAddr::V4(a) => (1u128 << 64) | u128::from(u32::from(a) & prefix_mask_v4(self.v4)),
            IpAddr::V6(a) => {
                let len = u32::from(self.v6.min(128));
                let mask = if len == 0 { 0 } else { u128::MAX << (128 - len) };
                u128::from(a) & mask
            }
        }
    }

    /// What to do with an answer to `ip` at `now` (CLOCK_MONOTONIC ns).
    pub fn check(&self, ip: IpAddr, now: u64) -> Limit {
        let Some(s) = self.schedule else { return Limit::Send };
        let key = self.prefix(ip);
        let mut t = self.table.lock().expect("rrl lock");
        let (due, limited) = t.get_or_insert_mut(key, || (0, 0));
        coresvc_common::dns::rate_limit(due, limited, now, s.interval_ns, s.burst_ns, s.slip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_share_a_rate_and_slip() {
        let c = RateLimit { responses_per_second: 10, burst: 3, slip: 2, ..RateLimit::default() };
        let r = RateLimiter::new(&c);
        let t0 = 5_000_000_000;
        let a: IpAddr = "10.20.0.50".parse().unwrap();
        let same: IpAddr = "10.20.0.99".parse().unwrap();
        let other: IpAddr = "10.30.0.50".parse().unwrap();
        let got: Vec<Limit> = [a, same, a, a, same, a].iter().map(|ip| r.check(*ip, t0)).collect();
        assert_eq!(got, [Limit::Send, Limit::Send, Limit::Send, Limit::Drop, Limit::Slip, Limit::Drop]);
        assert_eq!(r.check(other, t0), Limit::Send, "another /24");
        assert_eq!(r.check(a, t0 + 100_000_000), Limit::Send, "one more after an interval");
        assert!(!RateLimiter::off().enabled());
        assert_eq!(RateLimiter::off().check(a, t0), Limit::Send);
        let x = xdp_config(&c);
        assert_eq!((x.interval_ns, x.burst_ns, x.slip, x.prefix_mask), (100_000_000, 200_000_000, 2, 0xffff_ff00));
        assert_eq!(xdp_config(&RateLimit::default()), DnsRrlConfig::default(), "off");
    }
}
