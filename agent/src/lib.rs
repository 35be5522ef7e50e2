//! coresvc: DNS, DHCP, TFTP, NAT, routing and firewall for a management
//! plane, with an eBPF dataplane. See ARCHITECTURE.md for the map of the code.

pub mod agent;
pub mod authority;
pub mod check;
pub mod cli;
pub mod config;
pub mod ctl;
pub mod dataplane;
pub mod dhcp;
pub mod dns;
pub mod export;
pub mod handoff;
pub mod iface;
pub mod metrics;
pub mod names;
pub mod netns;
pub mod privileges;
pub mod routing;
pub mod tftp;
pub mod users;
