//! Logic that the eBPF programs and the agent must share bit for bit.
//!
//! `no_std`, no allocation, no dependencies: everything here compiles for
//! `bpfel-unknown-none` and is unit-tested on the host. Functions meant for
//! the eBPF side are `#[inline(always)]` and loop only over bounded ranges so
//! the verifier accepts them.
#![no_std]

pub mod checksum;
pub mod conntrack;
pub mod dns;
pub mod firewall;
pub mod proto;
