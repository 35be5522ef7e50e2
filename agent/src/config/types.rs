//! The configuration types. Every struct rejects unknown fields; defaults are
//! the values a gateway in the seed's bootstrap story wants.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
    str::FromStr,
};

use ipnet::{IpNet, Ipv4Net};
use serde::{Deserialize, Deserializer, Serialize, de};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub agent: AgentSection,
    #[serde(default)]
    pub dataplane: DataplaneSection,
    pub uplink: Option<Uplink>,
    #[serde(default, rename = "segment")]
    pub segments: Vec<Segment>,
    #[serde(default, rename = "route")]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub dns: DnsSection,
    #[serde(default, rename = "zone")]
    pub zones: Vec<Zone>,
    #[serde(default)]
    pub dhcp: DhcpSection,
    pub tftp: Option<TftpSection>,
    #[serde(default)]
    pub firewall: FirewallSection,
    #[serde(default)]
    pub nat: NatSection,
    /// The production infrastructure that takes over in production mode
    /// (`coresvc authority`, `coresvc export`); absent: nothing configured,
    /// so a switch to production cannot be verified (only forced).
    pub authority: Option<AuthoritySection>,
    /// The directory of the config file; relative paths in it resolve here.
    #[serde(skip)]
    pub base_dir: PathBuf,
}

// ------------------------------------------------------------------ agent

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentSection {
    /// Leases, the persisted authority mode and other state.
    pub state_dir: PathBuf,
    /// The control socket `coresvc status` and friends talk to.
    pub control_socket: PathBuf,
    /// Besides root, members of this group (a name or a gid) may use the
    /// control socket (it is then mode 0660, group this one).
    pub control_group: Option<String>,
    /// Besides root, these users (names or uids) may use the control socket
    /// (their connections are checked; the file must let them reach it).
    pub control_users: Vec<String>,
    /// The bpffs directory for this instance's pinned maps and links.
    pub pin_dir: PathBuf,
    /// A tracing filter (`info`, `coresvc=debug,warn`); `RUST_LOG` overrides it.
    pub log: String,
    /// Prometheus text-format metrics on this address; absent means off.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// The authority mode on first start; later starts use the persisted one.
    pub authority: AuthorityMode,
    /// What a clean stop (SIGTERM, SIGINT) does with the programs.
    pub on_stop: OnStop,
    /// With `on_stop = "keep"`: how long after a clean stop cached DNS
    /// answers still come from XDP (a restart takes over before); after a
    /// stop without a start they end, so another DNS server can take the
    /// address. A crash leaves no end: they go on until their TTLs.
    pub dns_after_stop: Duration,
}

impl Default for AgentSection {
    fn default() -> Self {
        Self {
            state_dir: PathBuf::from("/var/lib/coresvc"),
            control_socket: PathBuf::from("/run/coresvc/control.sock"),
            control_group: None,
            control_users: Vec::new(),
            pin_dir: PathBuf::from(coresvc_maps_schema::DEFAULT_PIN_DIR),
            log: "info".to_string(),
            metrics_listen: None,
            authority: AuthorityMode::Bootstrap,
            on_stop: OnStop::Keep,
            dns_after_stop: Duration(30),
        }
    }
}

/// What a clean stop of the agent does with the data path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnStop {
    /// The programs stay attached through their pinned links and keep
    /// forwarding, translating and (for `agent.dns_after_stop`) answering
    /// cached DNS questions; the next start adopts them (a restart without
    /// an outage). `coresvc unpin` takes them down.
    Keep,
    /// The programs are detached (the maps stay pinned).
    Detach,
}

/// The seed's operational modes (§3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthorityMode {
    /// coresvc is the DNS/DHCP/TFTP authority and holds the gateway address.
    Bootstrap,
    /// Dedicated infrastructure is the authority; coresvc uses its reserved address.
    Production,
}

// ------------------------------------------------------------------ dataplane

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataplaneSection {
    /// How XDP programs are attached.
    pub xdp_mode: XdpMode,
    /// Drop IPv4 packets the kernel would drop anyway (bad header, checksum),
    /// counting the reason, before they cost the stack anything.
    pub drop_invalid_ipv4: bool,
    /// Answer repeated DNS questions from the segments' XDP programs with the
    /// DNS service's own answers. Absent: on whenever DNS serves; `false`:
    /// off (every query goes to the DNS service); `true`: on, and DNS must
    /// be enabled.
    pub dns_cache: Option<bool>,
    /// Forward established flows from XDP.
    pub fast_forward: bool,
    /// Size of the connection-tracking table (an LRU table: when full, a
    /// new connection replaces the least recently used one).
    pub conntrack_max: u32,
    /// Forwarded connections one source address may have at once (0: no
    /// limit). Absent: an eighth of `conntrack_max`. Refused connections
    /// are counted as `flow-quota`.
    pub max_flows_per_host: Option<u32>,
}

impl DataplaneSection {
    /// The per-source connection quota in force.
    pub fn flow_quota(&self) -> u32 {
        self.max_flows_per_host.unwrap_or(self.conntrack_max / 8)
    }
}

impl Default for DataplaneSection {
    fn default() -> Self {
        Self {
            xdp_mode: XdpMode::Auto,
            drop_invalid_ipv4: true,
            dns_cache: None,
            fast_forward: true,
            conntrack_max: 65536,
            max_flows_per_host: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// Native (driver) mode where the driver supports it, else generic.
    Auto,
    Native,
    Generic,
}

// ------------------------------------------------------------------ topology

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Uplink {
    pub interface: String,
    /// The uplink's address and prefix; absent when the host configures it.
    pub address: Option<Ipv4Net>,
    /// The next hop of the default route.
    pub gateway: Option<Ipv4Addr>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Segment {
    /// A short name (`mgmt`, `dvnt`); other sections refer to segments by it.
    pub name: String,
    pub interface: String,
    pub cidr: Ipv4Net,
    /// coresvc's address in bootstrap mode (the segment's default gateway).
    pub gateway: Ipv4Addr,
    /// coresvc's address in production mode, outside any DHCP pool.
    pub reserved: Option<Ipv4Addr>,
    /// The DNS zone of this segment's hosts (DHCP domain, registrations).
    pub zone: Option<String>,
    /// Masquerade this segment's traffic to the uplink.
    #[serde(default = "yes")]
    pub nat: bool,
    pub mtu: Option<u16>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub prefix: Ipv4Net,
    /// The next hop; or give `dev`.
    pub via: Option<Ipv4Addr>,
    /// An interface for an on-link route.
    pub dev: Option<String>,
}

// ------------------------------------------------------------------ DNS

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsSection {
    pub enabled: bool,
    /// Upstream resolvers for names outside the local zones (`ip` or `ip:port`).
    pub upstreams: Vec<Endpoint>,
    /// Per-domain forwarding, tried before `upstreams`.
    #[serde(rename = "forward")]
    pub forwards: Vec<Forward>,
    /// Entries in the answer cache.
    pub cache_size: u32,
    /// Bytes the answer cache may hold (records and their bookkeeping);
    /// the least recently used entries go first.
    pub cache_bytes: ByteSize,
    /// Upper bound on cached TTLs.
    pub max_ttl: Duration,
    /// Upper bound on cached negative answers (RFC 2308).
    pub max_negative_ttl: Duration,
    /// Time to wait for one upstream before trying the next.
    pub upstream_timeout: Duration,
    /// Questions outstanding upstream at most (as dnsmasq's
    /// dns-forward-max); queries beyond get SERVFAIL at once.
    pub forward_max: u32,
    /// Pooled UDP sockets for upstream questions, per address family (each
    /// on a random port, renewed as it is used).
    pub upstream_sockets: u32,
    /// A TCP connection without a complete query for this long is closed.
    pub tcp_idle_timeout: Duration,
    /// Open TCP connections at most (all addresses together).
    pub tcp_max_connections: u32,
    /// Open TCP connections at most from one client address.
    pub tcp_max_per_client: u32,
    /// A TCP write (answers to a client that does not read them) that takes
    /// longer closes the connection; at most `tcp_idle_timeout` applies.
    pub tcp_write_timeout: Duration,
    /// Response rate limiting of UDP answers (agent and XDP cache).
    pub rate_limit: RateLimit,
    /// Secondaries (Knot, BIND, NSD): the only addresses allowed zone
    /// transfers (AXFR, IXFR), and where NOTIFY goes on every change.
    #[serde(rename = "secondary")]
    pub secondaries: Vec<Secondary>,
    /// TSIG keys (RFC 8945) named by secondaries.
    #[serde(rename = "tsig_key")]
    pub tsig_keys: Vec<TsigKey>,
    /// Zone transfers served at once at most (each secondary address at
    /// most two of them); more are refused.
    pub transfer_max: u32,
}

/// A secondary server of the local zones.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Secondary {
    /// Its address: transfers from it are allowed, NOTIFYs go to it.
    pub address: Ipv4Addr,
    /// The port its NOTIFYs go to.
    #[serde(default = "dns_port")]
    pub port: u16,
    /// A `[[dns.tsig_key]]` name: its transfers must be signed with it, and
    /// the NOTIFYs to it are.
    pub key: Option<String>,
    /// The zones it serves (default: every local zone, reverse ones too).
    #[serde(default)]
    pub zones: Vec<String>,
    /// Send it NOTIFY on changes.
    #[serde(default = "yes")]
    pub notify: bool,
}

fn dns_port() -> u16 {
    53
}

/// A TSIG key: its name, the algorithm, and the base64 secret given in
/// place or in a file (as `keymgr -t NAME hmac-sha256` prints it).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TsigKey {
    pub name: String,
    #[serde(default = "hmac_sha256")]
    pub algorithm: String,
    pub secret: Option<String>,
    pub secret_file: Option<PathBuf>,
}

fn hmac_sha256() -> String {
    "hmac-sha256".into()
}

/// Response rate limiting (as Knot's and BIND's RRL): UDP answers to one
/// client prefix at most at a rate, with a burst; over it every `slip`-th
/// answer is sent truncated (TC set) so real clients retry over TCP, the
/// others are dropped. TCP is never limited (its sources cannot be forged).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimit {
    /// Answers per second per prefix; 0 turns rate limiting off (the
    /// default, as in Knot and BIND).
    pub responses_per_second: u32,
    /// Answers a prefix may get at once; 0 means `responses_per_second`.
    pub burst: u32,
    /// Every `slip`-th limited answer goes out truncated; 0 drops all,
    /// 1 truncates all.
    pub slip: u32,
    /// Clients are counted by prefix: /24 for IPv4, /56 for IPv6.
    pub ipv4_prefix_length: u8,
    pub ipv6_prefix_length: u8,
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit { responses_per_second: 0, burst: 0, slip: 2, ipv4_prefix_length: 24, ipv6_prefix_length: 56 }
    }
}

impl Default for DnsSection {
    fn default() -> Self {
        Self {
            enabled: true,
            upstreams: Vec::new(),
            forwards: Vec::new(),
            cache_size: 10_000,
            cache_bytes: ByteSize(16 << 20),
            max_ttl: Duration(86_400),
            max_negative_ttl: Duration(3_600),
            upstream_timeout: Duration(2),
            forward_max: 150,
            upstream_sockets: 32,
            tcp_idle_timeout: Duration(10),
            tcp_max_connections: 256,
            tcp_max_per_client: 16,
            tcp_write_timeout: Duration(2),
            rate_limit: RateLimit::default(),
            secondaries: Vec::new(),
            tsig_keys: Vec::new(),
            transfer_max: 8,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Forward {
    pub domain: String,
    pub upstreams: Vec<Endpoint>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ZoneRole {
    /// The management plane's zone (`mgmt.deevnet.net`).
    Management,
    /// A site zone; it must not define management-plane records.
    Site,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Zone {
    /// The apex, e.g. `mgmt.deevnet.net`.
    pub name: String,
    pub role: ZoneRole,
    /// Default TTL of the zone's records.
    #[serde(default = "default_ttl")]
    pub ttl: Duration,
    #[serde(default)]
    pub soa: Soa,
    /// Name servers of the zone (names relative to the zone or absolute with
    /// a trailing dot); default: `ns` in the zone, at the gateway address.
    #[serde(default)]
    pub ns: Vec<String>,
    /// An RFC 1035 zone file whose records are merged into the zone; its
    /// SOA and apex NS set, when it has them, replace the generated ones.
    pub file: Option<PathBuf>,
    #[serde(default, rename = "host")]
    pub hosts: Vec<Host>,
    #[serde(default, rename = "service")]
    pub services: Vec<Service>,
    #[serde(default, rename = "record")]
    pub records: Vec<Record>,
}

fn default_ttl() -> Duration {
    Duration(300)
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Soa {
    /// The primary name server (relative or absolute); default `ns`.
    pub mname: String,
    /// The responsible mailbox as a name (`hostmaster` → hostmaster.<zone>).
    pub rname: String,
    /// Absent: derived from the configuration's load time.
    pub serial: Option<u32>,
    pub refresh: Duration,
    pub retry: Duration,
    pub expire: Duration,
    /// The negative-caching TTL (RFC 2308).
    pub minimum: Duration,
}

impl Default for Soa {
    fn default() -> Self {
        Self {
            mname: "ns".to_string(),
            rname: "hostmaster".to_string(),
            serial: None,
            refresh: Duration(3600),
            retry: Duration(600),
            expire: Duration(604_800),
            minimum: Duration(300),
        }
    }
}

/// A host: a replaceable implementation with addresses (A/AAAA records).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Host {
    /// Relative to the zone (`provisioner-01`).
    pub name: String,
    pub addresses: Vec<IpAddr>,
    pub ttl: Option<Duration>,
}

/// A service: a stable name that is a CNAME to the host providing it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    pub name: String,
    /// A host or service of this zone (`provisioner-01`), or an absolute name
    /// with a trailing dot (`artifacts.mgmt.deevnet.net.`).
    pub target: String,
    pub ttl: Option<Duration>,
}

/// Any other record, in zone-file presentation format.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// Relative to the zone; `@` is the apex.
    pub name: String,
    #[serde(rename = "type")]
    pub rtype: String,
    /// The RDATA as in a zone file: `10 mail`, `"v=spf1 -all"`, `0 5 5060 sip`.
    pub data: String,
    pub ttl: Option<Duration>,
}

// ------------------------------------------------------------------ DHCP

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DhcpSection {
    pub enabled: bool,
    pub lease_time: Duration,
    pub max_lease_time: Duration,
    /// NTP servers given to clients (option 42).
    pub ntp_servers: Vec<Ipv4Addr>,
    /// The domain search list (option 119, RFC 3397); empty: the segment's zone.
    pub domain_search: Vec<String>,
    #[serde(rename = "pool")]
    pub pools: Vec<Pool>,
    #[serde(rename = "host")]
    pub hosts: Vec<DhcpHost>,
    /// The relay agents served (requests with giaddr set); no other relayed
    /// request is answered.
    #[serde(rename = "relay")]
    pub relays: Vec<Relay>,
    /// Options for every segment (a pool's own options win).
    #[serde(rename = "option")]
    pub options: Vec<DhcpOption>,
    pub pxe: Pxe,
    /// Before serving a segment in bootstrap mode (and before taking its
    /// gateway address), listen this long for another DHCP server's answer
    /// to a probe, and for ARP answers for the address; 0 skips the probes.
    pub probe_wait_ms: u32,
    /// While serving, probe for other DHCP servers this often (their
    /// broadcast answers to clients are heard at any time).
    pub watch_interval: Duration,
}

impl Default for DhcpSection {
    fn default() -> Self {
        Self {
            enabled: true,
            lease_time: Duration(3600),
            max_lease_time: Duration(86_400),
            ntp_servers: Vec::new(),
            domain_search: Vec::new(),
            pools: Vec::new(),
            hosts: Vec::new(),
            relays: Vec::new(),
            options: Vec::new(),
            pxe: Pxe::default(),
            probe_wait_ms: 3000,
            watch_interval: Duration(60),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Pool {
    /// The segment (by name) this pool serves.
    pub segment: String,
    /// First and last address handed out, inclusive.
    pub start: Ipv4Addr,
    pub end: Ipv4Addr,
    pub lease_time: Option<Duration>,
    /// This pool's domain search list (option 119), instead of `dhcp.domain_search`.
    pub domain_search: Option<Vec<String>>,
    #[serde(default, rename = "option")]
    pub options: Vec<DhcpOption>,
}

/// A DHCP relay agent whose requests are served (as Kea's `relay.ip-addresses`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Relay {
    /// The segment whose pools and static hosts serve the relay's clients.
    pub segment: String,
    /// The relay's addresses as it writes them in giaddr.
    pub addresses: Vec<Ipv4Addr>,
    /// The addresses its datagrams come from; empty: `addresses`.
    #[serde(default)]
    pub sources: Vec<Ipv4Addr>,
}

impl Relay {
    /// Where this relay's datagrams may come from.
    pub fn sources(&self) -> &[Ipv4Addr] {
        if self.sources.is_empty() { &self.addresses } else { &self.sources }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DhcpHost {
    /// Identify the client by MAC, or by client identifier (option 61, hex).
    pub mac: Option<MacAddr>,
    pub client_id: Option<HexBytes>,
    pub address: Ipv4Addr,
    /// Registered as an A/PTR record in the segment's zone.
    pub hostname: Option<String>,
    pub lease_time: Option<Duration>,
    /// Per-host boot file overrides.
    #[serde(default)]
    pub pxe: Option<Pxe>,
}

/// A DHCP option by number, with a typed value.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DhcpOption {
    pub code: u8,
    /// Exactly one of these.
    pub text: Option<String>,
    pub ip: Option<Vec<Ipv4Addr>>,
    pub u8: Option<u8>,
    pub u16: Option<u16>,
    pub u32: Option<u32>,
    pub hex: Option<HexBytes>,
}

/// Boot files by client architecture (option 93). Relative names are served
/// by coresvc's TFTP; `http://` URLs are for HTTP boot clients.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Pxe {
    /// Legacy BIOS (arch 0).
    pub bios: Option<String>,
    /// UEFI x64 (arch 7 and 9).
    pub uefi_x64: Option<String>,
    /// UEFI ARM64 (arch 11).
    pub uefi_arm64: Option<String>,
    /// UEFI HTTP boot x64 (arch 16).
    pub http_x64: Option<String>,
    /// UEFI HTTP boot ARM64 (arch 19).
    pub http_arm64: Option<String>,
    /// What iPXE (user class "iPXE" or option 175) gets instead of a binary.
    pub ipxe_script: Option<String>,
    /// The TFTP server (siaddr); default: coresvc's address on the segment.
    pub next_server: Option<Ipv4Addr>,
}

// ------------------------------------------------------------------ TFTP

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TftpSection {
    /// Only files under this directory are served.
    pub root: PathBuf,
    /// Segments served (default: all). Never the uplink.
    pub segments: Option<Vec<String>>,
    /// Keep serving in production mode.
    #[serde(default)]
    pub in_production: bool,
    /// Transfers at once; more requests are refused as busy.
    #[serde(default = "default_max_transfers")]
    pub max_transfers: u32,
    /// Transfers at once from one client address; more are refused, so
    /// one client (or a flood of forged requests from a segment address)
    /// cannot take every slot.
    #[serde(default = "default_max_transfers_per_client")]
    pub max_transfers_per_client: u32,
    /// The first retransmission timeout and the longest one after backing
    /// off; once a client answers, the timeout follows its round-trip time.
    /// A client's RFC 2349 `timeout` option replaces it for its transfer.
    #[serde(default = "default_tftp_timeout")]
    pub timeout: Duration,
    /// Retransmissions in a row without an answer; a transfer is given up
    /// after a silence of `timeout × (retries + 1)`, and no sooner than 6 s
    /// after the last retransmission (a client's own retry interval).
    #[serde(default = "default_tftp_retries")]
    pub retries: u32,
    /// The largest block size granted (RFC 2348); larger requests get this.
    #[serde(default = "default_max_blksize")]
    pub max_blksize: u16,
    /// The largest window granted (RFC 7440); larger requests get this.
    #[serde(default = "default_max_windowsize")]
    pub max_windowsize: u16,
    /// What a file name with a leading `/` means.
    #[serde(default)]
    pub absolute_paths: AbsolutePaths,
}

/// What a requested file name with a leading `/` means.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AbsolutePaths {
    /// Refused (access violation), like `..`.
    #[default]
    Refuse,
    /// A path from the TFTP root, as tftpd-hpa `--secure` and dnsmasq read
    /// it: GRUB asks for `/grub/...` under its network prefix, and many
    /// PXE configurations name `/pxelinux.0`. Still confined to the root.
    Root,
}

fn default_max_transfers() -> u32 {
    512
}

fn default_max_transfers_per_client() -> u32 {
    16
}

fn default_tftp_timeout() -> Duration {
    Duration(1)
}

fn default_tftp_retries() -> u32 {
    5
}

fn default_max_blksize() -> u16 {
    65464
}

fn default_max_windowsize() -> u16 {
    64
}

// ------------------------------------------------------------------ firewall

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FirewallSection {
    /// Apply the rules and track connections (off: the gateway forwards
    /// everything, as a plain router does).
    pub enabled: bool,
    /// From segments to the gateway itself, when no rule matches:
    /// `services` allows DNS, DHCP, TFTP and ping, and nothing else.
    pub to_gateway: GatewayPolicy,
    /// Between segments, when no rule matches.
    pub inter_segment: Action,
    /// From segments to the uplink, when no rule matches.
    pub egress: Action,
    /// From the uplink into segments or to the gateway, when no rule matches.
    pub inbound: Action,
    /// IPv6 frames on coresvc's interfaces (not served yet): `drop`
    /// (counted as `ipv6-policy`) or `stack` (handed to the kernel
    /// unjudged, for a host whose own nftables judges IPv6).
    pub ipv6: Ipv6Policy,
    #[serde(rename = "rule")]
    pub rules: Vec<Rule>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Ipv6Policy {
    #[default]
    Drop,
    Stack,
}

impl Default for FirewallSection {
    fn default() -> Self {
        Self {
            enabled: true,
            ipv6: Ipv6Policy::Drop,
            to_gateway: GatewayPolicy::Services,
            inter_segment: Action::Deny,
            egress: Action::Allow,
            inbound: Action::Deny,
            rules: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GatewayPolicy {
    /// DNS (53), DHCP (67), TFTP (69) and ICMP echo.
    Services,
    Allow,
    Deny,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Allow,
    Deny,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Shown with the rule's counters.
    pub name: String,
    /// A segment name, `uplink`, or `any`.
    pub from: String,
    /// A segment name, `uplink` (egress), `gateway` (coresvc's own services), or `any`.
    pub to: String,
    #[serde(default)]
    pub proto: Proto,
    /// Destination ports or ranges (`22`, `"8000-8080"`); empty means all.
    #[serde(default)]
    pub ports: Vec<PortRange>,
    /// Destination prefixes (for egress); empty means all.
    #[serde(default)]
    pub dst: Vec<IpNet>,
    pub action: Action,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    #[default]
    Any,
    Tcp,
    Udp,
    Icmp,
}

// ------------------------------------------------------------------ NAT

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatSection {
    /// Outside ports allocated for masqueraded flows; must not overlap the
    /// kernel's ephemeral ports (net.ipv4.ip_local_port_range).
    pub port_min: u16,
    pub port_max: u16,
    /// Outside ports one inside address may hold at once (0: no limit).
    /// Absent: a quarter of the range. Refused flows are counted as
    /// `nat-port-quota`.
    pub max_ports_per_host: Option<u32>,
    #[serde(rename = "forward")]
    pub forwards: Vec<PortForward>,
}

impl NatSection {
    /// The per-host outside-port quota in force.
    pub fn port_quota(&self) -> u32 {
        self.max_ports_per_host.unwrap_or((u32::from(self.port_max).saturating_sub(u32::from(self.port_min)) + 1) / 4)
    }
}

impl Default for NatSection {
    fn default() -> Self {
        // Below Linux's ephemeral range (32768-60999): the gateway's own
        // connections use those on the same address.
        Self { port_min: 20_000, port_max: 32_767, max_ports_per_host: None, forwards: Vec::new() }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PortForward {
    pub proto: Proto,
    /// The port on the uplink address.
    pub port: u16,
    /// The inside host and port.
    pub to: std::net::SocketAddrV4,
}

// ------------------------------------------------------------------ authority

/// The dedicated infrastructure of production mode (seed §3): where its DNS
/// answers (checked before and during production mode) and how leases are
/// handed to its Kea and taken back.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthoritySection {
    /// The production DNS servers (`ip` or `ip:port`, at their own
    /// addresses, not coresvc's), for every segment without its own list.
    pub dns: Vec<Endpoint>,
    /// Per segment: its own production DNS servers, the interface the
    /// production Kea serves it on.
    #[serde(rename = "segment")]
    pub segments: Vec<AuthoritySegment>,
    /// How long to wait for each answer of the production DNS.
    pub query_timeout_ms: u32,
    /// In production mode, compare the production infrastructure with
    /// coresvc's records this often ("conflicting truth": a metric and a
    /// log line); 0: never.
    pub check_interval: Duration,
    /// Kea's control agent (`http://host:port/`): leases are pushed with
    /// `lease4-add` on the switch to production and taken back with
    /// `lease4-get-all` (Kea's DHCP disabled first) on the switch to bootstrap.
    pub kea_control_agent: Option<String>,
    /// A Kea memfile lease file (CSV): on the switch to production coresvc
    /// appends its active leases to it (for a Kea that loads it at start or
    /// reload); on the switch to bootstrap, without a control agent, it
    /// reads the production leases back from it (and its .completed/.1/.2 files).
    pub kea_lease_file: Option<PathBuf>,
}

impl Default for AuthoritySection {
    fn default() -> Self {
        Self {
            dns: Vec::new(),
            segments: Vec::new(),
            query_timeout_ms: 1000,
            check_interval: Duration(300),
            kea_control_agent: None,
            kea_lease_file: None,
        }
    }
}

impl AuthoritySection {
    /// The settings of segment `name`, if it has any.
    pub fn segment(&self, name: &str) -> Option<&AuthoritySegment> {
        self.segments.iter().find(|s| s.segment == name)
    }

    /// The production DNS servers of segment `name`.
    pub fn dns_for(&self, name: &str) -> &[Endpoint] {
        self.segment(name).and_then(|s| s.dns.as_deref()).unwrap_or(&self.dns)
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuthoritySegment {
    /// The segment (by name).
    pub segment: String,
    /// This segment's production DNS servers, instead of `authority.dns`.
    pub dns: Option<Vec<Endpoint>>,
    /// The segment's interface on the production Kea host (`coresvc export
    /// kea`); default: the segment's own interface.
    pub kea_interface: Option<String>,
}

// ------------------------------------------------------------------ value types

/// A duration in seconds, written as an integer (`3600`) or with a unit
/// (`"90s"`, `"30m"`, `"12h"`, `"7d"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Duration(pub u32);

impl Duration {
    pub fn secs(self) -> u32 {
        self.0
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Duration;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("seconds as an integer, or a string like \"90s\", \"30m\", \"12h\", \"7d\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
                u32::try_from(v)
                    .map(Duration)
                    .map_err(|_| E::custom(format!("{v} is not a duration in seconds (0 to {})", u32::MAX)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

impl FromStr for Duration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let bad = || format!("{s:?} is not a duration: use seconds, or a number with s, m, h or d");
        let (num, mult) = match s.char_indices().last() {
            Some((i, 's')) => (&s[..i], 1),
            Some((i, 'm')) => (&s[..i], 60),
            Some((i, 'h')) => (&s[..i], 3600),
            Some((i, 'd')) => (&s[..i], 86_400),
            Some(_) => (s, 1),
            None => return Err(bad()),
        };
        let n: u64 = num.parse().map_err(|_| bad())?;
        n.checked_mul(mult).and_then(|v| u32::try_from(v).ok()).map(Duration).ok_or_else(bad)
    }
}

/// A size in bytes, written as an integer (`65536`) or with a binary unit
/// (`"64KiB"`, `"16MiB"`, `"1GiB"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct ByteSize(pub u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("bytes as an integer, or a string like \"64KiB\", \"16MiB\", \"1GiB\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v).map(ByteSize).map_err(|_| E::custom(format!("{v} is not a size in bytes")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

impl FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let bad = || format!("{s:?} is not a size: use bytes, or a number with KiB, MiB or GiB");
        let (num, shift) = [("KiB", 10), ("MiB", 20), ("GiB", 30)]
            .iter()
            .find_map(|(unit, shift)| s.strip_suffix(unit).map(|n| (n.trim(), *shift)))
            .unwrap_or((s, 0));
        let n: u64 = num.parse().map_err(|_| bad())?;
        n.checked_mul(1 << shift).map(ByteSize).ok_or_else(bad)
    }
}

/// A MAC address, `02:00:00:aa:bb:cc` (or with dashes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let b = self.0;
        write!(f, "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2], b[3], b[4], b[5])
    }
}

impl FromStr for MacAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split([':', '-']).collect();
        let bad = || format!("{s:?} is not a MAC address: use six hex bytes like 02:00:00:aa:bb:cc");
        if parts.len() != 6 {
            return Err(bad());
        }
        let mut out = [0u8; 6];
        for (o, p) in out.iter_mut().zip(parts) {
            if p.len() != 2 {
                return Err(bad());
            }
            *o = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        Ok(MacAddr(out))
    }
}

/// Hex bytes, `01:02:00:aa` or `0102aa` (for client identifiers and raw options).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HexBytes(pub Vec<u8>);

impl FromStr for HexBytes {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let digits: String = s.chars().filter(|c| *c != ':' && *c != '-').collect();
        let bad = || format!("{s:?} is not hex bytes: use pairs of hex digits like 01:02:aa or 0102aa");
        if digits.is_empty() || !digits.len().is_multiple_of(2) {
            return Err(bad());
        }
        (0..digits.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).map_err(|_| bad()))
            .collect::<Result<Vec<u8>, _>>()
            .map(HexBytes)
    }
}

impl fmt::Display for HexBytes {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// A port or an inclusive range: `22` or `"8000-8080"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = PortRange;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a port (22) or a range (\"8000-8080\")")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<PortRange, E> {
                let p = u16::try_from(v).map_err(|_| E::custom(format!("{v} is not a port (0-65535)")))?;
                Ok(PortRange { first: p, last: p })
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<PortRange, E> {
                let bad = || E::custom(format!("{v:?} is not a port range: use \"first-last\", e.g. \"8000-8080\""));
                let (a, b) = v.split_once('-').unwrap_or((v, v));
                let first: u16 = a.trim().parse().map_err(|_| bad())?;
                let last: u16 = b.trim().parse().map_err(|_| bad())?;
                if first > last {
                    return Err(bad());
                }
                Ok(PortRange { first, last })
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for PortRange {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.first == self.last {
            s.serialize_u16(self.first)
        } else {
            s.serialize_str(&format!("{}-{}", self.first, self.last))
        }
    }
}

/// An upstream server: `192.0.2.53` or `192.0.2.53:5353` (port 53 by default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint(pub std::net::SocketAddr);

impl FromStr for Endpoint {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Ok(sa) = s.parse::<std::net::SocketAddr>() {
            return Ok(Endpoint(sa));
        }
        s.parse::<IpAddr>()
            .map(|ip| Endpoint(std::net::SocketAddr::new(ip, 53)))
            .map_err(|_| format!("{s:?} is not a server address: use 192.0.2.53 or 192.0.2.53:5353"))
    }
}

macro_rules! string_serde {
    ($($t:ty),*) => {$(
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(de::Error::custom)
            }
        }
        impl Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.to_string())
            }
        }
    )*};
}
string_serde!(MacAddr, HexBytes, Endpoint);

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}
