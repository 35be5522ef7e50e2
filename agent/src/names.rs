//! DNS names as the configuration writes them: labels, domain names, names
//! relative to a zone, and the management-plane rule (seed §2.3). A leaf:
//! the configuration checks and the zone builder both follow these rules.

/// True for a DNS label: 1-63 of letters, digits and hyphens, not starting or
/// ending with a hyphen (RFC 1123 host names; `_` allowed for SRV-style names).
pub fn valid_label(l: &str) -> bool {
    !l.is_empty()
        && l.len() <= 63
        && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && !l.starts_with('-')
        && !l.ends_with('-')
}

/// True for a domain name written without the trailing dot.
pub fn valid_name(n: &str) -> bool {
    !n.is_empty() && n.len() <= 253 && n.split('.').all(valid_label)
}

/// `name` relative to `zone` (`@` is the apex) as a lower-case absolute name
/// without the trailing dot; absolute names (ending in `.`) are kept.
pub fn fqdn(name: &str, zone: &str) -> String {
    let n = if name == "@" {
        zone.to_string()
    } else if let Some(abs) = name.strip_suffix('.') {
        abs.to_string()
    } else {
        format!("{name}.{zone}")
    };
    n.to_ascii_lowercase()
}

/// True when `name` equals `apex` or lies below it.
pub fn in_zone(name: &str, apex: &str) -> bool {
    let (name, apex) = (name.to_ascii_lowercase(), apex.to_ascii_lowercase());
    name == apex || name.ends_with(&format!(".{apex}"))
}

/// The management plane's zones (seed §2.3): every name at or below one of
/// their apexes is a management-plane name, which a site zone must not
/// define. Each apex keeps the index of its `[[zone]]`.
#[derive(Debug, Clone, Default)]
pub struct ManagementZones {
    apexes: Vec<(usize, String)>,
}

impl ManagementZones {
    /// From `(zone index, zone name)` of the management zones.
    pub fn new<'a>(zones: impl IntoIterator<Item = (usize, &'a str)>) -> Self {
        let apexes = zones.into_iter().map(|(i, n)| (i, n.trim_end_matches('.').to_ascii_lowercase())).collect();
        Self { apexes }
    }

    /// The management zone `name` (absolute, with or without the trailing
    /// dot) belongs to, as its index and apex.
    pub fn containing(&self, name: &str) -> Option<(usize, &str)> {
        let name = name.trim_end_matches('.');
        self.apexes.iter().find(|(_, m)| in_zone(name, m)).map(|(i, m)| (*i, m.as_str()))
    }

    /// True when `name` is a management-plane name.
    pub fn contains(&self, name: &str) -> bool {
        self.containing(name).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_names_and_zones() {
        assert!(valid_label("_http") && valid_label("a-1") && !valid_label("-a") && !valid_label(""));
        assert!(valid_name("mgmt.deevnet.net") && !valid_name("a..b"));
        assert_eq!(fqdn("@", "z.example"), "z.example");
        assert_eq!(fqdn("Web", "z.example"), "web.z.example");
        assert_eq!(fqdn("x.other.", "z.example"), "x.other");
        assert!(in_zone("a.Z.example", "z.example") && in_zone("z.example", "z.example"));
        assert!(!in_zone("az.example", "z.example"));
    }

    #[test]
    fn management_names_are_those_at_or_below_a_management_apex() {
        let m = ManagementZones::new([(0, "mgmt.deevnet.net."), (3, "oob.example")]);
        assert_eq!(m.containing("console.MGMT.deevnet.net."), Some((0, "mgmt.deevnet.net")));
        assert_eq!(m.containing("oob.example"), Some((3, "oob.example")));
        assert!(!m.contains("dvnt.deevnet.net") && !m.contains("xmgmt.deevnet.net"));
    }
}
