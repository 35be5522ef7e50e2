//! The Vagrant lab, as far as it runs here: `vagrant validate` (Debian's
//! vagrant with the vagrant-libvirt plugin, so the libvirt provider's
//! settings are checked too), the Vagrantfile's topology against
//! tests/topology.toml (the Vagrantfile is evaluated by Ruby against a
//! recording stand-in for Vagrant's API, tests/vagrant/record.rb), and
//! vagrant/coresvc.toml through `coresvc check` and against the Vagrantfile.
//!
//! VirtualBox is not in Debian 12, so its settings are validated only as
//! Vagrant's own (`--ignore-provider`) and recorded for the topology check.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use coresvc_lab::{Topology, workspace_root};
use serde_json::Value;

fn vagrant_dir() -> PathBuf {
    workspace_root().join("vagrant")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// `vagrant validate ARGS` in `dir`, with Vagrant's state kept in a
/// temporary directory (nothing is written beside the Vagrantfile or in
/// the user's ~/.vagrant.d).
fn vagrant_validate(dir: &Path, provider: &str, args: &[&str]) -> Output {
    let state = std::env::temp_dir().join(format!("coresvc-vagrant-{}", std::process::id()));
    fs::create_dir_all(&state).unwrap();
    let out = Command::new("vagrant")
        .arg("validate")
        .args(args)
        .current_dir(dir)
        .env("VAGRANT_DEFAULT_PROVIDER", provider)
        .env("VAGRANT_DOTFILE_PATH", state.join("dotfile"))
        .env("VAGRANT_HOME", state.join("home"))
        .env("VAGRANT_CHECKPOINT_DISABLE", "1")
        .output();
    let _ = fs::remove_dir_all(&state);
    match out {
        Ok(o) => o,
        Err(e) => {
            panic!("cannot run vagrant ({e}); `cargo xtask setup` installs it (packages vagrant, vagrant-libvirt)")
        }
    }
}

#[test]
fn vagrant_validate_accepts_the_vagrantfile_with_the_libvirt_provider_and_without_one() {
    let dir = vagrant_dir();
    let o = vagrant_validate(&dir, "libvirt", &[]);
    assert!(o.status.success() && text(&o).contains("validated successfully"), "vagrant validate:\n{}", text(&o));
    // VirtualBox's settings: Vagrant's own checks only (no VirtualBox here).
    let o = vagrant_validate(&dir, "virtualbox", &["--ignore-provider"]);
    assert!(o.status.success() && text(&o).contains("validated successfully"), "--ignore-provider:\n{}", text(&o));

    // Not a vacuous pass: the plugin does check the libvirt settings.
    let copy = std::env::temp_dir().join(format!("coresvc-vagrantfile-{}", std::process::id()));
    let _ = fs::remove_dir_all(&copy);
    fs::create_dir_all(copy.join("provision")).unwrap();
    for e in fs::read_dir(dir.join("provision")).unwrap() {
        let p = e.unwrap().path();
        fs::copy(&p, copy.join("provision").join(p.file_name().unwrap())).unwrap();
    }
    let vf = fs::read_to_string(dir.join("Vagrantfile")).unwrap();
    let broken = vf.replacen("lv.memory = 4096", "lv.memory = 4096\n      lv.no_such_setting = 1", 1);
    assert_ne!(broken, vf, "the gateway's libvirt block changed: update this test");
    fs::write(copy.join("Vagrantfile"), broken).unwrap();
    let o = vagrant_validate(&copy, "libvirt", &[]);
    let _ = fs::remove_dir_all(&copy);
    assert!(!o.status.success() && text(&o).contains("no_such_setting"), "a bad libvirt setting passed:\n{}", text(&o));
}

/// What the Vagrantfile defines, recorded by tests/vagrant/record.rb.
fn recorded() -> Value {
    let out = Command::new("ruby")
        .arg(workspace_root().join("tests/vagrant/record.rb"))
        .arg(vagrant_dir().join("Vagrantfile"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run ruby ({e}); `cargo xtask setup` installs it"));
    assert!(out.status.success(), "record.rb:\n{}", text(&out));
    serde_json::from_slice(&out.stdout).expect("record.rb prints JSON")
}

fn mac_key(m: &str) -> String {
    m.replace(':', "").to_ascii_lowercase()
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v}"))
}

#[test]
fn the_vagrantfile_has_the_topology_of_topology_toml() {
    let topo = Topology::builtin().unwrap();
    let rec = recorded();
    let links = rec["links"].as_array().unwrap();
    let roles: BTreeMap<String, String> =
        rec["roles"].as_object().unwrap().iter().map(|(k, v)| (k.clone(), s(v).to_string())).collect();
    let machines: BTreeMap<String, &Value> =
        rec["machines"].as_array().unwrap().iter().map(|m| (s(&m["name"]).to_string(), m)).collect();

    // Every node has a role, the gateway is the gateway, and only they.
    let nodes: Vec<&str> = topo.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(roles.keys().map(String::as_str).collect::<Vec<_>>(), {
        let mut n = nodes.clone();
        n.sort();
        n
    });
    assert_eq!(roles[&topo.gateway], "gateway");

    // LINKS is topology.toml's links, field by field.
    assert_eq!(links.len(), topo.links.len(), "{links:#?}");
    for (l, t) in links.iter().zip(&topo.links) {
        assert_eq!(s(&l["segment"]), t.segment);
        assert_eq!(s(&l["gw_iface"]), t.gw_iface);
        assert_eq!(s(&l["gw_mac"]), t.gw_mac.as_deref().expect("topology.toml: gw_mac on every link"));
        assert_eq!(s(&l["node"]), t.node);
        assert_eq!(l["mac"].as_str(), t.mac.as_deref().filter(|_| roles[&t.node] != "host"), "{}", t.node);
        match roles[&t.node].as_str() {
            // Diskless hosts get their address by DHCP (the namespace lab's
            // static address stands in for that lease).
            "pxe" => assert!(l["address"].is_null(), "{l}"),
            _ => assert_eq!(l["address"].as_str(), t.address.as_deref(), "{}", t.node),
        }
        if roles[&t.node] == "vm" {
            assert_eq!(l["via"].as_str(), t.via.as_deref(), "{}", t.node);
        }
    }

    let net_of = |m: &Value, segment: &str| -> Value {
        let name = format!("coresvc-{segment}");
        m["networks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["libvirt__network_name"] == name.as_str())
            .unwrap_or_else(|| panic!("{} has no NIC on {name}: {m:#}", m["name"]))
            .clone()
    };

    // The gateway: one NIC per link, with its MAC, not configured by Vagrant
    // (coresvc assigns the addresses), named by the provisioning after it.
    let gw = machines.get(topo.gateway.as_str()).expect("the gateway VM");
    assert!(gw["box"].is_string(), "{gw:#}");
    assert_eq!(gw["networks"].as_array().unwrap().len(), topo.links.len());
    for t in &topo.links {
        let n = net_of(gw, &t.segment);
        assert_eq!(mac_key(s(&n["mac"])), mac_key(t.gw_mac.as_deref().unwrap()), "{n}");
        assert_eq!(n["auto_config"], false, "{n}");
        assert_eq!(s(&n["virtualbox__intnet"]), format!("coresvc-{}", t.segment));
        if t.segment == "uplink" {
            // The upstream is the host's end of a NAT network.
            assert_eq!(roles[&t.node], "host");
            assert_eq!(n["libvirt__forward_mode"], "nat");
            let upstream = t.address.as_deref().unwrap().split('/').next().unwrap();
            assert_eq!(s(&n["libvirt__host_ip"]), upstream);
        } else {
            // Segments: nothing of the host's on them, no DHCP but coresvc's.
            assert_eq!(n["libvirt__forward_mode"], "veryisolated", "{n}");
        }
        assert_eq!(n["libvirt__dhcp_enabled"], false, "{n}");
    }
    let prov = &gw["provisioners"][0];
    assert_eq!(s(&prov["path"]), "provision/gateway.sh");
    let renames: Vec<String> =
        topo.links.iter().map(|t| format!("{}={}", t.gw_iface, t.gw_mac.as_deref().unwrap())).collect();
    assert_eq!(prov["args"], serde_json::json!(renames), "gateway.sh names the NICs as topology.toml does");

    // The other nodes.
    for t in &topo.links {
        let role = roles[&t.node].as_str();
        if role == "host" {
            assert!(!machines.contains_key(&t.node), "{} is the host, not a VM", t.node);
            continue;
        }
        let m = machines.get(t.node.as_str()).unwrap_or_else(|| panic!("no VM for {}", t.node));
        let n = net_of(m, &t.segment);
        assert_eq!(mac_key(s(&n["mac"])), mac_key(t.mac.as_deref().unwrap()), "{n}");
        let libvirt = &m["providers"]["libvirt"]["settings"];
        match role {
            "vm" => {
                assert!(m["box"].is_string());
                assert_eq!(s(&n["ip"]), t.address.as_deref().unwrap().split('/').next().unwrap());
                assert_eq!(n["auto_config"], true);
            }
            "pxe" => {
                // No box and no disk: it can only boot from the network.
                assert!(m["box"].is_null(), "{m:#}");
                assert_eq!(m["define"]["autostart"], false, "started once the gateway runs");
                assert_eq!(libvirt["boot"], serde_json::json!(["network"]));
                assert_eq!(libvirt["mgmt_attach"], serde_json::json!([false]));
                assert!(libvirt.get("storage").is_none(), "{libvirt}");
                assert_eq!(m["networks"].as_array().unwrap().len(), 1);
                let vbox = &m["providers"]["virtualbox"]["settings"]["customize"][0];
                assert!(vbox.to_string().contains(r#""--boot1","net""#), "{vbox}");
            }
            other => panic!("unknown role {other} of {}", t.node),
        }
    }
}

#[test]
fn vagrant_coresvc_toml_passes_coresvc_check_and_matches_the_vagrantfile() {
    let config = vagrant_dir().join("coresvc.toml");
    let bin = coresvc_lab::agent_bin().expect("the coresvc binary");
    let out = Command::new(&bin).arg("check").arg(&config).output().unwrap();
    assert!(out.status.success(), "coresvc check {}:\n{}", config.display(), text(&out));

    let cfg: toml::Value = toml::from_str(&fs::read_to_string(&config).unwrap()).unwrap();
    let rec = recorded();
    for l in rec["links"].as_array().unwrap() {
        let (iface, addr) = (s(&l["gw_iface"]), s(&l["gw_address"]));
        let (ip, prefix) = addr.split_once('/').unwrap();
        if l["segment"] == "uplink" {
            let up = &cfg["uplink"];
            assert_eq!(up["interface"].as_str(), Some(iface));
            assert_eq!(up["address"].as_str(), Some(addr));
            let upstream = s(&l["address"]).split('/').next().unwrap();
            assert_eq!(up["gateway"].as_str(), Some(upstream));
            continue;
        }
        let seg = cfg["segment"]
            .as_array()
            .unwrap()
            .iter()
            .find(|sg| sg["name"].as_str() == l["segment"].as_str())
            .unwrap_or_else(|| panic!("no segment {} in vagrant/coresvc.toml", l["segment"]));
        assert_eq!(seg["interface"].as_str(), Some(iface));
        assert_eq!(seg["gateway"].as_str(), Some(ip));
        assert!(seg["cidr"].as_str().unwrap().ends_with(&format!("/{prefix}")));
        if l["via"].is_string() {
            assert_eq!(s(&l["via"]), ip, "the node's route goes through coresvc");
        }
    }
    // The provisioner VM's MAC has its static mapping.
    let prov = rec["links"].as_array().unwrap().iter().find(|l| l["node"] == "provisioner").unwrap();
    let hosts = cfg["dhcp"]["host"].as_array().unwrap();
    assert!(
        hosts.iter().any(|h| h["mac"].as_str().map(mac_key) == Some(mac_key(s(&prov["mac"])))
            && h["address"].as_str() == Some(s(&prov["address"]).split('/').next().unwrap())),
        "{hosts:?}"
    );
    // PXE: iPXE gets the script `cargo xtask pxe-root` writes into the TFTP
    // root beside the file.
    assert_eq!(cfg["dhcp"]["pxe"]["ipxe_script"].as_str(), Some("boot.ipxe"));
    assert_eq!(cfg["tftp"]["root"].as_str(), Some("tftp"));
    assert!(vagrant_dir().join("tftp").is_dir());
}
