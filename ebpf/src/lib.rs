//! The library target exists so the agent can name this crate as a
//! build-dependency (cargo then rebuilds the agent when it changes); the
//! programs are the `coresvc-ebpf` binary, built by `agent/build.rs`.
#![no_std]
