//! Option helpers: configured options as wire options, client host names as
//! DNS labels, and fitting a reply into the client's maximum message size.

use dhcproto::v4::{DhcpOption, OptionCode, UnknownOption};

use crate::config::DhcpOption as ConfigOption;

/// A configured option (`[[dhcp.option]]`) as a wire option. Validation
/// guarantees exactly one value.
pub fn configured(o: &ConfigOption) -> DhcpOption {
    let data: Vec<u8> = if let Some(t) = &o.text {
        t.as_bytes().to_vec()
    } else if let Some(ips) = &o.ip {
        ips.iter().flat_map(|a| a.octets()).collect()
    } else if let Some(v) = o.u8 {
        vec![v]
    } else if let Some(v) = o.u16 {
        v.to_be_bytes().to_vec()
    } else if let Some(v) = o.u32 {
        v.to_be_bytes().to_vec()
    } else {
        o.hex.as_ref().map(|h| h.0.clone()).unwrap_or_default()
    };
    DhcpOption::Unknown(UnknownOption::new(OptionCode::from(o.code), data))
}

/// A client's host name (option 12, or the first label of option 81) as one
/// lower-case DNS label (RFC 1123): other characters become hyphens, hyphens
/// at the ends go, at most 63 bytes. `None` when nothing usable is left.
pub fn sanitise_hostname(raw: &str) -> Option<String> {
    let first = raw.trim().split('.').next().unwrap_or("");
    let mut out = String::with_capacity(first.len().min(63));
    for c in first.chars() {
        let c = c.to_ascii_lowercase();
        let c = if c.is_ascii_alphanumeric() { c } else { '-' };
        if c == '-' && out.ends_with('-') {
            continue;
        }
        out.push(c);
        if out.len() == 63 {
            break;
        }
    }
    let t = out.trim_matches('-');
    (!t.is_empty()).then(|| t.to_string())
}

/// Options a reply keeps even when it must shrink (RFC 2131 §4.3.1).
pub const ESSENTIAL: &[u8] = &[1, 3, 51, 53, 54, 58, 59, 60, 67, 82];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_become_one_label() {
        assert_eq!(sanitise_hostname("Laptop-7").as_deref(), Some("laptop-7"));
        assert_eq!(sanitise_hostname("web01.example.org").as_deref(), Some("web01"));
        assert_eq!(sanitise_hostname("My Mac_Book!!").as_deref(), Some("my-mac-book"));
        assert_eq!(sanitise_hostname("--x--").as_deref(), Some("x"));
        assert_eq!(sanitise_hostname("ünï").as_deref(), Some("n"));
        assert_eq!(sanitise_hostname("..."), None);
        assert_eq!(sanitise_hostname("   "), None);
        assert_eq!(sanitise_hostname(&"a".repeat(300)).unwrap().len(), 63);
    }

    #[test]
    fn configured_values_encode_as_given() {
        let mut o = ConfigOption { code: 252, text: None, ip: None, u8: None, u16: None, u32: None, hex: None };
        o.u16 = Some(0x1234);
        let DhcpOption::Unknown(u) = configured(&o) else { panic!() };
        assert_eq!((u8::from(u.code()), u.data()), (252, &[0x12, 0x34][..]));
        o.u16 = None;
        o.ip = Some(vec!["10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap()]);
        let DhcpOption::Unknown(u) = configured(&o) else { panic!() };
        assert_eq!(u.data(), &[10, 0, 0, 1, 10, 0, 0, 2]);
    }
}
