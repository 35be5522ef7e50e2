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
