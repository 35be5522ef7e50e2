//! The DHCPv4 server as a sans-IO state machine (RFC 2131): a packet, the
//! segment it arrived on and the time go in; a reply (bytes and where to
//! send them), journal records and DNS effects come out. The caller must
//! make the records durable before it sends the reply (see `mod.rs`).

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::Ipv4Addr,
};

use dhcproto::{
    Decodable as _, Decoder, Encodable as _, Encoder,
    v4::{DhcpOption, DhcpOptions, Message, MessageType, Opcode, OptionCode},
};
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use super::{
    journal::{LeaseRecord, RecordState},
    leases::{ClientKey, DECLINE_QUARANTINE_SECS, Lease, OFFER_HOLD_SECS, Range, State, Table},
    options, pxe,
};
use crate::config::{Config, DhcpSection, Pxe};

/// Where a reply goes (RFC 2131 §4.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dest {
    /// To the relay agent, port 67.
    Relay(Ipv4Addr),
    /// 255.255.255.255 port 68 on the segment.
    Broadcast,
    /// To the client's configured address (ciaddr), port 68.
    Client(Ipv4Addr),
    /// To yiaddr at this hardware address (no ARP possible yet): the caller
    /// adds a neighbour entry first, or broadcasts.
    Hardware { ip: Ipv4Addr, hw: [u8; 6] },
}

#[derive(Debug, Clone)]
pub struct Reply {
    /// The segment (index into the configuration's segments) whose interface sends it.
    pub segment: usize,
    pub dest: Dest,
    pub bytes: Vec<u8>,
}

/// Name registrations the wrapper applies to the DNS service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    Register { zone: String, hostname: String, addr: Ipv4Addr },
    Unregister { zone: String, hostname: String, addr: Ipv4Addr },
}

#[derive(Debug, Default)]
pub struct Outcome {
    pub reply: Option<Reply>,
    /// To be made durable before `reply` is sent.
    pub records: Vec<LeaseRecord>,
    pub effects: Vec<Effect>,
}

/// Counters for `coresvc status`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Counters {
    pub discovers: u64,
    pub offers: u64,
    pub requests: u64,
    pub acks: u64,
    pub naks: u64,
    pub releases: u64,
    pub declines: u64,
    pub informs: u64,
    /// Clients that got no offer because their segment's pools are full.
    pub pool_exhausted: u64,
    /// Static hosts served from the pool because another client still
    /// holds their address (a lease from before the host was configured).
    pub static_conflicts: u64,
    /// Dropped requests by reason.
    pub drops: BTreeMap<String, u64>,
}

/// Why a packet was dropped without an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drop {
    /// Shorter than a BOOTP header, or options that do not parse.
    Malformed,
    /// A BOOTREPLY (op 2) or an unknown op.
    NotARequest,
    /// hlen above 16.
    BadHardwareLength,
    /// No DHCP magic cookie (plain BOOTP is not served).
    NoMagicCookie,
    /// No option 53.
    NoMessageType,
    /// A message type a server never receives (OFFER, ACK, ...).
    UnexpectedType,
    /// giaddr is no configured relay address (`dhcp.relay`).
    UnknownRelay,
    /// giaddr is a configured relay address, but the datagram came from
    /// an address that relay does not send from.
    RelaySource,
    /// Arrived on a segment without pools or static hosts.
    NotServed,
    /// A REQUEST for another server (the client chose its offer).
    OtherServer,
    /// A REQUEST without any address to confirm.
    NoAddress,
    /// RELEASE or DECLINE of an address the client does not hold.
    NotHeld,
    /// The lease journal is broken (fail-stop): nothing is answered.
    JournalBroken,
}

impl Drop {
    pub fn name(self) -> &'static str {
        match self {
            Drop::Malformed => "malformed",
            Drop::NotARequest => "not_a_request",
            Drop::BadHardwareLength => "bad_hardware_length",
            Drop::NoMagicCookie => "no_magic_cookie",
            Drop::NoMessageType => "no_message_type",
            Drop::UnexpectedType => "unexpected_type",
            Drop::UnknownRelay => "unknown_relay",
            Drop::RelaySource => "relay_source",
            Drop::NotServed => "not_served",
            Drop::OtherServer => "other_server",
            Drop::NoAddress => "no_address",
            Drop::NotHeld => "not_held",
            Drop::JournalBroken => "journal_broken",
        }
    }
}

/// A segment as the DHCP server sees it.
pub struct Segment {
    pub name: String,
    pub interface: String,
    pub net: Ipv4Net,
    /// The server identifier and default router: the segment's active address.
    pub server_id: Ipv4Addr,
    pub zone: Option<String>,
    pub mtu: Option<u16>,
    pub ranges: Vec<Range>,
    /// For each range, its `dhcp.pool` index.
    pool_of_range: Vec<usize>,
    /// Has a pool or static hosts.
    pub served: bool,
    last_exhausted_log: Option<u64>,
    last_conflict_log: Option<u64>,
}

struct StaticHost {
    segment: usize,
    mac: Option<[u8; 6]>,
    client_id: Option<Vec<u8>>,
    addr: Ipv4Addr,
    hostname: Option<String>,
    lease_time: Option<u32>,
    pxe: Option<Pxe>,
}

/// Pool use for `coresvc status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SegmentUse {
    pub segment: String,
    pub interface: String,
    pub pool_size: u64,
    pub bound: u64,
    pub offered: u64,
    pub declined: u64,
    pub static_hosts: u64,
}

/// One lease for `coresvc leases`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeaseInfo {
    pub address: Ipv4Addr,
    pub segment: String,
    pub state: State,
    /// The hardware address, `02:00:00:14:00:32`.
    pub mac: String,
    /// The client identifier (option 61) in hex, when the client sent one.
    pub client_id: Option<String>,
    pub hostname: Option<String>,
    /// Unix seconds.
    pub expires: u64,
}

pub struct Server {
    pub segments: Vec<Segment>,
    hosts: Vec<StaticHost>,
    /// The configured relays by giaddr: their segment and the addresses
    /// their datagrams may come from.
    relays: HashMap<Ipv4Addr, (usize, Vec<Ipv4Addr>)>,
    excluded: HashSet<Ipv4Addr>,
    cfg: DhcpSection,
    dns_enabled: bool,
    pub leases: Table,
    pub counters: Counters,
}

/// A parsed request and what the server needs from it.
struct Request {
    msg: Message,
    kind: MessageType,
    segment: usize,
    key: ClientKey,
    requested: Option<Ipv4Addr>,
    server_id: Option<Ipv4Addr>,
}

fn hex(b: &[u8], sep: &str) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect::<Vec<_>>().join(sep)
}

impl Server {
    /// Counts a datagram the wrapper refused without handling it.
    pub fn refuse(&mut self, why: Drop) {
        *self.counters.drops.entry(why.name().to_string()).or_default() += 1;
    }

    fn drop(&mut self, why: Drop) -> Outcome {
        self.refuse(why);
        Outcome::default()
    }

    /// Handles one datagram from `source` that arrived on `segment`'s
    /// interface (`None`: an interface that is not a segment) at unix time `now`.
    pub fn handle(&mut self, segment: Option<usize>, source: Ipv4Addr, bytes: &[u8], now: u64) -> Outcome {
        let req = match self.parse(segment, source, bytes) {
            Ok(r) => r,
            Err(why) => return self.drop(why),
        };
        match req.kind {
            MessageType::Discover => {
                self.counters.discovers += 1;
                self.discover(req, now)
            }
            MessageType::Request => {
                self.counters.requests += 1;
                self.request(req, now)
            }
            MessageType::Release => {
                self.counters.releases += 1;
                self.release(req, now)
            }
            MessageType::Decline => {
                self.counters.declines += 1;
                self.decline(req, now)
            }
            MessageType::Inform => {
                self.counters.informs += 1;
                self.inform(req)
            }
            _ => self.drop(Drop::UnexpectedType),
        }
    }

    /// RFC 2131 §2 and §4.1: the fixed header, the magic cookie, option 53;
    /// the segment is the configured relay's (giaddr set, RFC 1542 §4.1) or
    /// the receiving interface's. A relayed request is served only from a
    /// relay named in `dhcp.relay`, from one of its source addresses: a
    /// host cannot draw from another segment's pool by writing an address
    /// of that segment in giaddr.
    fn parse(&self, segment: Option<usize>, source: Ipv4Addr, bytes: &[u8]) -> Result<Request, Drop> {
        if bytes.len() < 240 {
            return Err(Drop::Malformed);
        }
        if bytes[0] != 1 {
            return Err(Drop::NotARequest);
        }
        if bytes[2] > 16 {
            return Err(Drop::BadHardwareLength);
        }
        if bytes[236..240] != [99, 130, 83, 99] {
            return Err(Drop::NoMagicCookie);
        }
        if !options_sane(&bytes[240..]) {
            return Err(Drop::Malformed);
        }
        let msg = Message::decode(&mut Decoder::new(bytes)).map_err(|_| Drop::Malformed)?;
        if msg.opcode() != Opcode::BootRequest {
            return Err(Drop::NotARequest);
        }
        let kind = msg.opts().msg_type().ok_or(Drop::NoMessageType)?;
        let giaddr = msg.giaddr();
        let segment = if !giaddr.is_unspecified() {
            let (seg, sources) = self.relays.get(&giaddr).ok_or(Drop::UnknownRelay)?;
            if !sources.contains(&source) {
                return Err(Drop::RelaySource);
            }
            Some(*seg)
        } else {
            segment
        };
        let segment = segment.filter(|&s| self.segments[s].served).ok_or(Drop::NotServed)?;
        let key = match msg.opts().get(OptionCode::ClientIdentifier) {
            Some(DhcpOption::ClientIdentifier(id)) if !id.is_empty() => ClientKey::from_client_id(id),
            _ => ClientKey::from_hw(u8::from(msg.htype()), msg.chaddr()),
        };
        let requested = match msg.opts().get(OptionCode::RequestedIpAddress) {
            Some(DhcpOption::RequestedIpAddress(a)) => Some(*a),
            _ => None,
        };
        let server_id = match msg.opts().get(OptionCode::ServerIdentifier) {
            Some(DhcpOption::ServerIdentifier(a)) => Some(*a),
            _ => None,
        };
        Ok(Request { msg, kind, segment, key, requested, server_id })
    }

    /// The static host this client is on its segment: by client identifier
    /// first, then by MAC.
    fn host_for(&self, req: &Request) -> Option<&StaticHost> {
        let cid = req.key.client_id();
        let mac = (req.msg.chaddr().len() == 6).then(|| req.msg.chaddr());
        let here = || self.hosts.iter().filter(|h| h.segment == req.segment);
        here()
            .find(|h| cid.is_some() && h.client_id.as_deref() == cid)
            .or_else(|| here().find(|h| mac.is_some() && h.mac.as_ref().map(|m| &m[..]) == mac))
    }

    /// The pool (`dhcp.pool` index) whose range holds `a` on `segment`.
    fn pool_of(&self, segment: usize, a: Ipv4Addr) -> Option<usize> {
        let s = &self.segments[segment];
        s.ranges.iter().position(|r| r.contains(a)).map(|i| s.pool_of_range[i])
    }

    /// Does a client other than `key` hold `a` (an offer or a lease in
    /// force), or is it quarantined? Then a static host cannot have it yet.
    fn held_by_other(&self, key: &ClientKey, a: Ipv4Addr, now: u64) -> bool {
        self.leases.get(a).is_some_and(|l| (l.active(now) && l.client.as_ref() != Some(key)) || l.quarantined(now))
    }

    /// The static address of this client, unless another client still holds
    /// it: never one address for two clients. Counted and logged then.
    fn static_addr(&mut self, req: &Request, now: u64) -> Option<Ipv4Addr> {
        let a = self.host_for(req)?.addr;
        if !self.held_by_other(&req.key, a, now) {
            return Some(a);
        }
        self.counters.static_conflicts += 1;
        let s = &mut self.segments[req.segment];
        if log_due(&mut s.last_conflict_log, now) {
            warn!(
                segment = %s.name, address = %a,
                "dhcp: a static host's address is still leased to another client; serving the host from the pool \
                 until that lease ends (counted as static_conflicts)"
            );
        }
        None
    }

    /// May a dynamic client `key` have `a` on `segment`?
    fn dynamic_ok(&self, segment: usize, key: &ClientKey, a: Ipv4Addr, now: u64) -> bool {
        if self.pool_of(segment, a).is_none() || self.excluded.contains(&a) {
            return false;
        }
        match self.leases.get(a) {
            None => true,
            Some(l) if l.client.as_ref() == Some(key) && l.segment == segment => !l.quarantined(now),
            Some(l) => !l.active(now) && !l.quarantined(now),
        }
    }

    /// RFC 2131 §4.3.1: a static address, else the client's own (current or
    /// last) address, else the one it asks for, else a free one.
    fn discover(&mut self, req: Request, now: u64) -> Outcome {
        let seg = req.segment;
        let addr = if let Some(a) = self.static_addr(&req, now) {
            a
        } else {
            let own = self.leases.of_client(seg, &req.key).map(|l| l.addr);
            let pick = own
                .filter(|&a| self.dynamic_ok(seg, &req.key, a, now))
                .or(req.requested.filter(|&a| self.dynamic_ok(seg, &req.key, a, now)))
                .or_else(|| {
                    let excluded = &self.excluded;
                    let mut ranges = std::mem::take(&mut self.segments[seg].ranges);
                    let a = self.leases.allocate(seg, &mut ranges, now, &|a| excluded.contains(&a));
                    self.segments[seg].ranges = ranges;
                    a
                });
            let Some(a) = pick else {
                self.counters.pool_exhausted += 1;
                let s = &mut self.segments[seg];
                if log_due(&mut s.last_exhausted_log, now) {
                    warn!(segment = %s.name, "dhcp: pool exhausted, no address to offer (counted as pool_exhausted)");
                }
                return Outcome::default();
            };
            // Hold it for this client (in memory only: an offer promises nothing).
            let bound_here =
                self.leases.get(a).is_some_and(|l| l.state == State::Bound && l.client.as_ref() == Some(&req.key));
            if !bound_here {
                let hostname = self.client_hostname(&req.msg);
                self.leases.put(Lease {
                    addr: a,
                    segment: seg,
                    state: State::Offered,
                    expires: now + OFFER_HOLD_SECS,
                    client: Some(req.key.clone()),
                    hw: req.msg.chaddr().to_vec(),
                    hostname,
                });
            }
            a
        };
        self.counters.offers += 1;
        let t = self.lease_time(&req, addr);
        let reply = self.reply(&req, MessageType::Offer, addr, Some(t));
        Outcome { reply: Some(reply), ..Default::default() }
    }

    /// RFC 2131 §4.3.2: SELECTING (server identifier present), INIT-REBOOT
    /// (requested address, no ciaddr), RENEWING and REBINDING (ciaddr).
    fn request(&mut self, req: Request, now: u64) -> Outcome {
        let seg = req.segment;
        let ours = self.segments[seg].server_id;
        let ciaddr = req.msg.ciaddr();
        let addr = if let Some(sid) = req.server_id {
            if sid != ours {
                // The client took another server's offer: let ours go.
                if let Some(l) = self.leases.of_client(seg, &req.key)
                    && l.state == State::Offered
                {
                    let a = l.addr;
                    self.leases.remove(a);
                }
                return self.drop(Drop::OtherServer);
            }
            match req.requested.or((!ciaddr.is_unspecified()).then_some(ciaddr)) {
                Some(a) => a,
                None => return self.drop(Drop::NoAddress),
            }
        } else if let Some(a) = req.requested.filter(|_| ciaddr.is_unspecified()) {
            a
        } else if !ciaddr.is_unspecified() {
            ciaddr
        } else {
            return self.drop(Drop::NoAddress);
        };
        // A wrong address for the segment, or one that is not this client's,
        // is NAKed: coresvc is the authority on its segments.
        if !self.segments[seg].net.contains(&addr) {
            return self.nak(&req, "address is not on the client's segment");
        }
        // A static host whose address another client still holds is served
        // from the pool meanwhile (see `static_addr`).
        let is_static = match self.host_for(&req).map(|h| h.addr) {
            Some(h) if h == addr && self.held_by_other(&req.key, h, now) => {
                return self.nak(&req, "the host's static address is still leased to another client");
            }
            Some(h) if h == addr => true,
            Some(h) if !self.held_by_other(&req.key, h, now) => {
                return self.nak(&req, "not the host's static address");
            }
            _ if !self.dynamic_ok(seg, &req.key, addr, now) => {
                return self.nak(&req, "address is not available to this client");
            }
            _ => false,
        };
        let lease_time = self.lease_time(&req, addr);
        let mut out = Outcome::default();
        let hostname = if is_static { None } else { self.client_hostname(&req.msg) };
        // The client's previous bound address elsewhere on the segment is given up.
        if let Some(old) =
            self.leases.of_client(seg, &req.key).filter(|l| l.addr != addr && l.state == State::Bound).cloned()
        {
            let mut freed = old.clone();
            freed.state = State::Released;
            freed.expires = now;
            out.effects.extend(self.effect(&old, false));
            out.records.extend(freed.record(&self.segments[seg].name));
            self.leases.put(freed);
        }
        let previous = self.leases.get(addr).cloned();
        if let Some(p) = &previous {
            let was_registered = p.state == State::Bound && p.client.as_ref() == Some(&req.key);
            if was_registered && p.hostname != hostname {
                out.effects.extend(self.effect(p, false));
            }
        }
        let lease = Lease {
            addr,
            segment: seg,
            state: State::Bound,
            expires: now + u64::from(lease_time),
            client: Some(req.key.clone()),
            hw: req.msg.chaddr().to_vec(),
            hostname,
        };
        out.records.extend(lease.record(&self.segments[seg].name));
        out.effects.extend(self.effect(&lease, true));
        self.leases.put(lease);
        self.counters.acks += 1;
        out.reply = Some(self.reply(&req, MessageType::Ack, addr, Some(lease_time)));
        out
    }

    fn nak(&mut self, req: &Request, why: &str) -> Outcome {
        debug!(segment = %self.segments[req.segment].name, requested = ?req.requested, ciaddr = %req.msg.ciaddr(), "dhcp: NAK: {why}");
        self.counters.naks += 1;
        let mut m = self.base_reply(req, MessageType::Nak);
        m.opts_mut().insert(DhcpOption::Message(why.to_string()));
        let bytes = encode(&m);
        // RFC 2131 §4.1: a NAK goes to the relay, else is broadcast.
        let dest = if req.msg.giaddr().is_unspecified() { Dest::Broadcast } else { Dest::Relay(req.msg.giaddr()) };
        Outcome { reply: Some(Reply { segment: req.segment, dest, bytes }), ..Default::default() }
    }

    /// RFC 2131 §4.3.4.
    fn release(&mut self, req: Request, now: u64) -> Outcome {
        let a = req.msg.ciaddr();
        let seg = req.segment;
        let Some(l) = self
            .leases
            .get(a)
            .filter(|l| l.segment == seg && l.client.as_ref() == Some(&req.key) && l.state == State::Bound)
            .cloned()
        else {
            return self.drop(Drop::NotHeld);
        };
        let mut out = Outcome::default();
        out.effects.extend(self.effect(&l, false));
        let mut freed = l;
        freed.state = State::Released;
        freed.expires = now;
        out.records.extend(freed.record(&self.segments[seg].name));
        self.leases.put(freed);
        out
    }

    /// RFC 2131 §4.3.3: the address is in use by someone else; quarantine it.
    fn decline(&mut self, req: Request, now: u64) -> Outcome {
        let seg = req.segment;
        let Some(a) = req.requested else { return self.drop(Drop::NoAddress) };
        let Some(l) = self
            .leases
            .get(a)
            .filter(|l| l.segment == seg && l.client.as_ref() == Some(&req.key) && l.active(now))
            .cloned()
        else {
            return self.drop(Drop::NotHeld);
        };
        warn!(segment = %self.segments[seg].name, address = %a, "dhcp: client declined the address (in use by another host); quarantined for {DECLINE_QUARANTINE_SECS} s");
        let mut out = Outcome::default();
        if l.state == State::Bound {
            out.effects.extend(self.effect(&l, false));
        }
        self.leases.remove(a);
        let q = Lease {
            addr: a,
            segment: seg,
            state: State::Declined,
            expires: now + DECLINE_QUARANTINE_SECS,
            client: None,
            hw: Vec::new(),
            hostname: None,
        };
        out.records.extend(q.record(&self.segments[seg].name));
        self.leases.put(q);
        out
    }

    /// RFC 2131 §4.3.5: configuration only, no address, no lease time.
    fn inform(&mut self, req: Request) -> Outcome {
        self.counters.acks += 1;
        let reply = self.reply(&req, MessageType::Ack, Ipv4Addr::UNSPECIFIED, None);
        Outcome { reply: Some(reply), ..Default::default() }
    }
}

mod reply;
mod table;

use reply::{encode, log_due, options_sane};
