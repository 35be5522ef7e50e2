//! Option negotiation (RFC 2347): what a read request asks for, what the
//! server grants, and the OACK that says so. Unknown options and values out of
//! range are ignored, as RFC 2347 §2 allows; a granted option is echoed in the
//! OACK, a request without any granted option gets no OACK.

use super::proto::{DEFAULT_BLKSIZE, TftpOption};

/// RFC 2348 §2: blksize is 8 to 65464 octets.
pub const BLKSIZE_MIN: u16 = 8;
pub const BLKSIZE_MAX: u16 = 65464;
/// RFC 7440 §3: windowsize is 1 to 65535 blocks.
pub const WINDOWSIZE_MAX: u16 = u16::MAX;
/// At most this many bytes of DATA are in flight: the granted windowsize is
/// cut to fit (RFC 7440 §3 lets the server answer with less). A burst of
/// large, fragmented blocks otherwise overflows the client's socket buffer,
/// and an RFC 7440 client only notices at its own timeout.
pub const MAX_WINDOW_BYTES: u32 = 64 * 1024;
/// RFC 2349 §3.1: timeout is 1 to 255 seconds.
const TIMEOUT_RANGE: std::ops::RangeInclusive<u64> = 1..=255;

/// The server's side of the negotiation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The largest blksize granted; larger requests get this (RFC 2348 §2).
    pub max_blksize: u16,
    /// The largest windowsize granted; larger requests get this (RFC 7440 §3).
    pub max_windowsize: u16,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_blksize: BLKSIZE_MAX, max_windowsize: 64 }
    }
}

/// What was granted; `None` is an option not asked for (or ignored).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Granted {
    pub blksize: Option<u16>,
    pub windowsize: Option<u16>,
    /// Seconds (RFC 2349 §3.1).
    pub timeout: Option<u8>,
    /// The client asked for the transfer size; the OACK carries the file's.
    pub tsize: bool,
}

impl Granted {
    pub fn blksize(&self) -> u16 {
        self.blksize.unwrap_or(DEFAULT_BLKSIZE)
    }

    pub fn windowsize(&self) -> u16 {
        self.windowsize.unwrap_or(1)
    }

    /// True if an OACK must be sent (RFC 2347 §2: only for granted options).
    pub fn any(&self) -> bool {
        self.blksize.is_some() || self.windowsize.is_some() || self.timeout.is_some() || self.tsize
    }

    /// The OACK's options, with `tsize` the file's size. Values are written
    /// into `scratch`, which the returned pairs borrow.
    pub fn oack<'a>(&self, tsize: u64, scratch: &'a mut [String; 4]) -> Vec<TftpOption<'a>> {
        let [b, w, t, s] = scratch;
        let mut v: Vec<(&'a [u8], &'a [u8])> = Vec::with_capacity(4);
        if let Some(x) = self.blksize {
            *b = x.to_string();
            v.push((b"blksize", b.as_bytes()));
        }
        if let Some(x) = self.windowsize {
            *w = x.to_string();
            v.push((b"windowsize", w.as_bytes()));
        }
        if let Some(x) = self.timeout {
            *t = x.to_string();
            v.push((b"timeout", t.as_bytes()));
        }
        if self.tsize {
            *s = tsize.to_string();
            v.push((b"tsize", s.as_bytes()));
        }
        v
    }
}

/// A decimal option value; anything else (empty, signs, too long) is `None`.
fn number(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// Negotiates the options of a read request. `tsize_ok` is false where the
/// size on the wire is not the file's (netascii), so tsize is not granted.
/// The first occurrence of an option counts; repeats are ignored.
pub fn negotiate(options: &[TftpOption<'_>], limits: Limits, tsize_ok: bool) -> Granted {
    let mut g = Granted::default();
    let mut seen = [false; 4];
    for (name, value) in options {
        let which = [&b"blksize"[..], b"windowsize", b"timeout", b"tsize"]
            .iter()
            .position(|known| name.eq_ignore_ascii_case(known));
        let Some(i) = which else { continue }; // RFC 2347 §2: unknown options are ignored.
        if std::mem::replace(&mut seen[i], true) {
            continue;
        }
        let Some(n) = number(value) else { continue };
        match i {
            // RFC 2348 §2: below 8 is invalid; above the limit the server answers with less.
            0 if n >= u64::from(BLKSIZE_MIN) => g.blksize = Some(n.min(u64::from(limits.max_blksize)) as u16),
            // RFC 7440 §3: at least 1; the server may answer with less.
            1 if n >= 1 => g.windowsize = Some(n.min(u64::from(limits.max_windowsize)) as u16),
            2 if TIMEOUT_RANGE.contains(&n) => g.timeout = Some(n as u8),
            // RFC 2349 §4: a read request carries 0; the OACK carries the size.
            3 if tsize_ok => g.tsize = true,
            _ => {}
        }
    }
    if let Some(w) = g.windowsize {
        let fits = (MAX_WINDOW_BYTES / u32::from(g.blksize())).max(1);
        g.windowsize = Some(w.min(fits.min(u32::from(u16::MAX)) as u16));
    }
    g
}

#[cfg(test)]
mod tests {
    use super::*;

    fn neg(opts: &[(&str, &str)]) -> Granted {
        let o: Vec<TftpOption<'_>> = opts.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())).collect();
        negotiate(&o, Limits { max_blksize: 9000, max_windowsize: 32 }, true)
    }

    #[test]
    fn grants_what_is_asked_within_limits() {
        let g = neg(&[("tsize", "0"), ("blksize", "1468"), ("windowsize", "16"), ("timeout", "3")]);
        assert_eq!(g, Granted { blksize: Some(1468), windowsize: Some(16), timeout: Some(3), tsize: true });
        assert!(g.any());
    }

    #[test]
    fn clamps_to_the_limits_and_ignores_invalid_values() {
        let g = neg(&[("blksize", "1024"), ("windowsize", "1000")]);
        assert_eq!((g.blksize, g.windowsize), (Some(1024), Some(32)));
        let g = neg(&[("blksize", "65464")]);
        assert_eq!(g.blksize, Some(9000));
        let g = neg(&[("blksize", "7"), ("windowsize", "0"), ("timeout", "0"), ("tsize", "x")]);
        assert_eq!(g, Granted::default());
        assert!(!g.any());
        let g = neg(&[("blksize", "-512"), ("timeout", "256"), ("blksize", "1024")]);
        assert_eq!(g, Granted::default(), "a repeated option does not get a second chance");
        assert_eq!(neg(&[("blksize", "99999999999999999999999")]).blksize, None);
    }

    #[test]
    fn the_window_is_cut_to_64_kib_in_flight() {
        let g = neg(&[("blksize", "8192"), ("windowsize", "16")]);
        assert_eq!((g.blksize, g.windowsize), (Some(8192), Some(8)));
        let g = neg(&[("blksize", "9000"), ("windowsize", "16")]);
        assert_eq!(g.windowsize, Some(7));
        let o: [TftpOption<'_>; 2] = [(b"blksize", b"65464"), (b"windowsize", b"4")];
        assert_eq!(negotiate(&o, Limits::default(), true).windowsize, Some(1), "one block is always allowed");
        assert_eq!(neg(&[("windowsize", "16")]).windowsize, Some(16), "16 × 512 bytes fit");
    }

    #[test]
    fn names_are_case_insensitive_and_unknown_ones_ignored() {
        let g = neg(&[("BlkSize", "1024"), ("multicast", ""), ("rollover", "0"), ("TSIZE", "0")]);
        assert_eq!(g, Granted { blksize: Some(1024), tsize: true, ..Default::default() });
    }

    #[test]
    fn tsize_is_not_granted_when_the_wire_size_differs() {
        let o: [TftpOption<'_>; 1] = [(b"tsize", b"0")];
        assert!(!negotiate(&o, Limits::default(), false).tsize);
    }

    #[test]
    fn oack_lists_granted_options_with_the_file_size() {
        let g = neg(&[("tsize", "0"), ("blksize", "1468")]);
        let mut s = Default::default();
        let o = g.oack(123_456, &mut s);
        assert_eq!(o, vec![(&b"blksize"[..], &b"1468"[..]), (b"tsize", b"123456")]);
        assert_eq!((g.blksize(), g.windowsize()), (1468, 1));
        assert_eq!((Granted::default().blksize(), Granted::default().windowsize()), (512, 1));
    }
}
