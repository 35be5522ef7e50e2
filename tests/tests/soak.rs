//! The soak's mixed load, briefly (`cargo xtask soak` runs it for 30
//! minutes): with two `kill -9`s under a DNS flood of random names, DHCP
//! churn, TFTP, NAT'd transfers and a connection-filling host, no ACKed
//! lease is lost and no well-behaved client's transfer breaks.

#[test]
fn a_short_soak_loses_no_lease_and_breaks_no_well_behaved_flow() {
    let r = coresvc_lab::soak::run(std::time::Duration::from_secs(60), std::time::Duration::from_secs(18)).unwrap();
    eprintln!("{}", r.text());
    assert_eq!(r.kills, 2);
    assert!(r.acks_seen > 100, "{}", r.text());
    assert_eq!(r.acked_leases_lost, 0, "{}", r.text());
    assert_eq!(r.nat_transfers_broken, 0, "{}", r.text());
    assert!(r.nat_transfers_ok > 0, "{}", r.text());
    assert!(r.drops.iter().any(|(n, c)| n == "flow-quota" && *c > 0), "the filler met its quota: {}", r.text());
    assert!(r.dns_answered > r.dns_queries_sent / 2, "{}", r.text());
}
