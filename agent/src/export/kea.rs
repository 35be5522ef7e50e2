//! `coresvc export kea DIR`: a Kea DHCPv4 configuration (`kea-dhcp4.conf`)
//! that hands out what coresvc hands out, and the active leases as Kea's
//! memfile (`kea-leases4.csv`).
//!
//! Per segment served (a pool, or a static host in its network) a subnet
//! (id: the segment's place in the configuration, plus one) on the
//! segment's interface (or `authority.segment`'s `kea_interface`), with its
//! pools, reservations by MAC or client identifier, routers, DNS and domain
//! as coresvc gives them (the segment's gateway address: the production
//! side takes it over), the search list, NTP, MTU and every configured
//! option (sent whether asked for or not, as coresvc does), the configured
//! relays as `relay.ip-addresses`. PXE as client classes on option 93 (the
//! architecture) and iPXE's user class or option 175, with next-server and
//! the boot file. What Kea cannot say the same way is listed as a warning.

use std::path::{Path, PathBuf};

use anyhow::Result;
use serde_json::{Value, json};

use super::{Source, write};
use crate::{
    config::{Config, DhcpOption, Pxe},
    dhcp::{
        kea::{self as memfile, hex},
        options,
    },
};

/// Debian's lease file for kea-dhcp4, when `authority.kea_lease_file` is not set.
pub const DEFAULT_LEASE_FILE: &str = "/var/lib/kea/kea-leases4.csv";
/// Debian's control socket of kea-dhcp4 (what kea-ctrl-agent forwards to).
pub const CONTROL_SOCKET: &str = "/run/kea/kea4-ctrl-socket";

/// Where Debian's kea-common puts the lease commands hook (the lease API
/// of the handoff: lease4-add, lease4-get-all).
pub fn lease_cmds_hook() -> String {
    let arch = match std::env::consts::ARCH {
        "aarch64" => "aarch64-linux-gnu",
        _ => "x86_64-linux-gnu",
    };
    format!("/usr/lib/{arch}/kea/hooks/libdhcp_lease_cmds.so")
}

/// kea-ctrl-agent.conf for the control agent at `url`, forwarding to kea-dhcp4.
pub fn ctrl_agent_config(url: &str) -> Option<Value> {
    let api = crate::handoff::KeaApi::parse(url).ok()?;
    Some(json!({
        "Control-agent": {
            "http-host": api.host,
            "http-port": api.port,
            "control-sockets": { "dhcp4": { "socket-type": "unix", "socket-name": CONTROL_SOCKET } },
            "loggers": [{ "name": "kea-ctrl-agent", "output_options": [{ "output": "stdout" }], "severity": "INFO" }],
        }
    }))
}

/// A configured option as Kea option-data: binary, always sent.
fn option_data(o: &DhcpOption) -> Value {
    let data = match options::configured(o) {
        dhcproto::v4::DhcpOption::Unknown(u) => u.data().to_vec(),
        _ => Vec::new(),
    };
    json!({ "code": o.code, "csv-format": false, "data": hex(&data).replace(':', ""), "always-send": true })
}

fn named(name: &str, data: String) -> Value {
    json!({ "name": name, "data": data, "always-send": true })
}

/// The next-server coresvc gives on segment `seg`: the configured one, else its own address.
fn next_server(cfg: &Config, pxe: &Pxe, seg: usize) -> std::net::Ipv4Addr {
    let s = &cfg.segments[seg];
    let in_production = cfg.tftp.as_ref().is_some_and(|t| t.in_production);
    pxe.next_server.unwrap_or(if in_production { s.reserved.unwrap_or(s.gateway) } else { s.gateway })
}

/// The PXE client classes (one per boot file configured), in coresvc's order
/// of precedence: iPXE gets the script; others by architecture.
/// `next_server`: the siaddr booting clients get, when every segment gives the same.
fn pxe_classes(cfg: &Config, next_server: Option<std::net::Ipv4Addr>) -> Vec<Value> {
    let p = &cfg.dhcp.pxe;
    let ipxe = "option[77].hex == 'iPXE' or substring(option[77].hex,0,5) == 0x0469505845 or option[175].exists";
    let booting = "(substring(option[60].hex,0,9) == 'PXEClient' or substring(option[60].hex,0,10) == 'HTTPClient')";
    let arch = |a: &[u16]| a.iter().map(|a| format!("option[93].hex == 0x{a:04x}")).collect::<Vec<_>>().join(" or ");
    let not_ipxe = "not member('coresvc_ipxe')";
    let mut classes = Vec::new();
    let mut class = |name: &str, test: String, file: &Option<String>, http: bool| {
        let Some(f) = file else { return };
        let mut c = json!({ "name": name, "test": test });
        if let Some(n) = next_server {
            c["next-server"] = json!(n.to_string());
        }
        if f.len() < 128 {
            c["boot-file-name"] = json!(f);
        } else {
            c["option-data"] = json!([named("boot-file-name", f.clone())]);
        }
        if http {
            let opts = c["option-data"].as_array().cloned().unwrap_or_default();
            let mut opts = opts;
            opts.push(named("vendor-class-identifier", "HTTPClient".into()));
            c["option-data"] = json!(opts);
        }
        classes.push(c);
    };
    // `member` needs the class defined first, so iPXE comes first (as its precedence).
    class("coresvc_ipxe", ipxe.into(), &p.ipxe_script, false);
    let not_ipxe_and = |t: String| format!("{not_ipxe} and ({t})");
    class(
        "coresvc_bios",
        not_ipxe_and(format!("{} or (not option[93].exists and {booting})", arch(&[0]))),
        &p.bios,
        false,
    );
    class("coresvc_uefi_x64", not_ipxe_and(arch(&[7, 9])), &p.uefi_x64, false);
    class("coresvc_uefi_arm64", not_ipxe_and(arch(&[11])), &p.uefi_arm64, false);
    class("coresvc_http_x64", not_ipxe_and(arch(&[16])), &p.http_x64, true);
    class("coresvc_http_arm64", not_ipxe_and(arch(&[19])), &p.http_arm64, true);
    classes
}

/// The Kea DHCPv4 configuration for `cfg`, and what it cannot express.
pub fn config(cfg: &Config, lease_file: &Path) -> (Value, Vec<String>) {
    let mut warnings = Vec::new();
    let d = &cfg.dhcp;
    let auth = cfg.authority.clone().unwrap_or_default();
    let mut interfaces: Vec<String> = Vec::new();
    let mut subnets = Vec::new();
    let served = crate::authority::check::dhcp_segments(cfg);
    // coresvc sets siaddr for booting clients only: in the classes, when one
    // value serves every segment; else per subnet (every client gets it).
    let mut next: Vec<_> = served.iter().map(|&i| next_server(cfg, &d.pxe, i)).collect();
    next.dedup();
    let uniform = (next.len() == 1).then(|| next[0]);
    if uniform.is_none() && !served.is_empty() {
        warnings.push(
            "the segments' next-servers differ: set per subnet, so every client (not only booting ones) gets siaddr"
                .to_string(),
        );
    }
    let classes = pxe_classes(cfg, uniform);
    for i in served {
        let s = &cfg.segments[i];
        let iface = auth.segment(&s.name).and_then(|a| a.kea_interface.clone()).unwrap_or_else(|| s.interface.clone());
        if !interfaces.contains(&iface) {
            interfaces.push(iface.clone());
        }
        let pools: Vec<_> = d.pools.iter().filter(|p| p.segment == s.name).collect();
        let lease = pools.first().and_then(|p| p.lease_time).unwrap_or(d.lease_time).secs();
        for p in pools.iter().skip(1) {
            if p.lease_time.unwrap_or(d.lease_time).secs() != lease {
                warnings.push(format!(
                    "segment {}: pool {}-{} has its own lease time; Kea has one per subnet ({lease} s exported)",
                    s.name, p.start, p.end
                ));
            }
        }
        let mut opts = vec![named("routers", s.gateway.to_string())];
        if cfg.dns.enabled {
            opts.push(named("domain-name-servers", s.gateway.to_string()));
        }
        if let Some(z) = &s.zone {
            opts.push(named("domain-name", z.clone()));
        }
        let search = |list: &[String]| list.iter().map(|d| d.trim_end_matches('.')).collect::<Vec<_>>().join(", ");
        let global_search =
            if d.domain_search.is_empty() { s.zone.clone().into_iter().collect() } else { d.domain_search.clone() };
        if !global_search.is_empty() {
            opts.push(named("domain-search", search(&global_search)));
        }
        if let Some(mtu) = s.mtu {
            opts.push(named("interface-mtu", mtu.to_string()));
        }
        if !d.ntp_servers.is_empty() {
            opts.push(named(
                "ntp-servers",
                d.ntp_servers.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
            ));
        }
        opts.extend(d.options.iter().map(option_data));
        let kea_pools: Vec<Value> = pools
            .iter()
            .map(|p| {
                let mut o: Vec<Value> = p.options.iter().map(option_data).collect();
                if let Some(ds) = &p.domain_search {
                    o.push(named("domain-search", search(ds)));
                }
                let mut v = json!({ "pool": format!("{} - {}", p.start, p.end) });
                if !o.is_empty() {
                    v["option-data"] = json!(o);
                }
                v
            })
            .collect();
        let mut reservations = Vec::new();
        for h in d.hosts.iter().filter(|h| s.cidr.trunc().contains(&h.address)) {
            let mut r = json!({ "ip-address": h.address.to_string() });
            match (&h.mac, &h.client_id) {
                (Some(m), _) => r["hw-address"] = json!(m.to_string().to_ascii_lowercase()),
                (None, Some(c)) => r["client-id"] = json!(hex(&c.0)),
                (None, None) => continue,
            }
            if let Some(n) = &h.hostname {
                r["hostname"] = json!(n);
            }
            if h.lease_time.is_some() {
                warnings.push(format!(
                    "host {}: its own lease time is not exported (Kea reservations have none)",
                    h.address
                ));
            }
            if h.pxe.is_some() {
                warnings.push(format!(
                    "host {}: its own boot files are not exported (Kea reservations have one boot file, not one per architecture)",
                    h.address
                ));
            }
            reservations.push(r);
        }
        let mut sub = json!({
            "id": memfile::subnet_id(i),
            "subnet": s.cidr.trunc().to_string(),
            "interface": iface,
            "valid-lifetime": lease,
            "min-valid-lifetime": 60.min(lease),
            "max-valid-lifetime": d.max_lease_time.secs().max(lease),
            "pools": kea_pools,
            "option-data": opts,
            "reservations": reservations,
            "user-context": { "coresvc-segment": s.name },
        });
        if uniform.is_none() {
            sub["next-server"] = json!(next_server(cfg, &d.pxe, i).to_string());
        }
        let relays: Vec<String> = d
            .relays
            .iter()
            .filter(|r| r.segment == s.name)
            .flat_map(|r| r.addresses.iter().map(ToString::to_string))
            .collect();
        if !relays.is_empty() {
            sub["relay"] = json!({ "ip-addresses": relays });
        }
        if d.relays.iter().any(|r| r.segment == s.name && !r.sources.is_empty()) {
            warnings.push(format!(
                "segment {}: relays' source addresses are not exported (Kea selects by giaddr only)",
                s.name
            ));
        }
        subnets.push(sub);
    }
    let v = json!({
        "Dhcp4": {
            "interfaces-config": { "interfaces": interfaces },
            "control-socket": { "socket-type": "unix", "socket-name": CONTROL_SOCKET },
            "lease-database": { "type": "memfile", "persist": true, "name": lease_file.display().to_string(), "lfc-interval": 3600 },
            // coresvc answers only clients it knows the address of, and NAKs the rest.
            "authoritative": true,
            "match-client-id": true,
            // coresvc does not echo option 61 (RFC 6842) either.
            "echo-client-id": false,
            "host-reservation-identifiers": ["hw-address", "client-id"],
            // RFC 2131 §4.4.5 as coresvc: T1 = 0.5, T2 = 0.875 of the lease.
            "calculate-tee-times": true,
            "t1-percent": 0.5,
            "t2-percent": 0.875,
            "valid-lifetime": d.lease_time.secs(),
            "max-valid-lifetime": d.max_lease_time.secs().max(d.lease_time.secs()),
            "client-classes": classes,
            "subnet4": subnets,
            "loggers": [{ "name": "kea-dhcp4", "output_options": [{ "output": "stdout" }], "severity": "INFO" }],
        }
    });
    let mut v = v;
    if auth.kea_control_agent.is_some() {
        v["Dhcp4"]["hooks-libraries"] = json!([{ "library": lease_cmds_hook() }]);
    }
    (v, warnings)
}

/// Writes kea-dhcp4.conf and kea-leases4.csv into `dir`; returns the files
/// and the warnings.
pub fn export(src: &Source, dir: &Path) -> Result<(Vec<PathBuf>, Vec<String>)> {
    let lease_file = src
        .cfg
        .authority
        .as_ref()
        .and_then(|a| a.kea_lease_file.clone())
        .unwrap_or_else(|| PathBuf::from(DEFAULT_LEASE_FILE));
    let (conf, warnings) = config(&src.cfg, &lease_file);
    let mut files = vec![
        write(dir, "kea-dhcp4.conf", &(serde_json::to_string_pretty(&conf)? + "\n"))?,
        write(dir, "kea-leases4.csv", &memfile::render(&src.leases))?,
    ];
    if let Some(ca) =
        src.cfg.authority.as_ref().and_then(|a| a.kea_control_agent.as_deref()).and_then(ctrl_agent_config)
    {
        files.push(write(dir, "kea-ctrl-agent.conf", &(serde_json::to_string_pretty(&ca)? + "\n"))?);
    }
    Ok((files, warnings))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> Config {
        Config::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/coresvc.toml")).unwrap()
    }

    #[test]
    fn every_served_segment_is_a_subnet_with_coresvc_s_options() {
        let (v, _) = config(&example(), Path::new("/tmp/l.csv"));
        let subnets = v["Dhcp4"]["subnet4"].as_array().unwrap();
        let names: Vec<&str> = subnets.iter().map(|s| s["user-context"]["coresvc-segment"].as_str().unwrap()).collect();
        assert_eq!(names, ["mgmt", "dvnt", "dvntm"], "mgmt for its static host");
        let dvnt = &subnets[1];
        assert_eq!((dvnt["id"].as_u64(), dvnt["subnet"].as_str()), (Some(2), Some("10.20.0.0/24")));
        assert_eq!(dvnt["pools"][0]["pool"], "10.20.0.100 - 10.20.0.199");
        assert_eq!(dvnt["relay"]["ip-addresses"], json!(["10.20.0.50"]));
        let opt = |s: &Value, n: &str| {
            s["option-data"].as_array().unwrap().iter().find(|o| o["name"] == n).map(|o| o["data"].clone())
        };
        assert_eq!(opt(dvnt, "routers"), Some(json!("10.20.0.1")));
        assert_eq!(opt(dvnt, "domain-name-servers"), Some(json!("10.20.0.1")));
        assert_eq!(opt(dvnt, "domain-name"), Some(json!("dvnt.deevnet.net")));
        let wpad = dvnt["option-data"].as_array().unwrap().iter().find(|o| o["code"] == 252).unwrap();
        assert_eq!(wpad["data"], hex(b"http://artifacts.mgmt.deevnet.net/wpad.dat").replace(':', ""));
        let dvntm = &subnets[2];
        assert_eq!(dvntm["valid-lifetime"], 1800);
        assert_eq!(dvntm["pools"][0]["option-data"][0]["data"], "dvntm.deevnet.net, mgmt.deevnet.net");
        assert_eq!(
            subnets[0]["reservations"][0],
            json!({"ip-address": "10.10.0.10", "hw-address": "02:00:00:0a:00:0a", "hostname": "provisioner-01"})
        );
        let classes = v["Dhcp4"]["client-classes"].as_array().unwrap();
        assert_eq!(classes[0]["name"], "coresvc_ipxe");
        assert_eq!(classes[0]["boot-file-name"], "http://artifacts.mgmt.deevnet.net/boot.ipxe");
        let bios = classes.iter().find(|c| c["name"] == "coresvc_bios").unwrap();
        assert!(bios["test"].as_str().unwrap().starts_with("not member('coresvc_ipxe')"));
        assert_eq!(bios["boot-file-name"], "undionly.kpxe");
        assert_eq!(dvnt["next-server"], "10.20.0.1", "the segments' next-servers differ: per subnet");
        assert!(classes[0]["next-server"].is_null());
        let one = {
            let mut c = example();
            c.dhcp.pxe.next_server = Some("10.10.0.10".parse().unwrap());
            config(&c, Path::new("/tmp/l.csv")).0
        };
        assert_eq!(one["Dhcp4"]["client-classes"][1]["next-server"], "10.10.0.10");
        assert!(one["Dhcp4"]["subnet4"][1]["next-server"].is_null());
        assert_eq!(v["Dhcp4"]["lease-database"]["name"], "/tmp/l.csv");
    }
}
