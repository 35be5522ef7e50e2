//! `coresvc export knot DIR`: a zone file per zone, as coresvc serves it,
//! and a `knot.conf` that serves them from those files (the production
//! primary); `knot-secondary.conf` instead makes Knot a secondary of
//! coresvc (zone transfers from its gateway address on the first segment).

use std::path::{Path, PathBuf};

use anyhow::Result;

use super::{Source, write};

/// The zone file name of `origin`.
pub fn file_name(origin: &str) -> String {
    format!("{origin}.zone")
}

/// knot.conf serving the zone files of `dir`, listening on `listen`
/// (`addr@port`; none: all addresses, port 53).
pub fn primary_conf(dir: &Path, origins: &[String], listen: &[String]) -> String {
    let mut c = String::from("# Written by `coresvc export knot`: the same zones as coresvc serves.\nserver:\n");
    if listen.is_empty() {
        c.push_str("    listen: [ 0.0.0.0@53, ::@53 ]\n");
    }
    for l in listen {
        c.push_str(&format!("    listen: {l}\n"));
    }
    c.push_str(&format!(
        "\ntemplate:\n  - id: default\n    storage: {}\n    # The files are coresvc's: never written back, no journal.\n    \
         zonefile-sync: -1\n    zonefile-load: whole\n    journal-content: none\n\nzone:\n",
        dir.display()
    ));
    for o in origins {
        c.push_str(&format!("  - domain: {o}\n    file: {}\n", file_name(o)));
    }
    c
}

/// knot.conf making Knot a secondary of coresvc at `primary`.
pub fn secondary_conf(primary: std::net::Ipv4Addr, origins: &[String]) -> String {
    let mut c = String::from(
        "# Written by `coresvc export knot`: Knot as a secondary of coresvc (zone transfers from it).\n\
         server:\n    listen: [ 0.0.0.0@53, ::@53 ]\n\nremote:\n  - id: coresvc\n",
    );
    c.push_str(&format!(
        "    address: {primary}@53\n\nacl:\n  - id: coresvc-notify\n    address: {primary}\n    action: notify\n\n\
         template:\n  - id: default\n    master: coresvc\n    acl: coresvc-notify\n\nzone:\n"
    ));
    for o in origins {
        c.push_str(&format!("  - domain: {o}\n"));
    }
    c
}

/// Writes the zone files, knot.conf and knot-secondary.conf into `dir`.
/// `listen`: the addresses knot.conf listens on.
pub fn export(src: &Source, dir: &Path, listen: &[String]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let origins: Vec<String> = src.zones.iter().map(|(o, _)| o.clone()).collect();
    for (o, text) in &src.zones {
        files.push(write(dir, &file_name(o), text)?);
    }
    let abs = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    files.push(write(dir, "knot.conf", &primary_conf(&abs, &origins, listen))?);
    if let Some(s) = src.cfg.segments.first() {
        files.push(write(dir, "knot-secondary.conf", &secondary_conf(s.gateway, &origins))?);
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_primary_serves_every_zone_from_its_file() {
        let c = primary_conf(Path::new("/etc/knot/coresvc"), &["mgmt.deevnet.net".into()], &["10.20.0.3@53".into()]);
        assert!(c.contains("listen: 10.20.0.3@53\n") && !c.contains("0.0.0.0@53"), "{c}");
        assert!(c.contains("storage: /etc/knot/coresvc\n"));
        assert!(c.contains("  - domain: mgmt.deevnet.net\n    file: mgmt.deevnet.net.zone\n"));
        assert!(primary_conf(Path::new("/x"), &[], &[]).contains("0.0.0.0@53"));
        let s = secondary_conf("10.10.0.1".parse().unwrap(), &["mgmt.deevnet.net".into()]);
        assert!(s.contains("address: 10.10.0.1@53") && s.contains("master: coresvc"), "{s}");
    }
}
