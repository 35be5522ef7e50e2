//! Every validation error has a test that triggers it alone, checks the
//! message names the field and what is valid, and that the location points
//! at the right line. The services' checks are tested in `crate::check`,
//! with the same [`BASE`] and helpers.

use super::*;

/// A minimal valid configuration; tests append to it.
pub(crate) const BASE: &str = r#"
[[segment]]
name = "mgmt"
interface = "mgmt0"
cidr = "10.10.0.0/24"
gateway = "10.10.0.1"
reserved = "10.10.0.2"
zone = "mgmt.deevnet.net"

[[segment]]
name = "dvnt"
interface = "dvnt0"
cidr = "10.20.0.0/24"
gateway = "10.20.0.1"
reserved = "10.20.0.2"
zone = "dvnt.deevnet.net"

[[zone]]
name = "mgmt.deevnet.net"
role = "management"
[[zone.host]]
name = "provisioner-01"
addresses = ["10.10.0.10"]
[[zone.service]]
name = "artifacts"
target = "provisioner-01"

[[zone]]
name = "dvnt.deevnet.net"
role = "site"
[[zone.service]]
name = "artifacts"
target = "artifacts.mgmt.deevnet.net."
"#;

fn problems(extra: &str) -> Vec<LocatedProblem> {
    problems_of(Config::parse_str(&format!("{BASE}{extra}"), "test.toml"))
}

/// The problems of a parse that must not fail on syntax.
pub(crate) fn problems_of(parsed: Result<Config, ConfigError>) -> Vec<LocatedProblem> {
    match parsed {
        Ok(_) => Vec::new(),
        Err(ConfigError::Invalid { problems, .. }) => problems,
        Err(e) => panic!("unexpected error: {e}"),
    }
}

fn with_replaced(from: &str, to: &str) -> Vec<LocatedProblem> {
    let text = BASE.replacen(from, to, 1);
    assert_ne!(text, BASE, "replacement {from:?} did not apply");
    problems_of(Config::parse_str(&text, "test.toml"))
}

/// Exactly one problem, at `path`, whose message contains every needle.
pub(crate) fn assert_one(ps: &[LocatedProblem], path: &str, needles: &[&str]) {
    assert_eq!(ps.len(), 1, "expected one problem, got {ps:#?}");
    let p = &ps[0];
    assert_eq!(p.problem.dotted_path(), path);
    for n in needles {
        assert!(p.problem.message.contains(n), "{:?} does not mention {n:?}", p.problem.message);
    }
    assert!(p.location.is_some(), "no location for {path}");
}

#[test]
fn base_is_valid() {
    assert!(problems("").is_empty());
}

#[test]
fn example_config_is_valid() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/coresvc.toml");
    let c = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.segments.len(), 3);
    assert!(c.uplink.is_some());
    assert_eq!(c.zones.len(), 3);
    assert!(c.tftp.is_some());
}

#[test]
fn unknown_fields_are_refused_with_the_valid_ones() {
    let e = Config::parse_str(&format!("{BASE}\n[dns]\nupstream = [\"1.2.3.4\"]\n"), "t.toml").unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("unknown field `upstream`"), "{msg}");
    assert!(msg.contains("upstreams"), "lists the valid fields: {msg}");
    assert!(msg.starts_with("t.toml:"), "names the file and line: {msg}");
}

#[test]
fn overlapping_cidrs() {
    let ps = with_replaced("cidr = \"10.20.0.0/24\"", "cidr = \"10.10.0.0/16\"");
    // The dvnt gateway/reserved now lie outside? No: 10.20.0.1 is outside 10.10.0.0/16.
    let overlap: Vec<_> = ps.iter().filter(|p| p.problem.message.contains("overlaps")).collect();
    assert_eq!(overlap.len(), 1, "{ps:#?}");
    assert_eq!(overlap[0].problem.dotted_path(), "segment[1].cidr");
    assert!(overlap[0].problem.message.contains("must not overlap"));
    assert_eq!(overlap[0].location.map(|l| l.0), Some(13));
}

#[test]
fn gateway_outside_cidr() {
    let ps = with_replaced("gateway = \"10.20.0.1\"", "gateway = \"10.21.0.1\"");
    assert_one(&ps, "segment[1].gateway", &["10.21.0.1", "outside", "10.20.0.0/24"]);
    assert_eq!(ps[0].location.map(|l| l.0), Some(14));
}

#[test]
fn reserved_outside_cidr_or_equal_gateway() {
    let ps = with_replaced("reserved = \"10.20.0.2\"", "reserved = \"10.20.1.2\"");
    assert_one(&ps, "segment[1].reserved", &["outside", "10.20.0.0/24"]);
    let ps = with_replaced("reserved = \"10.20.0.2\"", "reserved = \"10.20.0.1\"");
    assert_one(&ps, "segment[1].reserved", &["gateway"]);
}

#[test]
fn cidr_with_host_bits() {
    let ps = with_replaced("cidr = \"10.20.0.0/24\"", "cidr = \"10.20.0.7/24\"");
    assert_one(&ps, "segment[1].cidr", &["did you mean 10.20.0.0/24"]);
}

#[test]
fn pool_outside_cidr() {
    let ps = problems("[[dhcp.pool]]\nsegment = \"dvnt\"\nstart = \"10.20.0.100\"\nend = \"10.20.1.10\"\n");
    assert_one(&ps, "dhcp.pool[0].end", &["10.20.1.10", "outside", "10.20.0.0/24"]);
}

#[test]
fn pool_containing_gateway_or_reserved() {
    let ps = problems("[[dhcp.pool]]\nsegment = \"dvnt\"\nstart = \"10.20.0.1\"\nend = \"10.20.0.50\"\n");
    assert_eq!(ps.len(), 2, "{ps:#?}");
    assert!(ps.iter().all(|p| p.problem.dotted_path() == "dhcp.pool[0]"));
    assert!(ps.iter().any(|p| p.problem.message.contains("gateway 10.20.0.1")));
    assert!(ps.iter().any(|p| p.problem.message.contains("reserved address 10.20.0.2")));
}

#[test]
fn pool_of_unknown_segment_and_reversed_range() {
    let ps = problems("[[dhcp.pool]]\nsegment = \"nope\"\nstart = \"10.20.0.100\"\nend = \"10.20.0.150\"\n");
    assert_one(&ps, "dhcp.pool[0].segment", &["\"nope\"", "one of: mgmt, dvnt"]);
    let ps = problems("[[dhcp.pool]]\nsegment = \"dvnt\"\nstart = \"10.20.0.150\"\nend = \"10.20.0.100\"\n");
    assert_one(&ps, "dhcp.pool[0].end", &["before start"]);
}

#[test]
fn overlapping_pools() {
    let ps = problems(
        "[[dhcp.pool]]\nsegment = \"dvnt\"\nstart = \"10.20.0.100\"\nend = \"10.20.0.150\"\n\
         [[dhcp.pool]]\nsegment = \"dvnt\"\nstart = \"10.20.0.140\"\nend = \"10.20.0.160\"\n",
    );
    assert_one(&ps, "dhcp.pool[1]", &["overlaps dhcp.pool[0]"]);
}

const DVNT_POOL: &str = "[[dhcp.pool]]\nsegment = \"dvnt\"\nstart = \"10.20.0.100\"\nend = \"10.20.0.150\"\n";

#[test]
fn relays_name_a_served_segment_and_reachable_unique_addresses() {
    let relay = |body: &str| problems(&format!("{DVNT_POOL}[[dhcp.relay]]\n{body}"));
    assert!(relay("segment = \"dvnt\"\naddresses = [\"10.20.0.50\"]\n").is_empty());
    assert!(relay("segment = \"dvnt\"\naddresses = [\"10.20.0.50\"]\nsources = [\"10.10.0.9\"]\n").is_empty());
    assert_one(
        &relay("segment = \"nope\"\naddresses = [\"10.20.0.50\"]\n"),
        "dhcp.relay[0].segment",
        &["\"nope\"", "one of: mgmt, dvnt"],
    );
    assert_one(
        &relay("segment = \"mgmt\"\naddresses = [\"10.10.0.50\"]\n"),
        "dhcp.relay[0].segment",
        &["no dhcp.pool", "served segment"],
    );
    assert_one(&relay("segment = \"dvnt\"\naddresses = []\n"), "dhcp.relay[0].addresses", &["giaddr"]);
    assert_one(
        &relay("segment = \"dvnt\"\naddresses = [\"10.20.0.1\"]\n"),
        "dhcp.relay[0].addresses[0]",
        &["coresvc's own"],
    );
    assert_one(
        &relay("segment = \"dvnt\"\naddresses = [\"10.10.0.50\"]\n"),
        "dhcp.relay[0].addresses[0]",
        &["not reachable through segment \"dvnt\"", "10.20.0.0/24", "[[route]]"],
    );
    assert_one(
        &relay("segment = \"dvnt\"\naddresses = [\"10.20.0.50\"]\nsources = [\"255.255.255.255\"]\n"),
        "dhcp.relay[0].sources[0]",
        &["unicast"],
    );
    // A relay beyond a router on the segment: its route makes it reachable.
    assert!(
        relay("segment = \"dvnt\"\naddresses = [\"172.16.9.1\"]\n[[route]]\nprefix = \"172.16.0.0/16\"\nvia = \"10.20.0.254\"\n")
            .is_empty()
    );
    // One giaddr, one segment.
    let ps = problems(&format!(
        "{DVNT_POOL}[[dhcp.relay]]\nsegment = \"dvnt\"\naddresses = [\"10.20.0.50\"]\n\
         [[dhcp.relay]]\nsegment = \"dvnt\"\naddresses = [\"10.20.0.51\", \"10.20.0.50\"]\n"
    ));
    assert_one(&ps, "dhcp.relay[1].addresses[1]", &["already a relay address of dhcp.relay[0]"]);
}

#[test]
fn control_socket_users_and_group_must_exist() {
    let agent = |body: &str| problems(&format!("[agent]\n{body}"));
    assert!(agent("control_group = \"root\"\ncontrol_users = [\"nobody\", \"4242\"]\n").is_empty());
    assert_one(&agent("control_group = \"no-such-group-x\"\n"), "agent.control_group", &["no group", "numeric gid"]);
    assert_one(
        &agent("control_users = [\"root\", \"no-such-user-x\"]\n"),
        "agent.control_users[1]",
        &["no user", "numeric uid"],
    );
}

#[test]
fn duplicate_macs_in_static_hosts() {
    let ps = problems(
        "[[dhcp.host]]\nmac = \"02:00:00:00:00:01\"\naddress = \"10.20.0.10\"\n\
         [[dhcp.host]]\nmac = \"02:00:00:00:00:01\"\naddress = \"10.20.0.11\"\n",
    );
    assert_one(&ps, "dhcp.host[1].mac", &["02:00:00:00:00:01", "dhcp.host[0]"]);
}

#[test]
fn duplicate_ips_in_static_hosts() {
    let ps = problems(
        "[[dhcp.host]]\nmac = \"02:00:00:00:00:01\"\naddress = \"10.20.0.10\"\n\
         [[dhcp.host]]\nmac = \"02:00:00:00:00:02\"\naddress = \"10.20.0.10\"\n",
    );
    assert_one(&ps, "dhcp.host[1].address", &["10.20.0.10", "dhcp.host[0]"]);
}

#[test]
fn static_host_outside_every_segment_or_on_the_gateway() {
    let ps = problems("[[dhcp.host]]\nmac = \"02:00:00:00:00:01\"\naddress = \"10.99.0.10\"\n");
    assert_one(&ps, "dhcp.host[0].address", &["not inside any segment"]);
    let ps = problems("[[dhcp.host]]\nmac = \"02:00:00:00:00:01\"\naddress = \"10.20.0.1\"\n");
    assert_one(&ps, "dhcp.host[0].address", &["gateway"]);
}

#[test]
fn static_host_needs_an_identity() {
    let ps = problems("[[dhcp.host]]\naddress = \"10.20.0.10\"\n");
    assert_one(&ps, "dhcp.host[0]", &["mac", "client_id"]);
}

#[test]
fn malformed_mac_is_a_syntax_error_with_a_location() {
    let e =
        Config::parse_str(&format!("{BASE}[[dhcp.host]]\nmac = \"02:00:zz\"\naddress = \"10.20.0.10\"\n"), "t.toml")
            .unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("is not a MAC address"), "{msg}");
    assert!(msg.contains("t.toml:"), "{msg}");
}

#[test]
fn service_pointing_to_an_unknown_host() {
    let ps = with_replaced("target = \"provisioner-01\"", "target = \"provisioner-02\"");
    assert_one(&ps, "zone[0].service[0].target", &["provisioner-02.mgmt.deevnet.net", "not a host", "provisioner-01"]);
}

#[test]
fn site_service_pointing_to_an_unknown_management_name() {
    let ps = with_replaced("target = \"artifacts.mgmt.deevnet.net.\"", "target = \"nothing.mgmt.deevnet.net.\"");
    assert_one(&ps, "zone[1].service[0].target", &["nothing.mgmt.deevnet.net"]);
}

#[test]
fn service_pointing_outside_the_local_zones_is_fine() {
    let ps = with_replaced("target = \"artifacts.mgmt.deevnet.net.\"", "target = \"mirror.example.org.\"");
    assert!(ps.is_empty(), "{ps:#?}");
}

#[test]
fn cname_loops_are_refused() {
    let ps = problems(
        "[[zone]]\nname = \"loop.example\"\nrole = \"site\"\n\
         [[zone.service]]\nname = \"a\"\ntarget = \"b\"\n\
         [[zone.service]]\nname = \"b\"\ntarget = \"a\"\n",
    );
    assert!(!ps.is_empty() && ps.iter().all(|p| p.problem.message.contains("loop")), "{ps:#?}");
}

#[test]
fn site_zone_defining_management_plane_records() {
    // A site zone above the management zone, defining a name inside it.
    let ps = problems(
        "[[zone]]\nname = \"deevnet.net\"\nrole = \"site\"\n[[zone.host]]\nname = \"console.mgmt\"\naddresses = [\"10.20.0.9\"]\n",
    );
    assert_one(&ps, "zone[2].host[0].name", &["console.mgmt.deevnet.net", "management-plane", "must not"]);
    // A site zone inside the management zone.
    let ps = problems("[[zone]]\nname = \"lab.mgmt.deevnet.net\"\nrole = \"site\"\n");
    assert_one(&ps, "zone[2].name", &["inside the management zone", "must not"]);
    // An absolute owner name in the management zone.
    let ps = problems(
        "[[zone]]\nname = \"deevnet.net\"\nrole = \"site\"\n[[zone.record]]\nname = \"x.mgmt.deevnet.net.\"\ntype = \"TXT\"\ndata = '\"hi\"'\n",
    );
    assert_one(&ps, "zone[2].record[0].name", &["management-plane"]);
}

#[test]
fn a_name_is_a_host_or_a_service_not_both() {
    let ps = problems("[[zone.host]]\nname = \"artifacts\"\naddresses = [\"10.20.0.9\"]\n");
    assert_one(&ps, "zone[1].service[0].name", &["already defined as a host", "zone[1].host[0]"]);
}

#[test]
fn unknown_zone_and_unsupported_record_type() {
    let ps = with_replaced("zone = \"dvnt.deevnet.net\"", "zone = \"other.example\"");
    assert_one(&ps, "segment[1].zone", &["\"other.example\"", "mgmt.deevnet.net"]);
    let ps = problems("[[zone.record]]\nname = \"@\"\ntype = \"SOA\"\ndata = \"x\"\n");
    assert_one(&ps, "zone[1].record[0].type", &["SOA", "[zone.soa]"]);
}

#[test]
fn duplicate_segment_names_and_interfaces() {
    let ps = with_replaced("name = \"dvnt\"\ninterface = \"dvnt0\"", "name = \"mgmt\"\ninterface = \"mgmt0\"");
    // Also its zone and cidr still differ; only the names/interfaces clash.
    let paths: Vec<String> = ps.iter().map(|p| p.problem.dotted_path()).collect();
    assert!(paths.contains(&"segment[1].name".to_string()), "{paths:?}");
    assert!(paths.contains(&"segment[1].interface".to_string()), "{paths:?}");
}

#[test]
fn interface_names_must_fit_the_kernel() {
    let ps = with_replaced("interface = \"dvnt0\"", "interface = \"a-very-long-interface\"");
    assert_one(&ps, "segment[1].interface", &["1 to 15 bytes"]);
}

#[test]
fn server_owned_dhcp_options_and_ambiguous_values() {
    let ps = problems("[[dhcp.option]]\ncode = 54\nip = [\"10.0.0.1\"]\n");
    assert_one(&ps, "dhcp.option[0]", &["server identifier", "set by the server"]);
    let ps = problems("[[dhcp.option]]\ncode = 252\ntext = \"a\"\nu8 = 1\n");
    assert_one(&ps, "dhcp.option[0]", &["exactly one value"]);
}

#[test]
fn dhcp_domain_search_lists_hold_domain_names() {
    let ps = problems("[dhcp]\ndomain_search = [\"dvnt.deevnet.net\", \"bad name\"]\n");
    assert_one(&ps, "dhcp.domain_search[1]", &["\"bad name\"", "not a domain name"]);
    let ps = problems(
        "[[dhcp.pool]]\nsegment = \"dvnt\"\nstart = \"10.20.0.100\"\nend = \"10.20.0.110\"\ndomain_search = [\"-x.example\"]\n",
    );
    assert_one(&ps, "dhcp.pool[0].domain_search[0]", &["not a domain name"]);
}

#[test]
fn pxe_over_tftp_needs_a_tftp_section() {
    let ps = problems("[dhcp.pxe]\nbios = \"undionly.kpxe\"\n");
    assert_one(&ps, "dhcp.pxe.bios", &["no [tftp] section"]);
    let ps = problems("[dhcp.pxe]\nhttp_x64 = \"ipxe.efi\"\n");
    assert_one(&ps, "dhcp.pxe.http_x64", &["http://"]);
}

#[test]
fn tftp_limits_are_checked() {
    let tftp = |extra: &str| problems(&format!("[tftp]\nroot = \"/\"\n{extra}"));
    assert!(tftp("timeout = \"3s\"\nretries = 8\nmax_blksize = 1468\nmax_windowsize = 16\n").is_empty());
    let c = Config::parse_str(&format!("{BASE}[tftp]\nroot = \"/\"\n"), "t.toml").unwrap();
    let t = c.tftp.unwrap();
    assert_eq!((t.timeout, t.retries, t.max_blksize, t.max_windowsize), (Duration(1), 5, 65464, 64));
    assert_one(&tftp("timeout = 0\n"), "tftp.timeout", &["1 to 255 seconds"]);
    assert_one(&tftp("timeout = \"5m\"\n"), "tftp.timeout", &["300s", "1 to 255 seconds"]);
    assert_one(&tftp("retries = 0\n"), "tftp.retries", &["1 to 50"]);
    assert_one(&tftp("max_blksize = 8\n"), "tftp.max_blksize", &["512 to 65464"]);
    assert_one(&tftp("max_windowsize = 0\n"), "tftp.max_windowsize", &["1 to 65535"]);
    assert_one(&tftp("max_transfers = 0\n"), "tftp.max_transfers", &["at least one"]);
    assert_one(&tftp("max_transfers_per_client = 0\n"), "tftp.max_transfers_per_client", &["at least one"]);
    let e = Config::parse_str(&format!("{BASE}[tftp]\nroot = \"/\"\nmax_blksize = 70000\n"), "t.toml").unwrap_err();
    assert!(e.to_string().starts_with("t.toml:36:") && e.to_string().contains("70000"), "{e}");
}

#[test]
fn firewall_rules_name_known_segments() {
    let ps = problems("[[firewall.rule]]\nname = \"r\"\nfrom = \"dvnt\"\nto = \"nowhere\"\naction = \"allow\"\n");
    assert_one(&ps, "firewall.rule[0].to", &["\"nowhere\"", "mgmt, dvnt", "gateway"]);
    let ps =
        problems("[[firewall.rule]]\nname = \"r\"\nfrom = \"dvnt\"\nto = \"mgmt\"\nports = [22]\naction = \"allow\"\n");
    assert_one(&ps, "firewall.rule[0].ports", &["tcp", "udp"]);
}

#[test]
fn nat_forwards() {
    let ps = problems(
        "[uplink]\ninterface = \"up0\"\naddress = \"192.0.2.2/24\"\n\
         [[nat.forward]]\nproto = \"tcp\"\nport = 30000\nto = \"10.10.0.10:22\"\n",
    );
    assert_one(&ps, "nat.forward[0].port", &["inside the masquerade range"]);
    let ps = problems(
        "[uplink]\ninterface = \"up0\"\naddress = \"192.0.2.2/24\"\n\
         [[nat.forward]]\nproto = \"tcp\"\nport = 2222\nto = \"10.99.0.10:22\"\n",
    );
    assert_one(&ps, "nat.forward[0].to", &["not a host address of any segment"]);
}

#[test]
fn uplink_must_not_overlap_segments() {
    let ps = problems("[uplink]\ninterface = \"up0\"\naddress = \"10.20.0.200/24\"\n");
    assert_one(&ps, "uplink.address", &["overlaps segment[1]"]);
}

#[test]
fn durations_accept_units() {
    assert_eq!("90s".parse::<Duration>().unwrap(), Duration(90));
    assert_eq!("30m".parse::<Duration>().unwrap(), Duration(1800));
    assert_eq!("12h".parse::<Duration>().unwrap(), Duration(43200));
    assert_eq!("7d".parse::<Duration>().unwrap(), Duration(604_800));
    assert_eq!("15".parse::<Duration>().unwrap(), Duration(15));
    assert!("12x".parse::<Duration>().is_err());
    let ps = problems("[dhcp]\nlease_time = 30\n");
    assert_one(&ps, "dhcp.lease_time", &["too short"]);
}

#[test]
fn all_problems_are_reported_at_once_in_file_order() {
    let text = BASE.replacen("gateway = \"10.20.0.1\"", "gateway = \"10.21.0.1\"", 1).replacen(
        "target = \"provisioner-01\"",
        "target = \"nobody\"",
        1,
    );
    let Err(ConfigError::Invalid { problems, .. }) = Config::parse_str(&text, "t.toml") else { panic!() };
    assert_eq!(problems.len(), 2);
    assert!(problems[0].location < problems[1].location);
    let rendered = ConfigError::Invalid { file: "t.toml".into(), problems }.to_string();
    assert!(rendered.starts_with("t.toml: 2 problems found, nothing was changed"), "{rendered}");
}

#[test]
fn dns_cache_needs_dns() {
    let ps = problems("[dataplane]\ndns_cache = true\n[dns]\nenabled = false\n");
    assert_one(&ps, "dataplane.dns_cache", &["dns.enabled is false", "dataplane.dns_cache = false"]);
    // Off, or left to the default, is fine without DNS; the default follows DNS.
    assert!(problems("[dataplane]\ndns_cache = false\n[dns]\nenabled = false\n").is_empty());
    let text = format!("{BASE}[dns]\nenabled = false\n");
    assert!(!Config::parse_str(&text, "t.toml").unwrap().dns_cache_on());
    assert!(Config::parse_str(BASE, "t.toml").unwrap().dns_cache_on());
    let text = format!("{BASE}[dataplane]\ndns_cache = false\n");
    assert!(!Config::parse_str(&text, "t.toml").unwrap().dns_cache_on());
    let e = Config::parse_str(&format!("{BASE}[dataplane]\ndns_cache = \"yes\"\n"), "t.toml").unwrap_err();
    assert!(e.to_string().contains("expected a boolean"), "{e}");
}

#[test]
fn quotas_larger_than_what_they_share_are_refused() {
    let ps = problems("\n[dataplane]\nconntrack_max = 1024\nmax_flows_per_host = 2000\n");
    assert_one(&ps, "dataplane.max_flows_per_host", &["2000", "conntrack_max = 1024"]);
    let ps = problems("\n[nat]\nport_min = 20000\nport_max = 20099\nmax_ports_per_host = 101\n");
    assert_one(&ps, "nat.max_ports_per_host", &["101", "100 ports"]);
    let c = Config::parse_str(&format!("{BASE}\n[dataplane]\nconntrack_max = 4096\n"), "t.toml").unwrap();
    assert_eq!((c.dataplane.flow_quota(), c.nat.port_quota()), (512, 3192), "the defaults: an eighth, a quarter");
}

#[test]
fn dns_limits_are_checked() {
    assert_eq!("64KiB".parse::<ByteSize>().unwrap(), ByteSize(65536));
    assert_eq!("16MiB".parse::<ByteSize>().unwrap(), ByteSize(16 << 20));
    assert_eq!("1 GiB".parse::<ByteSize>().unwrap(), ByteSize(1 << 30));
    assert_eq!("4096".parse::<ByteSize>().unwrap(), ByteSize(4096));
    assert!("12MB".parse::<ByteSize>().is_err());
    let text = format!("{BASE}[dns]\ncache_bytes = \"1MiB\"\n");
    assert_eq!(Config::parse_str(&text, "t.toml").unwrap().dns.cache_bytes, ByteSize(1 << 20));
    assert_one(&problems("[dns]\ncache_bytes = 1000\n"), "dns.cache_bytes", &["too small", "64KiB"]);
    assert_one(&problems("[dns]\nforward_max = 0\n"), "dns.forward_max", &["1 to 10000"]);
    assert_one(&problems("[dns]\nupstream_sockets = 5000\n"), "dns.upstream_sockets", &["1 to 1024"]);
    assert_one(&problems("[dns]\ntcp_max_per_client = 0\n"), "dns.tcp_max_per_client", &["at least one"]);
    assert_one(&problems("[dns]\ntcp_write_timeout = 0\n"), "dns.tcp_write_timeout", &["at least 1 second"]);
    assert_one(
        &problems("[dns.rate_limit]\nslip = 11\n"),
        "dns.rate_limit.slip",
        &["0 (drop every limited answer) to 10"],
    );
    assert_one(
        &problems("[dns.rate_limit]\nipv4_prefix_length = 33\n"),
        "dns.rate_limit.ipv4_prefix_length",
        &["8 to 32"],
    );
    assert_one(
        &problems("[dns.rate_limit]\nresponses_per_second = 2000000\n"),
        "dns.rate_limit.responses_per_second",
        &["1 to 1000000"],
    );
    let text = format!("{BASE}[dns.rate_limit]\nresponses_per_second = 50\n");
    let rl = Config::parse_str(&text, "t.toml").unwrap().dns.rate_limit;
    assert_eq!((rl.responses_per_second, rl.slip, rl.ipv4_prefix_length), (50, 2, 24));
}

#[test]
fn transfer_keys_and_secondaries_are_checked() {
    const KEY: &str = "[[dns.tsig_key]]\nname = \"xfr\"\nsecret = \"c2VjcmV0c2VjcmV0\"\n";
    assert!(problems(&format!("{KEY}[[dns.secondary]]\naddress = \"10.10.0.10\"\nkey = \"xfr\"\n")).is_empty());
    let ps = problems("[[dns.tsig_key]]\nname = \"xfr\"\nalgorithm = \"hmac-md5\"\nsecret = \"c2VjcmV0\"\n");
    assert_one(&ps, "dns.tsig_key[0].algorithm", &["hmac-sha256"]);
    let ps = problems(&format!("{KEY}[[dns.secondary]]\naddress = \"10.10.0.10\"\nkey = \"other\"\n"));
    assert_one(&ps, "dns.secondary[0].key", &["other", "xfr"]);
    let ps = problems("[[dns.secondary]]\naddress = \"192.0.2.9\"\n");
    assert_one(&ps, "dns.secondary[0].address", &["192.0.2.9", "segment"]);
    let ps = problems("[[dns.secondary]]\naddress = \"10.10.0.10\"\nzones = [\"nope.example\"]\n");
    assert_one(&ps, "dns.secondary[0].zones[0]", &["nope.example", "mgmt.deevnet.net"]);
    let ps = problems("[dns]\ntransfer_max = 0\n");
    assert_one(&ps, "dns.transfer_max", &["1 to 1024"]);
}

#[test]
fn the_production_side_is_described_with_addresses_of_its_own() {
    let ok = "\n[authority]\ndns = [\"10.20.0.3\", \"10.20.0.4:5353\"]\nkea_lease_file = \"/var/lib/kea/kea-leases4.csv\"\n\
              kea_control_agent = \"http://10.20.0.3:8000/\"\n[[authority.segment]]\nsegment = \"dvnt\"\nkea_interface = \"eth0\"\n";
    assert!(problems(ok).is_empty(), "{:#?}", problems(ok));
    assert_one(
        &problems("\n[authority]\ndns = [\"10.20.0.1\"]\n"),
        "authority.dns[0]",
        &["coresvc's own address", "dvnt"],
    );
    assert_one(
        &problems("\n[authority]\n[[authority.segment]]\nsegment = \"nope\"\n"),
        "authority.segment[0].segment",
        &["\"nope\" is not a segment", "mgmt"],
    );
    assert_one(&problems("\n[authority]\nquery_timeout_ms = 5\n"), "authority.query_timeout_ms", &["100 to 10000"]);
    assert_one(
        &problems(
            "\n[authority]\n[[authority.segment]]\nsegment = \"dvnt\"\n[[authority.segment]]\nsegment = \"dvnt\"\n",
        ),
        "authority.segment[1].segment",
        &["already described by authority.segment[0]"],
    );
}
