//! `[tftp]`: the root, the segments served and the protocol limits.

use super::Validator;
use crate::cfg_path;

impl Validator<'_> {
    pub(super) fn tftp(&mut self) {
        let c = self.c;
        let Some(t) = &c.tftp else { return };
        let root = c.resolve_path(&t.root);
        if !root.is_dir() {
            self.err(cfg_path!("tftp", "root"), format!("{} is not a directory", root.display()));
        }
        if let Some(segs) = &t.segments {
            let names = self.segment_names();
            for (i, s) in segs.iter().enumerate() {
                if !names.contains(&s.as_str()) {
                    self.err(
                        cfg_path!("tftp", "segments", i),
                        format!("segment {s:?} is not defined; use {}", Self::one_of(&names)),
                    );
                }
            }
        }
        if t.max_transfers_per_client == 0 {
            self.err(cfg_path!("tftp", "max_transfers_per_client"), "allow at least one transfer per client");
        }
        if t.max_transfers == 0 {
            self.err(cfg_path!("tftp", "max_transfers"), "allow at least one transfer");
        }
        // RFC 2349 §3.1: timeouts are 1 to 255 seconds.
        if !(1..=255).contains(&t.timeout.secs()) {
            self.err(
                cfg_path!("tftp", "timeout"),
                format!("{}s is not a tftp timeout: use 1 to 255 seconds", t.timeout.secs()),
            );
        }
        if !(1..=50).contains(&t.retries) {
            self.err(cfg_path!("tftp", "retries"), format!("{} is not a retry count: use 1 to 50", t.retries));
        }
        // RFC 2348 §2: 8 to 65464; below 512, the size without the option, it only slows clients down.
        if !(512..=65464).contains(&t.max_blksize) {
            self.err(
                cfg_path!("tftp", "max_blksize"),
                format!("{} is not a block size limit: use 512 to 65464 bytes", t.max_blksize),
            );
        }
        // RFC 7440 §3: 1 to 65535 blocks.
        if t.max_windowsize == 0 {
            self.err(cfg_path!("tftp", "max_windowsize"), "0 is not a window size limit: use 1 to 65535 blocks");
        }
    }
}
