//! `topology.toml`: the lab's nodes and links.

use anyhow::{Context as _, Result, bail};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    /// The node that runs coresvc.
    pub gateway: String,
    #[serde(rename = "node")]
    pub nodes: Vec<Node>,
    #[serde(rename = "link")]
    pub links: Vec<Link>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    pub name: String,
    pub role: String,
}

/// A veth pair between the gateway and a node.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Link {
    /// The coresvc segment (or `uplink`) this link is.
    pub segment: String,
    pub gw_iface: String,
    /// The MAC of the gateway's end.
    pub gw_mac: Option<String>,
    pub node: String,
    pub iface: String,
    pub mac: Option<String>,
    /// The node's static address (absent: it uses DHCP).
    pub address: Option<String>,
    /// The node's default route.
    pub via: Option<String>,
}

pub const BUILTIN: &str = include_str!("../topology.toml");

impl Topology {
    pub fn builtin() -> Result<Self> {
        Self::parse(BUILTIN)
    }

    pub fn parse(text: &str) -> Result<Self> {
        let t: Topology = toml::from_str(text).context("parsing tests/topology.toml")?;
        for l in &t.links {
            if !t.nodes.iter().any(|n| n.name == l.node) {
                bail!("link to unknown node {:?}", l.node);
            }
        }
        if !t.nodes.iter().any(|n| n.name == t.gateway) {
            bail!("gateway {:?} is not a node", t.gateway);
        }
        Ok(t)
    }

    pub fn link_of(&self, node: &str) -> Option<&Link> {
        self.links.iter().find(|l| l.node == node)
    }

    pub fn link_by_segment(&self, segment: &str) -> Option<&Link> {
        self.links.iter().find(|l| l.segment == segment)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_topology_parses() {
        let t = Topology::builtin().unwrap();
        assert_eq!(t.gateway, "gw");
        assert!(t.link_by_segment("uplink").is_some());
        for l in &t.links {
            assert!(l.gw_iface.len() <= 15 && l.iface.len() <= 15);
        }
    }
}
