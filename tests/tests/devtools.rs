//! The benchmarks' own tools work in the lab as the benchmarks use them:
//! the counting XDP sink takes a node's interface over from the lab's pass
//! program and counts what arrives (here: UDP masqueraded by coresvc).

use std::{process::Stdio, time::Duration};

use coresvc_lab::{AgentOpts, Lab};
use serde_json::Value;

#[test]
fn the_sink_takes_a_node_over_and_counts_what_arrives() {
    let mut lab = Lab::for_test().unwrap();
    lab.start_agent(&AgentOpts::new(coresvc_lab::default_config())).unwrap();
    let sink = std::process::Command::new(coresvc_lab::devtool_bin().unwrap())
        .args(["sink", "--netns", &lab.ns("upstream"), "--iface", "eth0"])
        .args(["--warmup", "0.5", "--seconds", "3", "--expect-src", "192.0.2.2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    let send = "import socket, time\n\
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
                for _ in range(20):\n    s.sendto(b'x' * 18, ('192.0.2.1', 9000)); time.sleep(0.02)\n";
    let out = lab.exec("dvnt-client", ["python3", "-c", send]).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = sink.wait_with_output().unwrap();
    assert!(out.status.success(), "sink: {}", String::from_utf8_lossy(&out.stderr));
    let count: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(count["packets"], 20, "{count}");
    assert_eq!(count["other_source"], 0, "every packet masqueraded: {count}");
}
