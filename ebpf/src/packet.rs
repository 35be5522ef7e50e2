//! Bounds-checked access to packet bytes, in the form the verifier accepts,
//! for XDP and TC contexts alike.

use aya_ebpf::programs::{TcContext, XdpContext};

/// A context with direct packet access.
pub trait Bounds {
    fn start(&self) -> usize;
    fn end(&self) -> usize;
}

impl Bounds for XdpContext {
    #[inline(always)]
    fn start(&self) -> usize {
        self.data()
    }
    #[inline(always)]
    fn end(&self) -> usize {
        self.data_end()
    }
}

impl Bounds for TcContext {
    #[inline(always)]
    fn start(&self) -> usize {
        self.data()
    }
    #[inline(always)]
    fn end(&self) -> usize {
        self.data_end()
    }
}

/// Copies frame bytes out with the kernel's helper (for the few reads that
/// would cost the verifier more as bounds-checked packet access).
pub trait LoadBytes {
    /// # Safety
    /// `dst` holds `len` (at least 1) writable bytes.
    unsafe fn load_raw(&self, offset: u32, dst: *mut u8, len: u32) -> i64;

    #[inline(always)]
    fn load<const N: usize>(&self, offset: u32, dst: &mut [u8; N]) -> i64 {
        // SAFETY: `dst` holds N bytes.
        unsafe { self.load_raw(offset, dst.as_mut_ptr(), N as u32) }
    }
}

impl LoadBytes for XdpContext {
    #[inline(always)]
    unsafe fn load_raw(&self, offset: u32, dst: *mut u8, len: u32) -> i64 {
        // SAFETY: the caller's promise.
        unsafe { aya_ebpf::helpers::bpf_xdp_load_bytes(self.ctx.cast(), offset, dst.cast(), len) }
    }
}

impl LoadBytes for TcContext {
    #[inline(always)]
    unsafe fn load_raw(&self, offset: u32, dst: *mut u8, len: u32) -> i64 {
        // SAFETY: the caller's promise.
        unsafe { aya_ebpf::helpers::bpf_skb_load_bytes(self.skb.skb.cast(), offset, dst.cast(), len) }
    }
}

/// A pointer to `T` at `offset` from the start of the frame, if the frame
/// holds all of it.
#[inline(always)]
pub fn ptr_at<T, C: Bounds>(ctx: &C, offset: usize) -> Option<*const T> {
    let start = ctx.start();
    let end = ctx.end();
    if start + offset + size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *const T)
}

/// The same, writable.
#[inline(always)]
pub fn ptr_at_mut<T, C: Bounds>(ctx: &C, offset: usize) -> Option<*mut T> {
    ptr_at::<T, C>(ctx, offset).map(|p| p as *mut T)
}

/// The frame length in bytes.
#[inline(always)]
pub fn frame_len<C: Bounds>(ctx: &C) -> usize {
    ctx.end() - ctx.start()
}
