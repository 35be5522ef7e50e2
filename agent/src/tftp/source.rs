//! Where a transfer's bytes come from: [`Source`], read at an offset. The
//! file ([`super::fs`]), or memory in tests; [`super::netascii`] encodes from
//! it and [`super::transfer`] sends from it.

use std::io;

/// Where a transfer's bytes come from: the file, or memory in tests.
pub trait Source {
    /// Reads up to `buf.len()` bytes at `offset`; 0 at the end of the file.
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<usize>;
}

impl Source for &[u8] {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(self.len());
        let n = buf.len().min(self.len() - start);
        buf[..n].copy_from_slice(&self[start..start + n]);
        Ok(n)
    }
}

/// Reads until `buf` is full or the file ends.
pub(crate) fn read_full<S: Source + ?Sized>(src: &mut S, mut offset: u64, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match src.read_at(offset, &mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => {
                n += k;
                offset += k as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
