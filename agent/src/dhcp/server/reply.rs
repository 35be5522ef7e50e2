//! Replies: the base message, lease times, options as configured and
//! asked for, where the reply goes and fitting it into the client's size.

use super::*;

impl Server {
    pub(super) fn client_hostname(&self, m: &Message) -> Option<String> {
        let raw = match m.opts().get(OptionCode::ClientFQDN) {
            Some(DhcpOption::ClientFQDN(f)) => Some(f.domain().to_ascii()),
            _ => match m.opts().get(OptionCode::Hostname) {
                Some(DhcpOption::Hostname(h)) => Some(h.clone()),
                _ => None,
            },
        }?;
        options::sanitise_hostname(&raw)
    }

    /// The fields every reply copies from the request (RFC 2131 §4.3.1 table 3).
    pub(super) fn base_reply(&self, req: &Request, kind: MessageType) -> Message {
        let q = &req.msg;
        let mut m = Message::default();
        m.set_opcode(Opcode::BootReply)
            .set_htype(q.htype())
            .set_xid(q.xid())
            .set_flags(q.flags())
            .set_giaddr(q.giaddr())
            .set_chaddr(q.chaddr());
        m.opts_mut().insert(DhcpOption::MessageType(kind));
        m.opts_mut().insert(DhcpOption::ServerIdentifier(self.segments[req.segment].server_id));
        // RFC 3046 §2.2: relay agent information is echoed.
        if let Some(o @ DhcpOption::RelayAgentInformation(_)) = q.opts().get(OptionCode::RelayAgentInformation) {
            m.opts_mut().insert(o.clone());
        }
        m
    }

    /// The lease for `addr`: the host's, the pool's or the default time, or
    /// what the client asked for (RFC 2131 §3.5), capped by `max_lease_time`.
    pub(super) fn lease_time(&self, req: &Request, addr: Ipv4Addr) -> u32 {
        let configured = self
            .host_for(req)
            .and_then(|h| h.lease_time)
            .or_else(|| {
                let pool = self.pool_of(req.segment, addr).and_then(|p| self.cfg.pools.get(p));
                pool.and_then(|p| p.lease_time).map(|d| d.secs())
            })
            .unwrap_or(self.cfg.lease_time.secs());
        match req.msg.opts().get(OptionCode::AddressLeaseTime) {
            Some(DhcpOption::AddressLeaseTime(t)) => (*t).clamp(60, self.cfg.max_lease_time.secs()),
            _ => configured,
        }
    }

    /// An OFFER or ACK with a lease of `lease` seconds (an INFORM's ACK: `None`).
    pub(super) fn reply(&self, req: &Request, kind: MessageType, yiaddr: Ipv4Addr, lease: Option<u32>) -> Reply {
        let seg = &self.segments[req.segment];
        let q = &req.msg;
        let mut m = self.base_reply(req, kind);
        m.set_yiaddr(yiaddr);
        if lease.is_none() {
            m.set_ciaddr(q.ciaddr());
        }
        let host = self.host_for(req);
        let pool = self.pool_of(req.segment, yiaddr).and_then(|p| self.cfg.pools.get(p));
        let o = m.opts_mut();
        o.insert(DhcpOption::SubnetMask(seg.net.netmask()));
        o.insert(DhcpOption::Router(vec![seg.server_id]));
        if self.dns_enabled {
            o.insert(DhcpOption::DomainNameServer(vec![seg.server_id]));
        }
        if let Some(z) = &seg.zone {
            o.insert(DhcpOption::DomainName(z.clone()));
        }
        // RFC 3397: the pool's list, else the global one, else the segment's zone.
        let search = pool
            .and_then(|p| p.domain_search.clone())
            .or_else(|| (!self.cfg.domain_search.is_empty()).then(|| self.cfg.domain_search.clone()))
            .or_else(|| seg.zone.clone().map(|z| vec![z]))
            .unwrap_or_default();
        let names: Vec<_> = search
            .iter()
            .filter_map(|d| hickory_proto::rr::Name::from_ascii(format!("{}.", d.trim_end_matches('.'))).ok())
            .collect();
        if !names.is_empty() {
            o.insert(DhcpOption::DomainSearch(names));
        }
        if let Some(mtu) = seg.mtu {
            o.insert(DhcpOption::InterfaceMtu(mtu));
        }
        if !self.cfg.ntp_servers.is_empty() {
            o.insert(DhcpOption::NtpServers(self.cfg.ntp_servers.clone()));
        }
        if let Some(name) = host.and_then(|h| h.hostname.clone()) {
            o.insert(DhcpOption::Hostname(name));
        }
        if let Some(t) = lease {
            insert_times(o, t);
        }
        for c in self.cfg.options.iter().chain(pool.map(|p| &p.options[..]).unwrap_or(&[])) {
            o.insert(options::configured(c));
        }
        // PXE and HTTP boot.
        let boot_client = boot_client(q);
        if let Some(b) = pxe::boot(&boot_client, host.and_then(|h| h.pxe.as_ref()), &self.cfg.pxe, seg.server_id) {
            m.set_siaddr(b.next_server);
            let wants = |c: u8| requested(q, c);
            if b.file.len() < 128 {
                m.set_fname_str(&b.file);
            }
            let o = m.opts_mut();
            if b.file.len() >= 128 || wants(67) {
                o.insert(DhcpOption::BootfileName(b.file.clone().into_bytes()));
            }
            if wants(66) {
                o.insert(DhcpOption::TFTPServerName(b.next_server.to_string().into_bytes()));
            }
            if b.http {
                o.insert(DhcpOption::ClassIdentifier(b"HTTPClient".to_vec()));
            }
        }
        let bytes = fit(&m, q);
        Reply { segment: req.segment, dest: dest(q, kind, yiaddr), bytes }
    }
}

/// The option lengths dhcproto asserts (in debug builds) or subtracts from
/// instead of checking: RFC 4039 rapid commit (0), RFC 4578 client network
/// interface (3), RFC 4702 client FQDN (at least 3), RFC 6926 times (4) and
/// status code (at least 1). Adjacent fragments of one code are one option
/// of their summed length (RFC 3396, as dhcproto reads them), so the check
/// is of the sum.
pub(super) fn options_sane(mut opts: &[u8]) -> bool {
    // The option being read: its code and the length of its fragments so far.
    let mut current: Option<(u8, usize)> = None;
    loop {
        let code = opts.first().copied();
        if let Some((c, len)) = current
            && code != Some(c)
        {
            let ok = match c {
                80 => len == 0,
                94 => len == 3,
                81 => len >= 3,
                151 => len >= 1,
                152..=155 => len == 4,
                _ => true,
            };
            if !ok {
                return false;
            }
            current = None;
        }
        match code {
            None | Some(255) => return true,
            Some(0) => opts = &opts[1..],
            Some(c) => {
                let Some(&len) = opts.get(1) else { return true };
                let len = usize::from(len);
                current = Some((c, current.map_or(0, |(_, l)| l) + len));
                opts = opts.get(2 + len..).unwrap_or(&[]);
            }
        }
    }
}

/// RFC 2131 §4.4.5: T1 = 0.5 and T2 = 0.875 of the lease.
pub(super) fn insert_times(o: &mut DhcpOptions, t: u32) {
    o.insert(DhcpOption::AddressLeaseTime(t));
    o.insert(DhcpOption::Renewal(t / 2));
    o.insert(DhcpOption::Rebinding((u64::from(t) * 7 / 8) as u32));
}

pub(super) fn requested(q: &Message, code: u8) -> bool {
    matches!(q.opts().get(OptionCode::ParameterRequestList), Some(DhcpOption::ParameterRequestList(l)) if l.iter().any(|c| u8::from(*c) == code))
}

pub(super) fn boot_client(q: &Message) -> pxe::BootClient {
    let class = match q.opts().get(OptionCode::ClassIdentifier) {
        Some(DhcpOption::ClassIdentifier(c)) => c.as_slice(),
        _ => &[],
    };
    pxe::BootClient {
        arch: match q.opts().get(OptionCode::ClientSystemArchitecture) {
            Some(DhcpOption::ClientSystemArchitecture(a)) => Some(u16::from(*a)),
            _ => None,
        },
        pxe_class: class.starts_with(b"PXEClient"),
        http_class: class.starts_with(b"HTTPClient"),
        ipxe: matches!(q.opts().get(OptionCode::UserClass), Some(DhcpOption::UserClass(u)) if pxe::user_class_is_ipxe(u))
            || q.opts().get(OptionCode::from(175)).is_some(),
    }
}

/// RFC 2131 §4.1: relay, then ciaddr, then broadcast (flag set), else
/// unicast to yiaddr at chaddr.
pub(super) fn dest(q: &Message, kind: MessageType, yiaddr: Ipv4Addr) -> Dest {
    if !q.giaddr().is_unspecified() {
        Dest::Relay(q.giaddr())
    } else if !q.ciaddr().is_unspecified() {
        Dest::Client(q.ciaddr())
    } else if q.flags().broadcast() || kind == MessageType::Nak || yiaddr.is_unspecified() || q.chaddr().len() != 6 {
        Dest::Broadcast
    } else {
        let mut hw = [0; 6];
        hw.copy_from_slice(q.chaddr());
        Dest::Hardware { ip: yiaddr, hw }
    }
}

pub(super) fn encode(m: &Message) -> Vec<u8> {
    let mut buf = Vec::with_capacity(576);
    // Encoding into a Vec cannot fail for the messages built here.
    let _ = m.encode(&mut Encoder::new(&mut buf));
    // BOOTP's minimum message (RFC 1542 §3.4): some clients drop shorter ones.
    if buf.len() < 300 {
        buf.resize(300, 0);
    }
    buf
}

/// Encodes `m`, dropping options the client did not ask for when the reply
/// would exceed its maximum message size (option 57, default 576, RFC 2131 §2).
pub(super) fn fit(m: &Message, q: &Message) -> Vec<u8> {
    let max = match q.opts().get(OptionCode::MaxMessageSize) {
        Some(DhcpOption::MaxMessageSize(n)) => usize::from(*n).max(576),
        _ => 576,
    } - 28;
    let bytes = encode(m);
    if bytes.len() <= max {
        return bytes;
    }
    let mut m = m.clone();
    m.opts_mut().retain(|c, _| options::ESSENTIAL.contains(&u8::from(*c)) || requested(q, u8::from(*c)));
    encode(&m)
}

/// Rate limit for repeated warnings: true (and `last` moved to `now`) at
/// most once every ten seconds.
pub(super) fn log_due(last: &mut Option<u64>, now: u64) -> bool {
    if last.is_some_and(|t| now < t + 10) {
        return false;
    }
    *last = Some(now);
    true
}
