//! DNS counters (relaxed atomics; read by `coresvc status` and metrics).

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

macro_rules! counters {
    ($($field:ident: $doc:literal),* $(,)?) => {
        /// Live counters.
        #[derive(Debug, Default)]
        pub struct Stats {
            $(#[doc = $doc] pub $field: AtomicU64,)*
        }

        /// A snapshot for the control socket.
        #[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
        pub struct Snapshot {
            $(#[doc = $doc] pub $field: u64,)*
        }

        impl Stats {
            pub fn snapshot(&self) -> Snapshot {
                Snapshot { $($field: self.$field.load(Ordering::Relaxed),)* }
            }
        }
    };
}

counters! {
    queries_udp: "queries received over UDP",
    queries_tcp: "queries received over TCP",
    authoritative: "answered from local zones",
    answered_kept: "of those, answers copied from the kept answer to the same question (no lookup)",
    cache_hits: "answered from the cache",
    cache_misses: "forwarded because the cache had no answer",
    coalesced: "waited for an identical question already in flight",
    noerror: "responses with NOERROR",
    nxdomain: "responses with NXDOMAIN",
    servfail: "responses with SERVFAIL",
    refused: "responses with REFUSED (e.g. clients outside the segments)",
    formerr: "responses with FORMERR",
    notimp: "responses with NOTIMP",
    truncated: "UDP responses truncated (TC set)",
    rate_limited: "UDP answers not sent: the client's prefix was over dns.rate_limit",
    rate_limit_slipped: "UDP answers over dns.rate_limit sent truncated instead (TC set), every slip-th",
    dropped_malformed: "datagrams dropped: too short to answer or not a query",
    tcp_connections: "TCP connections accepted",
    tcp_rejected: "TCP connections refused at the connection cap",
    tcp_rejected_per_client: "TCP connections refused at the cap per client address",
    tcp_idle_closed: "TCP connections closed after the idle timeout",
    tcp_write_timeouts: "TCP connections closed because a write did not complete in time (the client does not read)",
    upstream_queries: "questions sent upstream",
    upstream_failures: "upstream attempts that failed (timeout, error, SERVFAIL, REFUSED)",
    upstream_timeouts: "upstream attempts that timed out",
    upstream_tcp: "upstream retries over TCP after truncation",
    upstream_mismatched: "upstream datagrams ignored (wrong source, ID or question, or too late)",
    upstream_overflow: "queries answered at once (SERVFAIL, or a chain's local part) because dns.forward_max questions were outstanding, or as many clients waited for the same one",
    upstream_sockets_opened: "pooled upstream UDP sockets opened (each on a new random port)",
}

impl Stats {
    pub fn inc(&self, c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}
