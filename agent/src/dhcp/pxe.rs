//! PXE and HTTP boot: which boot file a client gets (RFC 4578 options 93,
//! 94, 97; the UEFI specification's HTTP boot; iPXE's user class).

use std::net::Ipv4Addr;

use crate::config::Pxe;

/// What a booting client told us about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BootClient {
    /// Option 93, client system architecture.
    pub arch: Option<u16>,
    /// Option 60 starts with "PXEClient".
    pub pxe_class: bool,
    /// Option 60 starts with "HTTPClient" (UEFI HTTP boot).
    pub http_class: bool,
    /// iPXE: user class (option 77) "iPXE", or its option 175.
    pub ipxe: bool,
}

impl BootClient {
    pub fn is_booting(&self) -> bool {
        self.arch.is_some() || self.pxe_class || self.http_class || self.ipxe
    }
}

/// True when option 77's data names iPXE: sent raw ("iPXE") by iPXE, or
/// as RFC 3004 length-prefixed classes by others.
pub fn user_class_is_ipxe(data: &[u8]) -> bool {
    if data == b"iPXE" {
        return true;
    }
    let mut rest = data;
    while let Some((&n, r)) = rest.split_first() {
        let Some((class, r)) = r.split_at_checked(n as usize) else { return false };
        if class == b"iPXE" {
            return true;
        }
        rest = r;
    }
    false
}

/// The answer for a booting client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Boot {
    /// A TFTP file name or an http(s) URL.
    pub file: String,
    /// siaddr: the TFTP server.
    pub next_server: Ipv4Addr,
    /// Echo option 60 "HTTPClient" (UEFI HTTP boot needs it to accept the offer).
    pub http: bool,
}

/// The boot file for `c`: per-host settings first (`host`), then the
/// global ones. iPXE gets the script, so it never chainloads itself again.
/// Architecture numbers as firmware sends them (RFC 4578's table is wrong,
/// erratum 4624): 0 BIOS, 7 and 9 UEFI x64, 11 UEFI ARM64, 16 HTTP x64,
/// 19 HTTP ARM64.
pub fn boot(c: &BootClient, host: Option<&Pxe>, global: &Pxe, server: Ipv4Addr) -> Option<Boot> {
    if !c.is_booting() {
        return None;
    }
    let pick = |f: fn(&Pxe) -> &Option<String>| host.and_then(|h| f(h).clone()).or_else(|| f(global).clone());
    let file = if c.ipxe {
        pick(|p| &p.ipxe_script)?
    } else {
        match c.arch {
            None | Some(0) => pick(|p| &p.bios)?,
            Some(7 | 9) => pick(|p| &p.uefi_x64)?,
            Some(11) => pick(|p| &p.uefi_arm64)?,
            Some(16) => pick(|p| &p.http_x64)?,
            Some(19) => pick(|p| &p.http_arm64)?,
            Some(_) => return None,
        }
    };
    let next_server = host.and_then(|h| h.next_server).or(global.next_server).unwrap_or(server);
    let http = c.http_class || matches!(c.arch, Some(16 | 19)) && !c.ipxe;
    Some(Boot { file, next_server, http })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn global() -> Pxe {
        Pxe {
            bios: Some("undionly.kpxe".into()),
            uefi_x64: Some("ipxe.efi".into()),
            uefi_arm64: Some("ipxe-arm64.efi".into()),
            http_x64: Some("http://a/ipxe.efi".into()),
            http_arm64: None,
            ipxe_script: Some("http://a/boot.ipxe".into()),
            next_server: None,
        }
    }

    const SRV: Ipv4Addr = Ipv4Addr::new(10, 20, 0, 1);

    fn file(c: BootClient, host: Option<&Pxe>) -> Option<String> {
        boot(&c, host, &global(), SRV).map(|b| b.file)
    }

    #[test]
    fn boot_file_by_architecture() {
        let arch = |a| BootClient { arch: Some(a), pxe_class: true, ..Default::default() };
        assert_eq!(file(arch(0), None).as_deref(), Some("undionly.kpxe"));
        assert_eq!(file(arch(7), None).as_deref(), Some("ipxe.efi"));
        assert_eq!(file(arch(9), None).as_deref(), Some("ipxe.efi"));
        assert_eq!(file(arch(11), None).as_deref(), Some("ipxe-arm64.efi"));
        assert_eq!(file(arch(16), None).as_deref(), Some("http://a/ipxe.efi"));
        assert_eq!(file(arch(19), None), None, "not configured");
        assert_eq!(file(arch(6), None), None, "EFI IA32 is not served");
        assert_eq!(file(BootClient::default(), None), None, "not a booting client");
        let b = boot(&arch(16), None, &global(), SRV).unwrap();
        assert!(b.http);
        assert_eq!(b.next_server, SRV);
        assert!(!boot(&arch(7), None, &global(), SRV).unwrap().http);
    }

    #[test]
    fn ipxe_gets_the_script_and_hosts_override() {
        let ipxe = BootClient { arch: Some(7), ipxe: true, ..Default::default() };
        assert_eq!(file(ipxe.clone(), None).as_deref(), Some("http://a/boot.ipxe"));
        let host = Pxe {
            uefi_x64: Some("special.efi".into()),
            next_server: Some(Ipv4Addr::new(10, 10, 0, 10)),
            ..Default::default()
        };
        let uefi = BootClient { arch: Some(7), ..Default::default() };
        let b = boot(&uefi, Some(&host), &global(), SRV).unwrap();
        assert_eq!((b.file.as_str(), b.next_server), ("special.efi", Ipv4Addr::new(10, 10, 0, 10)));
        assert_eq!(file(ipxe, Some(&host)).as_deref(), Some("http://a/boot.ipxe"), "not overridden: global");
        assert!(user_class_is_ipxe(b"iPXE"));
        assert!(user_class_is_ipxe(b"\x03abc\x04iPXE"));
        assert!(!user_class_is_ipxe(b"\x09iPXE"));
        assert!(!user_class_is_ipxe(b"gPXE"));
    }
}
